// This file holds the MO's compact view: one Summary per cluster in the
// KV bucket roam_meta_clusters. The MO rewrites a cluster's summary only
// when something a placement reads changes materially (state, identity,
// links, load by 5 points) and at least every summaryRefresh intervals, so
// controllers follow a few writes per second instead of every hello, and a
// restarted replica restores its registry from it.

package meta

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"math"
	"slices"
	"strings"
	"time"
)

// Summary is one cluster in the compact view (KV bucket KVBucket, key:
// the cluster id).
type Summary struct {
	Version  int       `json:"v"`
	Hello    Hello     `json:"hello"`
	State    string    `json:"state"`
	LastSeen time.Time `json:"last_seen"`
	// Reserved is capacity the MO promised to placements Hello does not
	// show yet (it counts as used).
	Reserved Reserved `json:"reserved,omitzero"`
	// Written is when an MO replica (By) wrote the summary; RefreshMs is
	// the longest it lets pass between two writes while it runs. A reader
	// treats a summary not rewritten for three refreshes as down.
	Written   time.Time `json:"written"`
	RefreshMs int64     `json:"refresh_ms"`
	By        string    `json:"by,omitempty"`
}

// summaryRefresh is how many hello intervals may pass between two writes
// of an unchanged cluster.
const summaryRefresh = 30

// loadStep is the load change (0-1) that makes a summary worth rewriting.
const loadStep = 0.05

// DecodeSummary parses and validates a summary.
func DecodeSummary(b []byte) (Summary, error) {
	var s Summary
	if err := decode(b, &s); err != nil {
		return Summary{}, fmt.Errorf("decode summary: %w", err)
	}
	if err := s.Hello.Validate(); err != nil {
		return Summary{}, fmt.Errorf("decode summary: %w", err)
	}
	if s.State != "" {
		if _, ok := ParseState(s.State); !ok {
			return Summary{}, fmt.Errorf("decode summary %s: state %q", s.Hello.ClusterID, s.State)
		}
	}
	return s, nil
}

// viewMark is what a replica remembers of a summary in the bucket, to
// decide whether its own view differs materially.
type viewMark struct {
	rev     uint64
	state   State
	written time.Time
	load    float64
	ident   uint64
	// by is the replica that wrote it (Summary.By): the cluster's writer
	// (store.go, viewWriter.check).
	by string
}

func markOf(s Summary, rev uint64) viewMark {
	st, _ := ParseState(s.State)
	eff := s.Hello.Capacity
	eff.UsedMilliCPU += s.Reserved.MilliCPU
	eff.UsedMemoryMB += s.Reserved.MemoryMB
	eff.UsedPods += s.Reserved.Pods
	return viewMark{rev: rev, state: st, written: s.Written, load: eff.Load(), ident: identity(&s.Hello), by: s.By}
}

// stale reports whether a cluster now (state, load, identity) differs
// materially from its mark, or the mark is due for a refresh.
func (m viewMark) stale(st State, load float64, ident uint64, now time.Time, refresh time.Duration) bool {
	return m.state != st || m.ident != ident || math.Abs(m.load-load) >= loadStep || now.Sub(m.written) >= refresh
}

// identity hashes what a placement reads of a hello besides the load: tier,
// labels, addresses, interval, and the links (bandwidth and RTT in 10%
// steps, up or down).
func identity(h *Hello) uint64 {
	f := fnv.New64a()
	var b [8]byte
	str := func(s string) { f.Write([]byte(s)); f.Write([]byte{0}) }
	num := func(v uint64) { binary.LittleEndian.PutUint64(b[:], v); f.Write(b[:]) }
	str(h.Tier)
	str(h.ControllerURL)
	num(uint64(h.IntervalMs))
	for _, k := range sortedKeys(h.Labels) {
		str(k)
		str(h.Labels[k])
	}
	for _, a := range h.DataAddrs {
		str(a.String())
	}
	links := slices.Clone(h.Links)
	slices.SortFunc(links, func(a, b Link) int { return strings.Compare(a.Peer, b.Peer) })
	for _, l := range links {
		str(l.Peer)
		num(step10(l.BandwidthMbps))
		num(step10(l.RTTMs))
		if l.Up {
			num(1)
		} else {
			num(0)
		}
	}
	return f.Sum64()
}

// step10 buckets v in 10% steps.
func step10(v float64) uint64 {
	if v <= 0 {
		return 0
	}
	return uint64(1 + math.Floor(math.Log1p(v)/math.Log(1.1)))
}

// summaryOf is c's summary at now.
func summaryOf(c *Cluster, st State, now time.Time, refresh time.Duration, by string) Summary {
	return Summary{Version: Version, Hello: c.Hello, State: st.String(), LastSeen: c.LastSeen, Reserved: c.Reserved,
		Written: now.UTC(), RefreshMs: refresh.Milliseconds(), By: by}
}

func encodeSummary(s Summary) []byte {
	b, _ := json.Marshal(s)
	return b
}

// applySummary puts a summary read from the compact view into a client's
// registry: the MO's verdict, aged from when it was written.
func (r *Registry) applySummary(s Summary) {
	st, ok := ParseState(s.State)
	if !ok {
		st = StateAlive // a summary written before states were kept
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	// The hello shows the placements it lists: local reservations end.
	for _, id := range s.Hello.Placed {
		if rv := r.resv[id]; rv != nil && rv.dest == s.Hello.ClusterID {
			r.dropReservation(rv)
		}
	}
	c := newCluster(s.Hello, s.LastSeen, Reserved{})
	c.fromView, c.verdict, c.vouched, c.viewRes = true, st, s.Written, s.Reserved
	c.setReserved(r.reservedAt(s.Hello.ClusterID))
	c.staleAfter = 3 * time.Duration(s.RefreshMs) * time.Millisecond
	if old := r.byID[s.Hello.ClusterID]; old != nil {
		r.replace(old, c)
		return
	}
	r.insert(c)
}
