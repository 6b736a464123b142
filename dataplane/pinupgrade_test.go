package dataplane_test

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/roamnet/roam/dataplane"
	"github.com/roamnet/roam/dataplane/dptest"
	"github.com/roamnet/roam/dataplane/lb"
)

// replacePin puts, at pinPath/name, a new map of another layout in place
// of the pin there (as an older build would have left it).
func replacePin(t *testing.T, pinPath, name string, spec *ebpf.MapSpec) {
	t.Helper()
	path := filepath.Join(pinPath, name)
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	m, err := ebpf.NewMap(spec)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := m.Pin(path); err != nil {
		t.Fatal(err)
	}
}

// TestUpgradeOverOldPins: an agent upgraded over pins whose
// roam_target_counters has the layout of the build before per-target
// indices (an LRU per-CPU hash keyed by target) opens: that metrics-only
// pin is replaced (counted, counts from zero) and the flows pinned in
// conntrack survive and keep their target. An incompatible conntrack pin
// is still refused with the way out named.
func TestUpgradeOverOldPins(t *testing.T) {
	cfg := dataplane.Config{PinPath: dptest.PinPath(t), PortMin: 40000, PortMax: 40999, IdleTimeout: 30 * time.Second}
	tb := newTestbed(t, cfg)
	send := func(client string) {
		t.Helper()
		pkt := spec{src: ap(client), dst: ap("10.0.0.1:7000"), proto: lb.UDP, payload: []byte("x"), srcMAC: macPeer, dstMAC: macD0}.build(t)
		if v, _ := tb.xdp(t, pkt); v != xdpTX {
			t.Fatalf("%s: verdict %d, want XDP_TX", client, v)
		}
	}
	toPackets := func() uint64 {
		t.Helper()
		got, err := tb.d.TargetCounters()
		if err != nil {
			t.Fatal(err)
		}
		var n uint64
		for _, c := range got {
			n += c.ToPackets
		}
		return n
	}
	tb.stage(t, "10.0.0.1:7000/udp", "redirect:10.2.0.1:7001")
	send("198.51.100.1:1000")
	send("198.51.100.2:1000")
	if n := toPackets(); n != 2 {
		t.Fatalf("before the upgrade: %d packets counted, want 2", n)
	}
	flows, err := tb.d.ConntrackEntries()
	if err != nil || flows == 0 {
		t.Fatalf("conntrack entries before the upgrade: %d, %v", flows, err)
	}
	if err := tb.d.Close(); err != nil {
		t.Fatal(err)
	}

	// The previous build's roam_target_counters (main at 30940da).
	replacePin(t, cfg.PinPath, "roam_target_counters", &ebpf.MapSpec{
		Type: ebpf.LRUCPUHash, KeySize: 20, ValueSize: 32, MaxEntries: 1024,
	})
	tb.d = openTest(t, cfg)
	if got := tb.d.ReplacedPins(); !slices.Equal(got, []string{"roam_target_counters"}) {
		t.Fatalf("replaced pins %v, want [roam_target_counters]", got)
	}
	if got, err := tb.d.ConntrackEntries(); err != nil || got != flows {
		t.Fatalf("conntrack entries after the upgrade: %d, %v; want %d", got, err, flows)
	}
	if n := toPackets(); n != 0 {
		t.Fatalf("after the upgrade: %d packets counted, want 0 (a new map)", n)
	}
	// The flow held across the upgrade still goes to its target, counted anew.
	send("198.51.100.1:1000")
	if got, err := tb.d.ConntrackEntries(); err != nil || got != flows {
		t.Fatalf("conntrack entries after a packet of an old flow: %d, %v; want %d", got, err, flows)
	}
	if n := toPackets(); n != 1 {
		t.Fatalf("after the upgrade, one more packet: %d counted, want 1", n)
	}
	// Reopened on the new pin: nothing replaced again.
	if err := tb.d.Close(); err != nil {
		t.Fatal(err)
	}
	tb.d = openTest(t, cfg)
	if got := tb.d.ReplacedPins(); len(got) != 0 {
		t.Fatalf("reopen on compatible pins replaced %v", got)
	}
	if err := tb.d.Close(); err != nil {
		t.Fatal(err)
	}

	// Flow state is never replaced: an incompatible conntrack pin is refused.
	replacePin(t, cfg.PinPath, "roam_conntrack", &ebpf.MapSpec{
		Type: ebpf.LRUHash, KeySize: 40, ValueSize: 48, MaxEntries: 1024,
	})
	cfg.SNATv4, cfg.SNATv6 = snat4, snat6
	_, err = dataplane.Open(cfg)
	if !errors.Is(err, ebpf.ErrMapIncompatible) || !strings.Contains(err.Error(), "rm -r "+cfg.PinPath) {
		t.Fatalf("open over an incompatible conntrack pin: %v; want refused naming rm -r of the pin path", err)
	}
	// The previous build's roam_conntrack (main at 1f77aa9): the same key,
	// value and size, preallocated. Only its flags differ: kept as pinned
	// (TestPreallocFlows).
	replacePin(t, cfg.PinPath, "roam_conntrack", &ebpf.MapSpec{
		Type: ebpf.Hash, KeySize: 40, ValueSize: 80, MaxEntries: dataplane.DefaultMaxFlows,
	})
	d, err := dataplane.Open(cfg)
	if err != nil {
		t.Fatalf("open over a preallocated conntrack pin: %v; want the pin kept", err)
	}
	defer d.Close()
	if got := d.PreallocatedIPv6Pins(); !slices.Equal(got, []string{"roam_conntrack"}) {
		t.Fatalf("open over a preallocated conntrack pin: preallocated IPv6 pins %v, want [roam_conntrack] (warned: the upgrade's memory)", got)
	}
}

