// This file holds the cluster registry: the latest hello of every cluster,
// its liveness, the capacity reserved for placements its hellos do not
// show yet, and the placement index kept up to date with every change
// (index.go).

package meta

import (
	"container/heap"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// State is a cluster's liveness as seen from its hellos.
type State uint8

// Liveness states.
const (
	StateAlive   State = iota // hellos arrive on time
	StateSuspect              // at least one hello missed
	StateDown                 // DownAfter hellos missed: never chosen
)

func (s State) String() string {
	switch s {
	case StateAlive:
		return "alive"
	case StateSuspect:
		return "suspect"
	case StateDown:
		return "down"
	}
	return "unknown"
}

// ParseState is the inverse of State.String.
func ParseState(s string) (State, bool) {
	switch s {
	case "alive":
		return StateAlive, true
	case "suspect":
		return StateSuspect, true
	case "down":
		return StateDown, true
	}
	return StateDown, false
}

// Reserved is capacity promised to placements that the destination's
// hellos do not show yet.
type Reserved struct {
	MilliCPU int64 `json:"milli_cpu,omitempty"`
	MemoryMB int64 `json:"memory_mb,omitempty"`
	Pods     int64 `json:"pods,omitempty"`
}

// Cluster is one registry entry. It is immutable once stored: the registry
// replaces the pointer on every change, so readers may keep it.
type Cluster struct {
	Hello    Hello
	LastSeen time.Time
	// Reserved counts against the cluster's capacity (see Registry.Reserve).
	Reserved Reserved
	// links indexes Hello.Links by peer when there are many; a short list
	// is scanned.
	links map[string]Link
	// eff is Hello.Capacity with Reserved counted as used; load is its
	// Load(), the index key.
	eff  Capacity
	load float64
	// ident hashes what a placement reads besides the load (view.go).
	ident uint64
	// A cluster read from the MO's compact view carries the MO's verdict,
	// when the MO last vouched for it and how long that holds, and the
	// MO's reservations (counted in Reserved besides local ones).
	fromView   bool
	verdict    State
	vouched    time.Time
	staleAfter time.Duration
	viewRes    Reserved
	// frame is the frame hash of the hello this entry was made from
	// (hellofast.go), 0 when unknown (the entry came from elsewhere than
	// a framed hello). It lives in the entry, not the slot, so that an
	// entry swapped in under the read lock carries its own.
	frame uint64
}

const linkMapMin = 8

func newCluster(h Hello, seen time.Time, res Reserved) *Cluster {
	c := &Cluster{Hello: h, LastSeen: seen, ident: identity(&h)}
	if len(h.Links) >= linkMapMin {
		c.links = make(map[string]Link, len(h.Links))
		for _, l := range h.Links {
			c.links[l.Peer] = l
		}
	}
	c.setReserved(res)
	return c
}

// setReserved counts the local reservations res (and the MO's, for a
// cluster from the compact view) against the capacity.
func (c *Cluster) setReserved(res Reserved) {
	res.MilliCPU += c.viewRes.MilliCPU
	res.MemoryMB += c.viewRes.MemoryMB
	res.Pods += c.viewRes.Pods
	c.Reserved = res
	c.eff = c.Hello.Capacity
	c.eff.UsedMilliCPU += res.MilliCPU
	c.eff.UsedMemoryMB += res.MemoryMB
	c.eff.UsedPods += res.Pods
	c.load = c.eff.Load()
}

// Effective is the cluster's capacity with reservations counted as used.
func (c *Cluster) Effective() Capacity { return c.eff }

// Link returns the link c reports toward peer.
func (c *Cluster) Link(peer string) (Link, bool) {
	if c.links != nil {
		l, ok := c.links[peer]
		return l, ok
	}
	for i := range c.Hello.Links {
		if c.Hello.Links[i].Peer == peer {
			return c.Hello.Links[i], true
		}
	}
	return Link{}, false
}

// ObserveResult says what the registry did with a hello.
type ObserveResult uint8

// Observe results.
const (
	ObserveNew     ObserveResult = iota // first hello from this cluster
	ObserveUpdated                      // newer hello, kept
	ObserveStale                        // seq not above the last kept one, or a retired incarnation: ignored
	ObserveAhead                        // seq too far ahead of the last kept one (MaxSeqAhead): rejected
	// ObserveLocatorTaken: the hello's SRv6 locator overlaps the locator
	// of another cluster in the index (alive or suspect): refused, the
	// first holder keeps it. A covering prefix would let its cluster name
	// the other's node SIDs as its own.
	ObserveLocatorTaken
)

// slot is a cluster's place in the registry and its index. Its entry is
// swapped atomically: under the write lock by any change, and under the
// read lock (compare-and-swap) by a hello that leaves the cluster's place
// in the index as it is (hellofast.go), so such hellos never wait for
// placements nor hold them up. Everything else in a slot changes under
// the write lock only.
type slot struct {
	cp  atomic.Pointer[Cluster]
	pos int // in Registry.list
	// key is c.load when indexed (the tree's order); indexed is false
	// while the cluster is down.
	key     float64
	indexed bool
	// retired is the incarnation the current one replaced: its hellos
	// (late, or replayed) are stale.
	retired string
}

// c is the slot's current entry.
func (s *slot) c() *Cluster { return s.cp.Load() }

func newSlot(c *Cluster, key float64) *slot {
	s := &slot{key: key}
	s.cp.Store(c)
	return s
}

func slotLess(a, b *slot) bool {
	if a.key != b.key {
		return a.key < b.key
	}
	return a.c().Hello.ClusterID < b.c().Hello.ClusterID
}

// reservation is capacity promised at dest to placement id until expires
// or until dest's hello lists id in Placed.
type reservation struct {
	id, dest string
	res      Resources
	expires  time.Time
	at       int // in Registry.resvExp
}

// resvHeap orders reservations by expiry, so that ending the expired ones
// costs what they are, not what all are (container/heap).
type resvHeap []*reservation

func (h resvHeap) Len() int           { return len(h) }
func (h resvHeap) Less(i, j int) bool { return h[i].expires.Before(h[j].expires) }
func (h resvHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i]; h[i].at, h[j].at = i, j }
func (h *resvHeap) Push(x any)        { rv := x.(*reservation); rv.at = len(*h); *h = append(*h, rv) }
func (h *resvHeap) Pop() any {
	old := *h
	rv := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	return rv
}

