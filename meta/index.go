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
		j := newJudge(p, &req, now, r.getFn, r.stateFn)
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

// searchScratch is what a search reuses from one request to the next (a
// Registry keeps them in a pool): the linked set, the eligible trees, the
// walk's state read by visit (a method value kept here, so that a walk
// allocates nothing) and the reply encoder's text buffers.
type searchScratch struct {
	linked map[string]struct{}
	trees  []rankedTree

	j       *judge
	t       *topK
	rt      rankedTree
	res     Resources
	from    *slot // resume after a run of ties
	jumped  bool
	visitFn func(*slot) bool

	why, text []byte
	// The judge and the top of a search, kept here so that neither is
	// allocated.
	jv judge
	tv topK
}

type rankedTree struct {
	rank int
	tt   *tierTree
}

func newSearchScratch() any {
	sc := &searchScratch{linked: map[string]struct{}{}}
	sc.visitFn = sc.visit
	return sc
}

func (r *Registry) search(j *judge, t *topK) {
	sc := r.scratch.Get().(*searchScratch)
	defer r.scratch.Put(sc)
	sc.jv, sc.tv = *j, *t
	r.searchWith(sc, &sc.jv, &sc.tv)
	*t = sc.tv
	sc.jv, sc.tv = judge{}, topK{}
}

func (sc *searchScratch) judgeID(r *Registry, id string) {
	if _, seen := sc.linked[id]; seen {
		return
	}
	sc.linked[id] = struct{}{}
	if s := r.byID[id]; s != nil {
		if cat, rk := sc.j.eval(s.c()); cat == "" {
			sc.t.add(rk)
		}
	}
}

func (sc *searchScratch) visit(s *slot) bool {
	t, rt := sc.t, &sc.rt
	if t.full() {
		w, wid := t.worst()
		bound := scoreOf(rt.rank, rt.tt.lowerLoad(s.key, sc.res), unknownLinkQuality)
		if bound < w {
			return false // nor can any later cluster
		}
		id := s.c().Hello.ClusterID
		if bound == w && id > wid {
			// The rest of this key can only tie and lose on the id.
			sc.from, sc.jumped = newSlot(afterKey, s.key), true
			return false
		}
		if _, seen := sc.linked[id]; !seen {
			v := scoreOf(rt.rank, loadAfter(s.c().eff, sc.res), unknownLinkQuality)
			if v < w || (v == w && id > wid) {
				return true // cannot enter, whatever the filter says
			}
		}
	}
	if _, seen := sc.linked[s.c().Hello.ClusterID]; seen {
		return true
	}
	if cat, rk := sc.j.eval(s.c()); cat == "" {
		t.add(rk)
	}
	return true
}

// reset drops what the scratch refers to once a search is done (the pool
// must not keep clusters alive).
func (sc *searchScratch) reset() {
	sc.j, sc.t, sc.rt, sc.from = nil, nil, rankedTree{}, nil
}

func (r *Registry) searchWith(sc *searchScratch, j *judge, t *topK) {
	if len(sc.linked) > 1024 {
		sc.linked = map[string]struct{}{} // clearing it would cost every next request
	} else {
		clear(sc.linked)
	}
	sc.j, sc.t = j, t
	defer sc.reset()
	cons := &j.req.Service.Constraints
	if j.origin != nil {
		sc.judgeID(r, j.from) // reached locally from itself (policy.go linkTo)
		for _, l := range j.origin.Hello.Links {
			sc.judgeID(r, l.Peer)
		}
	}
	for id := range r.linkedBy[j.from] {
		sc.judgeID(r, id)
	}
	if j.needLink {
		return // only a measured link can meet a link bound
	}
	if posting, ok := r.rarestLabel(cons.WantLabels); ok {
		if len(posting) <= labelScanMax {
			for id := range posting {
				if _, seen := sc.linked[id]; !seen {
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
	trees := sc.trees[:0]
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
	sc.trees = trees
	slices.SortFunc(trees, func(a, b rankedTree) int { return b.rank - a.rank })
	sc.res = j.req.Service.Resources
	for _, rt := range trees {
		if t.full() {
			if w, _ := t.worst(); scoreOf(rt.rank, rt.tt.lowerLoad(0, sc.res), unknownLinkQuality) < w {
				continue // nothing in this tree can enter the top
			}
		}
		sc.rt, sc.from = rt, nil
		for {
			sc.jumped = false
			if sc.from == nil {
				rt.tt.tree.Ascend(sc.visitFn)
			} else {
				rt.tt.tree.AscendGreaterOrEqual(sc.from, sc.visitFn)
			}
			if !sc.jumped {
				break
			}
		}
	}
	clear(sc.trees[:cap(sc.trees)])
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
