package dataplane

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/roamnet/roam/dataplane/lb"
)

// DefaultGCScan is how many entries of each map one GC pass reads at most.
const DefaultGCScan = 16384

// gcHurryPressure: above this fill of either map (as of its last full
// sweep), RunGC starts the next sweep at once instead of after its interval.
const gcHurryPressure = 0.75

// GCStats is what one GC pass did.
type GCStats struct {
	Scanned        int  // entries read, both maps
	Conntrack, NAT int  // entries removed
	Wrapped        bool // with this pass each map was read to its end since the last pass that said so: a sweep is complete
	TargetIndices  int  // target counters' indices taken back (targetcount.go)
}

// mapSweep is the GC's position in one flow map and its running totals.
type mapSweep struct {
	cursor  ebpf.MapBatchCursor
	removed atomic.Uint64
	// Entries read so far in the current sweep, and left after the last
	// complete one (what pressure is judged on).
	sweep, left int
	done        bool // the map's end was reached in the current sweep
	// The walk in progress (started: its start is set) and the last
	// complete one: the target counters' indices its entries held
	// (targetcount.go).
	walk, last flowWalk
}

// gcState is the GC's position in each map (by family, ct4.go) and its running totals.
type gcState struct {
	ct, nat  [2]mapSweep
	failures uint64 // new flows refused (ct_full, nat_full, port_exhausted) as of the last pass
}

// scanSweep reads up to maxScan entries of t's map of family f from where
// s stopped: each entry's target index (counter) marks s's walk. It returns
// the keys of the entries expired says, how many it read and whether the
// walk ended (then kept as s.last). On an error the sweep and the walk
// start again. An older build's IPv4 entry in an IPv6 map is not a flow of
// its own (ct4.go mergeLegacy): skipped.
func scanSweep[V any](s *mapSweep, t flowTable, f, maxScan int, strays *[]CTKey, counter func(V) uint16, expired func(CTKey, V) bool) ([]CTKey, int, bool, error) {
	var keys []CTKey
	seen := walkMark(&s.walk, time.Now())
	each := func(k CTKey, v V) {
		if famIndex(k) != f {
			if strays != nil {
				*strays = append(*strays, k)
			}
			return
		}
		if c := counter(v); c != 0 {
			seen[c] = true
		}
		if expired(k, v) {
			keys = append(keys, k)
		}
	}
	var n int
	var done bool
	var err error
	if f == fam4 {
		n, done, err = scanMap(t[f], &s.cursor, maxScan, func(k CT4Key, v V) { each(k.wide(), v) })
	} else {
		n, done, err = scanMap(t[f], &s.cursor, maxScan, each)
	}
	if err != nil {
		s.sweep, s.walk = 0, flowWalk{}
		return nil, n, false, err
	}
	if done {
		s.last, s.walk = s.walk, flowWalk{}
	}
	return keys, n, done, nil
}

// count takes in a pass over s's map: n entries read, removed of them
// gone; at the walk's end (done), what is left.
func (s *mapSweep) count(n, removed int, done bool) {
	s.removed.Add(uint64(removed))
	if s.sweep += n - removed; done {
		s.left, s.sweep = s.sweep, 0
	}
}

// walkMark starts w if it is not under way, and returns its set of seen indices.
func walkMark(w *flowWalk, now time.Time) map[uint16]bool {
	if w.start.IsZero() {
		*w = flowWalk{start: now, seen: map[uint16]bool{}}
	}
	return w.seen
}

