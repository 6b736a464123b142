package netns

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// The SRv6 path mode's topology (dataplane/e2e's SRv6 suite): a client in
// both families, the home, and two locations reached over an IPv6-only
// underlay (the home routes between them, as a WAN would):
//
//	client ns             home ns (frontends)                old ns
//	c0 10.20.1.2     ── h0 10.20.1.1           h1 fd20:2::1 ── o0 fd20:2::2
//	   fd20:1::2           fd20:1::1           h2 fd20:3::1 ── n0 fd20:3::2
//	                                                          new ns
//
// Each of home, old and new owns a locator (fc00:20:N::/48) and is its
// node 0 (SID fc00:20:N::1); the home routes each location's locator to
// it, the locations route everything through the home. The frontends
// (10.20.9.1, fd20:9::1) are on lo in old and new, so a copy there can
// answer from them. No SRv6 processing by the kernel is set up here: that
// is the data plane's part (roam's XDP, its return routes).
var (
	SRv6ClientV4   = netip.MustParseAddr("10.20.1.2")
	SRv6ClientV6   = netip.MustParseAddr("fd20:1::2")
	SRv6HomeV4     = netip.MustParseAddr("10.20.1.1")
	SRv6HomeV6     = netip.MustParseAddr("fd20:1::1")
	SRv6FrontendV4 = netip.MustParseAddr("10.20.9.1")
	SRv6FrontendV6 = netip.MustParseAddr("fd20:9::1")
	SRv6LocHome    = netip.MustParsePrefix("fc00:20:1::/48")
	SRv6LocOld     = netip.MustParsePrefix("fc00:20:2::/48")
	SRv6LocNew     = netip.MustParsePrefix("fc00:20:3::/48")
	SRv6SIDHome    = netip.MustParseAddr("fc00:20:1::1")
	SRv6SIDOld     = netip.MustParseAddr("fc00:20:2::1")
	SRv6SIDNew     = netip.MustParseAddr("fc00:20:3::1")
	// SRv6SIDNew1 is the new location's node 1's SID (lb.NodeSID of its
	// locator, node 1), on its own node (SRv6Topology.AddNewNode1).
	SRv6SIDNew1 = netip.MustParseAddr("fc00:20:3:1::1")
)

// SRv6Topology is the four namespaces, named uniquely, and New1 once
// AddNewNode1 added it.
type SRv6Topology struct {
	Client, Home, Old, New string
	New1                   string
	Suffix                 string
}

// AddNewNode1 gives the new location a second node, node 1 of its locator
// (SID SRv6SIDNew1), in a namespace of its own:
//
//	home ns h3 fd20:4::1 ── m0 fd20:4::2  new node 1 ns
//
// The home routes node 1's part of the locator (fc00:20:3:1::/64, longer
// than the location's /48, which stays node 0's) to it; it routes
// everything through the home and has the frontends on lo, as node 0.
func (t *SRv6Topology) AddNewNode1() error {
	t.New1 = "roam-sm-" + t.Suffix
	if err := Create(t.New1); err != nil {
		return err
	}
	if err := Veth(End{NS: t.Home, Name: "h3", Addrs: []netip.Prefix{pfx("fd20:4::1/64")}},
		End{NS: t.New1, Name: "m0", Addrs: []netip.Prefix{pfx("fd20:4::2/64")}}); err != nil {
		return err
	}
	if err := addRoutes([]route{
		{t.Home, "h3", pfx("fc00:20:3:1::/64"), netip.MustParseAddr("fd20:4::2")},
		{t.New1, "m0", pfx("::/0"), netip.MustParseAddr("fd20:4::1")},
	}); err != nil {
		return err
	}
	return t.location(t.New1)
}

// NewSRv6Topology builds it; Close removes it all.
func NewSRv6Topology() (*SRv6Topology, error) {
	sfx := RandSuffix(4)
	t := &SRv6Topology{Client: "roam-sc-" + sfx, Home: "roam-sh-" + sfx, Old: "roam-so-" + sfx, New: "roam-sn-" + sfx, Suffix: sfx}
	if err := t.build(); err != nil {
		return nil, errors.Join(fmt.Errorf("build srv6 topology %s: %w", sfx, err), t.Close())
	}
	return t, nil
}

// route is a route to dst via a gateway out of dev in namespace ns.
type route struct {
	ns, dev string
	dst     netip.Prefix
	via     netip.Addr
}

// addRoutes adds each route in its namespace.
func addRoutes(rs []route) error {
	for _, r := range rs {
		err := Handle(r.ns, func(h *netlink.Handle) error {
			l, err := h.LinkByName(r.dev)
			if err != nil {
				return err
			}
			return h.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Dst: ipnet(r.dst), Gw: r.via.AsSlice()})
		})
		if err != nil {
			return fmt.Errorf("add route %s via %s in %s: %w", r.dst, r.via, r.ns, err)
		}
	}
	return nil
}

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }

