package e2e

import (
	"net/netip"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/roamnet/roam/dataplane"
	"github.com/roamnet/roam/dataplane/dptest"
	"github.com/roamnet/roam/dataplane/lb"
	"github.com/roamnet/roam/test/netns"
)

// startHomePod puts the home's copy in a pod-like namespace behind a veth
// of the home's: the frontends on its lo, routed to it from the home. A
// socket of the copy is then one the home's programs cannot see
// (bpf_skc_lookup_tcp looks in the home's namespace), as with a pod.
func startHomePod(t *testing.T, topo *netns.SRv6Topology) string {
	t.Helper()
	pod := "roam-sp-" + topo.Suffix
	if err := netns.Create(pod); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := netns.Delete(pod); err != nil {
			t.Error(err)
		}
	})
	hp := netns.End{NS: topo.Home, Name: "hp", Addrs: []netip.Prefix{pfx("10.20.7.1/24"), pfx("fd20:7::1/64")}}
	p0 := netns.End{NS: pod, Name: "p0", Addrs: []netip.Prefix{pfx("10.20.7.2/24"), pfx("fd20:7::2/64")}}
	if err := netns.Veth(hp, p0); err != nil {
		t.Fatal(err)
	}
	if err := netns.SRv6FrontendsOnLo(pod); err != nil {
		t.Fatal(err)
	}
	err := netns.Handle(pod, func(h *netlink.Handle) error {
		l, err := h.LinkByName("p0")
		if err != nil {
			return err
		}
		for _, gw := range []string{"10.20.7.1", "fd20:7::1"} {
			g := netip.MustParseAddr(gw)
			dst := pfx("0.0.0.0/0")
			if g.Is6() {
				dst = pfx("::/0")
			}
			if err := h.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Dst: prefixNet(dst), Gw: g.AsSlice()}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	err = netns.Handle(topo.Home, func(h *netlink.Handle) error {
		l, err := h.LinkByName("hp")
		if err != nil {
			return err
		}
		for _, r := range []struct{ dst, gw netip.Addr }{
			{netns.SRv6FrontendV4, netip.MustParseAddr("10.20.7.2")},
			{netns.SRv6FrontendV6, netip.MustParseAddr("fd20:7::2")},
		} {
			dst := netip.PrefixFrom(r.dst, r.dst.BitLen())
			if err := h.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Dst: prefixNet(dst), Gw: r.gw.AsSlice()}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	startCopy(t, pod, "home")
	return pod
}

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }

// TestSRv6MoveHomeBounded: after a move back home, the previous path keeps
// only the connections opened along it, and only while the old copy may
// still hold them. The home's copy runs in a pod-like namespace (its
// sockets invisible to the home's programs); one of its connections loses
// its conntrack entry at the home (GC after the established timeout), so
// its packets look like those of a connection opened along the previous
// path: no SYN, no flow pinned, no socket. Once the old copy is gone they
// must reach the home's copy, not the removed one:
//   - on word: the home commits local again (what its controller does
//     once the old location reports its copy gone), which ends the
//     previous path's hold at once;
//   - without word: once the hold (SRv6Config.PreviousHold) has run out.
//
// Before either, a connection opened along [old] is still served by the
// old copy (the hold is on). For an IPv4 and an IPv6 client.
func TestSRv6MoveHomeBounded(t *testing.T) {
	ctx := rootWithin(t, 3*time.Minute)
	const (
		hold        = 8 * time.Second
		established = time.Second
	)
	bed := newSRv6BedWith(t, func(c *dataplane.Config) {
		c.SRv6.PreviousHold = hold
		c.Timeouts.Established = established
	})
	topo, home, old := bed.topo, bed.home, bed.old
	startHomePod(t, topo)
	startCopy(t, topo.Old, "old")

	for _, fam := range srv6Families {
		ff := famFrontends(t, fam)
		fT, fU, tcpAddr, want := ff.tcp, ff.udp, ff.tcpAddr, ff.want
		// moveHome: [old] with a connection along it, then local with the
		// old copy draining and a connection to the home's copy; the old
		// copy then gone. Returns the home's connection and the commit's time.
		moveHome := func(step string) (*tcpClient, time.Time) {
			t.Helper()
			old.setCopy(t, dataplane.SRv6Serving, fT, fU)
			home.commit(t, lb.SRv6(netns.SRv6SIDOld), fT, fU)
			a := dialFrontend(ctx, t, topo.Client, tcpAddr)
			who, cl := a.ask(t)
			want(step+": [old]: connection a", who, cl, "old")
			home.commit(t, lb.Local, fT, fU)
			committed := time.Now()
			old.setCopy(t, dataplane.SRv6Draining, fT, fU)
			b := dialFrontend(ctx, t, topo.Client, tcpAddr)
			who, cl = b.ask(t)
			want(step+": home: connection b", who, cl, "home")
			who, cl = a.ask(t)
			want(step+": home: connection a, opened along [old]", who, cl, "old")
			a.c.Close()
			time.Sleep(200 * time.Millisecond) // its FINs and last ACK, along [old]
			old.setCopy(t, dataplane.SRv6Gone, fT, fU)
			return b, committed
		}
		// loseFlow waits out the established timeout and runs the GC: b's
		// entry at the home goes.
		loseFlow := func(step string) {
			t.Helper()
			time.Sleep(established + 300*time.Millisecond)
			st, err := home.d.GC(0)
			if err != nil {
				t.Fatal(err)
			}
			flows, err := home.d.FlowList(fT)
			if err != nil {
				t.Fatal(err)
			}
			if st.Conntrack == 0 || len(flows) != 0 {
				t.Fatalf("%s %s: GC removed %d entries, %d flows of %s left; want b's gone", fam.name, step, st.Conntrack, len(flows), fT)
			}
		}
		noCopy := dptest.Drops(t, old.d)["srv6_no_copy"]

		t.Logf("== %s: on word", fam.name)
		b, committed := moveHome("word")
		home.commit(t, lb.Local, fT, fU) // the old location reported its copy gone
		loseFlow("word")
		if el := time.Since(committed); el >= hold {
			t.Logf("%s: the hold ran out (%s) before the check: this step shows nothing about the word", fam.name, el)
		}
		who, cl := b.ask(t)
		want("word: connection b without its entry", who, cl, "home")
		b.c.Close()
		time.Sleep(200 * time.Millisecond) // its close, to the home's copy, before the next move

		t.Logf("== %s: on the hold's end", fam.name)
		b, committed = moveHome("hold")
		loseFlow("hold")
		time.Sleep(time.Until(committed.Add(hold + 100*time.Millisecond)))
		who, cl = b.ask(t)
		want("hold: connection b without its entry", who, cl, "home")
		b.c.Close()

		if n := dptest.Drops(t, old.d)["srv6_no_copy"] - noCopy; n != 0 {
			t.Errorf("%s: the old location dropped %d packets for its removed copy", fam.name, n)
		}
	}
}