// Registry holds the latest hello per cluster, reservations and the
// placement index. Safe for concurrent use.
type Registry struct {
	interval  time.Duration
	downAfter int

	mu   sync.RWMutex
	byID map[string]*slot
	list []*slot
	// The index: alive and suspect clusters by tier, ordered by load;
	// who reports a link to whom; who carries which label.
	tiers    map[string]*tierTree
	linkedBy map[string]map[string]struct{}
	labels   map[string]map[string]struct{}

	resv    map[string]*reservation // by placement id
	resvSum map[string]Reserved     // by destination: what its reservations add up to
	resvExp resvHeap                // by expiry, soonest first

	scratch sync.Pool // of *searchScratch
	// getLocked and StateOf as func values made once (a method value
	// made per request is an allocation).
	getFn   func(id string) *Cluster
	stateFn func(*Cluster, time.Time) State
}

// NewRegistry returns an empty registry: a cluster is suspect once one
// hello interval is missed and down after downAfter (at least 1) missed.
// A hello carrying its own IntervalMs overrides interval for that cluster.
func NewRegistry(interval time.Duration, downAfter int) *Registry {
	if interval <= 0 {
		interval = time.Second
	}
	r := &Registry{interval: interval, downAfter: max(downAfter, 1), byID: map[string]*slot{},
		tiers: map[string]*tierTree{}, linkedBy: map[string]map[string]struct{}{},
		labels: map[string]map[string]struct{}{}, resv: map[string]*reservation{},
		resvSum: map[string]Reserved{}, scratch: sync.Pool{New: newSearchScratch}}
	r.getFn, r.stateFn = r.getLocked, r.StateOf
	return r
}

// Observe records h, received at now, unless its Seq is stale or too far
// ahead. For a known cluster, a hello of the incarnation last kept must
// have a Seq above the last one and at most MaxSeqAhead plus one per 10 ms
// since then beyond it; a hello of another incarnation is a restart (its
// Seq counts from 0, with the same bound), unless it is the incarnation
// the last restart replaced. The first hello of an unknown cluster is
// taken as it is.
func (r *Registry) Observe(h Hello, now time.Time) ObserveResult {
	res, _ := r.observe(h, now, 0)
	return res
}

