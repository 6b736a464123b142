// This file holds the cluster registry: the latest hello of every cluster,
// its liveness, and the View the placement policies read.

package meta

import (
	"slices"
	"sync"
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

// Cluster is one registry entry. It is immutable once stored: the registry
// replaces the pointer on every hello, so readers may keep it.
type Cluster struct {
	Hello    Hello
	LastSeen time.Time
	// links indexes Hello.Links by peer when there are many; a short list
	// is scanned (placement looks a link up for every cluster).
	links map[string]Link
}

const linkMapMin = 8

func newCluster(h Hello, seen time.Time) *Cluster {
	c := &Cluster{Hello: h, LastSeen: seen}
	if len(h.Links) >= linkMapMin {
		c.links = make(map[string]Link, len(h.Links))
		for _, l := range h.Links {
			c.links[l.Peer] = l
		}
	}
	return c
}

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

// View is what a policy reads: every known cluster with its state at now.
// Implementations call fn with entries that must not be modified.
type View interface {
	Each(now time.Time, fn func(c *Cluster, st State) bool)
	Get(now time.Time, id string) (*Cluster, State, bool)
}

// ObserveResult says what the registry did with a hello.
type ObserveResult uint8

// Observe results.
const (
	ObserveNew     ObserveResult = iota // first hello from this cluster
	ObserveUpdated                      // newer hello, kept
	ObserveStale                        // seq not above the last kept one: ignored
)

// Registry holds the latest hello per cluster. Safe for concurrent use.
type Registry struct {
	interval  time.Duration
	downAfter int

	mu    sync.RWMutex
	index map[string]int // id -> position in list
	list  []*Cluster
}

// NewRegistry returns an empty registry: a cluster is suspect once one
// hello interval is missed and down after downAfter (at least 1) missed.
// A hello carrying its own IntervalMs overrides interval for that cluster.
func NewRegistry(interval time.Duration, downAfter int) *Registry {
	if interval <= 0 {
		interval = time.Second
	}
	return &Registry{interval: interval, downAfter: max(downAfter, 1), index: map[string]int{}}
}

// Observe records h, received at now, unless its Seq is stale.
func (r *Registry) Observe(h Hello, now time.Time) ObserveResult {
	res, _ := r.put(h, now, false)
	return res
}

// observe is Observe also returning the entry it replaced (nil if none).
func (r *Registry) observe(h Hello, now time.Time) (ObserveResult, *Cluster) {
	return r.put(h, now, false)
}

// restore adds a persisted entry without overwriting a newer one.
func (r *Registry) restore(h Hello, seen time.Time) {
	r.put(h, seen, true)
}

func (r *Registry) put(h Hello, seen time.Time, restoring bool) (ObserveResult, *Cluster) {
	c := newCluster(h, seen)
	r.mu.Lock()
	defer r.mu.Unlock()
	i, ok := r.index[h.ClusterID]
	if !ok {
		r.index[h.ClusterID] = len(r.list)
		r.list = append(r.list, c)
		return ObserveNew, nil
	}
	old := r.list[i]
	if h.Seq <= old.Hello.Seq || (restoring && !seen.After(old.LastSeen)) {
		return ObserveStale, old
	}
	r.list[i] = c
	return ObserveUpdated, old
}

// Forget removes a cluster.
func (r *Registry) Forget(id string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	i, ok := r.index[id]
	if !ok {
		return
	}
	last := len(r.list) - 1
	r.list[i] = r.list[last]
	r.index[r.list[i].Hello.ClusterID] = i
	r.list[last] = nil
	r.list = r.list[:last]
	delete(r.index, id)
}

// StateOf computes c's liveness at now.
func (r *Registry) StateOf(c *Cluster, now time.Time) State {
	iv := r.interval
	if c.Hello.IntervalMs > 0 {
		iv = time.Duration(c.Hello.IntervalMs) * time.Millisecond
	}
	elapsed := now.Sub(c.LastSeen)
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

// Each implements View.
func (r *Registry) Each(now time.Time, fn func(c *Cluster, st State) bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	for _, c := range r.list {
		if !fn(c, r.StateOf(c, now)) {
			return
		}
	}
}

// Get implements View.
func (r *Registry) Get(now time.Time, id string) (*Cluster, State, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	i, ok := r.index[id]
	if !ok {
		return nil, StateDown, false
	}
	c := r.list[i]
	return c, r.StateOf(c, now), true
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
}

// Snapshot lists every cluster, sorted by id.
func (r *Registry) Snapshot(now time.Time) []ClusterStatus {
	var out []ClusterStatus
	r.Each(now, func(c *Cluster, st State) bool {
		out = append(out, ClusterStatus{Hello: c.Hello, State: st.String(), LastSeen: c.LastSeen})
		return true
	})
	slices.SortFunc(out, func(a, b ClusterStatus) int {
		if a.Hello.ClusterID < b.Hello.ClusterID {
			return -1
		}
		if a.Hello.ClusterID > b.Hello.ClusterID {
			return 1
		}
		return 0
	})
	return out
}
