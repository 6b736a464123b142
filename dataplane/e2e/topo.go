// Package e2e holds the data plane's end-to-end test in network namespaces
// and the topology it (and test/bench/dataplane) runs on:
//
//	client ns          home ns (the agent)               abroad ns
//	c0 10.10.1.2 ── h0 10.10.1.1 (frontend)   h1 10.10.2.1 ── a0 10.10.2.2, 10.10.2.3
//
// h0 and h1 carry roam's XDP program; c0 and a0 carry an XDP_PASS program so
// frames redirected into them are received. Neighbours are static.
package e2e

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Addresses of the topology.
var (
	ClientAddr  = netip.MustParseAddr("10.10.1.2")
	HomeAddr    = netip.MustParseAddr("10.10.1.1") // the frontend's address
	HomeWAN     = netip.MustParseAddr("10.10.2.1") // the SNAT address
	AbroadAddr1 = netip.MustParseAddr("10.10.2.2")
	AbroadAddr2 = netip.MustParseAddr("10.10.2.3")
)

// Topology is three namespaces, named uniquely.
type Topology struct {
	Client, Home, Abroad string
	Suffix               string
}

// RandSuffix returns n random hex bytes.
func RandSuffix(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// InNS runs f on a thread in the named network namespace.
func InNS(name string, f func() error) error {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("get current netns: %w", err)
	}
	defer orig.Close()
	ns, err := netns.GetFromName(name)
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("open netns %s: %w", name, err)
	}
	defer ns.Close()
	if err := netns.Set(ns); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter netns %s: %w", name, err)
	}
	ferr := f()
	if err := netns.Set(orig); err != nil {
		// Leave the thread locked: it dies with the goroutine, never reused.
		return errors.Join(ferr, fmt.Errorf("restore netns: %w", err))
	}
	runtime.UnlockOSThread()
	return ferr
}

// Listen opens a listener inside the named namespace.
func Listen(nsName, network, addr string) (net.Listener, error) {
	var ln net.Listener
	err := InNS(nsName, func() (err error) {
		ln, err = net.Listen(network, addr)
		return err
	})
	return ln, err
}

// ListenPacket opens a packet socket inside the named namespace.
func ListenPacket(nsName, network, addr string) (net.PacketConn, error) {
	var pc net.PacketConn
	err := InNS(nsName, func() (err error) {
		pc, err = net.ListenPacket(network, addr)
		return err
	})
	return pc, err
}