// observe is Observe also returning the entry it replaced (nil if none);
// a kept hello's frame hash (0: none) lets its successors take the fast
// path (observeSame). A hello that leaves the cluster's place in the
// index as it is (same tier, load, links and labels, no reservation
// ended, no new largest capacity) is taken under the read lock
// (observeInPlace); any other under the write lock.
func (r *Registry) observe(h Hello, now time.Time, frame uint64) (ObserveResult, *Cluster) {
	if res, old, ok := r.observeInPlace(&h, now, frame); ok {
		return res, old
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.byID[h.ClusterID]
	var retired string
	if s != nil {
		res, ret, ok := r.checkSeq(s, &h, now)
		if !ok {
			return res, s.c()
		}
		retired = ret
	}
	// A locator is checked when it is new to the index: a new cluster, a
	// changed locator, or a cluster coming back from down (whose locator
	// another may hold by now).
	if h.Locator.IsValid() && (s == nil || !s.indexed || s.c().Hello.Locator != h.Locator) {
		if r.locatorHolder(h.ClusterID, h.Locator) != "" {
			return ObserveLocatorTaken, nil
		}
	}
	// The hello shows the placements it lists: their reservations end.
	for _, id := range h.Placed {
		if rv := r.resv[id]; rv != nil && rv.dest == h.ClusterID {
			r.dropReservation(rv)
		}
	}
	c := newCluster(h, now, r.reservedAt(h.ClusterID))
	c.frame = frame
	if s == nil {
		r.insert(c)
		return ObserveNew, nil
	}
	old := s.c()
	s.retired = retired
	r.replace(s, c)
	return ObserveUpdated, old
}

// locatorHolder names a cluster other than id, in the index, whose
// locator overlaps p ("" when none does; write or read lock held). It
// runs only when a locator is new to the index (see observe), over the
// clusters: hellos that keep theirs never pay it.
func (r *Registry) locatorHolder(id string, p netip.Prefix) string {
	for _, s := range r.list {
		c := s.c()
		if s.indexed && c.Hello.ClusterID != id && c.Hello.Locator.IsValid() && c.Hello.Locator.Overlaps(p) {
			return c.Hello.ClusterID
		}
	}
	return ""
}

// LocatorHolder names the cluster in the index, other than id, whose
// SRv6 locator overlaps p ("" when none does): why a hello of id
// announcing p was refused (ObserveLocatorTaken).
func (r *Registry) LocatorHolder(id string, p netip.Prefix) string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.locatorHolder(id, p)
}

// checkSeq applies Observe's sequence rules to h against s's entry: ok is
// false with the result when h is stale or too far ahead, else retired is
// the incarnation the slot keeps as retired once h is kept.
func (r *Registry) checkSeq(s *slot, h *Hello, now time.Time) (res ObserveResult, retired string, ok bool) {
	last := &s.c().Hello
	allow := seqAllowance(now.Sub(s.c().LastSeen))
	switch {
	case h.Incarnation == last.Incarnation:
		if h.Seq <= last.Seq {
			return ObserveStale, "", false
		}
		if h.Seq-last.Seq > allow {
			return ObserveAhead, "", false
		}
		return 0, s.retired, true
	case h.Incarnation == s.retired:
		return ObserveStale, "", false
	case h.Seq > allow:
		return ObserveAhead, "", false
	}
	return 0, last.Incarnation, true
}

// observeInPlace takes h under the read lock when it changes nothing the
// index or the write lock's other holders keep: a known cluster's next
// hello of the same incarnation, indexed, whose tier, load, links and
// labels are those of its entry, that ends no reservation and raises no
// tier bound. ok is false when h needs the write lock.
func (r *Registry) observeInPlace(h *Hello, now time.Time, frame uint64) (res ObserveResult, old *Cluster, ok bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	s := r.byID[h.ClusterID]
	if s == nil || !s.indexed {
		return 0, nil, false
	}
	for _, id := range h.Placed {
		if rv := r.resv[id]; rv != nil && rv.dest == h.ClusterID {
			return 0, nil, false
		}
	}
	tt := r.tiers[h.Tier]
	if tt == nil || tt.raises(h.Capacity) {
		return 0, nil, false
	}
	reserved := r.reservedAt(h.ClusterID)
	var c *Cluster
	for {
		old = s.c()
		if old.fromView || h.Incarnation != old.Hello.Incarnation || old.Hello.Tier != h.Tier || old.Hello.Locator != h.Locator {
			return 0, nil, false
		}
		if res, _, ok := r.checkSeq(s, h, now); !ok {
			return res, old, true
		}
		if c == nil {
			c = newCluster(*h, now, reserved)
			c.frame = frame
			if c.load != s.key || !slices.Equal(linkPeers(old.Hello.Links), linkPeers(h.Links)) || !mapsEqual(old.Hello.Labels, h.Labels) {
				return 0, nil, false
			}
		}
		if s.cp.CompareAndSwap(old, c) {
			return ObserveUpdated, old, true
		}
		// Another hello of this cluster got in first: judge h again.
	}
}

