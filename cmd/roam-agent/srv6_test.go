package main

import (
	"errors"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/roamnet/roam/dataplane"
	"github.com/roamnet/roam/dataplane/dptest"
	"github.com/roamnet/roam/dataplane/lb"
	"github.com/roamnet/roam/test/netns"
)

// TestSRv6ReturnsAfterRestart runs one sequence twice, with and without
// an agent restart in it, at a location where three services of one home
// share a frontend address: two (ports 80, 81) with return routes, one
// (82) with direct return, which the controller never installs a return
// for. The restart (a new srv6Node on a data plane reopened on the same
// pins: the copies, the recorded return users and the kernel's rule and
// route stay, the agent's memory is new) changes no step's route: removing
// port 80's return keeps the address's route, which 81's answers still
// take; removing 81's takes it though 82's copy serves (82 never asked
// for one). Then a node whose record is lost (an agent from before it):
// its copies hold the route (the safe side) until they go, and a copy's
// leaving that fails to sync is synced by its retry.
// Real rules and seg6 routes in a namespace, a real pinned data plane.
func TestSRv6ReturnsAfterRestart(t *testing.T) {
	netns.EnterUnderlay(t, netip.MustParsePrefix("fc00::/16"))
	home := netip.MustParseAddr("fc00:0:1::1")
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
	routed := func() bool {
		t.Helper()
		_, sids := netns.SRv6ReturnState(t, fe, dataplane.SRv6ReturnRulePriority)
		if len(sids) > 1 || len(sids) == 1 && sids[0] != home {
			t.Fatalf("%s's answers routed to %v, want none or one route to %s", fe, sids, home)
		}
		return len(sids) == 1
	}
	run := func(restart bool) []bool {
		cfg := dataplane.Config{PinPath: dptest.PinPath(t), SRv6: dataplane.SRv6Config{SID: netip.MustParseAddr("fc00:0:2::1"),
			Locators: []netip.Prefix{netip.MustParsePrefix("fc00:0:1::/48"), netip.MustParsePrefix("fc00:0:2::/48")}}}
		var got []bool
		d, err := dataplane.Open(cfg)
		must(err)
		n := newTestSRv6Node(t, d, cfg.PinPath, nil)
		for _, f := range []lb.Frontend{f80, f81, f82} {
			must(n.SetSRv6Copy(f, dataplane.SRv6Serving))
		}
		must(n.SetSRv6Return(f80, home, false))
		must(n.SetSRv6Return(f81, home, false))
		got = append(got, routed())
		if restart {
			must(d.Close()) // the restart: pins, rules and routes stay
			n = newTestSRv6Node(t, dptest.New(t, cfg), cfg.PinPath, nil)
		}
		got = append(got, routed())
		must(n.SetSRv6Copy(f80, dataplane.SRv6Gone))
		must(n.SetSRv6Return(f80, netip.Addr{}, true))
		got = append(got, routed())
		must(n.SetSRv6Return(f81, home, false)) // a resent install: still one route
		got = append(got, routed())
		must(n.SetSRv6Return(f81, netip.Addr{}, true))
		got = append(got, routed())
		must(n.SetSRv6Copy(f81, dataplane.SRv6Gone))
		got = append(got, routed())
		must(n.SetSRv6Copy(f82, dataplane.SRv6Gone))
		got = append(got, routed())
		// An installed frontend keeps the route past its copy's state:
		// only its return's removal takes it.
		must(n.SetSRv6Copy(f80, dataplane.SRv6Serving))
		must(n.SetSRv6Return(f80, home, false))
		must(n.SetSRv6Copy(f80, dataplane.SRv6Draining))
		must(n.SetSRv6Copy(f80, dataplane.SRv6Gone))
		got = append(got, routed())
		must(n.SetSRv6Return(f80, netip.Addr{}, true))
		got = append(got, routed())
		return got
	}
	want := []bool{true, true, true, true, false, false, false, true, false}
	without := run(false)
	with := run(true)
	if !slices.Equal(without, want) || !slices.Equal(with, want) {
		t.Fatalf("routed at each step: without a restart %v, with one %v, want both %v", without, with, want)
	}

	// The record lost: the copies hold the route until they go; a leaving
	// whose sync fails is synced by its retry.
	cfg := dataplane.Config{PinPath: dptest.PinPath(t), SRv6: dataplane.SRv6Config{SID: netip.MustParseAddr("fc00:0:2::1"),
		Locators: []netip.Prefix{netip.MustParsePrefix("fc00:0:1::/48"), netip.MustParsePrefix("fc00:0:2::/48")}}}
	d, err := dataplane.Open(cfg)
	must(err)
	n := newTestSRv6Node(t, d, cfg.PinPath, nil)
	must(n.SetSRv6Copy(f81, dataplane.SRv6Serving))
	must(n.SetSRv6Copy(f82, dataplane.SRv6Serving))
	must(n.SetSRv6Return(f81, home, false))
	must(d.Close())
	must(n.returns.Users.Unpin())
	r := dataplane.NewSRv6Returns(srv6TableBase, srv6Tables)
	n = newSRv6Node(dptest.New(t, cfg), r, slog.New(slog.DiscardHandler), newSRv6AdoptFailed())
	must(n.SetSRv6Copy(f81, dataplane.SRv6Gone))
	if !routed() {
		t.Fatal("record lost: 82's copy serving, no route")
	}
	r.Netlink = failingNetlink{fail: "list_rules"}
	if err := n.SetSRv6Copy(f82, dataplane.SRv6Gone); !errors.Is(err, errInjected) {
		t.Fatalf("record lost, 82's copy gone, rules unreadable: %v, want the injected failure", err)
	}
	r.Netlink = nil
	must(n.SetSRv6Copy(f82, dataplane.SRv6Gone)) // the retry
	if routed() {
		t.Fatal("record lost, every copy gone after a retry: still routed")
	}
}

