package main

// The agent's part of SRv6 path mode at a location: the copy state goes to
// the data plane, and the node gets what the kernel needs to deliver the
// decapsulated packets to the copy and to send its answers home: the
// frontend's address on lo (the copy answers from it) and a seg6 encap
// route chosen by that source address.

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/roamnet/roam/dataplane"
	"github.com/roamnet/roam/dataplane/lb"
)

// srv6Tables is the range of routing tables the return routes use: one per
// frontend address, allocated (dataplane.SRv6Returns).
const (
	srv6TableBase = 20000
	srv6Tables    = 4096
)

// srv6Node wraps the data plane with the node's SRv6 location work
// (agentapi.SRv6Dataplane).
type srv6Node struct {
	*dataplane.Dataplane

	mu sync.Mutex
	// copies counts the frontends with a copy here, per address: the
	// address stays on lo while one is serving or draining.
	copies map[netip.Addr]map[lb.Frontend]bool
	// added are the addresses this agent put on lo (it removes only those),
	// recorded in lo (nil: not recorded) so that a restarted agent knows
	// them.
	added map[netip.Addr]bool
	lo    *ebpf.Map
	// returns are the copies' return routes.
	returns *dataplane.SRv6Returns
}

// newSRv6Node wraps dp; on an SRv6 node it takes over what a previous run
// of the agent left for the copies still here: their frontend addresses on
// lo (copies, from the pinned copies, and added, from the pinned record
// OpenSRv6LoAddrs; an address recorded whose copies are all gone is taken
// off lo now) and their return routes (returns.Adopt). The adoption is
// best effort: when it cannot read the pinned copies, the record or the
// kernel's routes, it logs, counts in adoptFailed (by reason) and goes on
// without (the agent, its data plane and API still come up; a removal may
// then take a route other copies still use, until their next install, and
// an address may stay on lo after its last copy, as before adoption).
func newSRv6Node(dp *dataplane.Dataplane, returns *dataplane.SRv6Returns, log *slog.Logger, adoptFailed *prometheus.CounterVec) *srv6Node {
	n := &srv6Node{Dataplane: dp, copies: map[netip.Addr]map[lb.Frontend]bool{}, added: map[netip.Addr]bool{}, returns: returns}
	if !dp.SRv6Config().SID.IsValid() {
		return n
	}
	// No record yet: this is the first agent with one. If the copies
	// outlived an agent from before it, the addresses that agent put on
	// lo are unrecorded (adoptLo takes them by their form).
	_, statErr := os.Stat(filepath.Join(dp.PinPath(), "roam_srv6_lo"))
	unrecorded := errors.Is(statErr, fs.ErrNotExist)
	lo, err := dataplane.OpenSRv6LoAddrs(dp.PinPath())
	if err != nil {
		log.Error("srv6: frontend addresses on lo not recorded", "err", err)
		adoptFailed.WithLabelValues("open_lo").Inc()
	}
	n.lo = lo
	copies, err := dp.SRv6Copies()
	if err != nil {
		log.Error("srv6: adopt the return routes of a previous run: skipped", "err", err)
		adoptFailed.WithLabelValues("list_copies").Inc()
		return n
	}
	var here []lb.Frontend
	for f, s := range copies {
		if s != dataplane.SRv6Gone {
			here = append(here, f)
			a := f.Addr.Unmap()
			if n.copies[a] == nil {
				n.copies[a] = map[lb.Frontend]bool{}
			}
			n.copies[a][f] = true
		}
	}
	if err := n.adoptLo(unrecorded); err != nil {
		reason := "list_lo"
		if errors.Is(err, errLoRemove) {
			reason = "remove_lo"
		}
		log.Error("srv6: adopt the frontend addresses a previous run put on lo: skipped", "err", err)
		adoptFailed.WithLabelValues(reason).Inc()
	}
	if err := n.returns.Adopt(here); err != nil {
		reason := "other"
		var ae *dataplane.SRv6AdoptError
		if errors.As(err, &ae) {
			reason = ae.Reason
		}
		log.Error("srv6: adopt the return routes of a previous run: skipped", "err", err)
		adoptFailed.WithLabelValues(reason).Inc()
	}
	return n
}

