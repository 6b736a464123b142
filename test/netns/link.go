package netns

import (
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// End is one end of a veth pair.
type End struct {
	NS    string           // named namespace; "" is the calling thread's own
	Name  string           // interface name
	MAC   net.HardwareAddr // nil: the kernel picks one
	Addrs []netip.Prefix   // addresses, without duplicate address detection
}

// Veth creates the pair a-b, moves b into its namespace, gives both ends
// their addresses and sets them up, then turns transmit checksum offload
// off on both: a veth hands its peer locally sent frames with a partial
// checksum, which an XDP program cannot see, and a frame it XDP_TXes or
// redirects leaves with that partial checksum as if final (the receiver
// drops it as corrupt). With full checksums on both ends the pair behaves
// like a wire.
func Veth(a, b End) error {
	err := Handle(a.NS, func(h *netlink.Handle) error {
		v := &netlink.Veth{
			LinkAttrs: netlink.LinkAttrs{Name: a.Name, MTU: 1500, HardwareAddr: a.MAC},
			PeerName:  b.Name, PeerHardwareAddr: b.MAC,
		}
		if b.NS != a.NS {
			pns, err := nsHandle(b.NS)
			if err != nil {
				return err
			}
			defer pns.Close()
			v.PeerNamespace = netlink.NsFd(pns)
		}
		if err := h.LinkAdd(v); err != nil {
			return fmt.Errorf("add veth %s (%s) - %s (%s): %w", a.Name, a.NS, b.Name, b.NS, err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, e := range []End{a, b} {
		if err := e.up(); err != nil {
			return err
		}
	}
	return nil
}

func (e End) up() error {
	err := Handle(e.NS, func(h *netlink.Handle) error {
		l, err := h.LinkByName(e.Name)
		if err != nil {
			return fmt.Errorf("find %s: %w", e.Name, err)
		}
		for _, p := range e.Addrs {
			a := &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}, Flags: unix.IFA_F_NODAD}
			if err := h.AddrAdd(l, a); err != nil {
				return fmt.Errorf("add %s to %s: %w", p, e.Name, err)
			}
		}
		if err := h.LinkSetUp(l); err != nil {
			return fmt.Errorf("set %s up: %w", e.Name, err)
		}
		return nil
	})
	if err == nil {
		err = e.do(func() error { return SetTxChecksum(e.Name, false) })
	}
	if err != nil && e.NS != "" {
		return fmt.Errorf("in %s: %w", e.NS, err)
	}
	return err
}

// do runs f in e's namespace: Do for a named one, the calling thread for "".
func (e End) do(f func() error) error {
	if e.NS == "" {
		return f()
	}
	return Do(e.NS, f)
}

// nsHandle opens the named namespace ("" is the calling thread's); the
// caller closes it.
func nsHandle(name string) (vnetns.NsHandle, error) {
	if name == "" {
		ns, err := vnetns.Get()
		if err != nil {
			return 0, fmt.Errorf("get current netns: %w", err)
		}
		return ns, nil
	}
	ns, err := vnetns.GetFromName(name)
	if err != nil {
		return 0, fmt.Errorf("open netns %s: %w", name, err)
	}
	return ns, nil
}

// ethtoolValue is struct ethtool_value.
type ethtoolValue struct{ cmd, data uint32 }

// ifreqData is struct ifreq with its union as ifr_data. The pointer is kept
// as unsafe.Pointer (never uintptr) so the value it points to stays alive
// and is found by the garbage collector while the kernel reads it.
type ifreqData struct {
	name [unix.IFNAMSIZ]byte
	data unsafe.Pointer
	_    [24 - unsafe.Sizeof(unsafe.Pointer(nil))]byte
}

const (
	ethtoolSTXCSUM = 0x17 // linux/ethtool.h
	ethtoolSGRO    = 0x2c
)

// SetTxChecksum is `ethtool -K dev tx on|off` (the ETHTOOL_STXCSUM ioctl)
// in the calling thread's namespace. Off makes the stack checksum what it
// sends through dev in software, so every frame carries a full checksum; on
// leaves locally sent packets CHECKSUM_PARTIAL.
func SetTxChecksum(dev string, on bool) error {
	return ethtoolSet(dev, ethtoolSTXCSUM, "tx checksum", on)
}

// SetGRO is `ethtool -K dev gro on|off` (ETHTOOL_SGRO) in the calling
// thread's namespace. A veth whose end runs neither XDP nor GRO drops the
// frames XDP redirects into its peer, as a Kubernetes pod's veth does.
func SetGRO(dev string, on bool) error {
	return ethtoolSet(dev, ethtoolSGRO, "gro", on)
}

func ethtoolSet(dev string, cmd uint32, what string, on bool) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("set %s on %s: %w", what, dev, err)
	}
	defer unix.Close(fd)
	val := &ethtoolValue{cmd: cmd}
	if on {
		val.data = 1
	}
	ifr := &ifreqData{data: unsafe.Pointer(val)}
	copy(ifr.name[:unix.IFNAMSIZ-1], dev)
	// The uintptr conversion happens in the call expression, as
	// unsafe.Pointer rule 4 requires for syscall arguments.
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCETHTOOL, uintptr(unsafe.Pointer(ifr)))
	runtime.KeepAlive(val)
	if errno != 0 {
		return fmt.Errorf("set %s on %s: ioctl SIOCETHTOOL: %w", what, dev, errno)
	}
	return nil
}

// AttachXDPPass puts a two-instruction XDP_PASS program, in native mode, on
// dev in the named namespace. A veth drops frames redirected into it unless
// its peer runs XDP, and with XDP on both ends a veth pair carries
// MTU-sized frames as a real wire does. The attach is the legacy netlink
// one: it outlives this process and disappears with the interface.
func AttachXDPPass(ns, dev string) error {
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: "roam_xdp_pass", Type: ebpf.XDP, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 2 /* XDP_PASS */), asm.Return()},
	})
	if err != nil {
		return fmt.Errorf("load XDP_PASS program: %w", err)
	}
	defer prog.Close()
	return Do(ns, func() error {
		l, err := netlink.LinkByName(dev)
		if err != nil {
			return fmt.Errorf("find %s in %s: %w", dev, ns, err)
		}
		if err := netlink.LinkSetXdpFdWithFlags(l, prog.FD(), unix.XDP_FLAGS_DRV_MODE); err != nil {
			return fmt.Errorf("attach XDP_PASS to %s in %s (native): %w", dev, ns, err)
		}
		return nil
	})
}
