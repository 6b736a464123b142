package dataplane

// The kernel's part of SRv6 path mode at a location: what a copy sends from
// its frontend's address goes back to the home through the home's SID (a
// seg6 encap route, H.Encaps, chosen by a source rule), with this node's
// SID as the outer source (the home accepts SIDs' packets only from roam's
// locators). Everything here acts on the calling thread's network
// namespace.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/roamnet/roam/dataplane/lb"
)

// Generic netlink of seg6 (linux/seg6_genl.h).
const (
	seg6GenlName     = "SEG6"
	seg6CmdSetTunsrc = 3
	seg6AttrDst      = 1
	seg6GenlVersion  = 1
)

// SRv6ReturnRulePriority is the priority of the return routes' rules
// (SRv6Return): before the main table's (32766).
const SRv6ReturnRulePriority = 1000

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
	rule.Priority = SRv6ReturnRulePriority
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

// Remove deletes what Install added: the rule, and every route of Table
// in the frontend's family (whatever SID it encapsulates to: an IPv4
// route is deleted only by its exact encap, which the caller may no
// longer know). What is already gone is no error. HomeSID and Dev are not
// needed.
func (r SRv6Return) Remove() error {
	var errs []error
	if err := netlink.RuleDel(r.rule()); err != nil && !errors.Is(err, unix.ENOENT) {
		errs = append(errs, fmt.Errorf("remove srv6 return rule for %s: %w", r.Frontend, err))
	}
	routes, err := netlink.RouteListFiltered(r.rule().Family, &netlink.Route{Table: r.Table}, netlink.RT_FILTER_TABLE)
	if err != nil {
		errs = append(errs, fmt.Errorf("remove srv6 return routes for %s: list table %d: %w", r.Frontend, r.Table, err))
	}
	for _, rt := range routes {
		if err := netlink.RouteDel(&rt); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("remove srv6 return route for %s: %w", r.Frontend, err))
		}
	}
	return errors.Join(errs...)
}

// SRv6Returns keeps a location node's return routes. Services of one home
// share its frontend address and differ by port, and the kernel chooses
// the return by source address only, so there is one rule per address,
// "from address -> its table", and one default route in that table, to
// one home SID: the SID of the frontend most recently installed among
// those of the address still installed (all of them name a node of the
// same home, any of which decapsulates). A frontend's removal drops its
// part only: the route moves to the SID another frontend of the address
// still needs, and the rule and table go with the address's last
// frontend. Tables are allocated, one per address, among [Base,
// Base+Count) (the lowest not in use by a rule of ours; an address's rule
// found in the kernel keeps its table, so an agent restarted reuses what
// it installed), never shared by two addresses. It acts on the calling
// thread's network namespace.
type SRv6Returns struct {
	Base, Count int
	// Netlink lists the kernel's rules and routes (nil: the calling
	// thread's namespace); a test injects failures through it.
	Netlink RouteLister
	// Users, when set, records the frontends installed by Set (key
	// FrontendKey): it outlives the agent (OpenSRv6ReturnUsers pins it),
	// so that Adopt knows them.
	Users *ebpf.Map

	mu  sync.Mutex
	seq uint64
	by  map[lb.Frontend]srv6Ret
}

// OpenSRv6ReturnUsers opens the map of the frontends with a return
// installed (SRv6Returns.Users), pinned in pinPath (created on first use).
func OpenSRv6ReturnUsers(pinPath string) (*ebpf.Map, error) {
	m, err := ebpf.NewMapWithOptions(&ebpf.MapSpec{Name: "roam_srv6_ret", Type: ebpf.Hash,
		KeySize: uint32(binary.Size(FrontendKey{})), ValueSize: 1, MaxEntries: 65536, Pinning: ebpf.PinByName},
		ebpf.MapOptions{PinPath: pinPath})
	if err != nil {
		return nil, fmt.Errorf("open srv6 return users in %s: %w", pinPath, err)
	}
	return m, nil
}

// OpenSRv6LoAddrs opens the record of the frontend addresses the agent
// put on lo for its copies (roam_srv6_lo, key the address's 16 bytes,
// IPv4 mapped), pinned in pinPath (created on first use): it outlives the
// agent, so that a restarted agent still removes them when their last
// copy goes, and leaves alone an address it did not add.
func OpenSRv6LoAddrs(pinPath string) (*ebpf.Map, error) {
	m, err := ebpf.NewMapWithOptions(&ebpf.MapSpec{Name: "roam_srv6_lo", Type: ebpf.Hash,
		KeySize: 16, ValueSize: 1, MaxEntries: 65536, Pinning: ebpf.PinByName},
		ebpf.MapOptions{PinPath: pinPath})
	if err != nil {
		return nil, fmt.Errorf("open srv6 lo addresses in %s: %w", pinPath, err)
	}
	return m, nil
}