// adoptLo takes the addresses recorded in n.lo as its own (added); one
// whose copies are all gone (the previous run stopped between a copy's
// leaving and the address's removal) is taken off lo now. unrecorded: the
// record was created by this start, so a previous agent (from before the
// record) may have put addresses on lo without recording them: an address
// on lo in the form ensureAddr gives it (leftOnLo: a host prefix; IPv6
// with IFA_F_NODAD) that is the frontend address of a copy still here is
// taken as that agent's, recorded and added, so that it leaves lo with its
// last copy (else it stayed for ever, and a local client reached the
// leftover address instead of the frontend). A node's own address of
// that form equal to a frontend is taken too in that one start: the
// record cannot tell them apart then; after it, the record does.
func (n *srv6Node) adoptLo(unrecorded bool) error {
	if n.lo == nil {
		return nil
	}
	var k [16]byte
	var v uint8
	var recorded []netip.Addr
	it := n.lo.Iterate()
	for it.Next(&k, &v) {
		recorded = append(recorded, netip.AddrFrom16(k).Unmap())
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("list srv6 lo addresses: %w", err)
	}
	if unrecorded && len(n.copies) > 0 {
		left, err := n.leftOnLo()
		if err != nil {
			return err
		}
		for _, a := range left {
			k := a.As16()
			if err := n.lo.Put(&k, uint8(1)); err != nil {
				return fmt.Errorf("record %s on lo: %w", a, err)
			}
			recorded = append(recorded, a)
		}
	}
	// All marked first: a removal that fails must not leave the others
	// unknown (they would then stay on lo after their last copy).
	for _, a := range recorded {
		n.added[a] = true
	}
	var errs []error
	for _, a := range recorded {
		if len(n.copies[a]) == 0 {
			if err := n.removeAddr(a); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: %w", errLoRemove, errors.Join(errs...))
	}
	return nil
}

// errLoRemove is adoptLo's error when taking an address off lo failed
// (counted as remove_lo; the address stays added, so the next copy of it
// that leaves takes it off).
var errLoRemove = errors.New("take an address without copies off lo")

// leftOnLo are the addresses on lo that an agent from before the record
// would have put there for the copies here (n.copies): host prefixes of
// global scope, IPv6 ones with IFA_F_NODAD (the kernel keeps no NODAD on
// IPv4 addresses).
func (n *srv6Node) leftOnLo() ([]netip.Addr, error) {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return nil, fmt.Errorf("find lo: %w", err)
	}
	addrs, err := netlink.AddrList(lo, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("list lo addresses: %w", err)
	}
	var out []netip.Addr
	for _, x := range addrs {
		a, ok := netip.AddrFromSlice(x.IP)
		if !ok || x.IPNet == nil || x.Scope != int(netlink.SCOPE_UNIVERSE) {
			continue
		}
		a = a.Unmap()
		if a.Is6() && x.Flags&unix.IFA_F_NODAD == 0 { // IPv4 keeps no NODAD
			continue
		}
		if ones, bits := x.Mask.Size(); ones != bits || ones != a.BitLen() || len(n.copies[a]) == 0 {
			continue
		}
		out = append(out, a)
	}
	return out, nil
}

// newSRv6Returns keeps the node's return routes, recording their users in
// the pin path (dataplane.OpenSRv6ReturnUsers) so that a restarted agent
// adopts exactly them; when it cannot open that record, it logs, counts
// (reason open_users) and goes on without (Adopt then takes the copies).
func newSRv6Returns(pinPath string, log *slog.Logger, adoptFailed *prometheus.CounterVec) *dataplane.SRv6Returns {
	r := dataplane.NewSRv6Returns(srv6TableBase, srv6Tables)
	users, err := dataplane.OpenSRv6ReturnUsers(pinPath)
	if err != nil {
		log.Error("srv6: return routes' users not recorded", "err", err)
		adoptFailed.WithLabelValues("open_users").Inc()
		return r
	}
	r.Users = users
	return r
}

// newSRv6AdoptFailed is the agent's count of adoptions given up
// (newSRv6Node).
func newSRv6AdoptFailed() *prometheus.CounterVec {
	return prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "roam_agent_srv6_adopt_failed_total",
		Help: "Agent starts that did not take over the SRv6 return routes of a previous run, by reason (open_users, open_lo, list_copies, list_lo, remove_lo, list_users, list_rules, list_routes).",
	}, []string{"reason"})
}

func hostPrefix(a netip.Addr) *net.IPNet {
	a = a.Unmap()
	return &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(a.BitLen(), a.BitLen())}
}

