package e2e

import (
	"context"
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/roamnet/roam/dataplane"
	"github.com/roamnet/roam/dataplane/dptest"
	"github.com/roamnet/roam/dataplane/lb"
	"github.com/roamnet/roam/test/netns"
)

// TestSRv6PerNodeSIDs runs a location of two nodes, each with its own SID
// from the location's locator (node 0 fc00:20:3::1, node 1
// fc00:20:3:1::1), its own data plane answering only its own SID, and
// its own copy of the service; the underlay routes each node's part of
// the locator to it. For an IPv4 and an IPv6 client: the path [node 1]
// reaches node 1's copy and only it (node 0 delivers nothing), the
// copy's answers come back encapsulated from node 1's SID and the home
// takes them; [old, node 1] with the old copy gone goes on to node 1;
// [node 0] reaches node 0's copy. With node 1's copy gone, a new flow
// along [node 1] is dropped there (srv6_no_copy): a path names the node
// that serves, and no other node stands in for it.
func TestSRv6PerNodeSIDs(t *testing.T) {
	ctx := rootWithin(t, 2*time.Minute)
	bed := newSRv6Bed(t)
	topo, home, old, n0 := bed.topo, bed.home, bed.old, bed.nw
	if err := topo.AddNewNode1(); err != nil {
		t.Fatal(err)
	}
	if err := netns.Do(topo.Home, func() error { return home.d.AttachXDP("h3", dataplane.XDPNative) }); err != nil {
		t.Fatal(err)
	}
	n1 := openSRv6Node(t, topo.New1, netns.SRv6SIDNew1, nil, "m0")
	err := netns.Do(topo.New1, func() error {
		if err := dataplane.SetSRv6TunnelSource(netns.SRv6SIDNew1); err != nil {
			return err
		}
		for i, fe := range []netip.Addr{netns.SRv6FrontendV4, netns.SRv6FrontendV6} {
			r := dataplane.SRv6Return{Frontend: fe, HomeSID: netns.SRv6SIDHome, Dev: "m0", Table: 100 + i}
			if err := r.Install(); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	startCopy(t, topo.New, "node0")
	copy1 := startCopy(t, topo.New1, "node1")

	for _, fam := range srv6Families {
		t.Logf("== %s", fam.name)
		ff := famFrontends(t, fam)
		f, fa, want := ff.tcp, ff.tcpAddr, ff.want
		stats := func(n *srv6Node) dataplane.SRv6Stats {
			t.Helper()
			s, err := n.d.SRv6Stats(f)
			if err != nil {
				t.Fatal(err)
			}
			return s
		}
		// The controller sets a copy serving on every node of the location.
		n0.setCopy(t, dataplane.SRv6Serving, f)
		n1.setCopy(t, dataplane.SRv6Serving, f)
		d0, decap := stats(n0).Deliver.Packets, stats(home).Decap.Packets

		home.commit(t, lb.SRv6(netns.SRv6SIDNew1), f)
		a := dialFrontend(ctx, t, topo.Client, fa)
		who, cl := a.ask(t)
		want("[node 1]", who, cl, "node1")
		a.bulk(t, 100_000)
		if got := stats(n0).Deliver.Packets; got != d0 {
			t.Fatalf("[node 1]: node 0 delivered %d packets", got-d0)
		}
		if s := stats(n1); s.Deliver.Packets == 0 {
			t.Fatalf("[node 1]: node 1's counters %+v", s)
		}
		if got := stats(home).Decap.Packets; got == decap {
			t.Fatal("[node 1]: the home decapsulated none of node 1's answers")
		}

		old.setCopy(t, dataplane.SRv6Gone, f)
		home.commit(t, lb.SRv6(netns.SRv6SIDOld, netns.SRv6SIDNew1), f)
		b := dialFrontend(ctx, t, topo.Client, fa)
		who, cl = b.ask(t)
		want("[old, node 1], old gone", who, cl, "node1")

		home.commit(t, lb.SRv6(netns.SRv6SIDNew), f)
		c := dialFrontend(ctx, t, topo.Client, fa)
		who, cl = c.ask(t)
		want("[node 0]", who, cl, "node0")
		for _, k := range []*tcpClient{a, b, c} {
			k.c.Close()
		}

		n1.setCopy(t, dataplane.SRv6Gone, f)
		home.commit(t, lb.SRv6(netns.SRv6SIDNew1), f)
		before := dptest.Drops(t, n1.d)["srv6_no_copy"]
		dctx, dcancel := context.WithTimeout(ctx, 1500*time.Millisecond)
		conn, err := netns.Dial(dctx, topo.Client, "tcp", fa.String())
		dcancel()
		if err == nil {
			conn.Close()
			t.Fatal("[node 1] with node 1's copy gone: connected")
		}
		if err := poll(ctx, 5*time.Second, func() error {
			if dptest.Drops(t, n1.d)["srv6_no_copy"] == before {
				return errors.New("srv6_no_copy not counted at node 1")
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		n0.setCopy(t, dataplane.SRv6Gone, f)
	}
	copy1.Close()
}
