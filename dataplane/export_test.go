package dataplane

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"

	"github.com/roamnet/roam/dataplane/lb"
)

// What the external tests (package dataplane_test) read of the internals.

// XDPProgramID is the kernel's id of the loaded XDP program.
func (d *Dataplane) XDPProgramID() (ebpf.ProgramID, error) { return programID(d.objs.RoamXdp) }

// TCProgramID is the kernel's id of the loaded tc program.
func (d *Dataplane) TCProgramID() (ebpf.ProgramID, error) { return programID(d.objs.RoamTc) }

func programID(p *ebpf.Program) (ebpf.ProgramID, error) {
	info, err := p.Info()
	if err != nil {
		return 0, err
	}
	id, _ := info.ID()
	return id, nil
}

// ConntrackEntries counts the conntrack map's entries.
func (d *Dataplane) ConntrackEntries() (int, error) { return d.conntrackEntries() }

// NATEntries counts the NAT map's entries.
func (d *Dataplane) NATEntries() (int, error) { return d.natEntries() }

// AgeFlows moves the last packet of every conntrack and NAT entry back by
// by, as if that much time had passed on the programs' clock (which a test
// cannot set). The clock counts from boot: the flows cannot be made `by`
// old on a machine up for less than by.
func (d *Dataplane) AgeFlows(by time.Duration) error {
	now, err := monotonicNow()
	if err != nil {
		return err
	}
	if now < uint64(by) {
		return fmt.Errorf("age flows by %s: the machine has been up for less (monotonic clock at %s)", by, time.Duration(now))
	}
	back := func(seen uint64) uint64 { return agedBy(seen, by) }
	var (
		ck []CTKey
		cv []CTValue
		nk []CTKey
		nv []NATValue
	)
	if err := walkFlows(d.ctTable(), func(k CTKey, v CTValue) { ck, cv = append(ck, k), append(cv, v) }); err != nil {
		return err
	}
	if err := walkFlows(d.natTable(), func(k CTKey, v NATValue) { nk, nv = append(nk, k), append(nv, v) }); err != nil {
		return err
	}
	for i := range ck {
		cv[i].LastSeen = back(cv[i].LastSeen)
		if err := d.ctTable().Update(ck[i], &cv[i], ebpf.UpdateExist); err != nil {
			return fmt.Errorf("age %s: %w", ck[i], err)
		}
	}
	for i := range nk {
		nv[i].LastSeen = back(nv[i].LastSeen)
		if err := d.natTable().Update(nk[i], &nv[i], ebpf.UpdateExist); err != nil {
			return fmt.Errorf("age NAT %s: %w", nk[i], err)
		}
	}
	return nil
}

// agedBy is seen moved back by by, at the clock's start at the most: an
// entry already older than the clock allows (aged before) stays at 1,
// which is still at least by before now when now > by. Not 0: a last
// packet at 0 is the programs' "none" (ct_reply_seen's no reply, the
// zeroed stamps of bpf/nexthop.h), which an aged entry is not.
func agedBy(seen uint64, by time.Duration) uint64 {
	if seen <= uint64(by) {
		return 1
	}
	return seen - uint64(by)
}

// ForgetFlowChecksums makes every conntrack entry look like one written by
// a build before the checksum changes were kept per flow: not set, and
// garbage where they would be.
func (d *Dataplane) ForgetFlowChecksums() error {
	var (
		ck []CTKey
		cv []CTValue
	)
	if err := walkFlows(d.ctTable(), func(k CTKey, v CTValue) { ck, cv = append(ck, k), append(cv, v) }); err != nil {
		return err
	}
	for i := range ck {
		cv[i].CsumSet, cv[i].CsumAddrs, cv[i].CsumPorts = 0, 0x1234, 0x5678
		if err := d.ctTable().Update(ck[i], &cv[i], ebpf.UpdateExist); err != nil {
			return fmt.Errorf("forget checksums of %s: %w", ck[i], err)
		}
	}
	return nil
}

// FlowCapacity is the conntrack and NAT maps' sizes, each the same for
// both families (or 0 where the two differ).
func (d *Dataplane) FlowCapacity() (conntrack, nat uint32) {
	same := func(t flowTable) uint32 {
		if t[fam4].MaxEntries() != t[fam6].MaxEntries() {
			return 0
		}
		return t[fam4].MaxEntries()
	}
	return same(d.ctTable()), same(d.natTable())
}

// SetProcSys points the sysctl reads and writes at dir until the test ends.
func SetProcSys(t interface{ Cleanup(func()) }, dir string) {
	old := procSys
	procSys = dir
	t.Cleanup(func() { procSys = old })
}

