package testbed

// The MO's NATS on the testbed runs with TLS and a user per cluster, as
// roam-meta requires by default: a CA of the testbed's own, a server
// certificate for the router's addresses, an auth file with one random
// password per cluster, each written to a file only that cluster's
// controller is given.

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/roamnet/roam/ctrl/pki"
	"github.com/roamnet/roam/meta"
	"sigs.k8s.io/yaml"
)

// NATSFiles are the MO's NATS credentials written by WriteNATSCredentials.
type NATSFiles struct {
	CA, ServerCert, ServerKey string
	Auth                      string            // roam-meta --auth-file
	Passwords                 map[string]string // user -> file holding its password
}

func natsFilesIn(dir string, users []string) NATSFiles {
	f := NATSFiles{CA: filepath.Join(dir, "ca.pem"), ServerCert: filepath.Join(dir, "server.pem"),
		ServerKey: filepath.Join(dir, "server-key.pem"), Auth: filepath.Join(dir, "auth.yaml"), Passwords: map[string]string{}}
	for _, u := range users {
		f.Passwords[u] = filepath.Join(dir, "password-"+u)
	}
	return f
}

// WriteNATSCredentials writes into dir a CA, a server pair for ips signed
// by it, an auth file with a random password per cluster and per admin
// (unrestricted user, e.g. a load generator), and each password in a file
// of its own (mode 0600). Files already there are kept: a second launch
// of the same testbed reuses them.
func WriteNATSCredentials(dir string, clusters, admins []string, ips []net.IP) (NATSFiles, error) {
	f := natsFilesIn(dir, append(slices.Clone(clusters), admins...))
	if _, err := os.Stat(f.Auth); err == nil {
		return f, nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return f, fmt.Errorf("nats credentials: %w", err)
	}
	caPEM, certPEM, keyPEM, err := natsServerPKI(ips)
	if err != nil {
		return f, err
	}
	auth := meta.AuthConfig{Meta: meta.Credentials{User: "roam-meta", Password: randHex(16)}}
	password := func(user string) (string, error) {
		pw := randHex(16)
		if err := os.WriteFile(f.Passwords[user], []byte(pw+"\n"), 0o600); err != nil {
			return "", fmt.Errorf("nats credentials: %w", err)
		}
		return pw, nil
	}
	for _, id := range clusters {
		pw, err := password(id)
		if err != nil {
			return f, err
		}
		auth.Clusters = append(auth.Clusters, meta.ClusterCredentials{ID: id, Password: pw})
	}
	for _, u := range admins {
		pw, err := password(u)
		if err != nil {
			return f, err
		}
		auth.Admins = append(auth.Admins, meta.Credentials{User: u, Password: pw})
	}
	if err := auth.Validate(); err != nil {
		return f, fmt.Errorf("nats credentials: %w", err)
	}
	authYAML, err := yaml.Marshal(auth)
	if err != nil {
		return f, fmt.Errorf("nats credentials: %w", err)
	}
	// The auth file last: its presence says the set is complete.
	for _, w := range []struct {
		path string
		b    []byte
		mode os.FileMode
	}{{f.CA, caPEM, 0o644}, {f.ServerCert, certPEM, 0o644}, {f.ServerKey, keyPEM, 0o600}, {f.Auth, authYAML, 0o600}} {
		if err := os.WriteFile(w.path, w.b, w.mode); err != nil {
			return f, fmt.Errorf("nats credentials: %w", err)
		}
	}
	return f, nil
}

// ReadPassword reads a password file written by WriteNATSCredentials.
func ReadPassword(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}

// ensureNATSCredentials writes the testbed's NATS credentials in the work
// dir: the server certificate names the router's address in every
// cluster.
func (tb *Testbed) ensureNATSCredentials(work string) (NATSFiles, error) {
	ips := []net.IP{net.IPv4(127, 0, 0, 1)}
	var ids []string
	for _, c := range tb.Clusters() {
		ips = append(ips, WANRouter4(c.Index).AsSlice())
		ids = append(ids, c.Name)
	}
	return WriteNATSCredentials(filepath.Join(work, "nats"), ids, nil, ips)
}

// natsServerPKI makes a CA and a server certificate for ips, signed by it
// (ECDSA P-256, a year).
func natsServerPKI(ips []net.IP) (caPEM, certPEM, keyPEM []byte, err error) {
	const year = 365 * 24 * time.Hour
	ca, err := pki.NewCA("roam testbed NATS CA", year)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("nats ca: %w", err)
	}
	hosts := []string{"localhost"}
	for _, ip := range ips {
		hosts = append(hosts, ip.String())
	}
	certPEM, keyPEM, err = ca.IssueServer("roam-meta", hosts, year)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("nats server certificate: %w", err)
	}
	return ca.CertPEM(), certPEM, keyPEM, nil
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
