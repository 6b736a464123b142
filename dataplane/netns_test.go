package dataplane_test

import (
	"net"
	"net/netip"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/roamnet/roam/test/netns"
)

// addVeth creates an up veth pair (name and name+"p"; the dummy driver is
// not available everywhere) in the calling thread's namespace with the MAC
// and addresses given on name.
func addVeth(t *testing.T, h *netlink.Handle, name, mac string, addrs ...string) netlink.Link {
	t.Helper()
	hw, _ := net.ParseMAC(mac)
	var ps []netip.Prefix
	for _, a := range addrs {
		ps = append(ps, netip.MustParsePrefix(a))
	}
	if err := netns.Veth(netns.End{Name: name, MAC: hw, Addrs: ps}, netns.End{Name: name + "p"}); err != nil {
		t.Fatal(err)
	}
	link, err := h.LinkByName(name)
	if err != nil {
		t.Fatal(err)
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
	if err := h.NeighAdd(permanentNeigh(link, ip, hw)); err != nil {
		t.Fatalf("add neighbour %s: %v", ip, err)
	}
}

// permanentNeigh is link's permanent neighbour entry ip -> mac.
func permanentNeigh(link netlink.Link, ip string, mac net.HardwareAddr) *netlink.Neigh {
	a := netip.MustParseAddr(ip)
	fam := netlink.FAMILY_V4
	if a.Is6() {
		fam = netlink.FAMILY_V6
	}
	return &netlink.Neigh{LinkIndex: link.Attrs().Index, Family: fam, State: netlink.NUD_PERMANENT, IP: a.AsSlice(), HardwareAddr: mac}
}

func addAddr(t *testing.T, h *netlink.Handle, link netlink.Link, prefix string) {
	t.Helper()
	p := netip.MustParsePrefix(prefix)
	a := &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}}
	if err := h.AddrAdd(link, a); err != nil {
		t.Fatalf("add address %s: %v", prefix, err)
	}
}