// SetSRv6Copy sets the copy's state in the data plane, and keeps the
// frontend's address on lo while a copy of it serves or drains here.
func (n *srv6Node) SetSRv6Copy(f lb.Frontend, s dataplane.SRv6State) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	a := f.Addr.Unmap()
	if s != dataplane.SRv6Gone {
		if err := n.ensureAddr(a); err != nil {
			return err
		}
		if n.copies[a] == nil {
			n.copies[a] = map[lb.Frontend]bool{}
		}
		n.copies[a][f] = true
		return n.Dataplane.SetSRv6Copy(f, s)
	}
	if err := n.Dataplane.SetSRv6Copy(f, s); err != nil {
		return err
	}
	if err := n.returns.CopyGone(f); err != nil {
		return fmt.Errorf("srv6 copy %s gone: %w", f, err)
	}
	delete(n.copies[a], f)
	if len(n.copies[a]) == 0 && n.added[a] {
		if err := n.removeAddr(a); err != nil {
			return fmt.Errorf("srv6 copy %s gone: %w", f, err)
		}
	}
	return nil
}

// removeAddr takes a, which this agent added, off lo and out of the record.
func (n *srv6Node) removeAddr(a netip.Addr) error {
	if err := setOnLo(a, false); err != nil {
		return err
	}
	delete(n.added, a)
	if n.lo != nil {
		k := a.As16()
		if err := n.lo.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("forget %s on lo: %w", a, err)
		}
	}
	return nil
}

// setOnLo is onLo; a test makes it fail.
var setOnLo = onLo

// onLo adds a to lo (on) or removes it (an address already there, or not
// there, is no error).
func onLo(a netip.Addr, on bool) error {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("find lo: %w", err)
	}
	if on {
		if err := netlink.AddrAdd(lo, &netlink.Addr{IPNet: hostPrefix(a), Flags: unix.IFA_F_NODAD}); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("add %s to lo: %w", a, err)
		}
		return nil
	}
	if err := netlink.AddrDel(lo, &netlink.Addr{IPNet: hostPrefix(a)}); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
		return fmt.Errorf("remove %s from lo: %w", a, err)
	}
	return nil
}

// ensureAddr puts a on lo unless the node has it already.
func (n *srv6Node) ensureAddr(a netip.Addr) error {
	fam := netlink.FAMILY_V4
	if a.Is6() {
		fam = netlink.FAMILY_V6
	}
	addrs, err := netlink.AddrList(nil, fam)
	if err != nil {
		return fmt.Errorf("srv6 copy: list addresses: %w", err)
	}
	for _, x := range addrs {
		if y, ok := netip.AddrFromSlice(x.IP); ok && y.Unmap() == a {
			return nil
		}
	}
	// Recorded first: an address on lo that the record misses would stay
	// there after a restart.
	k := a.As16()
	if n.lo != nil {
		if err := n.lo.Put(&k, uint8(1)); err != nil {
			return fmt.Errorf("srv6 copy: record %s on lo: %w", a, err)
		}
	}
	if err := setOnLo(a, true); err != nil {
		if n.lo != nil {
			_ = n.lo.Delete(&k) // best effort: not added
		}
		return fmt.Errorf("srv6 copy: %w", err)
	}
	n.added[a] = true
	return nil
}

// SetSRv6Return installs (or removes) the route that sends what the copy
// answers from f's address to the home's SID, out of the interface the
// node reaches that SID by: one rule and table per address, shared by the
// frontends of that address, going with the last of them
// (dataplane.SRv6Returns).
func (n *srv6Node) SetSRv6Return(f lb.Frontend, homeSID netip.Addr, remove bool) error {
	if !n.Dataplane.SRv6Config().SID.IsValid() {
		return fmt.Errorf("srv6 return for %s: %w: SRv6 is off on this node (no --srv6-sid)", f, dataplane.ErrBadTarget)
	}
	if !remove && !n.Dataplane.SRv6Config().AcceptsSID(homeSID) {
		return fmt.Errorf("srv6 return for %s: %w: home SID %s is outside roam's locators %v", f, dataplane.ErrBadTarget, homeSID, n.Dataplane.SRv6Config().Locators)
	}
	if err := n.returns.Set(f, homeSID, remove); err != nil {
		return fmt.Errorf("srv6 return for %s: %w", f, err)
	}
	return nil
}
