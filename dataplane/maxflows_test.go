package dataplane_test

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/roamnet/roam/dataplane"
	"github.com/roamnet/roam/dataplane/dptest"
	"github.com/roamnet/roam/dataplane/lb"
)

// TestMaxFlows: Config.MaxFlows sizes the conntrack and NAT maps (the
// default when unset); pins of another size are refused with the way out
// named; a size out of range is refused before anything is loaded.
func TestMaxFlows(t *testing.T) {
	def := openTest(t, dataplane.Config{})
	if ct, nat := def.FlowCapacity(); ct != dataplane.DefaultMaxFlows || nat != dataplane.DefaultMaxFlows {
		t.Fatalf("default capacity: conntrack %d, NAT %d; want %d", ct, nat, dataplane.DefaultMaxFlows)
	}
	pin := dptest.PinPath(t)
	d := openTest(t, dataplane.Config{PinPath: pin, MaxFlows: 1000})
	if ct, nat := d.FlowCapacity(); ct != 1000 || nat != 1000 {
		t.Fatalf("capacity: conntrack %d, NAT %d; want 1000", ct, nat)
	}
	// Another size is refused, with either way out: the size the pins hold, or removing them.
	for _, prealloc := range []bool{false, true} {
		_, err := dataplane.Open(dataplane.Config{PinPath: pin, MaxFlows: 2000, PreallocFlows: prealloc})
		if !errors.Is(err, ebpf.ErrMapIncompatible) || !strings.Contains(err.Error(), "set MaxFlows back to 1000") ||
			!strings.Contains(err.Error(), "rm -r "+pin) {
			t.Fatalf("re-open with another size (prealloc %v): %v; want an incompatible map error naming MaxFlows 1000 and rm -r %s", prealloc, err, pin)
		}
		wantConfigError(t, err, "holds 1000 flows", "this configuration 2000")
	}
	for _, n := range []int{-1, 1 << 27} {
		if _, err := dataplane.Open(dataplane.Config{PinPath: dptest.PinPath(t), MaxFlows: n}); err == nil || !strings.Contains(err.Error(), "max flows") {
			t.Fatalf("max flows %d: %v; want refused", n, err)
		}
	}
}

// TestPreallocFlows: Config.PreallocFlows pins the conntrack and NAT maps
// preallocated (the default: BPF_F_NO_PREALLOC); pins made the other way,
// of the same size (an agent upgraded over the previous release's pins),
// are kept as they are: Open starts, a flow created before is still
// found, new flows get in, and PreallocFlows reports the pinned way.
func TestPreallocFlows(t *testing.T) {
	for _, prealloc := range []bool{false, true} {
		t.Run(fmt.Sprintf("pinned prealloc=%v", prealloc), func(t *testing.T) { testPreallocFlows(t, prealloc) })
	}
}

func testPreallocFlows(t *testing.T, prealloc bool) {
	pin := dptest.PinPath(t)
	cfg := dataplane.Config{PinPath: pin, PortMin: 40000, PortMax: 40999, MaxFlows: 1000, PreallocFlows: prealloc}
	tb := newTestbed(t, cfg)
	wantFlags := func(what string) {
		t.Helper()
		// The IPv4 flows' maps as configured; the IPv6 flows' never preallocated.
		for _, m := range []struct {
			name     string
			prealloc bool
		}{{"roam_ct4", prealloc}, {"roam_nat4", prealloc}, {"roam_conntrack", false}, {"roam_nat", false}} {
			pm, err := ebpf.LoadPinnedMap(pin+"/"+m.name, nil)
			if err != nil {
				t.Fatal(err)
			}
			noPrealloc := pm.Flags()&unix.BPF_F_NO_PREALLOC != 0
			pm.Close()
			if noPrealloc == m.prealloc {
				t.Errorf("%s: %s flags have BPF_F_NO_PREALLOC %v; pinned with PreallocFlows %v, want preallocated %v", what, m.name, noPrealloc, prealloc, m.prealloc)
			}
		}
	}
	wantFlags("first open")
	if tb.d.PreallocFlows() != prealloc {
		t.Errorf("first open: PreallocFlows() %v, want %v", tb.d.PreallocFlows(), prealloc)
	}
	d0 := tb.d0.Attrs().Index
	tb.stage(t, "10.0.0.1:7000/udp", "redirect:10.2.0.1:7001")
	udp := func(client string) []byte {
		return spec{src: ap(client), dst: ap("10.0.0.1:7000"), proto: lb.UDP, payload: []byte("x"), srcMAC: macPeer, dstMAC: macD0}.build(t)
	}
	v, before := tb.xdp(t, udp("198.51.100.1:20000"))
	if v != xdpTX {
		t.Fatalf("flow before re-open: verdict %d, want XDP_TX", v)
	}

	// The upgraded agent, configured the other way, starts over the pins.
	cfg.SNATv4, cfg.SNATv6, cfg.PreallocFlows = snat4, snat6, !prealloc
	d := openTest(t, cfg)
	if d.PreallocFlows() != prealloc {
		t.Errorf("re-open with PreallocFlows %v over pins of %v: PreallocFlows() %v, want the pinned %v", !prealloc, prealloc, d.PreallocFlows(), prealloc)
	}
	wantFlags("re-open the other way")
	v, after, err := d.RunXDP(udp("198.51.100.1:20000"), d0)
	if err != nil || v != xdpTX || !bytes.Equal(after, before) {
		t.Fatalf("flow created before re-open: verdict %d, %v, same frame out %v; want XDP_TX with the frame of before (its SNAT port)", v, err, bytes.Equal(after, before))
	}
	if v, _, err := d.RunXDP(udp("198.51.100.1:20001"), d0); err != nil || v != xdpTX {
		t.Fatalf("new flow after re-open: verdict %d, %v; want XDP_TX", v, err)
	}
	ct, nat, err := d.FlowClients()
	if err != nil {
		t.Fatal(err)
	}
	if len(ct) != 2 || len(nat) != 2 {
		t.Errorf("after re-open: %d conntrack and %d NAT entries, want 2 each (the flow of before kept, one new)", len(ct), len(nat))
	}
}

// wantConfigError checks that err, refusing pins of another size, says so
// as a configuration change (the pinned and the configured values, the
// map) rather than as pins of another version.
func wantConfigError(t *testing.T, err error, pinned, configured string) {
	t.Helper()
	msg := err.Error()
	for _, want := range []string{"roam_ct4", "pinned map", pinned, configured} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q does not say %q", msg, want)
		}
	}
	if strings.Contains(msg, "another version") {
		t.Errorf("error %q calls a configuration change another version", msg)
	}
}