// RouteLister is the part of routing netlink SRv6Returns reads the kernel
// by (*netlink.Handle has it).
type RouteLister interface {
	RuleList(family int) ([]netlink.Rule, error)
	RouteListFiltered(family int, filter *netlink.Route, filterMask uint64) ([]netlink.Route, error)
}

func (s *SRv6Returns) nl() RouteLister {
	if s.Netlink == nil {
		return nlPkg{}
	}
	return s.Netlink
}

// nlPkg is netlink's package-level handle: the calling thread's namespace.
type nlPkg struct{}

func (nlPkg) RuleList(family int) ([]netlink.Rule, error) { return netlink.RuleList(family) }
func (nlPkg) RouteListFiltered(family int, filter *netlink.Route, filterMask uint64) ([]netlink.Route, error) {
	return netlink.RouteListFiltered(family, filter, filterMask)
}

// SRv6AdoptError is Adopt's failure to read the kernel; Reason says which
// read ("list_rules", "list_routes").
type SRv6AdoptError struct {
	Reason string
	Err    error
}

func (e *SRv6AdoptError) Error() string { return e.Err.Error() }
func (e *SRv6AdoptError) Unwrap() error { return e.Err }

type srv6Ret struct {
	sid netip.Addr
	seq uint64
	// adopted: taken over from the kernel by Adopt, not installed by Set
	// since; such a frontend leaves with its copy too (CopyGone).
	adopted bool
}

// NewSRv6Returns keeps return routes in the tables [base, base+count).
func NewSRv6Returns(base, count int) *SRv6Returns {
	return &SRv6Returns{Base: base, Count: count, by: map[lb.Frontend]srv6Ret{}}
}

// Set installs f's return to homeSID (remove: drops f's part).
func (s *SRv6Returns) Set(f lb.Frontend, homeSID netip.Addr, remove bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	a := f.Addr.Unmap()
	old, had := s.by[f]
	if err := s.record(f, remove); err != nil {
		return err
	}
	switch {
	case remove:
		delete(s.by, f)
	case !had || old.sid != homeSID:
		s.seq++
		s.by[f] = srv6Ret{sid: homeSID, seq: s.seq}
	case old.adopted:
		s.by[f] = srv6Ret{sid: homeSID, seq: old.seq} // installed now: no longer only adopted
	}
	if err := s.sync(a); err != nil {
		if !remove { // not installed: f's part is not there either
			if had {
				s.by[f] = old
			} else {
				delete(s.by, f)
				_ = s.record(f, true) // best effort: Adopt takes a user only where its address has a rule
			}
		}
		return err
	}
	return nil
}

// record keeps f in Users (remove: takes it out).
func (s *SRv6Returns) record(f lb.Frontend, remove bool) error {
	if s.Users == nil {
		return nil
	}
	k := frontendKey(f)
	if remove {
		if err := s.Users.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("srv6 return for %s: forget its user: %w", f, err)
		}
		return nil
	}
	if err := s.Users.Put(&k, uint8(1)); err != nil {
		return fmt.Errorf("srv6 return for %s: record its user: %w", f, err)
	}
	return nil
}

// Adopt takes over the return routes an earlier run of the agent left in
// the kernel, so that the routes after a restart are what they would be
// without one: each frontend recorded in Users (installed by Set and not
// removed) whose address has a rule of ours is a user of that address's
// route, at the SID the route goes to, as if Set had installed it (a
// direct-return copy, never installed, is none). Without this, the first
// removal after a restart found no other user of the address and dropped
// the route its other copies still answer by, until their next install.
// An address whose rule has no user recorded (left by an agent from
// before Users, or without them) cannot tell its direct-return copies
// from the others: there each frontend of copies (the node's copies
// serving or draining, which outlive the agent in the pinned map) is a
// user, the safe side (a direct-return copy's answers go home
// encapsulated for a while rather than the others' leaving
// unencapsulated, which their networks may drop), and leaves with its
// copy (CopyGone) unless Set installs it again, so it holds no route for
// ever. Call it once, at
// start, before Set. When it cannot read the kernel (*SRv6AdoptError) it
// adopts nothing.
func (s *SRv6Returns) Adopt(copies []lb.Frontend) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	rules, err := s.nl().RuleList(netlink.FAMILY_ALL)
	if err != nil {
		return &SRv6AdoptError{Reason: "list_rules", Err: fmt.Errorf("adopt srv6 returns: list rules: %w", err)}
	}
	sids := map[netip.Addr]netip.Addr{} // address -> the SID its table's route goes to
	for _, r := range rules {
		if r.Priority != SRv6ReturnRulePriority || r.Table < s.Base || r.Table >= s.Base+s.Count || r.Src == nil {
			continue
		}
		a, ok := netip.AddrFromSlice(r.Src.IP)
		if ones, bits := r.Src.Mask.Size(); !ok || ones != bits {
			continue
		}
		a = a.Unmap()
		fam := netlink.FAMILY_V6
		if a.Is4() {
			fam = netlink.FAMILY_V4
		}
		routes, err := s.nl().RouteListFiltered(fam, &netlink.Route{Table: r.Table}, netlink.RT_FILTER_TABLE)
		if err != nil {
			return &SRv6AdoptError{Reason: "list_routes", Err: fmt.Errorf("adopt srv6 return of %s: list table %d: %w", a, r.Table, err)}
		}
		for _, rt := range routes {
			if e, ok := rt.Encap.(*netlink.SEG6Encap); ok && len(e.Segments) == 1 {
				if sid, ok := netip.AddrFromSlice(e.Segments[0]); ok {
					sids[a] = sid
				}
			}
		}
	}
	users := map[lb.Frontend]bool{}   // installed by Set, recorded in Users
	recorded := map[netip.Addr]bool{} // addresses with a user recorded
	if s.Users != nil {
		var k FrontendKey
		var v uint8
		it := s.Users.Iterate()
		for it.Next(&k, &v) {
			users[k.Frontend()] = true
			recorded[k.Frontend().Addr.Unmap()] = true
		}
		if err := it.Err(); err != nil {
			return &SRv6AdoptError{Reason: "list_users", Err: fmt.Errorf("adopt srv6 returns: list users: %w", err)}
		}
	}
	adopt := func(f lb.Frontend, copyOnly bool) {
		sid, ok := sids[f.Addr.Unmap()]
		if _, had := s.by[f]; !ok || had {
			return
		}
		s.seq++
		s.by[f] = srv6Ret{sid: sid, seq: s.seq, adopted: copyOnly}
	}
	for f := range users {
		adopt(f, false)
	}
	for _, f := range copies {
		if !recorded[f.Addr.Unmap()] {
			adopt(f, true)
		}
	}
	return nil
}

