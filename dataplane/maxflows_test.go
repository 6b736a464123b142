package dataplane_test

import (
	"errors"
	"fmt"
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
	wantConfigError(t, err, "max entries 1000", "max entries 2000")
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
		wantConfigError(t, err, fmt.Sprintf("(preallocated %v)", prealloc), fmt.Sprintf("(preallocated %v)", !prealloc))
	}
}

// wantConfigError checks that err, refusing pins of another size or flags,
// says so as a configuration change (the pinned and the configured values,
// the map) rather than as pins of another version.
func wantConfigError(t *testing.T, err error, pinned, configured string) {
	t.Helper()
	msg := err.Error()
	for _, want := range []string{"roam_conntrack", "pinned map", pinned, "this configuration wants", configured, "Unpin"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q does not say %q", msg, want)
		}
	}
	if strings.Contains(msg, "another version") {
		t.Errorf("error %q calls a configuration change another version", msg)
	}
}