// newTestSRv6Node is the agent's srv6Node on d, its returns reading the
// kernel through nl (nil: the namespace's netlink); it fails the test if
// the adoption was given up.
func newTestSRv6Node(t *testing.T, d *dataplane.Dataplane, pinPath string, nl dataplane.RouteLister) *srv6Node {
	t.Helper()
	failed := newSRv6AdoptFailed()
	r := newSRv6Returns(pinPath, slog.New(slog.DiscardHandler), failed)
	r.Netlink = nl
	n := newSRv6Node(d, r, slog.New(slog.DiscardHandler), failed)
	if nl == nil {
		if c := counted(t, failed); len(c) != 0 {
			t.Fatalf("adoption given up: %v", c)
		}
	}
	return n
}

// failingNetlink fails the read named by fail, passes the other to the
// namespace's netlink.
type failingNetlink struct{ fail string }

var errInjected = errors.New("injected netlink failure")

func (f failingNetlink) RuleList(family int) ([]netlink.Rule, error) {
	if f.fail == "list_rules" {
		return nil, errInjected
	}
	return netlink.RuleList(family)
}

func (f failingNetlink) RouteListFiltered(family int, filter *netlink.Route, mask uint64) ([]netlink.Route, error) {
	if f.fail == "list_routes" {
		return nil, errInjected
	}
	return netlink.RouteListFiltered(family, filter, mask)
}