// GC removes expired conntrack and NAT entries, reading at most maxScan
// entries of each map (in batches) from where the previous pass stopped
// (DefaultGCScan when maxScan <= 0). An entry is expired by the rule the
// programs use (bpf/conntrack.h ct_expired, bpf/nat.h nat_reclaimable),
// plus coarseSlack: a forward entry idle in both directions for its
// state's timeout; its NAT entry goes with it. A NAT entry whose forward
// entry is gone or points elsewhere goes once idle for the close timeout.
// Each candidate is read again just before the removal and kept if a
// packet touched it meanwhile. Removals are counted in the collector.
func (d *Dataplane) GC(maxScan int) (GCStats, error) {
	if maxScan <= 0 {
		maxScan = DefaultGCScan
	}
	d.gcMu.Lock()
	defer d.gcMu.Unlock()
	var st GCStats
	now, err := monotonicNow()
	if err != nil {
		return st, err
	}
	t := d.cfg.Timeouts
	// An older build's IPv4 flows: moved once its programs are replaced
	// (roam-agent starts GC after attaching; ct4.go). A failure is logged
	// and counted, and the sweep goes on: stopping it would let the maps
	// fill (ct_full) for as long as the failure lasts. The next pass
	// tries again (d.legacy stays set).
	if err := d.mergeLegacyFlows(true); err != nil {
		d.legacyErrors.Add(1)
		slog.Warn("data-plane gc: moving an older build's IPv4 flows failed; the sweep goes on", "err", err)
	}
	ctDone, natDone := false, false
	for f := range 2 {
		c, n, err := d.gcFamily(f, maxScan, now, t, &st)
		ctDone, natDone = ctDone || c, natDone || n
		if err != nil {
			return st, err
		}
	}
	// The maps reach their ends in different passes (their sizes differ):
	// a sweep is complete once each has.
	all := true
	for f := range 2 {
		all = all && d.gc.ct[f].done && d.gc.nat[f].done
	}
	if st.Wrapped = all; st.Wrapped {
		for f := range 2 {
			d.gc.ct[f].done, d.gc.nat[f].done = false, false
		}
	}
	if ctDone || natDone {
		walks := []flowWalk{d.gc.ct[fam4].last, d.gc.ct[fam6].last, d.gc.nat[fam4].last, d.gc.nat[fam6].last}
		for _, w := range walks {
			if w.start.IsZero() {
				return st, nil
			}
		}
		if st.TargetIndices, err = d.reclaimTargets(joinWalks(walks[:2]), joinWalks(walks[2:])); err != nil {
			return st, fmt.Errorf("gc: %w", err)
		}
	}
	return st, nil
}

// joinWalks is complete walks of several maps as one: started at the
// first's start, seeing what any saw.
func joinWalks(ws []flowWalk) flowWalk {
	j := flowWalk{start: ws[0].start, seen: map[uint16]bool{}}
	for _, w := range ws {
		if w.start.Before(j.start) {
			j.start = w.start
		}
		for i := range w.seen {
			j.seen[i] = true
		}
	}
	return j
}

// gcFamily is GC's pass over the maps of family f: whether this pass
// ended the conntrack map's walk, and the NAT map's.
func (d *Dataplane) gcFamily(f, maxScan int, now uint64, t Timeouts, st *GCStats) (ctDoneWalk, natDoneWalk bool, err error) {
	ctT, natT := d.ctTable(), d.natTable()
	// IPv4 entries in the IPv6 maps once an older build's have been moved
	// (d.legacy clear): written since by an old program still attached
	// (a link left pinned on an interface the agent no longer attaches).
	// No program of this build reads them: removed, counted as stray.
	var ctStrays, natStrays *[]CTKey
	if f == fam6 && !d.legacy.Load() {
		ctStrays, natStrays = new([]CTKey), new([]CTKey)
	}
	// Forward entries.
	var natKeys []CTKey
	ctKeys, n, ctDoneWalk, err := scanSweep(&d.gc.ct[f], ctT, f, maxScan, ctStrays,
		func(v CTValue) uint16 { return v.Counter },
		func(k CTKey, v CTValue) bool { return d.ctExpired(k, v, now, t) })
	st.Scanned += n
	if err != nil {
		return false, false, fmt.Errorf("gc conntrack: %w", err)
	}
	// Read again just before removing: a packet may have touched it.
	live := ctKeys[:0]
	for _, k := range ctKeys {
		var v CTValue
		if ctT.Lookup(k, &v) != nil || !d.ctExpired(k, v, now, t) {
			continue
		}
		live = append(live, k)
		if lb.TargetKind(v.Kind) == lb.TargetRedirect {
			nk := v.natKey(k.Proto)
			var nv NATValue
			if natT.Lookup(nk, &nv) == nil && nv.ownedBy(k) &&
				(embryonic(k.Proto, v.State, lb.TargetKind(v.Kind)) || idleLonger(now, nv.LastSeen, t.timeout(k.Proto, v.State, lb.TargetKind(v.Kind)))) {
				natKeys = append(natKeys, nk)
			}
		}
	}
	removed, err := deleteFlowKeys(ctT, f, live)
	if err == nil && ctStrays != nil {
		var r int
		r, err = deleteFlowKeys(ctT, fam6, *ctStrays)
		removed += r
		d.legacyStray.Add(uint64(r))
	}
	st.Conntrack += removed
	d.gc.ct[f].count(n, removed, ctDoneWalk)
	if err != nil {
		return ctDoneWalk, false, fmt.Errorf("gc conntrack: %w", err)
	}
	removed, err = deleteFlowKeys(natT, f, natKeys)
	st.NAT += removed
	d.gc.nat[f].removed.Add(uint64(removed))
	if err != nil {
		return ctDoneWalk, false, fmt.Errorf("gc nat: %w", err)
	}

	// NAT entries left by flows whose forward entry is gone or points
	// elsewhere (a takeover, a program's delete). Such an entry goes once
	// idle for the close timeout, so only those are looked into: a NAT
	// entry whose flow is over goes with its forward entry above.
	natKeys, n, natDoneWalk, err = scanSweep(&d.gc.nat[f], natT, f, maxScan, natStrays,
		func(v NATValue) uint16 { return v.Counter },
		func(k CTKey, v NATValue) bool {
			return idleLonger(now, v.LastSeen, t.Close) && d.natReclaimable(k, v, now, t)
		})
	st.Scanned += n
	if err != nil {
		return ctDoneWalk, false, fmt.Errorf("gc nat: %w", err)
	}
	live = natKeys[:0]
	for _, k := range natKeys {
		var v NATValue
		if natT.Lookup(k, &v) == nil && d.natReclaimable(k, v, now, t) {
			live = append(live, k)
		}
	}
	removed, err = deleteFlowKeys(natT, f, live)
	if err == nil && natStrays != nil {
		var r int
		r, err = deleteFlowKeys(natT, fam6, *natStrays)
		removed += r
		d.legacyStray.Add(uint64(r))
	}
	st.NAT += removed
	d.gc.nat[f].count(n, removed, natDoneWalk)
	if err != nil {
		return ctDoneWalk, natDoneWalk, fmt.Errorf("gc nat: %w", err)
	}
	d.gc.ct[f].done = d.gc.ct[f].done || ctDoneWalk
	d.gc.nat[f].done = d.gc.nat[f].done || natDoneWalk
	return ctDoneWalk, natDoneWalk, nil
}

