package meta

// Attacks on the MO's NATS, each run as the attacker would: with a cluster's
// real credentials, with none, in plain text, and with forged hellos. Each
// is refused and counted.

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

// testPKI writes a CA and a server pair for 127.0.0.1 (named cn) into dir.
func testPKI(t *testing.T, dir, cn string) (caFile, certFile, keyFile string) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	now := time.Now()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA " + cn},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: cn},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour), IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalECPrivateKey(key)
	caFile, certFile, keyFile = filepath.Join(dir, "ca.pem"), filepath.Join(dir, "server.pem"), filepath.Join(dir, "server-key.pem")
	for f, b := range map[string][]byte{
		caFile:   pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		certFile: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		keyFile:  pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}),
	} {
		if err := os.WriteFile(f, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return caFile, certFile, keyFile
}

// secureServer is an MO as roam-meta runs it by default: TLS and a user
// per cluster (c1, c2).
func secureServer(t *testing.T) (s *Server, caFile string) {
	t.Helper()
	caFile, certFile, keyFile := testPKI(t, t.TempDir(), "roam-meta")
	kp, err := NewKeyPairReloader(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	auth := &AuthConfig{Clusters: []ClusterCredentials{{ID: "c1", Password: "p1-secret"}, {ID: "c2", Password: "p2-secret"}}}
	s = startServer(t, ServerConfig{Auth: auth, TLS: &tls.Config{GetCertificate: kp.GetCertificate, MinVersion: tls.VersionTLS12}})
	return s, caFile
}

// clusterConn connects as cluster id over TLS, collecting async errors.
func clusterConn(t *testing.T, s *Server, caFile, id, password string) (*nats.Conn, <-chan error) {
	t.Helper()
	errs := make(chan error, 16)
	tlsOpts, err := NATSTLSOptions(caFile, "", "")
	if err != nil {
		t.Fatal(err)
	}
	opts := append(ClusterConnectOptions(id, password), tlsOpts...)
	return connect(t, s.ClientURL(), append(opts, errorsTo(errs))...), errs
}

// errorsTo hands a connection's async errors to errs, dropping those
// that find it full.
func errorsTo(errs chan<- error) nats.Option {
	return nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
		select {
		case errs <- err:
		default:
		}
	})
}

