package pki

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/roamnet/roam/test/testport"
)

func TestParseID(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want ID
		err  string
	}{
		{in: "spiffe://roam/cluster/home", want: ID{Cluster: "home"}},
		{in: "spiffe://roam/cluster/home/node/n-1", want: ID{Cluster: "home", Node: "n-1"}},
		{in: "spiffe://other/cluster/home", err: "not a spiffe://roam/"},
		{in: "https://roam/cluster/home", err: "not a spiffe://roam/"},
		{in: "spiffe://roam/cluster/Home", err: "lowercase"},
		{in: "spiffe://roam/cluster/home/extra", err: "want /cluster/"},
		{in: "spiffe://roam/cluster/", err: "cluster \"\""},
		{in: "spiffe://roam/cluster/home?x=1", err: "not a spiffe"},
	} {
		u, err := url.Parse(tc.in)
		if err != nil {
			t.Fatal(err)
		}
		got, err := ParseID(u)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s: err %v, want %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want || got.URI().String() != tc.in {
			t.Errorf("%s: %+v %v", tc.in, got, err)
		}
	}
}

func newCA(t *testing.T) *CA {
	t.Helper()
	ca, err := NewCA("test", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func identity(t *testing.T, ca *CA, id ID) *Source {
	t.Helper()
	dir := t.TempDir()
	if err := ca.WriteIdentity(dir, id, []string{"127.0.0.1", "localhost"}, time.Hour); err != nil {
		t.Fatal(err)
	}
	s, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// handshake runs a real TLS handshake between client and server configs
// and returns the identity the server verified of the client (or the
// client's or server's error).
func handshake(t *testing.T, srv *Source, cli *tls.Config) (ID, error) {
	t.Helper()
	ln := testport.Listen(t)
	type res struct {
		id  ID
		err error
	}
	ch := make(chan res, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			ch <- res{err: err}
			return
		}
		defer c.Close()
		tc := tls.Server(c, srv.ServerConfig())
		if err := tc.Handshake(); err != nil {
			ch <- res{err: err}
			return
		}
		id, err := srv.Verify(tc.ConnectionState().PeerCertificates, x509.ExtKeyUsageClientAuth)
		_, _ = tc.Write([]byte("x"))
		ch <- res{id, err}
	}()
	c, err := tls.Dial("tcp", ln.Addr().String(), cli)
	if err == nil {
		_, err = io.ReadFull(c, make([]byte, 1))
		c.Close()
	}
	r := <-ch
	if err != nil {
		return ID{}, err
	}
	return r.id, r.err
}

func TestMutualTLS(t *testing.T) {
	ca := newCA(t)
	home := identity(t, ca, ID{Cluster: "home"})
	edge := identity(t, ca, ID{Cluster: "edge"})
	id, err := handshake(t, home, edge.ClientConfig(Expect(ID{Cluster: "home"})))
	if err != nil || id != (ID{Cluster: "edge"}) {
		t.Fatalf("edge -> home: %v %v", id, err)
	}
	// The client expects another cluster at that address: refused.
	if _, err := handshake(t, home, edge.ClientConfig(Expect(ID{Cluster: "cloud"}))); err == nil || !strings.Contains(err.Error(), "want spiffe://roam/cluster/cloud") {
		t.Fatalf("home answering for cloud: %v", err)
	}
	// A node's certificate is not a controller's.
	if _, err := handshake(t, home, edge.ClientConfig(ExpectNodeOf("home"))); err == nil {
		t.Fatal("a controller accepted as a node")
	}
	// Another installation's real certificate, for a cluster of the same
	// name: its chain does not verify, either way.
	other := identity(t, newCA(t), ID{Cluster: "edge"})
	if _, err := handshake(t, home, other.ClientConfig(Expect(ID{Cluster: "home"}))); err == nil || !strings.Contains(err.Error(), "unknown authority") {
		t.Fatalf("other installation's server accepted: %v", err)
	}
	if id, err := handshake(t, other, home.ClientConfig(nil)); err == nil {
		t.Fatalf("other installation's server accepted by home: %v", id)
	}
	// And as a client it is refused by the server's verification.
	cli := other.ClientConfig(nil)
	cli.VerifyConnection = nil // the attacker does not check the server
	if id, err := handshake(t, home, cli); err == nil || !strings.Contains(err.Error(), "unknown authority") {
		t.Fatalf("other installation's client verified as %v: %v", id, err)
	}
}

func TestRotation(t *testing.T) {
	ca := newCA(t)
	dir := t.TempDir()
	id := ID{Cluster: "home"}
	if err := ca.WriteIdentity(dir, id, nil, time.Hour); err != nil {
		t.Fatal(err)
	}
	s, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	first := s.Leaf().SerialNumber
	// Rotate (a new key and certificate; mtimes may tie within a tick,
	// the size or time still differs with a new file).
	time.Sleep(10 * time.Millisecond)
	if err := ca.WriteIdentity(dir, id, nil, 2*time.Hour); err != nil {
		t.Fatal(err)
	}
	if got := s.Leaf().SerialNumber; got.Cmp(first) == 0 || s.Loads() != 2 {
		t.Fatalf("rotation not picked up: serial %v (was %v), loads %d", got, first, s.Loads())
	}
	// A new CA bundle is used for verification without a restart: a
	// client of a second CA is refused, then accepted once the bundle
	// holds both CAs.
	ca2 := newCA(t)
	peer := identity(t, ca2, ID{Cluster: "edge"})
	if _, err := handshake(t, s, peer.ClientConfig(nil)); err == nil {
		t.Fatal("second CA accepted before the bundle holds it")
	}
	bundle := append(ca.CertPEM(), ca2.CertPEM()...)
	if err := writeAtomic(filepath.Join(dir, CAFile), bundle, 0o644); err != nil {
		t.Fatal(err)
	}
	p2 := peer.ClientConfig(nil)
	p2.VerifyConnection = nil
	if got, err := handshake(t, s, p2); err != nil || got.Cluster != "edge" {
		t.Fatalf("after the bundle rotation: %v %v", got, err)
	}
	// A broken rotation keeps the last good set and says why.
	if err := os.WriteFile(filepath.Join(dir, CertFile), []byte("garbage"), 0o644); err != nil {
		t.Fatal(err)
	}
	if s.Leaf() == nil || s.Err() == nil {
		t.Fatalf("broken rotation: leaf %v err %v", s.Leaf(), s.Err())
	}
	// A certificate naming another identity is not taken at a rotation.
	if err := ca.WriteIdentity(dir, ID{Cluster: "evil"}, nil, time.Hour); err != nil {
		t.Fatal(err)
	}
	if s.ID() != id || s.Err() == nil || !strings.Contains(s.Err().Error(), "does not change") {
		t.Fatalf("identity changed at rotation: %v %v", s.ID(), s.Err())
	}
}

func TestSaveLoadCA(t *testing.T) {
	ca := newCA(t)
	dir := t.TempDir()
	if err := ca.Save(dir); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(dir, CAKeyFile))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("ca key mode: %v %v", fi, err)
	}
	ca2, err := LoadCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	s := identity(t, ca2, ID{Cluster: "a", Node: "n1"})
	if _, err := s.Verify([]*x509.Certificate{s.Leaf()}, x509.ExtKeyUsageServerAuth); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadCA(t.TempDir()); err == nil {
		t.Fatal("loaded a CA from an empty directory")
	}
}

