package agentapi

import (
	"context"
	"testing"

	"github.com/roamnet/roam/ctrl/pki"
	"github.com/roamnet/roam/dataplane/lb"
)

// BenchmarkStageCommitTLS: a controller's stage and commit calls of 2
// frontends to an agent over mutual TLS on loopback (a real data plane),
// one round of each per iteration: where a call's time goes, with
// -cpuprofile (client and server in one process). Needs root.
func BenchmarkStageCommitTLS(b *testing.B) {
	benchTLSRounds(b, func(x context.Context, c *Client, fs []lb.Frontend, ts []lb.Target) error {
		gens, err := c.StageAll(x, fs, ts)
		if err != nil {
			return err
		}
		return c.CommitAll(x, fs, gens)
	})
}

// BenchmarkRerouteTLS: the same reroute of 2 frontends as one
// /v1/reroute call (a one-node cluster's), per iteration.
func BenchmarkRerouteTLS(b *testing.B) {
	var g Group // made once, as a controller holds it
	benchTLSRounds(b, func(x context.Context, c *Client, fs []lb.Frontend, ts []lb.Target) error {
		if g == nil {
			g = Group{c}
		}
		_, err := g.Reroute(x, fs, ts)
		return err
	})
}

// benchTLSRounds runs round once per iteration: home's controller (its
// connections warmed first) to node n1's agent over mutual TLS, 2
// frontends, their targets t1 and t2 by turns.
func benchTLSRounds(b *testing.B, round func(x context.Context, c *Client, fs []lb.Frontend, ts []lb.Target) error) {
	ca := newCA(b)
	node := identity(b, ca, pki.ID{Cluster: "home", Node: "n1"})
	_, url := startTLSAgent(b, node, nil, nil)
	c := homeController(b, ca, url)
	fs := []lb.Frontend{fe, mustFrontend("10.0.0.1:81/tcp")}
	x := b.Context()
	if err := c.Warm(x); err != nil {
		b.Fatal(err)
	}
	for i := 0; b.Loop(); i++ {
		ts := []lb.Target{t1, t1}
		if i%2 == 1 {
			ts = []lb.Target{t2, t2}
		}
		if err := round(x, c, fs, ts); err != nil {
			b.Fatal(err)
		}
	}
}
