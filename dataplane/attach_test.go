package dataplane_test

import (
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/roamnet/roam/dataplane"
	"github.com/roamnet/roam/dataplane/dptest"
	"github.com/roamnet/roam/dataplane/lb"
	"github.com/roamnet/roam/test/netns"
)

// foreignProgram is another tool's tc program: it passes everything on (TC_ACT_UNSPEC, tcx: TCX_NEXT).
func foreignProgram(t *testing.T) *ebpf.Program {
	t.Helper()
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type: ebpf.SchedCLS, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, -1), asm.Return()},
	})
	if err != nil {
		t.Fatalf("load a foreign tc program: %v", err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func ingressFilters(t *testing.T, h *netlink.Handle, l netlink.Link) []*netlink.BpfFilter {
	t.Helper()
	fs, err := h.FilterList(l, netlink.HANDLE_MIN_INGRESS)
	if err != nil {
		t.Fatal(err)
	}
	var out []*netlink.BpfFilter
	for _, f := range fs {
		if bf, ok := f.(*netlink.BpfFilter); ok {
			out = append(out, bf)
		}
	}
	return out
}

// TestClsactFallbackOwnFilter: the clsact fallback (kernels without tcx)
// adds roam's filter at its own priority and handle: another tool's
// filter at prio 1 / handle 1 stays, and a filter at roam's priority that
// is not roam's is not replaced (a clear error, nothing attached); roam's
// own is replaced on a second attach, not doubled.
func TestClsactFallbackOwnFilter(t *testing.T) {
	h := netns.Enter(t)
	a := addVeth(t, h, "ca0", "02:00:00:00:20:01", "192.0.2.1/24")
	b := addVeth(t, h, "cb0", "02:00:00:00:20:02", "192.0.2.2/24")
	d := openTest(t, dataplane.Config{})
	foreign := foreignProgram(t)
	for _, c := range []struct {
		l          netlink.Link
		prio       uint16
		handle     uint32
		wantRefuse bool
	}{
		{a, 1, 1, false},
		{b, dataplane.ClsactPriority, 1, true},
	} {
		q := &netlink.GenericQdisc{
			QdiscAttrs: netlink.QdiscAttrs{LinkIndex: c.l.Attrs().Index, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT},
			QdiscType:  "clsact",
		}
		if err := h.QdiscAdd(q); err != nil {
			t.Fatal(err)
		}
		f := &netlink.BpfFilter{
			FilterAttrs: netlink.FilterAttrs{LinkIndex: c.l.Attrs().Index, Parent: netlink.HANDLE_MIN_INGRESS, Handle: c.handle, Protocol: unix.ETH_P_ALL, Priority: c.prio},
			Fd:          foreign.FD(), Name: "foreign", DirectAction: true,
		}
		if err := h.FilterAdd(f); err != nil {
			t.Fatal(err)
		}
		for range 2 {
			err := d.AttachClsactIngress(c.l.Attrs().Index)
			if c.wantRefuse {
				if err == nil || !strings.Contains(err.Error(), "not roam's") {
					t.Fatalf("%s: a foreign filter at roam's priority: err %v, want a refusal", c.l.Attrs().Name, err)
				}
			} else if err != nil {
				t.Fatalf("%s: %v", c.l.Attrs().Name, err)
			}
		}
		var roam, other int
		for _, bf := range ingressFilters(t, h, c.l) {
			switch {
			case bf.Name == "foreign" && bf.Priority == c.prio && bf.Handle == c.handle:
				other++
			case strings.HasPrefix(bf.Name, "roam_tc") && bf.Priority == dataplane.ClsactPriority && bf.Handle == dataplane.ClsactHandle:
				roam++
			default:
				t.Fatalf("%s: unexpected filter %+v", c.l.Attrs().Name, bf)
			}
		}
		wantRoam := 1
		if c.wantRefuse {
			wantRoam = 0
		}
		if other != 1 || roam != wantRoam {
			t.Fatalf("%s: %d foreign and %d roam filters, want 1 and %d", c.l.Attrs().Name, other, roam, wantRoam)
		}
	}
}

// TestTCXAttachedFirst: with another tool's tcx program already on the
// interface, roam's goes to the head of the chain (it translates its
// frontends' packets first), the other stays; and a packet that is not
// roam's is handed on to the next program (TC_ACT_UNSPEC, tcx's
// TCX_NEXT), not passed past it.
func TestTCXAttachedFirst(t *testing.T) {
	h := netns.Enter(t)
	l := addVeth(t, h, "tx0", "02:00:00:00:21:01", "192.0.2.1/24")
	foreign := foreignProgram(t)
	fl, err := link.AttachTCX(link.TCXOptions{Program: foreign, Interface: l.Attrs().Index, Attach: ebpf.AttachTCXIngress})
	if err != nil {
		t.Fatalf("attach a foreign tcx program: %v", err)
	}
	t.Cleanup(func() { fl.Close() })
	d := openTest(t, dataplane.Config{PinPath: dptest.PinPath(t)})
	if err := d.AttachTC("tx0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Detach("tx0") })
	roamID, err := d.TCProgramID()
	if err != nil {
		t.Fatal(err)
	}
	finfo, err := foreign.Info()
	if err != nil {
		t.Fatal(err)
	}
	foreignID, _ := finfo.ID()
	for _, attach := range []ebpf.AttachType{ebpf.AttachTCXIngress, ebpf.AttachTCXEgress} {
		r, err := link.QueryPrograms(link.QueryOptions{Target: l.Attrs().Index, Attach: attach})
		if err != nil {
			t.Fatal(err)
		}
		var ids []ebpf.ProgramID
		for _, p := range r.Programs {
			ids = append(ids, p.ID)
		}
		want := []ebpf.ProgramID{roamID}
		if attach == ebpf.AttachTCXIngress {
			want = append(want, foreignID)
		}
		if len(ids) != len(want) || ids[0] != want[0] || (len(want) > 1 && ids[1] != want[1]) {
			t.Fatalf("%v chain %v, want %v (roam %d first)", attach, ids, want, roamID)
		}
	}
	// Not a frontend's packet: on to the next program.
	in := spec{src: ap("198.51.100.7:33000"), dst: ap("192.0.2.1:22"), proto: lb.TCP, flags: "S", srcMAC: macPeer, dstMAC: macD0, seq: 1}.build(t)
	v, _, err := d.RunTC(in)
	if err != nil {
		t.Fatal(err)
	}
	if int32(v) != -1 {
		t.Fatalf("verdict for a packet not roam's: %d, want TC_ACT_UNSPEC (-1)", int32(v))
	}
}
