package agentapi

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/roamnet/roam/ctrl/pki"
)

// newCA is a fresh installation's CA.
func newCA(t testing.TB) *pki.CA {
	t.Helper()
	ca, err := pki.NewCA("roam-test", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// homeController is home's controller's client of the agent at url:
// mutual TLS, the agent checked to be a node of home.
func homeController(t testing.TB, ca *pki.CA, url string) *Client {
	t.Helper()
	return NewTLS(url, identity(t, ca, pki.ID{Cluster: "home"}).ClientConfig(pki.ExpectNodeOf("home")))
}

// identity writes id, issued by ca, into a fresh directory and loads it.
func identity(t testing.TB, ca *pki.CA, id pki.ID) *pki.Source {
	t.Helper()
	dir := t.TempDir()
	if err := ca.WriteIdentity(dir, id, []string{"127.0.0.1"}, time.Hour); err != nil {
		t.Fatal(err)
	}
	s, err := pki.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// startTLSAgent serves a real data plane's agent API with node's identity
// over mutual TLS, as roam-agent serves it (httptest's StartTLS would put
// its own certificate first), and returns it with its URL. tc, when set,
// replaces node.ServerConfig(); connState, when set, sees every
// connection's state changes.
func startTLSAgent(t testing.TB, node *pki.Source, tc *tls.Config, connState func(net.Conn, http.ConnState)) (*agent, string) {
	t.Helper()
	a := newAgent(t, ServerConfig{TLS: node})
	if tc == nil {
		tc = node.ServerConfig()
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: a.srv.Handler(), ReadHeaderTimeout: 10 * time.Second, TLSConfig: tc,
		ErrorLog: log.New(io.Discard, "", 0), ConnState: connState}
	go func() { _ = hs.ServeTLS(ln, "", "") }()
	t.Cleanup(func() { _ = hs.Close() })
	return a, "https://" + ln.Addr().String()
}

// TestMutualTLS runs the agent API as a deployed agent does (mutual TLS
// with node home/n1's identity) and calls it as each attacker would: with
// no certificate, as another cluster's controller of the same
// installation, as another node of the same cluster, and as "home"'s
// controller of another installation. Each is refused (401 or 403),
// counted by reason, and leaves the data plane untouched; home's own
// controller programs it. A controller also refuses an agent that is not
// a node of its cluster.
func TestMutualTLS(t *testing.T) {
	ca := newCA(t)
	other, err := pki.NewCA("roam-other", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	node := identity(t, ca, pki.ID{Cluster: "home", Node: "n1"})
	a, url := startTLSAgent(t, node, nil, nil)
	c := ctx(t)

	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	noCert := &Client{base: url, HTTP: &http.Client{Timeout: 10 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS13}}}}
	// A certificate naming home's controller from another installation's
	// CA, presented by a client that trusts this installation's CA (public).
	fdir := t.TempDir()
	if err := other.WriteIdentity(fdir, pki.ID{Cluster: "home"}, nil, time.Hour); err != nil {
		t.Fatal(err)
	}
	fpair, err := tls.LoadX509KeyPair(filepath.Join(fdir, "tls.crt"), filepath.Join(fdir, "tls.key"))
	if err != nil {
		t.Fatal(err)
	}
	foreign := &Client{base: url, HTTP: &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{
		RootCAs: pool, Certificates: []tls.Certificate{fpair}, MinVersion: tls.VersionTLS13}}}}
	// The attackers pin the agent's identity as a real controller would, so
	// the refusal comes from the agent, not from the client.
	as := func(s *pki.Source) *Client { return NewTLS(url, s.ClientConfig(nil)) }
	cases := []struct {
		who    string
		c      *Client
		status int
		reason string
	}{
		{"no client certificate", noCert, http.StatusUnauthorized, ReasonUnauthorized},
		{"edge's controller", as(identity(t, ca, pki.ID{Cluster: "edge"})), http.StatusForbidden, ReasonForbidden},
		{"node home/n2", as(identity(t, ca, pki.ID{Cluster: "home", Node: "n2"})), http.StatusForbidden, ReasonForbidden},
		{"home's controller of another installation", foreign, http.StatusUnauthorized, ReasonUnauthorized},
	}
	for _, tc := range cases {
		before := counter(t, a.reg, "roam_agent_api_errors_total", "reason", tc.reason)
		_, err := tc.c.Stage(c, fe, t1)
		var ae *Error
		if !errors.As(err, &ae) || ae.Status != tc.status || ae.Reason != tc.reason {
			t.Errorf("stage as %s: %v, want %d %s", tc.who, err, tc.status, tc.reason)
		}
		if _, err := tc.c.List(c); !errors.As(err, &ae) || ae.Status != tc.status {
			t.Errorf("list as %s: %v, want %d", tc.who, err, tc.status)
		}
		if got := counter(t, a.reg, "roam_agent_api_errors_total", "reason", tc.reason); got != before+2 {
			t.Errorf("%s: roam_agent_api_errors_total{reason=%q} %v, want %v", tc.who, tc.reason, got, before+2)
		}
	}
	if svcs, _ := a.dp.List(); len(svcs) != 0 {
		t.Fatalf("a refused caller changed the data plane: %v", svcs)
	}
	if err := noCert.Health(c); err != nil {
		t.Fatalf("healthz needs no certificate: %v", err)
	}

	// Home's controller, expecting a node of home, programs the node.
	ctl := identity(t, ca, pki.ID{Cluster: "home"})
	hc := NewTLS(url, ctl.ClientConfig(pki.ExpectNodeOf("home")))
	if _, err := hc.Stage(c, fe, t1); err != nil {
		t.Fatalf("stage as home's controller: %v", err)
	}
	if svcs, err := hc.List(c); err != nil || len(svcs) != 1 {
		t.Fatalf("list as home's controller: %v %v", svcs, err)
	}
	// Edge's controller refuses home's node as its agent: the TLS
	// handshake fails on the client side, nothing is sent.
	ec := NewTLS(url, identity(t, ca, pki.ID{Cluster: "edge"}).ClientConfig(pki.ExpectNodeOf("edge")))
	if _, err := ec.List(c); err == nil || !strings.Contains(err.Error(), "want a node of cluster edge") {
		t.Fatalf("edge's controller accepted home's node: %v", err)
	}
}

