package dataplane

// The kernel's part of SRv6 path mode at a location: what a copy sends from
// its frontend's address goes back to the home through the home's SID (a
// seg6 encap route, H.Encaps, chosen by a source rule), with this node's
// SID as the outer source (the home accepts SIDs' packets only from roam's
// locators). Everything here acts on the calling thread's network
// namespace.

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// Generic netlink of seg6 (linux/seg6_genl.h).
const (
	seg6GenlName      = "SEG6"
	seg6CmdSetTunsrc  = 3
	seg6AttrDst       = 1
	seg6GenlVersion   = 1
	srv6ReturnRulePri = 1000 // before the main table's rule (32766)
)

// SetSRv6TunnelSource sets the outer source of every seg6 encapsulation of
// this namespace (`ip sr tunsrc set`): the node's SID.
func SetSRv6TunnelSource(sid netip.Addr) error {
	if !sid.Is6() || sid.Is4In6() {
		return fmt.Errorf("set srv6 tunnel source: %s is not IPv6", sid)
	}
	fam, err := netlink.GenlFamilyGet(seg6GenlName)
	if err != nil {
		return fmt.Errorf("set srv6 tunnel source: find generic netlink family %s: %w (is the kernel built with CONFIG_IPV6_SEG6_LWTUNNEL?)", seg6GenlName, err)
	}
	req := nl.NewNetlinkRequest(int(fam.ID), unix.NLM_F_ACK)
	req.AddData(&nl.Genlmsg{Command: seg6CmdSetTunsrc, Version: seg6GenlVersion})
	req.AddData(nl.NewRtAttr(seg6AttrDst, sid.AsSlice()))
	if _, err := req.Execute(unix.NETLINK_GENERIC, 0); err != nil {
		return fmt.Errorf("set srv6 tunnel source %s: %w", sid, err)
	}
	return nil
}

// SRv6Return is the return path of one frontend's copy at a location.
type SRv6Return struct {
	Frontend netip.Addr // the address the copy answers from
	HomeSID  netip.Addr // where its answers go: the home's SID
	Dev      string     // the interface towards the home
	Table    int        // a routing table of its own
}

func (r SRv6Return) rule() *netlink.Rule {
	rule := netlink.NewRule()
	rule.Src = hostNet(r.Frontend)
	rule.Table = r.Table
	rule.Priority = srv6ReturnRulePri
	rule.Family = netlink.FAMILY_V6
	if r.Frontend.Unmap().Is4() {
		rule.Family = netlink.FAMILY_V4
	}
	return rule
}

func hostNet(a netip.Addr) *net.IPNet {
	a = a.Unmap()
	return &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(a.BitLen(), a.BitLen())}
}

func (r SRv6Return) route(link netlink.Link) *netlink.Route {
	dst := &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
	if r.Frontend.Unmap().Is4() {
		dst = &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}
	}
	return &netlink.Route{
		LinkIndex: link.Attrs().Index,
		Dst:       dst,
		Table:     r.Table,
		Encap:     &netlink.SEG6Encap{Mode: nl.SEG6_IPTUN_MODE_ENCAP, Segments: []net.IP{r.HomeSID.AsSlice()}},
	}
}

// Install adds the rule (from the frontend's address, look up Table) and
// Table's default route encapsulating to HomeSID. Installing again is a
// no-op.
func (r SRv6Return) Install() error {
	if !r.Frontend.IsValid() || !r.HomeSID.Is6() || r.HomeSID.Is4In6() || r.Table <= 0 || r.Table == unix.RT_TABLE_MAIN || r.Table == unix.RT_TABLE_LOCAL {
		return fmt.Errorf("install srv6 return %+v: want a frontend address, an IPv6 home SID and a table of its own", r)
	}
	link, err := netlink.LinkByName(r.Dev)
	if err != nil {
		return fmt.Errorf("install srv6 return for %s: find %s: %w", r.Frontend, r.Dev, err)
	}
	if err := netlink.RouteReplace(r.route(link)); err != nil {
		return fmt.Errorf("install srv6 return for %s: route to %s: %w", r.Frontend, r.HomeSID, err)
	}
	if err := netlink.RuleAdd(r.rule()); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("install srv6 return for %s: rule: %w", r.Frontend, err)
	}
	return nil
}

// Remove deletes what Install added; what is already gone is no error.
func (r SRv6Return) Remove() error {
	var errs []error
	if err := netlink.RuleDel(r.rule()); err != nil && !errors.Is(err, unix.ENOENT) {
		errs = append(errs, fmt.Errorf("remove srv6 return rule for %s: %w", r.Frontend, err))
	}
	if link, err := netlink.LinkByName(r.Dev); err == nil {
		if err := netlink.RouteDel(r.route(link)); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("remove srv6 return route for %s: %w", r.Frontend, err))
		}
	}
	return errors.Join(errs...)
}