func wantPermissionError(t *testing.T, errs <-chan error, what string) {
	t.Helper()
	select {
	case err := <-errs:
		if !errors.Is(err, nats.ErrPermissionViolation) && !strings.Contains(strings.ToLower(err.Error()), "permissions violation") {
			t.Fatalf("%s: async error %v, want a permissions violation", what, err)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("%s: no permissions violation", what)
	}
}

// TestAttackOtherClustersSubjects: cluster c1, with its real credentials
// over TLS, publishes c2's hello and subscribes to every cluster's hellos
// and to c2's inbox. The server refuses each with a permissions violation
// and the MO counts them; c2 never appears.
func TestAttackOtherClustersSubjects(t *testing.T) {
	s, caFile := secureServer(t)
	nc, errs := clusterConn(t, s, caFile, "c1", "p1-secret")
	if !nc.TLSRequired() {
		t.Fatal("the connection is not TLS")
	}
	fake := testHello("c2", TierCloud, 1<<20, 0)
	b, _ := jsonMarshal(fake)
	if err := nc.Publish(HelloSubject("c2"), b); err != nil {
		t.Fatal(err)
	}
	wantPermissionError(t, errs, "publish c2's hello as c1")
	waitFor(t, "the refused publish counted", func() bool {
		return metricValue(t, s, "roam_meta_nats_denied_total", map[string]string{"reason": DeniedPublish}) >= 1
	})
	for _, subj := range []string{SubjectHelloAll, InboxPrefix("c2") + ".>"} {
		if _, err := nc.SubscribeSync(subj); err != nil {
			t.Fatal(err)
		}
		wantPermissionError(t, errs, "subscribe "+subj+" as c1")
	}
	waitFor(t, "the refused subscriptions counted", func() bool {
		return metricValue(t, s, "roam_meta_nats_denied_total", map[string]string{"reason": DeniedSubscribe}) >= 2
	})
	// c1's own hello goes through on the same connection; c2 never shows.
	c1 := newClient(t, nc, "c1")
	if err := c1.PublishHello(ctx(t), testHello("c1", TierEdge, 1000, 0)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "c1 registered", func() bool { _, _, ok := s.Registry().Get(time.Now(), "c1"); return ok })
	if _, _, ok := s.Registry().Get(time.Now(), "c2"); ok {
		t.Fatal("c2 registered from c1's credentials")
	}
}

// TestAttackWithoutCredentials: no credentials, a wrong password, another
// cluster's user name with c1's password, and a plain-text connection are
// all refused, and counted.
func TestAttackWithoutCredentials(t *testing.T) {
	s, caFile := secureServer(t)
	tlsOpts, err := NATSTLSOptions(caFile, "", "")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		opts []nats.Option
	}{
		{"no credentials", tlsOpts},
		{"wrong password", append(ClusterConnectOptions("c1", "guess"), tlsOpts...)},
		{"c1's password as c2", append(ClusterConnectOptions("c2", "p1-secret"), tlsOpts...)},
	} {
		nc, err := nats.Connect(s.ClientURL(), append(tc.opts, nats.Timeout(10*time.Second))...)
		if err == nil {
			nc.Close()
			t.Fatalf("%s: connected", tc.name)
		}
		if !errors.Is(err, nats.ErrAuthorization) && !strings.Contains(strings.ToLower(err.Error()), "authorization violation") {
			t.Fatalf("%s: %v, want an authorization violation", tc.name, err)
		}
	}
	waitFor(t, "the refused logins counted", func() bool {
		return metricValue(t, s, "roam_meta_nats_denied_total", map[string]string{"reason": DeniedAuthentication}) >= 3
	})
	// Plain text with the right password, spoken on a raw socket: the
	// server announces TLS as required and drops the connection.
	u, err := url.Parse(s.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	raw, err := net.DialTimeout("tcp", u.Host, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	_ = raw.SetDeadline(time.Now().Add(20 * time.Second))
	info, err := bufio.NewReader(raw).ReadString('\n')
	if err != nil || !strings.Contains(info, `"tls_required":true`) {
		t.Fatalf("server INFO %q (%v): want tls_required", info, err)
	}
	hb, _ := jsonMarshal(testHello("c1", TierCloud, 1<<20, 0))
	_, _ = fmt.Fprintf(raw, "CONNECT {\"user\":\"c1\",\"pass\":\"p1-secret\",\"verbose\":false}\r\nPUB %s %d\r\n%s\r\nPING\r\n",
		HelloSubject("c1"), len(hb), hb)
	if b, err := io.ReadAll(raw); err != nil && !errors.Is(err, net.ErrClosed) && !strings.Contains(err.Error(), "reset") {
		t.Fatalf("plain text: read %q: %v, want the connection closed", b, err)
	} else if strings.Contains(string(b), "PONG") {
		t.Fatalf("plain text: the server answered %q", b)
	}
	if _, _, ok := s.Registry().Get(time.Now(), "c1"); ok {
		t.Fatal("a plain-text hello was taken in")
	}
	waitFor(t, "the plain-text attempt counted", func() bool {
		return metricValue(t, s, "roam_meta_nats_denied_total", map[string]string{"reason": DeniedTLS}) >= 1
	})
	// A client that does not trust the server's CA does not connect.
	otherCA, _, _ := testPKI(t, t.TempDir(), "other")
	wrongCA, err := NATSTLSOptions(otherCA, "", "")
	if err != nil {
		t.Fatal(err)
	}
	if nc, err := nats.Connect(s.ClientURL(), append(ClusterConnectOptions("c1", "p1-secret"), append(wrongCA, nats.Timeout(10*time.Second))...)...); err == nil {
		nc.Close()
		t.Fatal("connected to a server whose certificate the client's CA did not sign")
	}
	waitFor(t, "the failed handshake counted", func() bool {
		return metricValue(t, s, "roam_meta_nats_denied_total", map[string]string{"reason": DeniedTLS}) >= 2
	})
}

// TestAttackForgedSequence: someone holding c1's credentials publishes c1's
// hello with the real incarnation and a huge seq (which used to make c1's
// real hellos stale for ever). It is rejected and counted; c1's real
// hellos go on being kept. A restarted c1 (new incarnation, seq from 1) is
// accepted, and a late hello of the old run is stale.
func TestAttackForgedSequence(t *testing.T) {
	s, caFile := secureServer(t)
	realConn, _ := clusterConn(t, s, caFile, "c1", "p1-secret")
	c1 := newClient(t, realConn, "c1", WithoutCache())
	h := testHello("c1", TierEdge, 1000, 0)
	h.Seq = 0
	if err := c1.PublishHello(ctx(t), h); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "c1 registered", func() bool { _, _, ok := s.Registry().Get(time.Now(), "c1"); return ok })
	kept, _, _ := s.Registry().Get(time.Now(), "c1")
	inc := kept.Hello.Incarnation
	if inc == "" || kept.Hello.Seq != 1 {
		t.Fatalf("first hello kept with incarnation %q seq %d, want a fresh incarnation and seq 1", inc, kept.Hello.Seq)
	}

	attacker, _ := clusterConn(t, s, caFile, "c1", "p1-secret")
	forged := testHello("c1", TierCloud, 1<<30, 0)
	forged.Incarnation, forged.Seq = inc, 1<<64-1
	b, _ := jsonMarshal(forged)
	if err := attacker.Publish(HelloSubject("c1"), b); err != nil {
		t.Fatal(err)
	}
	if err := attacker.Flush(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the forged hello counted as ahead", func() bool {
		return metricValue(t, s, "roam_meta_hellos_total", map[string]string{"result": "ahead"}) == 1
	})
	if c, _, _ := s.Registry().Get(time.Now(), "c1"); c.Hello.Seq != 1 || c.Hello.Tier != TierEdge {
		t.Fatalf("forged hello changed the entry: seq %d tier %s", c.Hello.Seq, c.Hello.Tier)
	}
	// The real cluster's next hello is kept.
	if err := c1.PublishHello(ctx(t), h); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "c1's next hello kept", func() bool { c, _, _ := s.Registry().Get(time.Now(), "c1"); return c.Hello.Seq == 2 })

	// c1 restarts: a new client, a new incarnation, seq from 1.
	restarted := newClient(t, realConn, "c1", WithoutCache())
	h.Tier = TierCloud
	if err := restarted.PublishHello(ctx(t), h); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the restarted c1 kept", func() bool {
		c, _, _ := s.Registry().Get(time.Now(), "c1")
		return c.Hello.Incarnation != inc && c.Hello.Seq == 1 && c.Hello.Tier == TierCloud
	})
	// A late hello from the old run is stale, however high its seq.
	stale := metricValue(t, s, "roam_meta_hellos_total", map[string]string{"result": "stale"})
	h.Tier = TierEdge
	if err := c1.PublishHello(ctx(t), h); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the old run's hello stale", func() bool {
		return metricValue(t, s, "roam_meta_hellos_total", map[string]string{"result": "stale"}) == stale+1
	})
	if c, _, _ := s.Registry().Get(time.Now(), "c1"); c.Hello.Tier != TierCloud {
		t.Fatal("the old run's hello replaced the restarted one")
	}
}

