package dataplane_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/cilium/ebpf"

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