// TestVerifiedCallerCheckedAgainAtRotation: the server remembers a
// caller's verified chain (a migration's calls do not each pay an x509
// verification), but not past a change of its identity files: once the
// node's CA bundle no longer trusts the caller, its next call on the very
// same kept connection is refused.
func TestVerifiedCallerCheckedAgainAtRotation(t *testing.T) {
	ca := newCA(t)
	dir := t.TempDir()
	nodeID := pki.ID{Cluster: "home", Node: "n1"}
	if err := ca.WriteIdentity(dir, nodeID, []string{"127.0.0.1"}, time.Hour); err != nil {
		t.Fatal(err)
	}
	node, err := pki.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	a, url := startTLSAgent(t, node, nil, nil)
	c := NewTLS(url, identity(t, ca, pki.ID{Cluster: "home"}).ClientConfig(nil))
	x := ctx(t)
	for range 3 {
		if _, err := c.Stage(x, fe, t1); err != nil {
			t.Fatalf("stage as home's controller: %v", err)
		}
	}
	// The node's identity rotates to another CA (same node, new bundle).
	other, err := pki.NewCA("roam-other", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(10 * time.Millisecond) // a new mtime even on a coarse clock
	if err := other.WriteIdentity(dir, nodeID, []string{"127.0.0.1"}, time.Hour); err != nil {
		t.Fatal(err)
	}
	before := counter(t, a.reg, "roam_agent_api_errors_total", "reason", ReasonUnauthorized)
	_, err = c.Stage(x, fe, t2)
	var ae *Error
	if !errors.As(err, &ae) || ae.Status != http.StatusUnauthorized {
		t.Fatalf("stage after the CA rotation: %v, want 401", err)
	}
	if got := counter(t, a.reg, "roam_agent_api_errors_total", "reason", ReasonUnauthorized); got != before+1 {
		t.Fatalf("roam_agent_api_errors_total{reason=unauthorized} %v, want %v", got, before+1)
	}
	if c.Dials() != 1 {
		t.Fatalf("%d dials: the refusal must come on the kept connection", c.Dials())
	}
	if s, _ := a.dp.Get(fe); s.Staged == t2 {
		t.Fatalf("a caller no longer trusted staged %s", t2)
	}
}
