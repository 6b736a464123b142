package dataplane_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/cilium/ebpf/btf"

	"github.com/roamnet/roam/dataplane"
	"github.com/roamnet/roam/dataplane/lb"
)

// TestTargetKindsMatchBPF holds lb.TargetKind (a leaf package, which cannot
// import the generated code) to bpf/consts.h's enum target_kind as the
// committed object's BTF has it: each C kind is the Go kind of the same
// number and name (TARGET_SRV6 = 3: lb.TargetKind(3) is "srv6"), and Go
// names no kind past C's.
func TestTargetKindsMatchBPF(t *testing.T) {
	spec, err := dataplane.RoamSpec()
	if err != nil {
		t.Fatal(err)
	}
	var kinds *btf.Enum
	if err := spec.Types.TypeByName("target_kind", &kinds); err != nil {
		t.Fatalf("enum target_kind in the object's BTF: %v (is it still the type of struct target.kind?)", err)
	}
	if len(kinds.Values) < 4 {
		t.Fatalf("enum target_kind has %d values in BTF, want none, local, redirect and srv6", len(kinds.Values))
	}
	var last uint64
	for _, v := range kinds.Values {
		want := strings.ToLower(strings.TrimPrefix(v.Name, "TARGET_"))
		if got := lb.TargetKind(v.Value).String(); got != want {
			t.Errorf("C %s = %d: lb.TargetKind(%d) is %q, want %q", v.Name, v.Value, v.Value, got, want)
		}
		last = max(last, v.Value)
	}
	next := lb.TargetKind(last + 1)
	if got, want := next.String(), fmt.Sprintf("kind(%d)", last+1); got != want {
		t.Errorf("lb.TargetKind(%d) is %q, a kind bpf/consts.h does not have", last+1, got)
	}
}