// AgeClient moves back by fwd the last packet of client's forward entries
// and by rev that of their NAT entries (the reply direction), as AgeFlows.
func (d *Dataplane) AgeClient(client netip.AddrPort, fwd, rev time.Duration) error {
	a := addr16(client.Addr())
	p := htons(client.Port())
	var ck []CTKey
	var cv []CTValue
	if err := walkFlows(d.ctTable(), func(k CTKey, v CTValue) {
		if k.Saddr == a && k.Sport == p {
			ck, cv = append(ck, k), append(cv, v)
		}
	}); err != nil {
		return err
	}
	if len(ck) == 0 {
		return fmt.Errorf("age %s: no flow", client)
	}
	for i := range ck {
		cv[i].LastSeen -= uint64(fwd)
		if err := d.ctTable().Update(ck[i], &cv[i], ebpf.UpdateExist); err != nil {
			return err
		}
		if lb.TargetKind(cv[i].Kind) != lb.TargetRedirect {
			continue
		}
		nk := cv[i].natKey(ck[i].Proto)
		var nv NATValue
		if err := d.natTable().Lookup(nk, &nv); err != nil {
			return fmt.Errorf("age NAT of %s: %w", client, err)
		}
		nv.LastSeen -= uint64(rev)
		if err := d.natTable().Update(nk, &nv, ebpf.UpdateExist); err != nil {
			return err
		}
	}
	return nil
}

// FlowClients lists the clients of the conntrack entries and of the NAT entries.
func (d *Dataplane) FlowClients() (ct, nat []netip.AddrPort, err error) {
	err = walkFlows(d.ctTable(), func(k CTKey, _ CTValue) {
		ct = append(ct, netip.AddrPortFrom(addrFrom16(k.Saddr, k.Family), htons(k.Sport)))
	})
	if err == nil {
		err = walkFlows(d.natTable(), func(_ CTKey, v NATValue) {
			nat = append(nat, netip.AddrPortFrom(addrFrom16(v.ClientAddr, v.Family), htons(v.ClientPort)))
		})
	}
	return ct, nat, err
}

// FlowTarget is one forward entry as TakeFlows reports it.
type FlowTarget struct {
	Frontend netip.AddrPort
	Target   lb.Target
}

// TakeFlows returns every forward entry by client and deletes all
// conntrack and NAT entries.
func (d *Dataplane) TakeFlows() (map[netip.AddrPort]FlowTarget, error) {
	out := make(map[netip.AddrPort]FlowTarget)
	var ck, nk []CTKey
	if err := walkFlows(d.ctTable(), func(k CTKey, v CTValue) {
		ck = append(ck, k)
		out[netip.AddrPortFrom(addrFrom16(k.Saddr, k.Family), htons(k.Sport))] = FlowTarget{
			Frontend: netip.AddrPortFrom(addrFrom16(k.Daddr, k.Family), htons(k.Dport)),
			Target:   v.Target(),
		}
	}); err != nil {
		return nil, err
	}
	if err := walkFlows(d.natTable(), func(k CTKey, _ NATValue) { nk = append(nk, k) }); err != nil {
		return nil, err
	}
	if err := d.deleteFlows(ck, nk); err != nil {
		return nil, err
	}
	return out, nil
}

// SetSpec makes Open load spec (a build of bpf/roam.c with test flags)
// instead of the committed one until the test ends.
func SetSpec(t interface{ Cleanup(func()) }, spec *ebpf.CollectionSpec) {
	old := loadSpec
	loadSpec = func() (*ebpf.CollectionSpec, error) { return spec.Copy(), nil }
	t.Cleanup(func() { loadSpec = old })
}

// AttachClsactIngress attaches the tc program to ifindex's ingress by the
// clsact fallback AttachTC takes where tcx is missing.
func (d *Dataplane) AttachClsactIngress(ifindex int) error {
	return attachClsact(ifindex, netlink.HANDLE_MIN_INGRESS, d.objs.RoamTc)
}

// Roam's clsact filter priority and handle.
const (
	ClsactPriority = clsactPriority
	ClsactHandle   = clsactHandle
)

// GCHurry reports whether RunGC would start its next sweep at once (gcHurry).
func (d *Dataplane) GCHurry() bool { return d.gcHurry() }