// restore adds a persisted entry unless a newer one is already known.
func (r *Registry) restore(h Hello, seen time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.byID[h.ClusterID]
	if s != nil && (!seen.After(s.c().LastSeen) || h.Incarnation == s.c().Hello.Incarnation && h.Seq <= s.c().Hello.Seq) {
		return
	}
	c := newCluster(h, seen, r.reservedAt(h.ClusterID))
	if s == nil {
		r.insert(c)
		return
	}
	if h.Incarnation != s.c().Hello.Incarnation {
		s.retired = s.c().Hello.Incarnation
	}
	r.replace(s, c)
}

// knownDown reports an entry that is down whatever the time: the MO's
// verdict in the compact view. Other entries stay in the index until
// Sweep finds them down (the index never depends on the clock).
func knownDown(c *Cluster) bool { return c.fromView && c.verdict == StateDown }

func (r *Registry) insert(c *Cluster) *slot {
	s := newSlot(c, 0)
	s.pos = len(r.list)
	r.byID[c.Hello.ClusterID] = s
	r.list = append(r.list, s)
	r.indexLinks(nil, c)
	r.indexLabels(nil, c)
	if !knownDown(c) {
		r.treeAdd(s)
	}
	return s
}

// replace swaps s's cluster for c, keeping the index in step.
func (r *Registry) replace(s *slot, c *Cluster) {
	old := s.c()
	r.indexLinks(old, c)
	r.indexLabels(old, c)
	down := knownDown(c)
	if s.indexed && !down && old.Hello.Tier == c.Hello.Tier && s.key == c.load {
		s.cp.Store(c) // same place in the tree
		r.tiers[c.Hello.Tier].note(c.Hello.Capacity)
		return
	}
	if s.indexed {
		r.treeRemove(s)
	}
	s.cp.Store(c)
	if !down {
		r.treeAdd(s)
	}
}

func (r *Registry) treeAdd(s *slot) {
	tt := r.tiers[s.c().Hello.Tier]
	if tt == nil {
		tt = newTierTree()
		r.tiers[s.c().Hello.Tier] = tt
	}
	s.key, s.indexed = s.c().load, true
	tt.note(s.c().Hello.Capacity)
	tt.tree.ReplaceOrInsert(s)
}

func (r *Registry) treeRemove(s *slot) {
	tt := r.tiers[s.c().Hello.Tier]
	tt.tree.Delete(s)
	if tt.tree.Len() == 0 {
		delete(r.tiers, s.c().Hello.Tier)
	}
	s.indexed = false
}

// indexLinks moves c's reported links in linkedBy (old is what it
// replaces, nil for a new cluster or a removal's new side).
func (r *Registry) indexLinks(old, c *Cluster) {
	if old != nil && c != nil && slices.Equal(linkPeers(old.Hello.Links), linkPeers(c.Hello.Links)) {
		return
	}
	if old != nil {
		for _, l := range old.Hello.Links {
			if set := r.linkedBy[l.Peer]; set != nil {
				delete(set, old.Hello.ClusterID)
				if len(set) == 0 {
					delete(r.linkedBy, l.Peer)
				}
			}
		}
	}
	if c != nil {
		for _, l := range c.Hello.Links {
			set := r.linkedBy[l.Peer]
			if set == nil {
				set = map[string]struct{}{}
				r.linkedBy[l.Peer] = set
			}
			set[c.Hello.ClusterID] = struct{}{}
		}
	}
}