// gcHurry: either map was over gcHurryPressure full at the end of its
// last sweep, or new flows were refused (a full map, no free SNAT port)
// since the previous call: the next sweep should start at once.
func (d *Dataplane) gcHurry() bool {
	d.gcMu.Lock()
	defer d.gcMu.Unlock()
	full := false
	for f := range 2 {
		full = full || float64(d.gc.ct[f].left) > gcHurryPressure*float64(d.ctTable()[f].MaxEntries()) ||
			float64(d.gc.nat[f].left) > gcHurryPressure*float64(d.natTable()[f].MaxEntries())
	}
	var failures uint64
	for r, name := range DropReasons {
		if name != "ct_full" && name != "nat_full" && name != "port_exhausted" {
			continue
		}
		var per []uint64
		if d.maps.RoamDrops.Lookup(uint32(r), &per) == nil {
			for _, v := range per {
				failures += v
			}
		}
	}
	refused := failures != d.gc.failures
	d.gc.failures = failures
	return full || refused
}

// ctExpired mirrors ct_expired in bpf/conntrack.h (plus coarseSlack).
func (d *Dataplane) ctExpired(k CTKey, v CTValue, now uint64, t Timeouts) bool {
	kind := lb.TargetKind(v.Kind)
	timeout := t.timeout(k.Proto, v.State, kind)
	if !idleLonger(now, v.LastSeen, timeout) {
		return false
	}
	if kind != lb.TargetRedirect || embryonic(k.Proto, v.State, kind) {
		return true
	}
	var nv NATValue
	if d.natTable().Lookup(v.natKey(k.Proto), &nv) != nil || !nv.ownedBy(k) {
		return true // ct_reply_seen: 0
	}
	return idleLonger(now, nv.LastSeen, timeout)
}

// natReclaimable mirrors nat_reclaimable in bpf/nat.h (plus coarseSlack).
func (d *Dataplane) natReclaimable(rk CTKey, nv NATValue, now uint64, t Timeouts) bool {
	fk := CTKey{Saddr: nv.ClientAddr, Daddr: nv.FrontAddr, Sport: nv.ClientPort, Dport: nv.FrontPort, Proto: rk.Proto, Family: nv.Family}
	var ov CTValue
	if d.ctTable().Lookup(fk, &ov) != nil || ov.natKey(rk.Proto) != rk {
		return idleLonger(now, nv.LastSeen, t.Close)
	}
	kind := lb.TargetKind(ov.Kind)
	timeout := t.timeout(rk.Proto, ov.State, kind)
	return idleLonger(now, ov.LastSeen, timeout) && (embryonic(rk.Proto, ov.State, kind) || idleLonger(now, nv.LastSeen, timeout))
}

