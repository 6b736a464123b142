package main

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"

	"github.com/roamnet/roam/test/netns"
)

// The addresses every path's namespaces use, in both families:
//
//	client ns              home ns (the forwarder)                  abroad ns
//	c0 10.10.1.2 ────── h0 10.10.1.1 (frontends)   h1 10.10.2.1 (SNAT) ────── a0 10.10.2.2 (targets)
//	   fd00:1::2           fd00:1::1                    fd00:2::1                 fd00:2::2
//
// Generated flows come from the benchmarking prefixes (RFC 2544, RFC 5180)
// behind the client; frontend port fport0+i is redirected to target port
// tport0+i. MAC addresses are fixed and every neighbour is static (the sink
// drops ARP and neighbour discovery).
var (
	clientAddr = [2]netip.Addr{netip.MustParseAddr("10.10.1.2"), netip.MustParseAddr("fd00:1::2")}
	frontAddr  = [2]netip.Addr{netip.MustParseAddr("10.10.1.1"), netip.MustParseAddr("fd00:1::1")}
	snatAddr   = [2]netip.Addr{netip.MustParseAddr("10.10.2.1"), netip.MustParseAddr("fd00:2::1")}
	targetAddr = [2]netip.Addr{netip.MustParseAddr("10.10.2.2"), netip.MustParseAddr("fd00:2::2")}
	flowSrc    = [2]netip.Prefix{netip.MustParsePrefix("198.18.0.0/15"), netip.MustParsePrefix("2001:2::/48")}

	macC0 = net.HardwareAddr{2, 0, 0, 0, 1, 2}
	macH0 = net.HardwareAddr{2, 0, 0, 0, 1, 1}
	macH1 = net.HardwareAddr{2, 0, 0, 0, 2, 1}
	macA0 = net.HardwareAddr{2, 0, 0, 0, 2, 2}
)

const (
	fport0 = 10000 // first frontend port
	tport0 = 20000 // first target port
)

// fam is an address family index: 0 IPv4, 1 IPv6.
type fam int

const (
	v4 fam = 0
	v6 fam = 1
)

func (f fam) String() string { return [...]string{"IPv4", "IPv6"}[f] }

// bits is the prefix length of the point-to-point subnets.
func (f fam) bits() int { return [...]int{24, 64}[f] }

// topo is one path's three namespaces.
type topo struct {
	path                 string
	client, home, abroad string
}

// newTopo creates the namespaces of one path, named uniquely with sfx.
func newTopo(path, sfx string) (*topo, error) {
	t := &topo{path: path}
	t.client, t.home, t.abroad = "rb-"+sfx+"-"+path+"-c", "rb-"+sfx+"-"+path+"-h", "rb-"+sfx+"-"+path+"-a"
	if err := t.build(); err != nil {
		t.close()
		return nil, fmt.Errorf("build %s namespaces: %w", path, err)
	}
	return t, nil
}

// hostAddrs is addr[f] with its subnet's length, both families.
func hostAddrs(addr [2]netip.Addr) []netip.Prefix {
	return []netip.Prefix{netip.PrefixFrom(addr[v4], v4.bits()), netip.PrefixFrom(addr[v6], v6.bits())}
}

func (t *topo) build() error {
	for _, ns := range []string{t.client, t.home, t.abroad} {
		if err := netns.Create(ns); err != nil {
			return err
		}
	}
	for _, pair := range [][2]netns.End{
		{{NS: t.home, Name: "h0", MAC: macH0, Addrs: hostAddrs(frontAddr)}, {NS: t.client, Name: "c0", MAC: macC0, Addrs: hostAddrs(clientAddr)}},
		{{NS: t.home, Name: "h1", MAC: macH1, Addrs: hostAddrs(snatAddr)}, {NS: t.abroad, Name: "a0", MAC: macA0, Addrs: hostAddrs(targetAddr)}},
		// g0: where the generator program is attached (see newGen); no traffic.
		{{NS: t.client, Name: "g0"}, {NS: t.client, Name: "g1"}},
		// k0, k1: where the program-cost figure holds roam's program (XDPBench.HoldOn); no traffic.
		{{NS: t.home, Name: "k0"}, {NS: t.home, Name: "k1"}},
	} {
		if err := netns.Veth(pair[0], pair[1]); err != nil {
			return err
		}
	}
	type neigh struct {
		ns, dev string
		ip      [2]netip.Addr
		mac     net.HardwareAddr
	}
	for _, n := range []neigh{
		{t.client, "c0", frontAddr, macH0},
		{t.home, "h0", clientAddr, macC0},
		{t.home, "h1", targetAddr, macA0},
		{t.abroad, "a0", snatAddr, macH1},
	} {
		err := netns.Handle(n.ns, func(h *netlink.Handle) error {
			l, err := h.LinkByName(n.dev)
			if err != nil {
				return err
			}
			for _, ip := range n.ip {
				err := h.NeighSet(&netlink.Neigh{LinkIndex: l.Attrs().Index, State: netlink.NUD_PERMANENT, IP: ip.AsSlice(), HardwareAddr: n.mac})
				if err != nil {
					return fmt.Errorf("set neighbour %s on %s: %w", ip, n.dev, err)
				}
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("in %s: %w", n.ns, err)
		}
	}
	// The client sends everything to the home node; the home node routes
	// the generated flows' sources back to the client.
	routes := []struct {
		ns, dev string
		dst     [2]netip.Prefix
		via     [2]netip.Addr
	}{
		{t.client, "c0", [2]netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")}, frontAddr},
		{t.home, "h0", flowSrc, clientAddr},
	}
	for _, r := range routes {
		err := netns.Handle(r.ns, func(h *netlink.Handle) error {
			l, err := h.LinkByName(r.dev)
			if err != nil {
				return err
			}
			for f := range r.dst {
				dst := &net.IPNet{IP: r.dst[f].Addr().AsSlice(), Mask: net.CIDRMask(r.dst[f].Bits(), r.dst[f].Addr().BitLen())}
				if err := h.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Dst: dst, Gw: r.via[f].AsSlice()}); err != nil {
					return fmt.Errorf("add route %s via %s: %w", r.dst[f], r.via[f], err)
				}
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("in %s: %w", r.ns, err)
		}
	}
	return setSysctls(t.home, map[string]string{"net.ipv4.ip_forward": "1", "net.ipv6.conf.all.forwarding": "1"})
}

// setSysctls sets per-namespace sysctls of ns.
func setSysctls(ns string, kv map[string]string) error {
	for k, v := range kv {
		if err := netns.Sysctl(ns, k, v); err != nil {
			return err
		}
	}
	return nil
}

// close deletes the namespaces (and with them veths, XDP links, netfilter rules and conntrack entries).
func (t *topo) close() {
	for _, ns := range []string{t.client, t.home, t.abroad} {
		if netns.Exists(ns) {
			_ = netns.Delete(ns)
		}
	}
}

// holdIfaces are the indices of k0 and k1 in the home namespace (XDPBench.HoldOn).
func (t *topo) holdIfaces() (int, int, error) {
	var idx [2]int
	err := netns.Do(t.home, func() error {
		for i, name := range []string{"k0", "k1"} {
			l, err := netlink.LinkByName(name)
			if err != nil {
				return err
			}
			idx[i] = l.Attrs().Index
		}
		return nil
	})
	if err != nil {
		return 0, 0, fmt.Errorf("find k0, k1: %w", err)
	}
	return idx[0], idx[1], nil
}