// TestKeyPairReload: the MO's certificate is rotated by rewriting its
// files; new connections see the new one without a restart.
func TestKeyPairReload(t *testing.T) {
	dir := t.TempDir()
	ca1, cert, key := testPKI(t, dir, "first")
	kp, err := NewKeyPairReloader(cert, key)
	if err != nil {
		t.Fatal(err)
	}
	s := startServer(t, ServerConfig{TLS: &tls.Config{GetCertificate: kp.GetCertificate, MinVersion: tls.VersionTLS12}})
	dial := func(ca string) error {
		opts, err := NATSTLSOptions(ca, "", "")
		if err != nil {
			return err
		}
		nc, err := nats.Connect(s.ClientURL(), append(opts, nats.Timeout(10*time.Second))...)
		if err == nil {
			nc.Close()
		}
		return err
	}
	if err := dial(ca1); err != nil {
		t.Fatalf("first certificate: %v", err)
	}
	// Keep the first CA aside, then rotate: a new CA and pair in the
	// same files.
	keep := filepath.Join(t.TempDir(), "ca1.pem")
	b, _ := os.ReadFile(ca1)
	if err := os.WriteFile(keep, b, 0o600); err != nil {
		t.Fatal(err)
	}
	time.Sleep(10 * time.Millisecond) // a distinct modification time
	ca2, _, _ := testPKI(t, dir, "second")
	waitFor(t, "the rotated certificate served", func() bool { return dial(ca2) == nil })
	if err := dial(keep); err == nil {
		t.Fatal("the old CA still verifies the server after rotation")
	}
	if kp.Err() != nil {
		t.Fatal(kp.Err())
	}
}
