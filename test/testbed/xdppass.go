package testbed

import (
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// attachXDPPass puts a two-instruction XDP_PASS program on a veth end that
// receives frames other programs redirect into it (a veth drops
// XDP_REDIRECTed frames unless its peer runs XDP or has GRO on). The attach
// is the legacy netlink one: it outlives this process and disappears with
// the interface.
func attachXDPPass(ns, ifname string) error {
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:         "roam_tb_pass",
		Type:         ebpf.XDP,
		License:      "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 2 /* XDP_PASS */), asm.Return()},
	})
	if err != nil {
		return fmt.Errorf("load XDP_PASS program: %w", err)
	}
	defer prog.Close()
	return InNS(ns, func() error {
		l, err := netlink.LinkByName(ifname)
		if err != nil {
			return fmt.Errorf("find %s in %s: %w", ifname, ns, err)
		}
		if err := netlink.LinkSetXdpFdWithFlags(l, prog.FD(), unix.XDP_FLAGS_DRV_MODE); err != nil {
			return fmt.Errorf("attach XDP_PASS to %s in %s (native): %w", ifname, ns, err)
		}
		return nil
	})
}