// TestSRv6AdoptFailureStartsAnyway injects a netlink failure into the
// adoption of a restarted agent's return routes (listing the rules, then
// listing a rule's table): the node still comes up, the failure is logged
// and counted by reason, and the node then installs and removes returns
// and copies as usual.
func TestSRv6AdoptFailureStartsAnyway(t *testing.T) {
	netns.EnterUnderlay(t, netip.MustParsePrefix("fc00::/16"))
	home := netip.MustParseAddr("fc00:0:1::1")
	cfg := dataplane.Config{PinPath: dptest.PinPath(t), SRv6: dataplane.SRv6Config{SID: netip.MustParseAddr("fc00:0:2::1"),
		Locators: []netip.Prefix{netip.MustParsePrefix("fc00:0:1::/48"), netip.MustParsePrefix("fc00:0:2::/48")}}}
	fe := netip.MustParseAddr("10.201.1.2")
	f := lb.Frontend{Addr: fe, Port: 80, Proto: lb.TCP}
	d, err := dataplane.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	n := newTestSRv6Node(t, d, cfg.PinPath, nil)
	if err := n.SetSRv6Copy(f, dataplane.SRv6Serving); err != nil {
		t.Fatal(err)
	}
	if err := n.SetSRv6Return(f, home, false); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	for _, reason := range []string{"list_rules", "list_routes"} {
		failed := newSRv6AdoptFailed()
		r := dataplane.NewSRv6Returns(srv6TableBase, srv6Tables)
		r.Netlink = failingNetlink{fail: reason}
		d, err := dataplane.Open(cfg)
		if err != nil {
			t.Fatal(err)
		}
		n := newSRv6Node(d, r, slog.New(slog.DiscardHandler), failed)
		if c := counted(t, failed); len(c) != 1 || c[reason] != 1 {
			t.Fatalf("%s failing: counted %v, want 1 under %q alone", reason, c, reason)
		}
		if got := r.HomeSID(fe); got.IsValid() {
			t.Fatalf("%s failing: adopted a return to %s, want none", reason, got)
		}
		r.Netlink = nil // the fault passes
		if err := n.SetSRv6Return(f, home, false); err != nil {
			t.Fatalf("%s failing, then install: %v", reason, err)
		}
		if _, sids := netns.SRv6ReturnState(t, fe, dataplane.SRv6ReturnRulePriority); len(sids) != 1 || sids[0] != home {
			t.Fatalf("%s failing, then install: %s's answers routed to %v, want %s", reason, fe, sids, home)
		}
		if err := n.SetSRv6Copy(f, dataplane.SRv6Draining); err != nil {
			t.Fatalf("%s failing, then a copy's state: %v", reason, err)
		}
		if err := d.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

// counted is what the counter vec c counts, by its reason label.
func counted(t *testing.T, c *prometheus.CounterVec) map[string]float64 {
	t.Helper()
	reg := prometheus.NewRegistry()
	reg.MustRegister(c)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "reason" {
					out[l.GetValue()] += m.GetCounter().GetValue()
				}
			}
		}
	}
	return out
}

// loBed is a namespace of its own, an SRv6 node's configuration with a pin
// path, and its lo.
type loBed struct {
	t   *testing.T
	cfg dataplane.Config
	lo  netlink.Link
}

func newLoBed(t *testing.T) loBed {
	t.Helper()
	netns.EnterUnderlay(t, netip.MustParsePrefix("fc00::/16"))
	b := loBed{t: t, cfg: dataplane.Config{PinPath: dptest.PinPath(t), SRv6: dataplane.SRv6Config{SID: netip.MustParseAddr("fc00:0:2::1"),
		Locators: []netip.Prefix{netip.MustParsePrefix("fc00:0:1::/48"), netip.MustParsePrefix("fc00:0:2::/48")}}}}
	lo, err := netlink.LinkByName("lo")
	b.must(err)
	b.lo = lo
	return b
}

func (b loBed) must(err error) {
	b.t.Helper()
	if err != nil {
		b.t.Fatal(err)
	}
}

// wantLo fails the test unless a is on lo (on) or not; msg says why, a its %s.
func (b loBed) wantLo(a netip.Addr, on bool, msg string) {
	b.t.Helper()
	addrs, err := netlink.AddrList(b.lo, netlink.FAMILY_ALL)
	b.must(err)
	for _, x := range addrs {
		if y, ok := netip.AddrFromSlice(x.IP); ok && y.Unmap() == a {
			if !on {
				b.t.Fatalf(msg, a)
			}
			return
		}
	}
	if on {
		b.t.Fatalf(msg, a)
	}
}

