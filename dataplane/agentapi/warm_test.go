package agentapi

import (
	"crypto/tls"
	"net"
	"net/http"
	"sync/atomic"
	"testing"

	"github.com/roamnet/roam/ctrl/pki"
	"github.com/roamnet/roam/dataplane/lb"
)

// TestWarmThenNoHandshake: once Warm has run (it keeps warmConns
// connections open: a connection carries one call at a time), a
// migration's stage and commit of two frontends at once, on every node,
// over mutual TLS, open no connection: no TCP or TLS handshake inside the
// reroute, on either side.
func TestWarmThenNoHandshake(t *testing.T) {
	ca := newCA(t)
	node := identity(t, ca, pki.ID{Cluster: "home", Node: "n1"})
	var accepted, handshakes atomic.Int64
	tc := node.ServerConfig()
	verify := tc.VerifyConnection
	tc.VerifyConnection = func(cs tls.ConnectionState) error {
		handshakes.Add(1)
		if verify != nil {
			return verify(cs)
		}
		return nil
	}
	a, url := startTLSAgent(t, node, tc, func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			accepted.Add(1)
		}
	})
	ctl := identity(t, ca, pki.ID{Cluster: "home"})
	c := NewTLS(url, ctl.ClientConfig(pki.ExpectNodeOf("home")))
	g := Group{c}
	x := ctx(t)

	if err := g.Warm(x); err != nil {
		t.Fatalf("warm: %v", err)
	}
	if c.Dials() != warmConns || accepted.Load() != warmConns || handshakes.Load() != warmConns {
		t.Fatalf("after Warm: %d dials, %d accepted, %d handshakes; want %d each", c.Dials(), accepted.Load(), handshakes.Load(), warmConns)
	}
	fs := []lb.Frontend{fe, mustFrontend("10.0.0.1:80/udp")}
	for round := range 3 {
		gens := make([]Generations, len(fs))
		errs := make(chan error, len(fs))
		for i, f := range fs {
			go func() {
				var err error
				gens[i], err = g.Stage(x, f, t1)
				errs <- err
			}()
		}
		for range fs {
			if err := <-errs; err != nil {
				t.Fatalf("round %d: stage: %v", round, err)
			}
		}
		for i, f := range fs {
			go func() { errs <- g.Commit(x, f, gens[i]) }()
		}
		for range fs {
			if err := <-errs; err != nil {
				t.Fatalf("round %d: commit: %v", round, err)
			}
		}
	}
	if c.Dials() != warmConns || accepted.Load() != warmConns || handshakes.Load() != warmConns {
		t.Fatalf("after 3 stages and commits of 2 frontends: %d dials, %d accepted, %d handshakes; want the warm connections only",
			c.Dials(), accepted.Load(), handshakes.Load())
	}
	for _, f := range fs {
		if s, err := a.dp.Get(f); err != nil || s.Active != t1 {
			t.Fatalf("%s: %+v %v, want active %s", f, s, err, t1)
		}
	}
	// A client that never warmed dials inside its first stage: what Warm
	// takes out of the reroute.
	cold := NewTLS(url, ctl.ClientConfig(pki.ExpectNodeOf("home")))
	if _, err := cold.Stage(x, fs[0], t2); err != nil {
		t.Fatal(err)
	}
	if cold.Dials() != 1 || handshakes.Load() != warmConns+1 {
		t.Fatalf("cold client: %d dials, %d handshakes in all; want 1 and %d", cold.Dials(), handshakes.Load(), warmConns+1)
	}
}