// TestUpgradeKeepsIPv4Flows: an agent upgraded over the pins of a build
// that kept both families in roam_conntrack and roam_nat (before roam_ct4
// and roam_nat4) keeps every flow: an established TCP flow and a UDP flow
// over IPv4 go on with their SNAT ports in both directions, before and
// after GC moved the last of the old entries out, and an IPv6 flow (whose
// maps did not change) too.
func TestUpgradeKeepsIPv4Flows(t *testing.T) {
	cfg := dataplane.Config{PinPath: dptest.PinPath(t), PortMin: 40000, PortMax: 40999, Timeouts: ctTimeouts}
	tb := newTestbed(t, cfg)
	fl := establishedFlow(t, tb)
	tb.stage(t, "10.0.0.1:7000/udp", "redirect:10.2.0.1:7001")
	tb.stage(t, "[2001:db8:f::1]:7000/udp", "redirect:[2001:db8:2::1]:7001")
	udp := func(client, front string) []byte {
		return spec{src: ap(client), dst: ap(front), proto: lb.UDP, payload: []byte("x"), srcMAC: macPeer, dstMAC: macD0}.build(t)
	}
	udp4 := udp("198.51.100.8:2000", "10.0.0.1:7000")
	udp6 := udp("[2001:db8:c::8]:2000", "[2001:db8:f::1]:7000")
	s4 := tb.openFlow(t, "udp4", udp4)
	s6 := tb.openFlow(t, "udp6", udp6)
	ct, err := tb.d.ConntrackEntries()
	if err != nil || ct != 3 {
		t.Fatalf("before the upgrade: %d conntrack entries, %v; want 3", ct, err)
	}
	if err := tb.d.Close(); err != nil {
		t.Fatal(err)
	}
	moved, err := dataplane.MakeLegacy(cfg.PinPath)
	if err != nil || moved != 4 {
		t.Fatalf("old layout: %d IPv4 entries moved to the old maps, %v; want 4 (2 flows x forward and NAT)", moved, err)
	}

	// The new build opens over the old layout.
	cfg.SNATv4, cfg.SNATv6 = snat4, snat6
	tb.d = openTest(t, cfg)
	check := func(when string) {
		t.Helper()
		for _, do := range []string{"c A+", "t A+"} {
			if v := fl.packet(do); v != xdpTX { // packet checks the SNAT source and the way back
				t.Fatalf("%s: established flow's %q: verdict %d, want XDP_TX", when, do, v)
			}
		}
		if s := fl.state(); s != "established" {
			t.Fatalf("%s: the TCP flow is %q, want established", when, s)
		}
		for _, u := range []struct {
			in   []byte
			snat netip.AddrPort
		}{{udp4, s4}, {udp6, s6}} {
			if got := tb.openFlow(t, when, u.in); got != u.snat {
				t.Fatalf("%s: UDP flow left from %s, want its SNAT %s", when, got, u.snat)
			}
		}
		if n, err := tb.d.ConntrackEntries(); err != nil || n != ct {
			t.Fatalf("%s: %d conntrack entries, %v; want %d", when, n, err, ct)
		}
		if n, err := tb.d.NATEntries(); err != nil || n != ct {
			t.Fatalf("%s: %d NAT entries, %v; want %d", when, n, err, ct)
		}
	}
	check("after the upgrade")
	if n, failed, err := tb.d.LegacyEntries(); err != nil || n != 4 || failed != 0 {
		t.Fatalf("before GC: %d old IPv4 entries, %d not copied, %v; want 4 (copied, kept for a program of the old build still attached), 0", n, failed, err)
	}
	st, err := tb.d.GC(0)
	if err != nil || st.Conntrack+st.NAT != 0 {
		t.Fatalf("GC after the upgrade: %+v, %v; want nothing removed", st, err)
	}
	if n, _, err := tb.d.LegacyEntries(); err != nil || n != 0 {
		t.Fatalf("after GC: %d old IPv4 entries left, %v; want 0", n, err)
	}
	wantMetrics(t, gather(t, tb.d.Collector()), map[string]float64{
		"roam_dataplane_legacy_flows_total{result=moved}":  4,
		"roam_dataplane_legacy_flows_total{result=failed}": 0,
		"roam_dataplane_legacy_merge_errors_total{}":       0,
	})
	check("after GC")
	// The flow ends as any does.
	for _, do := range []string{"c FA", "t FA"} {
		if v := fl.packet(do); v != xdpTX {
			t.Fatalf("close: %q: verdict %d, want XDP_TX", do, v)
		}
	}
	if s := fl.state(); s != "closed" {
		t.Fatalf("after both FINs: the TCP flow is %q, want closed", s)
	}
}

