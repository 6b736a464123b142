package dataplane

import (
	"net"
	"net/netip"
	"os"
	"runtime"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// testNetns moves the calling goroutine's (locked) OS thread into a fresh
// network namespace until the test ends, and returns a netlink handle in it.
// Everything that must happen inside (netlink, sysctl, BPF_PROG_TEST_RUN
// with fib lookups) must run on the test goroutine.
func testNetns(t *testing.T) *netlink.Handle {
	t.Helper()
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatalf("get netns: %v", err)
	}
	ns, err := netns.New()
	if err != nil {
		orig.Close()
		runtime.UnlockOSThread()
		t.Fatalf("new netns: %v", err)
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatalf("netlink handle: %v", err)
	}
	t.Cleanup(func() {
		h.Close()
		if err := netns.Set(orig); err != nil {
			// Never hand a thread in the wrong namespace back to the
			// scheduler: keep it locked so it exits with the goroutine.
			t.Errorf("restore netns: %v", err)
			ns.Close()
			orig.Close()
			return
		}
		ns.Close()
		orig.Close()
		runtime.UnlockOSThread()
	})
	for _, p := range []string{"/proc/sys/net/ipv4/conf/all/forwarding", "/proc/sys/net/ipv6/conf/all/forwarding"} {
		if err := os.WriteFile(p, []byte("1"), 0o644); err != nil {
			t.Fatalf("enable forwarding: %v", err)
		}
	}
	return h
}

// addVeth creates an up veth pair (name and name+"p"; the dummy driver is
// not available everywhere) with the MAC and addresses given on name.
func addVeth(t *testing.T, h *netlink.Handle, name, mac string, addrs ...string) netlink.Link {
	t.Helper()
	hw, _ := net.ParseMAC(mac)
	l := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name, HardwareAddr: hw}, PeerName: name + "p"}
	if err := h.LinkAdd(l); err != nil {
		t.Fatalf("add %s: %v", name, err)
	}
	peer, err := h.LinkByName(name + "p")
	if err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetUp(peer); err != nil {
		t.Fatalf("up %s: %v", peer.Attrs().Name, err)
	}
	link, err := h.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		p := netip.MustParsePrefix(a)
		ad := &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}, Flags: unix.IFA_F_NODAD}
		if err := h.AddrAdd(link, ad); err != nil {
			t.Fatalf("add address %s to %s: %v", a, name, err)
		}
	}
	if err := h.LinkSetUp(link); err != nil {
		t.Fatalf("up %s: %v", name, err)
	}
	return link
}

func addRoute(t *testing.T, h *netlink.Handle, link netlink.Link, dst, via string) {
	t.Helper()
	p := netip.MustParsePrefix(dst)
	r := &netlink.Route{
		LinkIndex: link.Attrs().Index,
		Dst:       &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())},
		Gw:        netip.MustParseAddr(via).AsSlice(),
	}
	if err := h.RouteAdd(r); err != nil {
		t.Fatalf("add route %s via %s: %v", dst, via, err)
	}
}

func addNeigh(t *testing.T, h *netlink.Handle, link netlink.Link, ip, mac string) {
	t.Helper()
	hw, _ := net.ParseMAC(mac)
	a := netip.MustParseAddr(ip)
	fam := netlink.FAMILY_V4
	if a.Is6() {
		fam = netlink.FAMILY_V6
	}
	n := &netlink.Neigh{LinkIndex: link.Attrs().Index, Family: fam, State: netlink.NUD_PERMANENT, IP: a.AsSlice(), HardwareAddr: hw}
	if err := h.NeighAdd(n); err != nil {
		t.Fatalf("add neighbour %s: %v", ip, err)
	}
}
