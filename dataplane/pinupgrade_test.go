package dataplane_test

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
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
	d.Close()
}
