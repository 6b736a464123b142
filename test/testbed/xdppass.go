package testbed

import (
	"fmt"
	"unsafe"

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

// txChecksumOff is "ethtool -K ifname tx off" (the legacy ETHTOOL_STXCSUM
// ioctl) in namespace ns: the stack then checksums what it sends through
// ifname in software, so every frame on the link carries a full checksum.
func txChecksumOff(ns, ifname string) error {
	return InNS(ns, func() error {
		const ethtoolSTXCSUM = 0x17
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("turn tx checksum offload off on %s in %s: %w", ifname, ns, err)
		}
		defer unix.Close(fd)
		val := struct{ cmd, data uint32 }{ethtoolSTXCSUM, 0}
		var ifr struct {
			name [unix.IFNAMSIZ]byte
			data unsafe.Pointer
			_    [16]byte
		}
		copy(ifr.name[:], ifname)
		ifr.data = unsafe.Pointer(&val)
		if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCETHTOOL, uintptr(unsafe.Pointer(&ifr))); errno != 0 {
			return fmt.Errorf("turn tx checksum offload off on %s in %s: %w", ifname, ns, errno)
		}
		return nil
	})
}
