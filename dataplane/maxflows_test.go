package dataplane_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/roamnet/roam/dataplane"
	"github.com/roamnet/roam/dataplane/dptest"
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
	_, err := dataplane.Open(dataplane.Config{PinPath: pin, MaxFlows: 2000})
	if !errors.Is(err, ebpf.ErrMapIncompatible) || !strings.Contains(err.Error(), "Unpin") {
		t.Fatalf("re-open with another size: %v; want an incompatible map error naming Unpin", err)
	}
	for _, n := range []int{-1, 1 << 27} {
		if _, err := dataplane.Open(dataplane.Config{PinPath: dptest.PinPath(t), MaxFlows: n}); err == nil || !strings.Contains(err.Error(), "max flows") {
			t.Fatalf("max flows %d: %v; want refused", n, err)
		}
	}
}

// TestPreallocFlows: Config.PreallocFlows pins the conntrack and NAT maps
// preallocated (the default: BPF_F_NO_PREALLOC); pins made the other way
// are refused with the way out named, as for another size.
func TestPreallocFlows(t *testing.T) {
	for _, prealloc := range []bool{false, true} {
		pin := dptest.PinPath(t)
		openTest(t, dataplane.Config{PinPath: pin, MaxFlows: 1000, PreallocFlows: prealloc})
		for _, name := range []string{"roam_conntrack", "roam_nat"} {
			m, err := ebpf.LoadPinnedMap(pin+"/"+name, nil)
			if err != nil {
				t.Fatal(err)
			}
			noPrealloc := m.Flags()&unix.BPF_F_NO_PREALLOC != 0
			m.Close()
			if noPrealloc == prealloc {
				t.Errorf("PreallocFlows %v: %s flags have BPF_F_NO_PREALLOC %v", prealloc, name, noPrealloc)
			}
		}
		_, err := dataplane.Open(dataplane.Config{PinPath: pin, MaxFlows: 1000, PreallocFlows: !prealloc})
		if !errors.Is(err, ebpf.ErrMapIncompatible) || !strings.Contains(err.Error(), "Unpin") {
			t.Fatalf("re-open pins of PreallocFlows %v with %v: %v; want an incompatible map error naming Unpin", prealloc, !prealloc, err)
		}
	}
}