// CopyGone tells that f's copy left the node: an adopted f (Adopt) that
// was not installed since stops using its address's route, which goes
// with the address's last user.
func (s *SRv6Returns) CopyGone(f lb.Frontend) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.by[f]
	if !ok || !r.adopted {
		return nil
	}
	delete(s.by, f)
	if err := s.sync(f.Addr.Unmap()); err != nil {
		s.by[f] = r // still a user: a retry syncs again
		return err
	}
	return nil
}

// HomeSID is the SID the return of address a goes to now (unset: none).
func (s *SRv6Returns) HomeSID(a netip.Addr) netip.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.want(a.Unmap()).sid
}

func (s *SRv6Returns) want(a netip.Addr) srv6Ret {
	var best srv6Ret
	for f, r := range s.by {
		if f.Addr.Unmap() == a && r.seq > best.seq {
			best = r
		}
	}
	return best
}

// sync makes the kernel's return of address a what s.by says.
func (s *SRv6Returns) sync(a netip.Addr) error {
	rules, err := s.nl().RuleList(netlink.FAMILY_ALL)
	if err != nil {
		return fmt.Errorf("srv6 return for %s: list rules: %w", a, err)
	}
	used := map[int]bool{}
	var mine []int // tables of a's rules
	for _, r := range rules {
		if r.Priority != SRv6ReturnRulePriority || r.Table < s.Base || r.Table >= s.Base+s.Count {
			continue
		}
		used[r.Table] = true
		if r.Src != nil {
			if src, ok := netip.AddrFromSlice(r.Src.IP); ok && src.Unmap() == a {
				if ones, bits := r.Src.Mask.Size(); ones == bits {
					mine = append(mine, r.Table)
				}
			}
		}
	}
	var errs []error
	// More than one rule of a's (an agent from before one rule per
	// address): only the first would match; the others go.
	for len(mine) > 1 {
		if err := (SRv6Return{Frontend: a, Table: mine[len(mine)-1]}).Remove(); err != nil {
			errs = append(errs, err)
		}
		mine = mine[:len(mine)-1]
	}
	w := s.want(a)
	if !w.sid.IsValid() {
		if len(mine) == 1 {
			errs = append(errs, SRv6Return{Frontend: a, Table: mine[0]}.Remove())
		}
		return errors.Join(errs...)
	}
	table := 0
	if len(mine) == 1 {
		table = mine[0]
	} else {
		for t := s.Base; t < s.Base+s.Count; t++ {
			if !used[t] {
				table = t
				break
			}
		}
		if table == 0 {
			return errors.Join(append(errs, fmt.Errorf("srv6 return for %s: all %d tables from %d in use", a, s.Count, s.Base))...)
		}
	}
	routes, err := netlink.RouteGet(w.sid.AsSlice())
	if err != nil || len(routes) == 0 {
		return errors.Join(append(errs, fmt.Errorf("srv6 return for %s: no route to the home SID %s: %v", a, w.sid, err))...)
	}
	link, err := netlink.LinkByIndex(routes[0].LinkIndex)
	if err != nil {
		return errors.Join(append(errs, fmt.Errorf("srv6 return for %s: %w", a, err))...)
	}
	if err := (SRv6Return{Frontend: a, HomeSID: w.sid, Dev: link.Attrs().Name, Table: table}).Install(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
