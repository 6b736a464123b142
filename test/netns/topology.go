package netns

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
)

// The data plane's end-to-end topology (dataplane/e2e and
// test/bench/dataplane run on it):
//
//	client ns          home ns (the agent)               abroad ns
//	c0 10.10.1.2 ── h0 10.10.1.1 (frontend)   h1 10.10.2.1 ── a0 10.10.2.2, 10.10.2.3
//
// h0 and h1 are for roam's XDP program; c0 and a0 carry an XDP_PASS
// program so frames redirected into them are received. Neighbours are
// static.
var (
	ClientAddr  = netip.MustParseAddr("10.10.1.2")
	HomeAddr    = netip.MustParseAddr("10.10.1.1") // the frontend's address
	HomeWAN     = netip.MustParseAddr("10.10.2.1") // the SNAT address
	AbroadAddr1 = netip.MustParseAddr("10.10.2.2")
	AbroadAddr2 = netip.MustParseAddr("10.10.2.3")
)

// Topology is the three namespaces, named uniquely.
type Topology struct {
	Client, Home, Abroad string
	Suffix               string
}

// NewTopology creates the namespaces, veths, addresses, routes, static
// neighbours and the XDP_PASS programs on the peers. Close removes it all.
func NewTopology() (*Topology, error) {
	sfx := RandSuffix(4)
	t := &Topology{Client: "roam-c-" + sfx, Home: "roam-h-" + sfx, Abroad: "roam-a-" + sfx, Suffix: sfx}
	if err := t.build(); err != nil {
		return nil, errors.Join(fmt.Errorf("build topology %s: %w", sfx, err), t.Close())
	}
	return t, nil
}

func (t *Topology) build() error {
	for _, name := range []string{t.Client, t.Home, t.Abroad} {
		if err := Create(name); err != nil {
			return err
		}
	}
	p24 := func(a netip.Addr) netip.Prefix { return netip.PrefixFrom(a, 24) }
	if err := Veth(End{NS: t.Home, Name: "h0", Addrs: []netip.Prefix{p24(HomeAddr)}},
		End{NS: t.Client, Name: "c0", Addrs: []netip.Prefix{p24(ClientAddr)}}); err != nil {
		return err
	}
	if err := Veth(End{NS: t.Home, Name: "h1", Addrs: []netip.Prefix{p24(HomeWAN)}},
		End{NS: t.Abroad, Name: "a0", Addrs: []netip.Prefix{p24(AbroadAddr1), p24(AbroadAddr2)}}); err != nil {
		return err
	}
	// Client: everything via home. Abroad needs only its subnet (SNAT).
	err := Handle(t.Client, func(h *netlink.Handle) error {
		l, err := h.LinkByName("c0")
		if err != nil {
			return err
		}
		return h.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Gw: HomeAddr.AsSlice()})
	})
	if err != nil {
		return fmt.Errorf("add client default route: %w", err)
	}
	macs := map[string]net.HardwareAddr{}
	for _, d := range []struct{ ns, dev string }{{t.Client, "c0"}, {t.Home, "h0"}, {t.Home, "h1"}, {t.Abroad, "a0"}} {
		err := Handle(d.ns, func(h *netlink.Handle) error {
			l, err := h.LinkByName(d.dev)
			if err == nil {
				macs[d.dev] = l.Attrs().HardwareAddr
			}
			return err
		})
		if err != nil {
			return fmt.Errorf("find %s: %w", d.dev, err)
		}
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
		err := Handle(n.ns, func(h *netlink.Handle) error {
			l, err := h.LinkByName(n.dev)
			if err != nil {
				return err
			}
			return h.NeighSet(&netlink.Neigh{LinkIndex: l.Attrs().Index, Family: netlink.FAMILY_V4,
				State: netlink.NUD_PERMANENT, IP: n.ip.AsSlice(), HardwareAddr: macs[n.mac]})
		})
		if err != nil {
			return fmt.Errorf("set neighbour %s on %s: %w", n.ip, n.dev, err)
		}
	}
	// bpf_fib_lookup forwards only where the kernel would (as on any node).
	if err := Sysctl(t.Home, "net.ipv4.ip_forward", "1\n"); err != nil {
		return err
	}
	// XDP_PASS on the peers, so frames redirected into them are received.
	for _, p := range []struct{ ns, dev string }{{t.Client, "c0"}, {t.Abroad, "a0"}} {
		if err := AttachXDPPass(p.ns, p.dev); err != nil {
			return err
		}
	}
	return nil
}

// Close deletes the namespaces (and with them the veths).
func (t *Topology) Close() error {
	var errs []error
	for _, name := range []string{t.Client, t.Home, t.Abroad} {
		if err := Delete(name); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