func linkPeers(ls []Link) []string {
	out := make([]string, len(ls))
	for i, l := range ls {
		out[i] = l.Peer
	}
	return out
}

func labelKey(k, v string) string { return k + "\x00" + v }

func (r *Registry) indexLabels(old, c *Cluster) {
	if old != nil && c != nil && mapsEqual(old.Hello.Labels, c.Hello.Labels) {
		return
	}
	if old != nil {
		for k, v := range old.Hello.Labels {
			lk := labelKey(k, v)
			if set := r.labels[lk]; set != nil {
				delete(set, old.Hello.ClusterID)
				if len(set) == 0 {
					delete(r.labels, lk)
				}
			}
		}
	}
	if c != nil {
		for k, v := range c.Hello.Labels {
			lk := labelKey(k, v)
			set := r.labels[lk]
			if set == nil {
				set = map[string]struct{}{}
				r.labels[lk] = set
			}
			set[c.Hello.ClusterID] = struct{}{}
		}
	}
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// Forget removes a cluster (its reservations stay until they expire).
func (r *Registry) Forget(id string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.byID[id]
	if s == nil {
		return
	}
	if s.indexed {
		r.treeRemove(s)
	}
	r.indexLinks(s.c(), nil)
	r.indexLabels(s.c(), nil)
	last := len(r.list) - 1
	r.list[s.pos] = r.list[last]
	r.list[s.pos].pos = s.pos
	r.list[last] = nil
	r.list = r.list[:last]
	delete(r.byID, id)
}

// Reserve counts res against dest for placement id until expires or until
// a hello from dest lists id in Placed. Reserving id again moves it.
func (r *Registry) Reserve(id, dest string, res Resources, expires time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.reserveLocked(id, dest, res, expires)
}

func (r *Registry) reserveLocked(id, dest string, res Resources, expires time.Time) {
	if old := r.resv[id]; old != nil {
		if old.dest == dest {
			if expires.After(old.expires) {
				old.expires = expires
				heap.Fix(&r.resvExp, old.at)
			}
			return
		}
		r.dropReservation(old)
	}
	rv := &reservation{id: id, dest: dest, res: res, expires: expires}
	r.resv[id] = rv
	heap.Push(&r.resvExp, rv)
	r.addReserved(dest, rv.res, 1)
	r.refreshReserved(dest)
}

func (r *Registry) dropReservation(rv *reservation) {
	delete(r.resv, rv.id)
	heap.Remove(&r.resvExp, rv.at)
	r.addReserved(rv.dest, rv.res, -1)
	r.refreshReserved(rv.dest)
}

// addReserved adds (sign 1) or takes away (-1) one reservation of res in
// dest's sum.
func (r *Registry) addReserved(dest string, res Resources, sign int64) {
	sum := r.resvSum[dest]
	sum.MilliCPU += sign * res.MilliCPU
	sum.MemoryMB += sign * res.MemoryMB
	sum.Pods += sign
	if sum.Pods == 0 {
		delete(r.resvSum, dest)
		return
	}
	r.resvSum[dest] = sum
}

// reservedAt sums the reservations held at dest.
func (r *Registry) reservedAt(dest string) Reserved { return r.resvSum[dest] }

// refreshReserved gives dest's entry its current reservations.
func (r *Registry) refreshReserved(dest string) {
	s := r.byID[dest]
	if s == nil {
		return
	}
	c := *s.c()
	c.setReserved(r.reservedAt(dest))
	if c.Reserved == s.c().Reserved {
		return
	}
	r.replace(s, &c)
}

// ExpireReservations drops the reservations whose time is up at now and
// returns how many are left.
func (r *Registry) ExpireReservations(now time.Time) int {
	r.mu.RLock()
	due := len(r.resvExp) > 0 && !now.Before(r.resvExp[0].expires)
	n := len(r.resv)
	r.mu.RUnlock()
	if !due {
		return n
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for len(r.resvExp) > 0 && !now.Before(r.resvExp[0].expires) {
		r.dropReservation(r.resvExp[0])
	}
	return len(r.resv)
}

// Reservations is the number of reservations held.
func (r *Registry) Reservations() int {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return len(r.resv)
}

// StateOf computes c's liveness at now. An entry from the MO's compact
// view has the MO's verdict until the MO has not vouched for it for
// longer than it promised (or than the registry's own liveness allows):
// then it is down.
func (r *Registry) StateOf(c *Cluster, now time.Time) State {
	if c.fromView {
		if now.Sub(c.vouched) > max(c.staleAfter, time.Duration(r.downAfter)*r.interval) {
			return StateDown
		}
		return c.verdict
	}
	return r.age(c.LastSeen, c.Hello.IntervalMs, now)
}

func (r *Registry) age(seen time.Time, intervalMs int64, now time.Time) State {
	iv := r.interval
	if intervalMs > 0 {
		iv = time.Duration(intervalMs) * time.Millisecond
	}
	elapsed := now.Sub(seen)
	// Half an interval of slack so jitter does not flap a cluster.
	missed := int64(0)
	if elapsed > iv/2 {
		missed = int64((elapsed - iv/2) / iv)
	}
	switch {
	case missed >= int64(r.downAfter):
		return StateDown
	case missed >= 1:
		return StateSuspect
	}
	return StateAlive
}

// entry is a registry entry as copied by entries.
type entry struct {
	c       *Cluster
	indexed bool
}

// entries copies the registry's entries (immutable) under the read lock,
// so that a walk over 100,000 clusters does not hold the lock placements
// and hellos take for the whole walk: only for the copy.
func (r *Registry) entries() []entry {
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := make([]entry, len(r.list))
	for i, s := range r.list {
		out[i] = entry{s.c(), s.indexed}
	}
	return out
}

// Sweep takes clusters that are down at now out of the placement index
// (a hello puts them back) and calls fn, when set, with every cluster and
// its state. The MO runs it once per hello interval. It walks a copy of
// the entries: a hello arriving meanwhile is judged by the next sweep.
func (r *Registry) Sweep(now time.Time, fn func(c *Cluster, st State)) {
	var down []string
	for _, e := range r.entries() {
		st := r.StateOf(e.c, now)
		if st == StateDown && e.indexed {
			down = append(down, e.c.Hello.ClusterID)
		}
		if fn != nil {
			fn(e.c, st)
		}
	}
	if len(down) == 0 {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, id := range down {
		if s := r.byID[id]; s != nil && s.indexed && r.StateOf(s.c(), now) == StateDown {
			r.treeRemove(s)
		}
	}
}

// Each calls fn with every cluster and its state at now, until fn returns
// false. Entries must not be modified. It walks a copy of the entries, so
// fn may take its time without holding up placements and hellos.
func (r *Registry) Each(now time.Time, fn func(c *Cluster, st State) bool) {
	for _, e := range r.entries() {
		if !fn(e.c, r.StateOf(e.c, now)) {
			return
		}
	}
}

// Get returns cluster id with its state at now.
func (r *Registry) Get(now time.Time, id string) (*Cluster, State, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	s := r.byID[id]
	if s == nil {
		return nil, StateDown, false
	}
	return s.c(), r.StateOf(s.c(), now), true
}

func (r *Registry) getLocked(id string) *Cluster {
	if s := r.byID[id]; s != nil {
		return s.c()
	}
	return nil
}

// Len is the number of known clusters.
func (r *Registry) Len() int {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return len(r.list)
}

// Counts returns how many clusters are in each state at now.
func (r *Registry) Counts(now time.Time) map[State]int {
	n := map[State]int{StateAlive: 0, StateSuspect: 0, StateDown: 0}
	r.Each(now, func(_ *Cluster, st State) bool { n[st]++; return true })
	return n
}

// ClusterStatus is a registry entry as reported to users.
type ClusterStatus struct {
	Hello    Hello     `json:"hello"`
	State    string    `json:"state"`
	LastSeen time.Time `json:"last_seen"`
	Reserved Reserved  `json:"reserved,omitzero"`
}

// Snapshot lists every cluster, sorted by id.
func (r *Registry) Snapshot(now time.Time) []ClusterStatus {
	var out []ClusterStatus
	r.Each(now, func(c *Cluster, st State) bool {
		out = append(out, ClusterStatus{Hello: c.Hello, State: st.String(), LastSeen: c.LastSeen, Reserved: c.Reserved})
		return true
	})
	slices.SortFunc(out, func(a, b ClusterStatus) int { return strings.Compare(a.Hello.ClusterID, b.Hello.ClusterID) })
	return out
}