// TestUpgradeRemoveDuringMerge: a Remove of the frontend while GC's first
// pass after an upgrade moves the old build's IPv4 flows (between its walk
// and its copies) leaves no flow: GC does not put back the copy it read
// before (the client would keep going to the removed target).
func TestUpgradeRemoveDuringMerge(t *testing.T) {
	cfg := dataplane.Config{PinPath: dptest.PinPath(t), PortMin: 40000, PortMax: 40999, Timeouts: ctTimeouts}
	tb := newTestbed(t, cfg)
	fl := establishedFlow(t, tb)
	fe := fl.fe
	if err := tb.d.Close(); err != nil {
		t.Fatal(err)
	}
	if moved, err := dataplane.MakeLegacy(cfg.PinPath); err != nil || moved != 2 {
		t.Fatalf("old layout: %d IPv4 entries moved to the old maps, %v; want 2 (forward and NAT)", moved, err)
	}
	cfg.SNATv4, cfg.SNATv6 = snat4, snat6
	tb.d = openTest(t, cfg)
	if v := fl.packet("c A+"); v != xdpTX {
		t.Fatalf("after the upgrade: %q: verdict %d, want XDP_TX", "c A+", v)
	}

	// Remove runs once GC has read the old entries. It waits for the
	// merge (d.mu) or, if it does not within a second, the test goes on
	// with it still pending (GC must not be held by it).
	removed := make(chan error, 1)
	var once sync.Once
	dataplane.SetLegacyWalked(func() error {
		once.Do(func() {
			go func() { removed <- tb.d.Remove(fe) }()
			select {
			case err := <-removed:
				removed <- err
			case <-time.After(time.Second):
			}
		})
		return nil
	})
	defer dataplane.SetLegacyWalked(nil)
	if _, err := tb.d.GC(0); err != nil {
		t.Fatalf("GC after the upgrade: %v", err)
	}
	if err := <-removed; err != nil {
		t.Fatalf("remove %s: %v", fe, err)
	}
	ct, err1 := tb.d.ConntrackEntries()
	nat, err2 := tb.d.NATEntries()
	old, _, err3 := tb.d.LegacyEntries()
	if err := errors.Join(err1, err2, err3); err != nil || ct+nat+old != 0 {
		t.Fatalf("after Remove during GC's merge: %d conntrack, %d NAT, %d old IPv4 entries, %v; want none", ct, nat, old, err)
	}
	if v := fl.packet("c A+"); v == xdpTX {
		t.Fatalf("after Remove: %q: verdict XDP_TX, want the removed frontend's traffic untouched", "c A+")
	}
}