func ipnet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func (t *SRv6Topology) build() error {
	for _, name := range []string{t.Client, t.Home, t.Old, t.New} {
		if err := Create(name); err != nil {
			return err
		}
	}
	pairs := [][2]End{
		{{NS: t.Home, Name: "h0", Addrs: []netip.Prefix{pfx("10.20.1.1/24"), pfx("fd20:1::1/64")}},
			{NS: t.Client, Name: "c0", Addrs: []netip.Prefix{pfx("10.20.1.2/24"), pfx("fd20:1::2/64")}}},
		{{NS: t.Home, Name: "h1", Addrs: []netip.Prefix{pfx("fd20:2::1/64")}},
			{NS: t.Old, Name: "o0", Addrs: []netip.Prefix{pfx("fd20:2::2/64")}}},
		{{NS: t.Home, Name: "h2", Addrs: []netip.Prefix{pfx("fd20:3::1/64")}},
			{NS: t.New, Name: "n0", Addrs: []netip.Prefix{pfx("fd20:3::2/64")}}},
	}
	for _, p := range pairs {
		if err := Veth(p[0], p[1]); err != nil {
			return err
		}
	}
	if err := addRoutes([]route{
		{t.Client, "c0", pfx("0.0.0.0/0"), SRv6HomeV4},
		{t.Client, "c0", pfx("::/0"), SRv6HomeV6},
		{t.Home, "h1", SRv6LocOld, netip.MustParseAddr("fd20:2::2")},
		{t.Home, "h2", SRv6LocNew, netip.MustParseAddr("fd20:3::2")},
		{t.Old, "o0", pfx("::/0"), netip.MustParseAddr("fd20:2::1")},
		{t.New, "n0", pfx("::/0"), netip.MustParseAddr("fd20:3::1")},
	}); err != nil {
		return err
	}
	for _, ns := range []string{t.Old, t.New} {
		if err := t.location(ns); err != nil {
			return err
		}
	}
	for _, k := range []string{"net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"} {
		if err := Sysctl(t.Home, k, "1\n"); err != nil {
			return err
		}
	}
	return AttachXDPPass(t.Client, "c0")
}

// location sets a location's node up: the frontends on lo, no reverse
// path filter, IPv6 forwarding.
func (t *SRv6Topology) location(ns string) error {
	if err := SRv6FrontendsOnLo(ns); err != nil {
		return err
	}
	// Decapsulated packets come in on the underlay from clients it has no route to.
	for _, k := range []string{"net.ipv4.conf.all.rp_filter", "net.ipv4.conf.default.rp_filter"} {
		if err := Sysctl(ns, k, "0\n"); err != nil {
			return err
		}
	}
	// A location forwards to the next segment: bpf_fib_lookup does so only where the kernel would.
	if err := Sysctl(ns, "net.ipv6.conf.all.forwarding", "1\n"); err != nil {
		return err
	}
	return nil
}

// SRv6FrontendsOnLo puts the frontends (SRv6FrontendV4, SRv6FrontendV6) on
// ns's lo, set up: a copy there answers from them.
func SRv6FrontendsOnLo(ns string) error {
	err := Handle(ns, func(h *netlink.Handle) error {
		lo, err := h.LinkByName("lo")
		if err != nil {
			return err
		}
		if err := h.LinkSetUp(lo); err != nil {
			return err
		}
		for _, a := range []netip.Prefix{netip.PrefixFrom(SRv6FrontendV4, 32), netip.PrefixFrom(SRv6FrontendV6, 128)} {
			if err := h.AddrAdd(lo, &netlink.Addr{IPNet: ipnet(a), Flags: unix.IFA_F_NODAD}); err != nil {
				return fmt.Errorf("add %s to lo: %w", a, err)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("frontend addresses in %s: %w", ns, err)
	}
	return nil
}

// Close deletes the namespaces (and with them the veths).
func (t *SRv6Topology) Close() error {
	var errs []error
	names := []string{t.Client, t.Home, t.Old, t.New}
	if t.New1 != "" {
		names = append(names, t.New1)
	}
	for _, name := range names {
		if err := Delete(name); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// EnterUnderlay is Enter for tests of a location's return routes: in the
// fresh namespace lo is up and the underlay prefix is routed out of a veth
// rt0 (its peer rt1 in the same namespace), where a seg6 route to a SID
// inside it can go.
func EnterUnderlay(t testing.TB, underlay netip.Prefix) {
	t.Helper()
	h := Enter(t)
	lo, err := h.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetUp(lo); err != nil {
		t.Fatal(err)
	}
	dev := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "rt0"}, PeerName: "rt1"}
	if err := h.LinkAdd(dev); err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetUp(dev); err != nil {
		t.Fatal(err)
	}
	if err := h.RouteAdd(&netlink.Route{LinkIndex: dev.Attrs().Index, Dst: ipnet(underlay)}); err != nil {
		t.Fatal(err)
	}
}

// SRv6ReturnState is how the kernel of the calling thread's namespace
// routes the answers from a: the tables of a's rules at priority pri, and
// the SIDs their seg6 routes encapsulate to.
func SRv6ReturnState(t testing.TB, a netip.Addr, pri int) (tables []int, sids []netip.Addr) {
	t.Helper()
	rules, err := netlink.RuleList(netlink.FAMILY_ALL)
	if err != nil {
		t.Fatal(err)
	}
	fam := netlink.FAMILY_V6
	if a.Unmap().Is4() {
		fam = netlink.FAMILY_V4
	}
	for _, r := range rules {
		if r.Priority != pri || r.Src == nil {
			continue
		}
		if src, ok := netip.AddrFromSlice(r.Src.IP); ok && src.Unmap() == a.Unmap() {
			tables = append(tables, r.Table)
			routes, err := netlink.RouteListFiltered(fam, &netlink.Route{Table: r.Table}, netlink.RT_FILTER_TABLE)
			if err != nil {
				t.Fatal(err)
			}
			for _, rt := range routes {
				if e, ok := rt.Encap.(*netlink.SEG6Encap); ok && len(e.Segments) == 1 {
					sid, _ := netip.AddrFromSlice(e.Segments[0])
					sids = append(sids, sid)
				}
			}
		}
	}
	return tables, sids
}
