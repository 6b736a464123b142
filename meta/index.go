// This file holds the placement index and the search over it, so that a
// request costs far less than the cluster count:
//
//   - clusters with a measured link to the link origin (the origin's own
//     links, and every cluster reporting a link to it: Registry.linkedBy)
//     are judged one by one; they are few;
//   - with a link bound (bandwidth, RTT) nothing else can fit;
//   - with wanted labels whose rarest pair is carried by few clusters,
//     those are judged one by one (Registry.labels);
//   - otherwise every eligible tier's tree, ordered by load with
//     reservations counted, is walked from the least loaded, highest rank
//     first. Without a measured link a cluster's score depends only on its
//     rank and its load after the service lands, which is at least
//     tierTree.lowerLoad(key): the walk stops once that bound cannot beat
//     the worst of the best MaxAlternatives+1 found, skips a run of equal
//     keys that can only tie and lose on the id, and skips a cluster whose
//     exact score cannot enter the top before judging it.
//
// Every cluster is judged by the same judge.eval as the reference scan
// (explain.go), and bounds use the same score formula (scoreOf);
// TestIndexMatchesScan checks that both always give the same reply.

package meta

import (
	"math"
	"slices"
	"time"

	"github.com/google/btree"
)

// tierTree holds one tier's clusters ordered by load (slotLess), with the
// largest capacity per figure ever indexed in it (never lowered, so it
// stays a bound) and whether some cluster did not report a figure.
type tierTree struct {
	tree   *btree.BTreeG[*slot]
	maxCap [3]int64 // milli-CPU, memory MB, pods
	lacks  [3]bool
}

func newTierTree() *tierTree { return &tierTree{tree: btree.NewG(32, slotLess)} }

// raises reports whether note(c) would change the tree's bounds.
func (tt *tierTree) raises(c Capacity) bool {
	for d, v := range [3]int64{c.MilliCPU, c.MemoryMB, c.Pods} {
		if v > tt.maxCap[d] || (v == 0 && !tt.lacks[d]) {
			return true
		}
	}
	return false
}

func (tt *tierTree) note(c Capacity) {
	for d, v := range [3]int64{c.MilliCPU, c.MemoryMB, c.Pods} {
		tt.maxCap[d] = max(tt.maxCap[d], v)
		if v == 0 {
			tt.lacks[d] = true
		}
	}
}

// lowerLoad is a lower bound of the load after res lands on any cluster
// of the tree whose key (load before) is at least key. A figure the
// cluster reports grows by at least res/maxCap: its dominant one from key,
// and every figure all clusters report from 0. The first bound is a float
// sum, so it gives up a hair; the others are exact.
func (tt *tierTree) lowerLoad(key float64, res Resources) float64 {
	need := [3]float64{float64(res.MilliCPU), float64(res.MemoryMB), 1}
	minGrow, maxGrow := math.Inf(1), 0.0
	for d := range need {
		if tt.maxCap[d] == 0 {
			continue
		}
		g := need[d] / float64(tt.maxCap[d])
		minGrow = min(minGrow, g)
		if !tt.lacks[d] {
			maxGrow = max(maxGrow, g)
		}
	}
	lo := max(key, maxGrow)
	if !math.IsInf(minGrow, 1) {
		lo = max(lo, key+minGrow-1e-9)
	}
	return min(lo, 1)
}

// Place answers req with policy p from the index. Reserve > 0 counts the
// service against the chosen destination for that long (or until the
// destination's hello lists req.RequestID in Placed). A request with
// Explain (or ExplainClusters), and any request nothing fits, is answered
// by the full scan, which says why each cluster was ruled out.
func (r *Registry) Place(p Policy, req PlacementRequest, now time.Time, reserve time.Duration) PlacementReply {
	if reserve > 0 {
		r.mu.Lock()
		defer r.mu.Unlock()
	} else {
		r.mu.RLock()
		defer r.mu.RUnlock()
	}
	var rep PlacementReply
	if req.Explain || len(req.ExplainClusters) > 0 {
		rep = r.explainLocked(p, &req, now)
	} else {
		j := newJudge(p, &req, now, r.getLocked, r.StateOf)
		var t topK
		r.search(&j, &t)
		if t.n == 0 {
			rep = r.explainLocked(p, &req, now)
		} else {
			rep = PlacementReply{Version: Version, RequestID: req.RequestID, Policy: p.Name()}
			t.fill(&rep, p.Name())
		}
	}
	if reserve > 0 && rep.Destination != nil {
		r.reserveLocked(req.RequestID, rep.Destination.ClusterID, req.Service.Resources, now.Add(reserve))
	}
	return rep
}