// RunXDPLive runs the XDP program once on pkt as if it arrived on ifindex,
// with live frames (BPF_F_TEST_XDP_LIVE_FRAMES): an XDP_TX or redirect
// verdict is carried out by the kernel, as for a real packet.
func (d *Dataplane) RunXDPLive(pkt []byte, ifindex int) error {
	opts := &ebpf.RunOptions{Data: pkt, Repeat: 1, Flags: 0x2, /* BPF_F_TEST_XDP_LIVE_FRAMES */
		Context: xdpMD{DataEnd: uint32(len(pkt)), IngressIfindex: uint32(ifindex)}}
	if _, err := d.objs.RoamXdp.Run(opts); err != nil {
		return fmt.Errorf("run xdp program with live frames: %w", err)
	}
	return nil
}

// HoldTargetGrace makes every target index waiting for a grace period
// (pending) wait until release is called, as if the grace had not passed.
func (d *Dataplane) HoldTargetGrace() (release func()) {
	d.mu.Lock()
	defer d.mu.Unlock()
	g := make(chan struct{})
	for i := range d.targets.pending {
		d.targets.pending[i] = g
	}
	return func() { close(g) }
}

// PendingTargets is how many target indices wait for a grace period.
func (d *Dataplane) PendingTargets() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.targets.pending)
}

// OnCommitSwitched makes Commit run fn right after it switches a
// frontend's active slot, before the rest of the commit; nil: nothing.
func OnCommitSwitched(fn func()) {
	if fn == nil {
		commitSwitched = nil
		return
	}
	commitSwitched = func(uint32) { fn() }
}

// MakeLegacy leaves the flows pinned under pinPath as a build before the
// IPv4 maps did (one map per kind for both families): each IPv4 entry of
// roam_ct4 and roam_nat4 moved to roam_conntrack and roam_nat under its
// CTKey, and the IPv4 maps' pins removed. The Dataplane using them must
// be closed. It returns how many entries it moved.
func MakeLegacy(pinPath string) (int, error) {
	moved := 0
	for _, names := range [][2]string{{"roam_ct4", "roam_conntrack"}, {"roam_nat4", "roam_nat"}} {
		v4, err := ebpf.LoadPinnedMap(filepath.Join(pinPath, names[0]), nil)
		if err != nil {
			return moved, err
		}
		wide, err := ebpf.LoadPinnedMap(filepath.Join(pinPath, names[1]), nil)
		if err != nil {
			v4.Close()
			return moved, err
		}
		val := make([]byte, v4.ValueSize())
		var k CT4Key
		it := v4.Iterate()
		for it.Next(&k, &val) {
			w := k.wide()
			if err = wide.Update(&w, val, ebpf.UpdateNoExist); err != nil {
				break
			}
			moved++
		}
		if err == nil {
			err = it.Err()
		}
		v4.Close()
		wide.Close()
		if err != nil {
			return moved, err
		}
		if err := os.Remove(filepath.Join(pinPath, names[0])); err != nil {
			return moved, err
		}
	}
	return moved, nil
}

// LegacyEntries counts the IPv4 entries in roam_conntrack and roam_nat (an
// older build's, ct4.go), and how many the IPv4 maps had no room for.
func (d *Dataplane) LegacyEntries() (n int, failed uint64, err error) {
	err = walkMap(d.maps.RoamConntrack, func(k CTKey, _ CTValue) {
		if k.Family == familyV4 {
			n++
		}
	})
	if err == nil {
		err = walkMap(d.maps.RoamNat, func(k CTKey, _ NATValue) {
			if k.Family == familyV4 {
				n++
			}
		})
	}
	return n, d.legacyFailed.Load(), err
}

// SetLegacyWalked sets the hook mergeLegacy runs between its walk of an
// IPv6 map and its copies (nil: none).
func SetLegacyWalked(fn func() error) { legacyWalked = fn }

// PreallocatedIPv6Pins is the pinned IPv6 flow maps Open found
// preallocated (an older build's; warned about).
func (d *Dataplane) PreallocatedIPv6Pins() []string { return d.preallocIPv6 }

// CopyFlowsToLegacy writes every IPv4 entry of roam_ct4 and roam_nat4
// into roam_conntrack and roam_nat under its CTKey, as an older build's
// program still attached would write them; it returns how many.
func (d *Dataplane) CopyFlowsToLegacy() (int, error) {
	n := 0
	var errs []error
	err := walkMap(d.maps.RoamCt4, func(k CT4Key, v CTValue) {
		n++
		errs = append(errs, d.maps.RoamConntrack.Put(k.wide(), &v))
	})
	if err == nil {
		err = walkMap(d.maps.RoamNat4, func(k CT4Key, v NATValue) {
			n++
			errs = append(errs, d.maps.RoamNat.Put(k.wide(), &v))
		})
	}
	return n, errors.Join(append(errs, err)...)
}
