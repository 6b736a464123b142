package dataplane_test

import (
	"strings"
	"testing"

	"github.com/cilium/ebpf/asm"

	"github.com/roamnet/roam/dataplane"
	"github.com/roamnet/roam/dataplane/dptest"
)

// TestLoadErrorNamesProgram: a program the verifier rejects fails Open with
// a message naming that program (both are one object, bpf/roam.c).
func TestLoadErrorNamesProgram(t *testing.T) {
	built := buildRoam(t)
	for _, name := range []string{"roam_xdp", "roam_tc"} {
		spec := built.Copy()
		p := spec.Programs[name]
		if p == nil {
			t.Fatalf("bpf/roam.c has no program %s", name)
		}
		// R5 is never written: the verifier refuses to read it.
		p.Instructions = asm.Instructions{asm.Mov.Reg(asm.R0, asm.R5), asm.Return()}
		dataplane.SetSpec(t, spec)
		_, err := dataplane.Open(dataplane.Config{PinPath: dptest.PinPath(t)})
		if err == nil {
			t.Fatalf("open with %s broken: no error", name)
		}
		if !strings.Contains(err.Error(), "load "+name+" program:") || !strings.Contains(err.Error(), "R5") {
			t.Fatalf("open with %s broken: %v; want a verifier error naming %s", name, err, name)
		}
	}
}