func TestEqualAndSecretFile(t *testing.T) {
	if !Equal("abc", "abc") || Equal("abc", "abd") || Equal("abc", "abcd") || Equal("", "x") {
		t.Fatal("Equal")
	}
	p := filepath.Join(t.TempDir(), "s")
	if err := os.WriteFile(p, []byte("tok\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if s, err := ReadSecretFile(p); err != nil || s != "tok" {
		t.Fatalf("%q %v", s, err)
	}
	if err := os.WriteFile(p, []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadSecretFile(p); err == nil {
		t.Fatal("empty secret accepted")
	}
}

// TestReadCAPool: the CA's own PEM reads into a pool that verifies what it
// issued; a missing file and a file with no certificate are errors.
func TestReadCAPool(t *testing.T) {
	ca, err := NewCA("test", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	good, empty := filepath.Join(dir, "ca.crt"), filepath.Join(dir, "empty.crt")
	if err := os.WriteFile(good, ca.CertPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(empty, []byte("not a certificate\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	pool, err := ReadCAPool(good)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ca.Cert.Verify(x509.VerifyOptions{Roots: pool}); err != nil {
		t.Errorf("the pool does not hold the CA: %v", err)
	}
	if _, err := ReadCAPool(filepath.Join(dir, "missing.crt")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v, want not exist", err)
	}
	if _, err := ReadCAPool(empty); err == nil || !strings.Contains(err.Error(), "no certificate") {
		t.Errorf("file with no certificate: %v", err)
	}
}

// TestIssueServer: a server certificate verifies against the CA for the
// names and IPs it was issued for and no other, serves only as a server,
// and names no roam identity.
func TestIssueServer(t *testing.T) {
	ca := newCA(t)
	certPEM, keyPEM, err := ca.IssueServer("roam-meta", []string{"10.0.0.1", "localhost"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	leaf := pair.Leaf
	if leaf.Subject.CommonName != "roam-meta" {
		t.Errorf("common name %q, want roam-meta", leaf.Subject.CommonName)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	for _, name := range []string{"10.0.0.1", "localhost"} {
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, DNSName: name}); err != nil {
			t.Errorf("verify for %s: %v", name, err)
		}
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, DNSName: "10.0.0.2"}); err == nil {
		t.Error("verified for an IP it was not issued for")
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err == nil {
		t.Error("a server certificate verified for client use")
	}
	if id, err := IDOf(leaf); err == nil {
		t.Errorf("a server certificate names identity %v", id)
	}
}