// TestSRv6LoAddrAfterRestart: a frontend's address, put on lo for its
// copies, leaves lo with its last copy also when the agent restarted in
// between (before, the restarted agent knew neither the copies nor that it
// had added the address, which stayed on lo for ever); an address the
// node had before any copy stays; one whose copies all went while the
// agent was down (stopped between a copy's leaving and the address's
// removal) is taken off at the restart. Real addresses in a namespace, a
// real pinned data plane.
func TestSRv6LoAddrAfterRestart(t *testing.T) {
	b := newLoBed(t)
	cfg, lo, must, wantLo := b.cfg, b.lo, b.must, b.wantLo
	fe := netip.MustParseAddr("10.201.1.1")
	own := netip.MustParseAddr("fd00:201::1") // on lo before any copy: the node's, not the agent's
	dead := netip.MustParseAddr("10.201.1.3") // its copy goes while the agent is down
	f80 := lb.Frontend{Addr: fe, Port: 80, Proto: lb.TCP}
	f81 := lb.Frontend{Addr: fe, Port: 81, Proto: lb.UDP}
	fOwn := lb.Frontend{Addr: own, Port: 80, Proto: lb.TCP}
	fDead := lb.Frontend{Addr: dead, Port: 80, Proto: lb.TCP}
	must(netlink.AddrAdd(lo, &netlink.Addr{IPNet: hostPrefix(own), Flags: unix.IFA_F_NODAD}))

	d, err := dataplane.Open(cfg)
	must(err)
	n := newTestSRv6Node(t, d, cfg.PinPath, nil)
	for _, f := range []lb.Frontend{f80, f81, fOwn, fDead} {
		must(n.SetSRv6Copy(f, dataplane.SRv6Serving))
	}
	for _, a := range []netip.Addr{fe, own, dead} {
		wantLo(a, true, "%s: a copy serving, not on lo")
	}
	must(n.Dataplane.SetSRv6Copy(fDead, dataplane.SRv6Gone)) // the agent stops here, before taking dead off lo
	must(d.Close())                                          // the restart: pins and addresses stay

	n = newTestSRv6Node(t, dptest.New(t, cfg), cfg.PinPath, nil)
	wantLo(dead, false, "%s: its copy went while the agent was down; still on lo after the restart")
	must(n.SetSRv6Copy(f80, dataplane.SRv6Gone))
	wantLo(fe, true, "%s: port 81's copy still serving; taken off lo")
	must(n.SetSRv6Copy(f81, dataplane.SRv6Draining))
	must(n.SetSRv6Copy(f81, dataplane.SRv6Gone))
	wantLo(fe, false, "%s: its last copy gone after a restart; still on lo")
	must(n.SetSRv6Copy(fOwn, dataplane.SRv6Gone))
	wantLo(own, true, "%s: on lo before any copy; taken off with its copy")
	// Without a restart, as before: on with a copy, off with the last.
	must(n.SetSRv6Copy(f80, dataplane.SRv6Serving))
	wantLo(fe, true, "%s: a copy serving again, not on lo")
	must(n.SetSRv6Copy(f80, dataplane.SRv6Gone))
	wantLo(fe, false, "%s: its last copy gone; still on lo")
}

