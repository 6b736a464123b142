package main

import (
	"net/netip"
	"testing"

	"github.com/roamnet/roam/dataplane"
	"github.com/roamnet/roam/dataplane/dptest"
	"github.com/roamnet/roam/dataplane/lb"
	"github.com/roamnet/roam/test/netns"
)

// TestSRv6ReturnsAfterRestart injects an agent restart at a location
// where three services of one home share a frontend address: two (ports
// 80, 81) with return routes, one (82) with direct return, which the
// controller never installs a return for. After the restart (a new
// srv6Node on a data plane reopened on the same pins: the copies and the
// kernel's rule and route stay, the agent's memory is new), removing
// port 80's return keeps the address's route, which 81's and 82's
// answers still take (before, it went until 81's next install); removing
// 81's keeps it while 82's adopted copy serves, and 82's copy leaving
// takes it (no route held for ever by a copy that never asked for one).
// Real rules and seg6 routes in a namespace, a real pinned data plane.
func TestSRv6ReturnsAfterRestart(t *testing.T) {
	netns.EnterUnderlay(t, netip.MustParsePrefix("fc00::/16"))
	home := netip.MustParseAddr("fc00:0:1::1")
	cfg := dataplane.Config{PinPath: dptest.PinPath(t), SRv6: dataplane.SRv6Config{SID: netip.MustParseAddr("fc00:0:2::1"),
		Locators: []netip.Prefix{netip.MustParsePrefix("fc00:0:1::/48"), netip.MustParsePrefix("fc00:0:2::/48")}}}
	fe := netip.MustParseAddr("10.201.1.1")
	f80 := lb.Frontend{Addr: fe, Port: 80, Proto: lb.TCP}
	f81 := lb.Frontend{Addr: fe, Port: 81, Proto: lb.TCP}
	f82 := lb.Frontend{Addr: fe, Port: 82, Proto: lb.TCP}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	want := func(step string, routed bool) {
		t.Helper()
		_, sids := netns.SRv6ReturnState(t, fe, dataplane.SRv6ReturnRulePriority)
		if routed && (len(sids) != 1 || sids[0] != home) {
			t.Fatalf("%s: %s's answers routed to %v, want one route to %s", step, fe, sids, home)
		}
		if !routed && len(sids) != 0 {
			t.Fatalf("%s: %s's answers routed to %v, want no route", step, fe, sids)
		}
	}
	d, err := dataplane.Open(cfg)
	must(err)
	n, err := newSRv6Node(d)
	must(err)
	for _, f := range []lb.Frontend{f80, f81, f82} {
		must(n.SetSRv6Copy(f, dataplane.SRv6Serving))
	}
	must(n.SetSRv6Return(f80, home, false))
	must(n.SetSRv6Return(f81, home, false))
	want("before the restart", true)

	must(d.Close()) // the restart: pins, rules and routes stay
	n, err = newSRv6Node(dptest.New(t, cfg))
	must(err)
	want("after the restart", true)
	must(n.SetSRv6Copy(f80, dataplane.SRv6Gone))
	must(n.SetSRv6Return(f80, netip.Addr{}, true))
	want("port 80's return removed after the restart", true)
	must(n.SetSRv6Return(f81, home, false)) // a resent install: still one route
	want("port 81's return installed again", true)
	must(n.SetSRv6Return(f81, netip.Addr{}, true))
	want("port 81's return removed, port 82's copy serving", true)
	must(n.SetSRv6Copy(f81, dataplane.SRv6Gone))
	want("port 81's copy gone, port 82's serving", true)
	must(n.SetSRv6Copy(f82, dataplane.SRv6Gone))
	want("every copy gone", false)

	// An installed (not only adopted) frontend keeps the route past its
	// copy's state: only its return's removal takes it.
	must(n.SetSRv6Copy(f80, dataplane.SRv6Serving))
	must(n.SetSRv6Return(f80, home, false))
	must(n.SetSRv6Copy(f80, dataplane.SRv6Draining))
	must(n.SetSRv6Copy(f80, dataplane.SRv6Gone))
	want("installed, its copy gone", true)
	must(n.SetSRv6Return(f80, netip.Addr{}, true))
	want("installed, then removed", false)
}
