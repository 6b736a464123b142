package agentapi

import (
	"testing"

	"github.com/roamnet/roam/ctrl/pki"
	"github.com/roamnet/roam/dataplane/lb"
)

// BenchmarkStageCommitTLS: a controller's stage and commit calls of 2
// frontends to an agent over mutual TLS on loopback (a real data plane),
// one round of each per iteration: where a call's time goes, with
// -cpuprofile (client and server in one process). Needs root.
func BenchmarkStageCommitTLS(b *testing.B) {
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
		gens, err := c.StageAll(x, fs, ts)
		if err != nil {
			b.Fatal(err)
		}
		if err := c.CommitAll(x, fs, gens); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRerouteTLS: the same reroute of 2 frontends as one
// /v1/reroute call (a one-node cluster's), per iteration.
func BenchmarkRerouteTLS(b *testing.B) {
	ca := newCA(b)
	node := identity(b, ca, pki.ID{Cluster: "home", Node: "n1"})
	_, url := startTLSAgent(b, node, nil, nil)
	g := Group{homeController(b, ca, url)}
	fs := []lb.Frontend{fe, mustFrontend("10.0.0.1:81/tcp")}
	x := b.Context()
	if err := g.Warm(x); err != nil {
		b.Fatal(err)
	}
	for i := 0; b.Loop(); i++ {
		ts := []lb.Target{t1, t1}
		if i%2 == 1 {
			ts = []lb.Target{t2, t2}
		}
		if _, err := g.Reroute(x, fs, ts); err != nil {
			b.Fatal(err)
		}
	}
}
