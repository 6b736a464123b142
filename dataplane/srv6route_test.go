package dataplane

import (
	"hash/fnv"
	"net/netip"
	"strconv"
	"testing"

	"github.com/roamnet/roam/dataplane/lb"
	"github.com/roamnet/roam/test/netns"
)

// srv6ReturnState is what the kernel of the test's namespace routes the
// answers from a by: the tables of a's rules at the return priority, and
// the SIDs their default routes encapsulate to.
func srv6ReturnState(t *testing.T, a netip.Addr) (tables []int, sids []netip.Addr) {
	t.Helper()
	return netns.SRv6ReturnState(t, a, SRv6ReturnRulePriority)
}

// TestSRv6ReturnsSharedAddress: two services of one home at one location
// share the home's frontend address (ports 80 and 81), with different
// home SIDs (two nodes of the home, say picked before and after the home
// grew). The kernel gets one rule for the address, whose table's route
// goes to the SID of the frontend installed last; removing either
// frontend first leaves the other's SID, and the rule and its table go
// with the last one (no stale rule naming a home node that may die). A
// second address whose home SID's hash fell in the same table under the
// old fnv choice gets a table of its own. Real rules and seg6 routes in a
// namespace.
func TestSRv6ReturnsSharedAddress(t *testing.T) {
	netns.EnterUnderlay(t, netip.MustParsePrefix("fc00::/16"))
	home0, home1 := netip.MustParseAddr("fc00:0:1::1"), netip.MustParseAddr("fc00:0:1:1::1")
	fe := netip.MustParseAddr("10.201.1.1")
	f80 := lb.Frontend{Addr: fe, Port: 80, Proto: lb.TCP}
	f81 := lb.Frontend{Addr: fe, Port: 81, Proto: lb.TCP}
	const base = 20000
	check := func(step string, wantSID netip.Addr) {
		t.Helper()
		tables, sids := srv6ReturnState(t, fe)
		if !wantSID.IsValid() {
			if len(tables) != 0 || len(sids) != 0 {
				t.Fatalf("%s: rules to tables %v routing to %v left, want none", step, tables, sids)
			}
			return
		}
		if len(tables) != 1 || len(sids) != 1 || sids[0] != wantSID {
			t.Fatalf("%s: rules to tables %v routing to %v, want one rule whose table routes to %s", step, tables, sids, wantSID)
		}
	}
	for _, order := range [][2]lb.Frontend{{f80, f81}, {f81, f80}} {
		s := NewSRv6Returns(base, 4096)
		if err := s.Set(f80, home0, false); err != nil {
			t.Fatal(err)
		}
		if err := s.Set(f81, home1, false); err != nil {
			t.Fatal(err)
		}
		check("both installed", home1)
		if err := s.Set(f81, home1, false); err != nil { // a resent call
			t.Fatal(err)
		}
		check("installed again", home1)
		left := home0
		if order[0] == f80 {
			left = home1
		}
		if err := s.Set(order[0], netip.Addr{}, true); err != nil {
			t.Fatal(err)
		}
		check("one removed (port "+strconv.Itoa(int(order[0].Port))+")", left)
		if err := s.Set(order[1], left, true); err != nil {
			t.Fatal(err)
		}
		check("both removed", netip.Addr{})
	}

	// A second home's address whose home SID falls in the same table as
	// home1 under the old choice (fnv of the SID, modulo 4096), and a rule
	// an older agent left for fe: the old rule is reused, the other
	// address gets a table of its own (the old choice shared one, and the
	// second install replaced the first's route).
	other := netip.MustParseAddr("10.201.2.1")
	fo := lb.Frontend{Addr: other, Port: 80, Proto: lb.TCP}
	home2 := collidingSID(t, home1)
	if err := (SRv6Return{Frontend: fe, HomeSID: home0, Dev: "rt0", Table: base}).Install(); err != nil {
		t.Fatal(err)
	}
	s := NewSRv6Returns(base, 4096)
	if err := s.Set(fo, home2, false); err != nil {
		t.Fatal(err)
	}
	if err := s.Set(f80, home1, false); err != nil {
		t.Fatal(err)
	}
	ft, fs := srv6ReturnState(t, fe)
	ot, os := srv6ReturnState(t, other)
	if len(ft) != 1 || len(ot) != 1 || ft[0] == ot[0] || len(fs) != 1 || fs[0] != home1 || len(os) != 1 || os[0] != home2 {
		t.Fatalf("two addresses: %s tables %v to %v, %s tables %v to %v; want a table each, to %s and %s", fe, ft, fs, other, ot, os, home1, home2)
	}
	if err := s.Set(f80, home1, true); err != nil {
		t.Fatal(err)
	}
	check("the old agent's rule, removed", netip.Addr{})
	if ot, os := srv6ReturnState(t, other); len(ot) != 1 || len(os) != 1 || os[0] != home2 {
		t.Fatalf("%s after %s's removal: tables %v to %v", other, fe, ot, os)
	}
}

// collidingSID is a node SID of locator fc00:0:2::/48 whose fnv-1a hash
// modulo 4096 (the agent's old table choice) equals sid's.
func collidingSID(t *testing.T, sid netip.Addr) netip.Addr {
	t.Helper()
	hash := func(a netip.Addr) uint32 {
		h := fnv.New32a()
		h.Write(a.AsSlice())
		return h.Sum32() % 4096
	}
	for n := range 1 << 16 {
		c, err := lb.NodeSID(netip.MustParsePrefix("fc00:0:2::/48"), uint16(n))
		if err != nil {
			t.Fatal(err)
		}
		if hash(c) == hash(sid) {
			return c
		}
	}
	t.Fatalf("no node SID of fc00:0:2::/48 collides with %s", sid)
	return netip.Addr{}
}