// scanMap reads up to limit entries of m from *cursor in batches and calls
// fn for each; done: the end of the map was reached (the cursor starts over).
// A hash map's batch holds whole buckets: when the next bucket is larger
// than the batch asked for (ENOSPC, the cursor not moved), the batch is
// asked again, larger (a pass may then read a few entries over limit).
func scanMap[K, V any](m *ebpf.Map, cursor *ebpf.MapBatchCursor, limit int, fn func(K, V)) (int, bool, error) {
	const chunk, most = 1024, 1 << 16
	keys := make([]K, chunk)
	vals := make([]V, chunk)
	total := 0
	atLeast := 0
	for total < limit {
		want := max(min(len(keys), limit-total), atLeast)
		n, err := m.BatchLookup(cursor, keys[:want], vals[:want], nil)
		if errors.Is(err, unix.ENOSPC) && n == 0 && want < most {
			atLeast = min(2*want, most)
			if atLeast > len(keys) {
				keys, vals = make([]K, atLeast), make([]V, atLeast)
			}
			continue
		}
		atLeast = 0
		for i := 0; i < n; i++ {
			fn(keys[i], vals[i])
		}
		total += n
		switch {
		case errors.Is(err, ebpf.ErrKeyNotExist):
			*cursor = ebpf.MapBatchCursor{}
			return total, true, nil
		case errors.Is(err, ebpf.ErrNotSupported):
			*cursor = ebpf.MapBatchCursor{}
			if total > 0 {
				return total, false, fmt.Errorf("batch lookup of %s failed midway: %w", m, err)
			}
			n := 0
			err := iterateMap(m, func(k K, v V) { n++; fn(k, v) })
			return n, true, err
		case err != nil:
			*cursor = ebpf.MapBatchCursor{}
			return total, false, fmt.Errorf("scan %s: %w", m, err)
		}
	}
	return total, false, nil
}

// deleteFlowKeys removes keys (of family f) from t's map of that family (deleteKeys).
func deleteFlowKeys(t flowTable, f int, keys []CTKey) (int, error) {
	if f == fam6 {
		return deleteKeys(t[f], keys)
	}
	k4 := make([]CT4Key, len(keys))
	for i, k := range keys {
		k4[i] = ct4Key(k)
	}
	return deleteKeys(t[f], k4)
}

// deleteKeys removes keys from m in one batch where the kernel has it;
// a key gone meanwhile (a packet's takeover) is skipped.
func deleteKeys[K any](m *ebpf.Map, keys []K) (int, error) {
	if len(keys) == 0 {
		return 0, nil
	}
	n, err := m.BatchDelete(keys, nil)
	if err == nil {
		return n, nil
	}
	if !errors.Is(err, ebpf.ErrKeyNotExist) && !errors.Is(err, ebpf.ErrNotSupported) {
		return n, err
	}
	// The batch stopped at key n (gone meanwhile) or is not supported: one by one.
	removed := 0
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		removed = n
		keys = keys[n+1:]
	}
	for _, k := range keys {
		switch err := m.Delete(k); {
		case err == nil:
			removed++
		case errors.Is(err, ebpf.ErrKeyNotExist):
		default:
			return removed, err
		}
	}
	return removed, nil
}

// RunGC runs a GC pass every interval until ctx ends (roam-agent): bounded
// work per pass; a pass that did not reach the end of a map is followed by
// the next one at once (after a short pause), so a large table is covered
// within a few intervals without one long stall. Under pressure (gcHurry:
// a map more than 3/4 full, or new flows refused since the last sweep)
// sweeps follow each other without the interval, so expired flows leave
// as fast as one core can read the maps.
func (d *Dataplane) RunGC(ctx context.Context, interval time.Duration, maxScan int, log *slog.Logger) {
	for {
		st, err := d.GC(maxScan)
		if err != nil {
			log.Warn("data-plane gc", "err", err)
		} else if st.Conntrack+st.NAT > 0 {
			log.Debug("data-plane gc", "scanned", st.Scanned, "conntrack_removed", st.Conntrack, "nat_removed", st.NAT)
		}
		wait := interval
		if err == nil && (!st.Wrapped || d.gcHurry()) {
			wait = 10 * time.Millisecond
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}