// TestGCSweepsPastLegacyMergeError: a GC pass whose move of an older
// build's IPv4 flows fails still sweeps (a persistent failure stopped all
// GC: the maps filled), counts the failure, and the next pass tries again.
func TestGCSweepsPastLegacyMergeError(t *testing.T) {
	tb := newTestbed(t, dataplane.Config{PinPath: dptest.PinPath(t), Timeouts: ctTimeouts})
	establishedFlow(t, tb)
	if err := tb.d.AgeFlows(ctTimeouts.Established + time.Minute); err != nil {
		t.Fatal(err)
	}
	calls := 0
	dataplane.SetLegacyWalked(func() error {
		calls++
		return errors.New("injected")
	})
	defer dataplane.SetLegacyWalked(nil)
	st, err := tb.d.GC(0)
	if err != nil || st.Conntrack != 1 || calls != 1 {
		t.Fatalf("GC with the merge failing: %+v, %v, %d merges; want the expired flow removed, 1 merge", st, err, calls)
	}
	if n, err := tb.d.ConntrackEntries(); err != nil || n != 0 {
		t.Fatalf("after GC: %d conntrack entries, %v; want 0", n, err)
	}
	wantMetrics(t, gather(t, tb.d.Collector()), map[string]float64{"roam_dataplane_legacy_merge_errors_total{}": 1})
	// The next pass merges again (and, finding nothing, stops merging).
	dataplane.SetLegacyWalked(func() error { calls++; return nil })
	for range 2 {
		if _, err := tb.d.GC(0); err != nil {
			t.Fatal(err)
		}
	}
	if calls != 3 {
		t.Fatalf("%d merges after two more passes, want 3 (1 + the next pass's one map: nothing found, then none)", calls)
	}
}

// TestGCRemovesStrayLegacyEntries: IPv4 entries written into the IPv6 maps
// after the move of an older build's flows is over (by an old program
// still attached somewhere) are removed by GC and counted as stray; the
// flow's own entries in the IPv4 maps stay.
func TestGCRemovesStrayLegacyEntries(t *testing.T) {
	cfg := dataplane.Config{PinPath: dptest.PinPath(t), PortMin: 40000, PortMax: 40999, Timeouts: ctTimeouts, SNATv4: snat4, SNATv6: snat6}
	tb := newTestbed(t, cfg)
	fl := establishedFlow(t, tb)
	// The first pass finds no old entry: the move is over.
	if _, err := tb.d.GC(0); err != nil {
		t.Fatal(err)
	}
	n, err := tb.d.CopyFlowsToLegacy()
	if err != nil || n != 2 {
		t.Fatalf("stray entries written: %d, %v; want 2 (forward and NAT)", n, err)
	}
	if old, _, err := tb.d.LegacyEntries(); err != nil || old != 2 {
		t.Fatalf("before GC: %d IPv4 entries in the IPv6 maps, %v; want 2", old, err)
	}
	st, err := tb.d.GC(0)
	if err != nil || st.Conntrack != 1 || st.NAT != 1 {
		t.Fatalf("GC: %+v, %v; want the 2 stray entries removed", st, err)
	}
	if old, _, err := tb.d.LegacyEntries(); err != nil || old != 0 {
		t.Fatalf("after GC: %d IPv4 entries in the IPv6 maps, %v; want 0", old, err)
	}
	wantMetrics(t, gather(t, tb.d.Collector()), map[string]float64{
		"roam_dataplane_legacy_flows_total{result=stray}": 2,
		"roam_dataplane_legacy_flows_total{result=moved}": 0,
		"roam_dataplane_conntrack_entries{map=conntrack}": 1,
		"roam_dataplane_conntrack_entries{map=nat}":       1,
	})
	for _, do := range []string{"c A+", "t A+"} {
		if v := fl.packet(do); v != xdpTX {
			t.Fatalf("after GC: %q: verdict %d, want XDP_TX", do, v)
		}
	}
}

// establishedFlow is an established TCP flow through a redirect frontend
// (10.0.0.1:7000 to 10.2.0.1:7001) staged on tb.
func establishedFlow(t *testing.T, tb *testbed) *ctFlow {
	t.Helper()
	fe := tb.stage(t, "10.0.0.1:7000/tcp", "redirect:10.2.0.1:7001")
	fl := &ctFlow{t: t, tb: tb, fe: fe, target: mustTarget(t, "redirect:10.2.0.1:7001"), client: ap("198.51.100.7:1000"), cseq: 1000, sseq: 5000}
	for _, do := range []string{"c S", "t SA", "c A", "c A+", "t A+"} {
		if v := fl.packet(do); v != xdpTX {
			t.Fatalf("establishing: %q: verdict %d, want XDP_TX", do, v)
		}
	}
	return fl
}