// labelScanMax is how many clusters a label posting may hold to be judged
// one by one instead of walking the trees.
const labelScanMax = 256

// afterKey sorts after every slot of its key (ids are ASCII).
var afterKey = &Cluster{Hello: Hello{ClusterID: "\xff"}}

func (r *Registry) search(j *judge, t *topK) {
	cons := &j.req.Service.Constraints
	var linked map[string]struct{}
	judgeID := func(id string) {
		if _, seen := linked[id]; seen {
			return
		}
		if linked == nil {
			linked = map[string]struct{}{}
		}
		linked[id] = struct{}{}
		if s := r.byID[id]; s != nil {
			if cat, rk := j.eval(s.c()); cat == "" {
				t.add(rk)
			}
		}
	}
	if j.origin != nil {
		judgeID(j.from) // reached locally from itself (policy.go linkTo)
		for _, l := range j.origin.Hello.Links {
			judgeID(l.Peer)
		}
	}
	for id := range r.linkedBy[j.from] {
		judgeID(id)
	}
	if j.needLink {
		return // only a measured link can meet a link bound
	}
	if posting, ok := r.rarestLabel(cons.WantLabels); ok {
		if len(posting) <= labelScanMax {
			for id := range posting {
				if _, seen := linked[id]; !seen {
					if cat, rk := j.eval(r.byID[id].c()); cat == "" {
						t.add(rk)
					}
				}
			}
			return
		}
	} else if len(cons.WantLabels) > 0 {
		return // nobody carries a wanted label
	}
	type rankedTree struct {
		rank int
		tt   *tierTree
	}
	trees := make([]rankedTree, 0, len(r.tiers))
	for tier, tt := range r.tiers {
		if (len(cons.WantTiers) > 0 && !slices.Contains(cons.WantTiers, tier)) || slices.Contains(cons.ForbidTiers, tier) {
			continue
		}
		rank, _, ok := j.p.Rank(tier, &j.req.Service)
		if !ok {
			continue
		}
		trees = append(trees, rankedTree{rank, tt})
	}
	slices.SortFunc(trees, func(a, b rankedTree) int { return b.rank - a.rank })
	res := j.req.Service.Resources
	for _, rt := range trees {
		if t.full() {
			if w, _ := t.worst(); scoreOf(rt.rank, rt.tt.lowerLoad(0, res), unknownLinkQuality) < w {
				continue // nothing in this tree can enter the top
			}
		}
		var from *slot // resume after a run of ties
		for {
			jumped := false
			visit := func(s *slot) bool {
				if t.full() {
					w, wid := t.worst()
					bound := scoreOf(rt.rank, rt.tt.lowerLoad(s.key, res), unknownLinkQuality)
					if bound < w {
						return false // nor can any later cluster
					}
					id := s.c().Hello.ClusterID
					if bound == w && id > wid {
						// The rest of this key can only tie and lose on the id.
						from, jumped = newSlot(afterKey, s.key), true
						return false
					}
					if _, seen := linked[id]; !seen {
						sc := scoreOf(rt.rank, loadAfter(s.c().eff, res), unknownLinkQuality)
						if sc < w || (sc == w && id > wid) {
							return true // cannot enter, whatever the filter says
						}
					}
				}
				if _, seen := linked[s.c().Hello.ClusterID]; seen {
					return true
				}
				if cat, rk := j.eval(s.c()); cat == "" {
					t.add(rk)
				}
				return true
			}
			if from == nil {
				rt.tt.tree.Ascend(visit)
			} else {
				rt.tt.tree.AscendGreaterOrEqual(from, visit)
			}
			if !jumped {
				break
			}
		}
	}
}

// rarestLabel returns the smallest posting among the wanted label pairs;
// ok is false when there are none wanted or one is carried by nobody.
func (r *Registry) rarestLabel(want map[string]string) (posting map[string]struct{}, ok bool) {
	for k, v := range want {
		p := r.labels[labelKey(k, v)]
		if len(p) == 0 {
			return nil, false
		}
		if posting == nil || len(p) < len(posting) {
			posting = p
		}
	}
	return posting, posting != nil
}
