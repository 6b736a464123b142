package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/roamnet/roam/ctrl/api"
	"github.com/roamnet/roam/ctrl/pki"
	"github.com/roamnet/roam/test/testport"
)

// stdout runs f and returns what it printed.
func stdout(t *testing.T, f func() error) (string, error) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	old := os.Stdout
	os.Stdout = w
	ferr := f()
	os.Stdout = old
	w.Close()
	b, _ := io.ReadAll(r)
	return string(b), ferr
}

// TestCertAndToken makes an installation the way the README says:
// `roamctl cert ca`, `cert issue` for a controller and for one of its
// nodes, `token create`; the issued files carry the identities, a
// controller and its node complete a mutual TLS handshake with them, and
// the users file holds only the token's hash.
func TestCertAndToken(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	caDir, ctlDir, nodeDir := filepath.Join(dir, "ca"), filepath.Join(dir, "home"), filepath.Join(dir, "home-n1")
	if _, err := stdout(t, func() error { return runCert(ctx, []string{"ca", "--dir", caDir, "--name", "test"}) }); err != nil {
		t.Fatal(err)
	}
	if _, err := stdout(t, func() error { return runCert(ctx, []string{"ca", "--dir", caDir}) }); err == nil || !strings.Contains(err.Error(), "already holds a CA") {
		t.Fatalf("second cert ca over the first: %v", err)
	}
	if b, err := os.ReadFile(filepath.Join(caDir, pki.CAKeyFile)); err != nil || !strings.Contains(string(b), "PRIVATE KEY") {
		t.Fatalf("ca key: %v", err)
	}
	for _, args := range [][]string{
		{"issue", "--ca", caDir, "--cluster", "home", "--host", "127.0.0.1,roam-ctrl.roam-system.svc", "--out", ctlDir},
		{"issue", "--ca", caDir, "--cluster", "home", "--node", "n1", "--host", "127.0.0.1", "--out", nodeDir},
	} {
		if _, err := stdout(t, func() error { return runCert(ctx, args) }); err != nil {
			t.Fatalf("cert %v: %v", args, err)
		}
	}
	if _, err := stdout(t, func() error { return runCert(ctx, []string{"issue", "--ca", caDir, "--out", dir}) }); err == nil {
		t.Fatal("cert issue without --cluster accepted")
	}
	ctl, err := pki.Load(ctlDir)
	if err != nil {
		t.Fatal(err)
	}
	node, err := pki.Load(nodeDir)
	if err != nil {
		t.Fatal(err)
	}
	if ctl.ID() != (pki.ID{Cluster: "home"}) || node.ID() != (pki.ID{Cluster: "home", Node: "n1"}) {
		t.Fatalf("identities %s %s", ctl.ID(), node.ID())
	}
	if fi, err := os.Stat(filepath.Join(ctlDir, "tls.key")); err != nil || fi.Mode().Perm()&0o077 != 0 {
		t.Fatalf("tls.key readable by others: %v %v", fi.Mode(), err)
	}
	// The controller calls its node over mutual TLS with these files; each
	// side sees the other's identity.
	ln := testport.Listen(t)
	got := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- err
			return
		}
		defer c.Close()
		tc := tls.Server(c, node.ServerConfig())
		if err := tc.Handshake(); err != nil {
			got <- err
			return
		}
		id, err := node.Verify(tc.ConnectionState().PeerCertificates, x509.ExtKeyUsageClientAuth)
		if err == nil && id != (pki.ID{Cluster: "home"}) {
			err = fmt.Errorf("the node saw %s", id)
		}
		got <- err
	}()
	c, err := tls.Dial("tcp", ln.Addr().String(), ctl.ClientConfig(pki.ExpectNodeOf("home")))
	if err != nil {
		t.Fatalf("controller -> node: %v", err)
	}
	c.Close()
	if err := <-got; err != nil {
		t.Fatalf("node <- controller: %v", err)
	}

	users := filepath.Join(dir, "users")
	out, err := stdout(t, func() error {
		return runToken(ctx, []string{"create", "--user", "ops", "--role", "operate", "--users-file", users})
	})
	tok := strings.TrimSpace(out)
	if err != nil || !strings.HasPrefix(tok, "roamu_") {
		t.Fatalf("token create: %q %v", out, err)
	}
	if _, err := stdout(t, func() error {
		return runToken(ctx, []string{"create", "--user", "ops", "--role", "read", "--users-file", users})
	}); err == nil || !strings.Contains(err.Error(), "already has user") {
		t.Fatalf("second ops: %v", err)
	}
	if _, err := stdout(t, func() error {
		return runToken(ctx, []string{"create", "--user", "x", "--role", "admin", "--users-file", users})
	}); err == nil {
		t.Fatal("role admin accepted")
	}
	b, err := os.ReadFile(users)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(b), tok) {
		t.Fatal("the users file holds the token itself")
	}
	us, err := api.ParseUsers(b)
	if err != nil || len(us) != 1 || us[0].Name != "ops" || us[0].Role != api.RoleOperate || us[0].Hash != api.HashToken(tok) {
		t.Fatalf("users file %q: %+v %v", b, us, err)
	}
}