// TestSRv6LoAddrUpgradedAgent: an agent from before the record of the
// addresses it put on lo (roam_srv6_lo) left a frontend's address there
// for copies that outlive it; the agent that replaces it finds no record.
// The address (a host prefix with IFA_F_NODAD, as the agent adds it, of a
// frontend with a copy here) is taken as the old agent's: it leaves lo
// with its last copy (before, the new agent took it for the node's own and
// left it for ever). An address of a frontend without a copy here stays.
// Once the record exists, an unrecorded address is the node's again (a
// second restart: a copy of it arrives and leaves, the address stays).
func TestSRv6LoAddrUpgradedAgent(t *testing.T) {
	b := newLoBed(t)
	cfg, lo, must, wantLo := b.cfg, b.lo, b.must, b.wantLo
	fe := netip.MustParseAddr("10.201.2.1")
	fe6 := netip.MustParseAddr("fd00:202::1")
	other := netip.MustParseAddr("fd00:202::2") // the node's, no copy of it here
	f80 := lb.Frontend{Addr: fe, Port: 80, Proto: lb.TCP}
	f6 := lb.Frontend{Addr: fe6, Port: 80, Proto: lb.TCP}
	fOther := lb.Frontend{Addr: other, Port: 80, Proto: lb.TCP}
	must(netlink.AddrAdd(lo, &netlink.Addr{IPNet: hostPrefix(other), Flags: unix.IFA_F_NODAD}))

	d, err := dataplane.Open(cfg)
	must(err)
	n := newTestSRv6Node(t, d, cfg.PinPath, nil)
	must(n.SetSRv6Copy(f80, dataplane.SRv6Serving))
	must(n.SetSRv6Copy(f6, dataplane.SRv6Serving))
	must(d.Close())
	// The agent before the record: the addresses on lo, no roam_srv6_lo.
	must(n.lo.Close())
	must(os.Remove(filepath.Join(cfg.PinPath, "roam_srv6_lo")))

	n = newTestSRv6Node(t, dptest.New(t, cfg), cfg.PinPath, nil)
	wantLo(fe, true, "%s: a copy serving; taken off lo at the restart")
	wantLo(other, true, "%s: the node's, no copy of it; taken off lo at the restart")
	must(n.SetSRv6Copy(f80, dataplane.SRv6Gone))
	wantLo(fe, false, "%s: put on lo by an agent from before the record, its last copy gone; still on lo")
	must(n.SetSRv6Copy(f6, dataplane.SRv6Draining))
	must(n.SetSRv6Copy(f6, dataplane.SRv6Gone))
	wantLo(fe6, false, "%s: put on lo by an agent from before the record, its last copy gone; still on lo")

	// The record exists now: an unrecorded address is the node's.
	must(n.Dataplane.Close())
	n = newTestSRv6Node(t, dptest.New(t, cfg), cfg.PinPath, nil)
	must(n.SetSRv6Copy(fOther, dataplane.SRv6Serving))
	must(n.SetSRv6Copy(fOther, dataplane.SRv6Gone))
	wantLo(other, true, "%s: the node's (on lo before, the record exists); taken off with its copy")
}

// TestSRv6LoAdoptRemoveFails: at a restart, taking an address whose copies
// all went while the agent was down off lo can fail; the adoption then
// still marks every recorded address as the agent's (before, it stopped
// at the first failure, and the addresses after it were taken for the
// node's: they stayed on lo after their next copy left), tries every
// removal, and counts remove_lo once. Each address then leaves lo with
// the next copy of it that leaves.
func TestSRv6LoAdoptRemoveFails(t *testing.T) {
	b := newLoBed(t)
	cfg, must, wantLo := b.cfg, b.must, b.wantLo
	var fs []lb.Frontend
	for _, s := range []string{"10.201.3.1", "10.201.3.2", "fd00:203::1"} {
		fs = append(fs, lb.Frontend{Addr: netip.MustParseAddr(s), Port: 80, Proto: lb.TCP})
	}
	d, err := dataplane.Open(cfg)
	must(err)
	n := newTestSRv6Node(t, d, cfg.PinPath, nil)
	for _, f := range fs {
		must(n.SetSRv6Copy(f, dataplane.SRv6Serving))
		must(n.Dataplane.SetSRv6Copy(f, dataplane.SRv6Gone)) // the agent stops before taking it off lo
	}
	must(d.Close())

	injected := errors.New("injected: remove from lo")
	setOnLo = func(a netip.Addr, on bool) error {
		if !on {
			return injected
		}
		return onLo(a, on)
	}
	t.Cleanup(func() { setOnLo = onLo })
	failed := newSRv6AdoptFailed()
	n = newSRv6Node(dptest.New(t, cfg), newSRv6Returns(cfg.PinPath, slog.New(slog.DiscardHandler), failed), slog.New(slog.DiscardHandler), failed)
	if c := counted(t, failed); c["remove_lo"] != 1 || len(c) != 1 {
		t.Fatalf("adoption failures %v, want remove_lo 1", c)
	}
	for _, f := range fs {
		wantLo(f.Addr, true, "%s: its removal failed; not on lo")
		if !n.added[f.Addr] {
			t.Fatalf("%s: recorded, its removal or another's failed: not taken as the agent's", f.Addr)
		}
	}
	setOnLo = onLo
	for _, f := range fs {
		must(n.SetSRv6Copy(f, dataplane.SRv6Serving))
		must(n.SetSRv6Copy(f, dataplane.SRv6Gone))
		wantLo(f.Addr, false, "%s: the agent's, its copy gone; still on lo")
	}
}
