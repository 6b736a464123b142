package dataplane

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"time"

	"github.com/cilium/ebpf"

	"github.com/roamnet/roam/dataplane/lb"
)

// targetCountersMax is bpf/consts.h TARGET_COUNTERS_MAX: indices 1..max-1.
const targetCountersMax = 16384

// targetIndex hands out the indices of roam_target_counters (bpf/counters.h):
// one per redirect target (address, port, protocol), given when the target
// is staged and written into its slot (struct target.counter), from where a
// new flow copies it into both its entries. The programs count a packet
// with one array lookup at that index. roam_target_names holds each index's
// target, so an agent that restarts on pinned maps knows them again.
//
// An index is taken back (its counters zeroed, its name cleared) by GC once
// its target is in no frontend's slot, has been in none since before the
// start of the last complete walk of each flow map, and neither walk met a
// flow holding it: no flow can hold it any more (a new flow copies the
// index from a slot, and a slot is rewritten only a grace period after the
// programs stopped reading it). Guarded by Dataplane.mu.
type targetIndex struct {
	byKey map[TargetKey]uint16
	// left is when each index was last seen leaving a slot (a slot
	// rewritten, a frontend deleted), or was handed out or found at Open.
	left map[uint16]time.Time
	// pending holds the indices of a deleted frontend's slots (and those
	// found at Open) until the grace period started then has passed: until
	// then a packet that found the frontend before the delete may still
	// copy the index from its record into a new flow, so the index has not
	// left yet. reclaimTargets moves a passed one to left.
	pending map[uint16]chan struct{}
	free    []uint16 // free indices, the next to hand out last
	// exhausted is set while a Stage found no free index (logged once).
	exhausted bool
}

// flowWalk is what one complete walk of a flow map found: when it started
// and the target indices its entries held.
type flowWalk struct {
	start time.Time
	seen  map[uint16]bool
}

// loadTargetIndex reads the indices in use from roam_target_names.
func (d *Dataplane) loadTargetIndex() error {
	ti := targetIndex{byKey: map[TargetKey]uint16{}, left: map[uint16]time.Time{}, pending: map[uint16]chan struct{}{}}
	now := time.Now()
	var zero TargetKey
	for i := uint32(targetCountersMax - 1); i >= 1; i-- {
		var k TargetKey
		if err := d.maps.RoamTargetNames.Lookup(i, &k); err != nil {
			return fmt.Errorf("read target names: %w", err)
		}
		if k == zero {
			ti.free = append(ti.free, uint16(i))
			continue
		}
		ti.byKey[k] = uint16(i)
		ti.left[uint16(i)] = now
		ti.pending[uint16(i)] = d.openGrace
	}
	d.targets = ti
	return nil
}

// targetKeyOf is the counters' name of t, a redirect target of a frontend of protocol proto.
func targetKeyOf(t lb.Target, proto lb.Proto) TargetKey {
	return TargetKey{Addr: addr16(t.Addr), Port: htons(t.Port), Proto: uint8(proto), Family: familyOf(t.Addr)}
}

// slotTarget is the slot value of t (of a frontend of protocol proto),
// with its counters' index (a redirect's; none when every index is in
// use: the target then goes uncounted). d.mu is held.
func (d *Dataplane) slotTarget(t lb.Target, proto lb.Proto) TargetValue {
	v := targetValue(t)
	if t.Kind != lb.TargetRedirect {
		return v
	}
	k := targetKeyOf(t, proto)
	ti := &d.targets
	if i, ok := ti.byKey[k]; ok {
		v.Counter = i
		return v
	}
	if len(ti.free) == 0 {
		if !ti.exhausted {
			slog.Warn("dataplane: every target counter index is in use: new targets go uncounted until GC frees some", "max", targetCountersMax-1)
			ti.exhausted = true
		}
		return v
	}
	i := ti.free[len(ti.free)-1]
	if err := d.maps.RoamTargetNames.Put(uint32(i), &k); err != nil {
		slog.Warn("dataplane: write target name: target goes uncounted", "target", t, "err", err)
		return v
	}
	ti.free = ti.free[:len(ti.free)-1]
	ti.byKey[k] = i
	ti.left[i] = time.Now()
	v.Counter = i
	return v
}

// slotLeft notes that the targets of a record's slot left it (about to be rewritten, or the frontend deleted). d.mu is held.
func (d *Dataplane) slotLeft(v TargetValue) {
	if v.Counter != 0 {
		d.targets.left[v.Counter] = time.Now()
	}
}

