package testbed

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/roamnet/roam/ctrl/api"
	"github.com/roamnet/roam/ctrl/pki"
	"github.com/roamnet/roam/dataplane/agentapi"
	"github.com/roamnet/roam/test/netns"
)

// The testbed's trust: at launch, a CA of its own (as `roamctl cert ca`
// makes for an installation), a certificate per controller
// (spiffe://roam/cluster/<name>) and per agent (…/node/node1), and an
// operate user whose token only the state file and a 0600 header file
// hold. Every process reads them from files: none is in an argv.

// AgentNode is the node name of every cluster's single agent.
const AgentNode = "node1"

// PKIDir is where the testbed keeps its CA and identities.
func PKIDir(work string) string { return filepath.Join(work, "pki") }

// CAFile is the testbed CA's certificate (curl --cacert, roamctl --ca).
func CAFile(work string) string { return filepath.Join(PKIDir(work), "ca", pki.CAFile) }

// CtrlTLSDir and AgentTLSDir are a cluster's controller's and agent's
// identity directories.
func CtrlTLSDir(work, cluster string) string  { return filepath.Join(PKIDir(work), cluster, "ctrl") }
func AgentTLSDir(work, cluster string) string { return filepath.Join(PKIDir(work), cluster, "agent") }

// UsersFile is the controllers' --users-file; AuthHeaderFile holds
// "Authorization: Bearer <token>" for curl -H @file.
func UsersFile(work string) string      { return filepath.Join(PKIDir(work), "users") }
func AuthHeaderFile(work string) string { return filepath.Join(PKIDir(work), "auth.header") }

// makePKI creates the CA, every identity and the users file, and returns
// the user's token.
func (tb *Testbed) makePKI(work string) (string, error) {
	ca, err := pki.NewCA("roam-testbed-"+tb.st.Name, 7*24*time.Hour)
	if err != nil {
		return "", err
	}
	if err := ca.Save(filepath.Join(PKIDir(work), "ca")); err != nil {
		return "", err
	}
	for _, c := range tb.Clusters() {
		if err := ca.WriteIdentity(CtrlTLSDir(work, c.Name), pki.ID{Cluster: c.Name},
			[]string{c.WAN4.String(), c.WAN6.String(), "127.0.0.1", "localhost"}, 7*24*time.Hour); err != nil {
			return "", err
		}
		if err := ca.WriteIdentity(AgentTLSDir(work, c.Name), pki.ID{Cluster: c.Name, Node: AgentNode},
			[]string{"127.0.0.1"}, 7*24*time.Hour); err != nil {
			return "", err
		}
	}
	tok, err := api.NewToken()
	if err != nil {
		return "", err
	}
	if err := os.WriteFile(UsersFile(work), []byte(api.UserLine("testbed", api.RoleOperate, tok)+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("write users: %w", err)
	}
	if err := os.WriteFile(AuthHeaderFile(work), []byte("Authorization: Bearer "+tok+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("write auth header: %w", err)
	}
	return tok, nil
}

// caPool is the testbed CA (nil before a launch made it).
func (tb *Testbed) caPool() *x509.CertPool {
	tb.mu.Lock()
	work := tb.st.WorkDir
	tb.mu.Unlock()
	if work == "" {
		return nil
	}
	pool, err := pki.ReadCAPool(CAFile(work))
	if err != nil {
		return nil
	}
	return pool
}

// HTTPSClient is HTTPClient trusting the testbed's CA (the controllers'
// APIs).
func (tb *Testbed) HTTPSClient(ns string, timeout time.Duration) *http.Client {
	c := HTTPClient(ns, timeout)
	c.Transport.(*http.Transport).TLSClientConfig = &tls.Config{RootCAs: tb.caPool(), MinVersion: tls.VersionTLS13}
	return c
}

// AgentClient is a client of cluster's agent API as its controller calls
// it: from the cluster's namespace, mutual TLS with the controller's
// identity, accepting only a node of that cluster.
func (tb *Testbed) AgentClient(cluster string, timeout time.Duration) (*agentapi.Client, error) {
	c, err := tb.Cluster(cluster)
	if err != nil {
		return nil, err
	}
	work, err := tb.workDir()
	if err != nil {
		return nil, err
	}
	id, err := pki.Load(CtrlTLSDir(work, cluster))
	if err != nil {
		return nil, err
	}
	ag := agentapi.NewTLS(fmt.Sprintf("https://127.0.0.1:%d", AgentAPIPort), id.ClientConfig(pki.ExpectNodeOf(cluster)))
	ag.SetDialer(netns.Dialer(c.NS))
	ag.HTTP.Timeout = timeout
	return ag, nil
}