// Dialer returns a DialContext that opens its sockets in the named namespace.
func Dialer(nsName string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := InNS(nsName, func() (err error) {
			c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
}

// Cmd builds a command run inside the named namespace with ip netns exec.
func Cmd(ctx context.Context, nsName, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", nsName, name}, args...)...)
}

// NewTopology creates the namespaces, veths, addresses, routes, static
// neighbours and the XDP_PASS programs on the peers. Close removes it all.
func NewTopology() (*Topology, error) {
	sfx := RandSuffix(4)
	t := &Topology{Client: "roam-c-" + sfx, Home: "roam-h-" + sfx, Abroad: "roam-a-" + sfx, Suffix: sfx}
	if err := t.build(); err != nil {
		t.Close()
		return nil, fmt.Errorf("build topology %s: %w", sfx, err)
	}
	return t, nil
}

func (t *Topology) build() error {
	handles := map[string]*netlink.Handle{}
	nsFds := map[string]netns.NsHandle{}
	defer func() {
		for _, h := range handles {
			h.Close()
		}
		for _, n := range nsFds {
			n.Close()
		}
	}()
	for _, name := range []string{t.Client, t.Home, t.Abroad} {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			return err
		}
		ns, err := netns.NewNamed(name)
		if rerr := netns.Set(orig); rerr != nil {
			orig.Close()
			return fmt.Errorf("restore netns: %w", rerr)
		}
		orig.Close()
		runtime.UnlockOSThread()
		if err != nil {
			return fmt.Errorf("create netns %s: %w", name, err)
		}
		nsFds[name] = ns
		h, err := netlink.NewHandleAt(ns)
		if err != nil {
			return fmt.Errorf("netlink handle in %s: %w", name, err)
		}
		handles[name] = h
		lo, err := h.LinkByName("lo")
		if err != nil {
			return err
		}
		if err := h.LinkSetUp(lo); err != nil {
			return err
		}
	}
	// veths: created in the home namespace with the peer in the other one.
	hh := handles[t.Home]
	for _, v := range []struct{ local, peer, peerNS string }{{"h0", "c0", t.Client}, {"h1", "a0", t.Abroad}} {
		la := netlink.NewLinkAttrs()
		la.Name = v.local
		if err := hh.LinkAdd(&netlink.Veth{LinkAttrs: la, PeerName: v.peer, PeerNamespace: netlink.NsFd(nsFds[v.peerNS])}); err != nil {
			return fmt.Errorf("add veth %s-%s: %w", v.local, v.peer, err)
		}
	}
	type ifc struct {
		ns, name string
		addrs    []netip.Addr
	}
	ifcs := []ifc{
		{t.Client, "c0", []netip.Addr{ClientAddr}},
		{t.Home, "h0", []netip.Addr{HomeAddr}},
		{t.Home, "h1", []netip.Addr{HomeWAN}},
		{t.Abroad, "a0", []netip.Addr{AbroadAddr1, AbroadAddr2}},
	}
	macs := map[string]net.HardwareAddr{}
	links := map[string]netlink.Link{}
	for _, i := range ifcs {
		h := handles[i.ns]
		l, err := h.LinkByName(i.name)
		if err != nil {
			return fmt.Errorf("find %s: %w", i.name, err)
		}
		for _, a := range i.addrs {
			if err := h.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(24, 32)}}); err != nil {
				return fmt.Errorf("add %s to %s: %w", a, i.name, err)
			}
		}
		if err := h.LinkSetUp(l); err != nil {
			return fmt.Errorf("set %s up: %w", i.name, err)
		}
		macs[i.name] = l.Attrs().HardwareAddr
		links[i.name] = l
	}
	// Client: everything via home. Abroad needs only its subnet (SNAT).
	if err := handles[t.Client].RouteAdd(&netlink.Route{LinkIndex: links["c0"].Attrs().Index, Gw: HomeAddr.AsSlice()}); err != nil {
		return fmt.Errorf("add client default route: %w", err)
	}
	neigh := func(ns, dev string, ip netip.Addr, mac net.HardwareAddr) error {
		err := handles[ns].NeighSet(&netlink.Neigh{LinkIndex: links[dev].Attrs().Index, Family: netlink.FAMILY_V4,
			State: netlink.NUD_PERMANENT, IP: ip.AsSlice(), HardwareAddr: mac})
		if err != nil {
			return fmt.Errorf("set neighbour %s on %s: %w", ip, dev, err)
		}
		return nil
	}
	for _, n := range []struct {
		ns, dev string
		ip      netip.Addr
		mac     string
	}{
		{t.Client, "c0", HomeAddr, "h0"},
		{t.Home, "h0", ClientAddr, "c0"},
		{t.Home, "h1", AbroadAddr1, "a0"},
		{t.Home, "h1", AbroadAddr2, "a0"},
		{t.Abroad, "a0", HomeWAN, "h1"},
	} {
		if err := neigh(n.ns, n.dev, n.ip, macs[n.mac]); err != nil {
			return err
		}
	}
	// bpf_fib_lookup forwards only where the kernel would (as on any node).
	err := InNS(t.Home, func() error {
		return os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1\n"), 0o644)
	})
	if err != nil {
		return fmt.Errorf("enable forwarding in %s: %w", t.Home, err)
	}
	// Frames the peers' own stacks send carry a partial checksum (offload)
	// that a veth hands on as is; an XDP program sees and forwards the
	// frame, not the offload state, so the peers checksum in software.
	for _, p := range []struct{ ns, dev string }{{t.Client, "c0"}, {t.Abroad, "a0"}} {
		if err := InNS(p.ns, func() error { return SetTxChecksum(p.dev, false) }); err != nil {
			return fmt.Errorf("turn tx checksum offload off on %s: %w", p.dev, err)
		}
	}
	// XDP_PASS on the peers, so frames redirected into them are received.
	for _, p := range []struct{ ns, dev string }{{t.Client, "c0"}, {t.Abroad, "a0"}} {
		if err := AttachPass(p.ns, p.dev); err != nil {
			return err
		}
	}
	return nil
}

// AttachPass attaches a bare XDP_PASS program (native mode) to dev in ns.
// Frames redirected into a veth are received only if its peer runs XDP, and
// with XDP on both ends a veth pair carries MTU-sized frames as a real
// wire does, whatever program forwards them.
func AttachPass(ns, dev string) error {
	pass, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: "roam_e2e_pass", Type: ebpf.XDP, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 2 /* XDP_PASS */), asm.Return()},
	})
	if err != nil {
		return fmt.Errorf("load xdp pass program: %w", err)
	}
	defer pass.Close()
	err = InNS(ns, func() error {
		l, err := netlink.LinkByName(dev)
		if err != nil {
			return err
		}
		return netlink.LinkSetXdpFdWithFlags(l, pass.FD(), nl.XDP_FLAGS_DRV_MODE)
	})
	if err != nil {
		return fmt.Errorf("attach xdp pass to %s: %w", dev, err)
	}
	return nil
}

// Close deletes the namespaces (and with them the veths).
func (t *Topology) Close() error {
	var errs []error
	for _, name := range []string{t.Client, t.Home, t.Abroad} {
		if _, err := os.Stat("/run/netns/" + name); errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err := netns.DeleteNamed(name); err != nil {
			errs = append(errs, fmt.Errorf("delete netns %s: %w", name, err))
		}
	}
	return errors.Join(errs...)
}

// SetTxChecksum is "ethtool -K dev tx on|off" (legacy ETHTOOL_STXCSUM
// ioctl) in the calling thread's namespace.
func SetTxChecksum(dev string, on bool) error {
	const ethtoolSTXCSUM = 0x17
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	val := struct{ cmd, data uint32 }{ethtoolSTXCSUM, 0}
	if on {
		val.data = 1
	}
	var ifr struct {
		name [unix.IFNAMSIZ]byte
		data unsafe.Pointer
		_    [16]byte
	}
	copy(ifr.name[:], dev)
	ifr.data = unsafe.Pointer(&val)
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCETHTOOL, uintptr(unsafe.Pointer(&ifr))); errno != 0 {
		return fmt.Errorf("ioctl SIOCETHTOOL: %w", errno)
	}
	return nil
}