// slotLeftAfter notes that the target of a deleted frontend's slot leaves
// it once grace (started after the delete) has passed: packets in flight
// may copy the index from the record until then. d.mu is held.
func (d *Dataplane) slotLeftAfter(v TargetValue, grace chan struct{}) {
	if v.Counter != 0 {
		d.targets.left[v.Counter] = time.Now()
		d.targets.pending[v.Counter] = grace
	}
}

// slotted is the set of target indices in a slot of a frontend now. d.mu is held.
func (d *Dataplane) slotted() (map[uint16]bool, error) {
	in := map[uint16]bool{}
	err := iterateMap(d.maps.RoamServices, func(_ FrontendKey, id uint32) {
		if id == 0 || id >= maxFrontends {
			return
		}
		for _, s := range d.readRecord(id).Slot {
			if s.Counter != 0 {
				in[s.Counter] = true
			}
		}
	})
	if err != nil {
		return nil, fmt.Errorf("read services: %w", err)
	}
	return in, nil
}

// reclaimTargets takes back the indices no slot and no flow holds (see
// targetIndex), given the last complete walks of roam_conntrack and
// roam_nat. Returns how many it freed.
func (d *Dataplane) reclaimTargets(ct, nat flowWalk) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.slots == nil {
		return 0, nil // closed
	}
	in, err := d.slotted()
	if err != nil {
		return 0, fmt.Errorf("reclaim target counters: %w", err)
	}
	ti := &d.targets
	now := time.Now()
	zero := make([]TargetCounter, ebpf.MustPossibleCPU())
	freed := 0
	for k, i := range ti.byKey {
		if in[i] {
			ti.left[i] = now
			continue
		}
		if g, ok := ti.pending[i]; ok {
			select {
			case <-g: // the grace has passed: it left now at the latest
				delete(ti.pending, i)
				ti.left[i] = now
			default:
			}
			continue
		}
		if left := ti.left[i]; !left.Before(ct.start) || !left.Before(nat.start) || ct.seen[i] || nat.seen[i] {
			continue
		}
		if err := d.maps.RoamTargetCounters.Put(uint32(i), zero); err != nil {
			return freed, fmt.Errorf("reclaim target counters: %w", err)
		}
		if err := d.maps.RoamTargetNames.Put(uint32(i), &TargetKey{}); err != nil {
			return freed, fmt.Errorf("reclaim target counters: %w", err)
		}
		delete(ti.byKey, k)
		delete(ti.left, i)
		delete(ti.pending, i)
		ti.free = append(ti.free, i)
		ti.exhausted = false
		freed++
	}
	return freed, nil
}

// TargetCount is one redirect target's traffic, summed over CPUs: packets
// and bytes sent to it, and of its replies.
type TargetCount struct {
	Target                 netip.AddrPort
	Proto                  lb.Proto
	ToPackets, ToBytes     uint64
	FromPackets, FromBytes uint64
}

// TargetCounters returns the counts of every target that has any, ordered
// by target. A target GC has taken the index of (in no slot, no flow left)
// is gone from it.
func (d *Dataplane) TargetCounters() ([]TargetCount, error) {
	d.mu.Lock()
	names := make(map[uint16]TargetKey, len(d.targets.byKey))
	for k, i := range d.targets.byKey {
		names[i] = k
	}
	d.mu.Unlock()
	var out []TargetCount
	var per []TargetCounter
	for i, k := range names {
		if err := d.maps.RoamTargetCounters.Lookup(uint32(i), &per); err != nil {
			if errors.Is(err, ebpf.ErrKeyNotExist) {
				continue
			}
			return nil, fmt.Errorf("read target counters: %w", err)
		}
		tc := TargetCount{Target: netip.AddrPortFrom(addrFrom16(k.Addr, k.Family), htons(k.Port)), Proto: lb.Proto(k.Proto)}
		for _, c := range per {
			tc.ToPackets += c.ToPackets
			tc.ToBytes += c.ToBytes
			tc.FromPackets += c.FromPackets
			tc.FromBytes += c.FromBytes
		}
		if tc.ToPackets|tc.FromPackets == 0 {
			continue
		}
		out = append(out, tc)
	}
	slices.SortFunc(out, func(a, b TargetCount) int {
		if c := a.Target.Compare(b.Target); c != 0 {
			return c
		}
		return int(a.Proto) - int(b.Proto)
	})
	return out, nil
}
