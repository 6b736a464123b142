// This file holds the placement policies and the judgement every placement
// path shares: the filter that says why a cluster is ruled out, and the
// score (tier rank, then room left with link quality), with deterministic
// ties. The reference scan (scan.go) and the index (index.go) both call
// judge, so they cannot disagree on a cluster.

package meta

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// Policy chooses where a service goes by ranking tiers. Within a rank,
// every policy scores clusters the same way (score): the room left after
// the service lands plus the link quality toward the requester. A cluster
// of a higher rank always beats one of a lower rank. The placement index
// relies on that shape to stop early. Implementations must be safe for
// concurrent use and deterministic.
type Policy interface {
	Name() string
	// Rank returns tier's rank for the service (higher wins); ok false
	// rules the tier out and why says why.
	Rank(tier string, svc *ServiceDescriptor) (rank int, why string, ok bool)
}

// NewPolicy returns the policy called name: "least-loaded" or "tier".
func NewPolicy(name string) (Policy, error) {
	switch name {
	case "", "least-loaded":
		return LeastLoaded{}, nil
	case "tier":
		return TierAware{}, nil
	}
	return nil, fmt.Errorf("new policy %q: want least-loaded or tier", name)
}

// Filter categories (the key of PlacementReply.FilteredByReason).
const (
	FilterRequester = "requester"
	FilterExcluded  = "excluded"
	FilterDown      = "down"
	FilterSuspect   = "suspect"
	FilterTier      = "tier"
	FilterLabels    = "labels"
	FilterCapacity  = "capacity"
	FilterLink      = "link"
	FilterBandwidth = "bandwidth"
	FilterRTT       = "rtt"
)

// MaxFiltered bounds the per-cluster reasons listed in an explained reply;
// the rest are only counted in FilteredByReason.
const MaxFiltered = 64

// MaxAlternatives is how many ranked alternatives a reply lists.
const MaxAlternatives = 3

// rankWeight separates ranks: a score within a rank is in [0, 1.5].
const rankWeight = 10

// LeastLoaded prefers the cluster with the most room left after the
// service lands, weighted with the link quality toward the requester.
type LeastLoaded struct{}

// Name implements Policy.
func (LeastLoaded) Name() string { return "least-loaded" }

// Rank implements Policy: every tier ranks the same.
func (LeastLoaded) Rank(string, *ServiceDescriptor) (int, string, bool) { return 0, "", true }

// TierAware follows the paper's deep-edge / edge / cloud use case: go to
// the cloud when its link meets the service's need, else to the edge, else
// stay (no placement). Within a tier, least loaded wins.
type TierAware struct{}

// Name implements Policy.
func (TierAware) Name() string { return "tier" }

// Rank implements Policy: cloud 2, edge 1; another tier only when the
// service asks for it (rank 0).
func (TierAware) Rank(tier string, svc *ServiceDescriptor) (int, string, bool) {
	switch tier {
	case TierCloud:
		return 2, "", true
	case TierEdge:
		return 1, "", true
	}
	if slices.Contains(svc.Constraints.WantTiers, tier) {
		return 0, "", true
	}
	return 0, "tier policy moves services to edge or cloud only", false
}

// candView is a cluster that passed the filter, with what scoring needs.
type candView struct {
	c         *Cluster
	rank      int
	loadAfter float64
	link      Link
	hasLink   bool
	local     bool // the candidate is the link origin itself
}

// unknownLinkQuality is the link quality assumed when nothing is measured.
const unknownLinkQuality = 0.5

// score is rank*rankWeight plus, in [0, 1.5], the room left (weight 1)
// and the link quality (weight 0.5).
func score(cv candView) float64 {
	q := unknownLinkQuality
	if cv.hasLink {
		bw := cv.link.BandwidthMbps / (cv.link.BandwidthMbps + 100)
		rtt := 1 / (1 + cv.link.RTTMs/20)
		q = bw * rtt
	}
	return scoreOf(cv.rank, cv.loadAfter, q)
}

// scoreOf is the one formula for a score, so that the index's bounds and
// pruning compute exactly what judge does.
func scoreOf(rank int, loadAfter, linkQuality float64) float64 {
	return float64(rank*rankWeight) + (1 - loadAfter) + 0.5*linkQuality
}

type ranked struct {
	cv    candView
	score float64
}

// better orders by score, then by cluster id for deterministic ties.
func better(a, b ranked) bool {
	if a.score != b.score {
		return a.score > b.score
	}
	return a.cv.c.Hello.ClusterID < b.cv.c.Hello.ClusterID
}

// topK keeps the best MaxAlternatives+1 candidates.
type topK struct {
	top [MaxAlternatives + 1]ranked
	n   int
}

func (t *topK) full() bool { return t.n == len(t.top) }

// worst is the last of a full top: a candidate must beat it to enter.
func (t *topK) worst() (score float64, id string) {
	w := &t.top[t.n-1]
	return w.score, w.cv.c.Hello.ClusterID
}

func (t *topK) add(r ranked) {
	i := t.n
	for i > 0 && better(r, t.top[i-1]) {
		if i < len(t.top) {
			t.top[i] = t.top[i-1]
		}
		i--
	}
	if i < len(t.top) {
		t.top[i] = r
		if t.n < len(t.top) {
			t.n++
		}
	}
}

// judge holds what every cluster is judged against for one request.
type judge struct {
	p        Policy
	req      *PlacementRequest
	from     string   // link origin: the requester, or home
	origin   *Cluster // nil when from is unknown
	needLink bool
	now      time.Time
	stateOf  func(*Cluster, time.Time) State
}

func newJudge(p Policy, req *PlacementRequest, now time.Time, get func(id string) *Cluster, stateOf func(*Cluster, time.Time) State) judge {
	cons := &req.Service.Constraints
	j := judge{p: p, req: req, from: req.Requester, now: now, stateOf: stateOf,
		needLink: cons.MinBandwidthMbps > 0 || cons.MaxRTTMs > 0}
	if cons.LinkFrom == LinkFromHome {
		j.from = req.Home
	}
	j.origin = get(j.from)
	return j
}

// eval judges c: the filter category that rules it out ("" when it is a
// candidate) and, for a candidate, its scored view. It formats nothing;
// why gives the text for a category.
func (j *judge) eval(c *Cluster) (cat string, r ranked) {
	h := &c.Hello
	id := h.ClusterID
	cons := &j.req.Service.Constraints
	switch {
	case id == j.req.Requester:
		return FilterRequester, r
	case slices.Contains(cons.ExcludeClusters, id):
		return FilterExcluded, r
	}
	switch j.stateOf(c, j.now) {
	case StateDown:
		return FilterDown, r
	case StateSuspect:
		return FilterSuspect, r
	}
	if (len(cons.WantTiers) > 0 && !slices.Contains(cons.WantTiers, h.Tier)) || slices.Contains(cons.ForbidTiers, h.Tier) {
		return FilterTier, r
	}
	for k, v := range cons.WantLabels {
		if got, ok := h.Labels[k]; !ok || got != v {
			return FilterLabels, r
		}
	}
	if capacityShort(c.eff, j.req.Service.Resources) != "" {
		return FilterCapacity, r
	}
	cv := candView{c: c, loadAfter: loadAfter(c.eff, j.req.Service.Resources)}
	cv.link, cv.hasLink = j.linkTo(c)
	cv.local = id == j.from
	if cv.hasLink && !cv.link.Up {
		return FilterLink, r
	}
	if j.needLink {
		switch {
		case !cv.hasLink:
			return FilterLink, r
		case cons.MinBandwidthMbps > 0 && cv.link.BandwidthMbps < cons.MinBandwidthMbps:
			return FilterBandwidth, r
		case cons.MaxRTTMs > 0 && cv.link.RTTMs > cons.MaxRTTMs:
			return FilterRTT, r
		}
	}
	rank, _, ok := j.p.Rank(h.Tier, &j.req.Service)
	if !ok {
		return FilterTier, r
	}
	cv.rank = rank
	return "", ranked{cv: cv, score: score(cv)}
}

// localMbps is the bandwidth of the path from a cluster to itself.
const localMbps = 1e6

// linkTo is the link between the origin and c: as the origin measured it,
// else as c measured it; the origin itself is reached locally (the home,
// where users' traffic enters, is never short of a link to itself).
func (j *judge) linkTo(c *Cluster) (Link, bool) {
	if c.Hello.ClusterID == j.from {
		return Link{Peer: j.from, BandwidthMbps: localMbps, Up: true}, true
	}
	if j.origin != nil {
		if l, ok := j.origin.Link(c.Hello.ClusterID); ok {
			return l, true
		}
	}
	return c.Link(j.from)
}

// why is the text for c being ruled out for cat.
func (j *judge) why(c *Cluster, cat string) string {
	h := &c.Hello
	cons := &j.req.Service.Constraints
	switch cat {
	case FilterRequester:
		return "the service is leaving it"
	case FilterExcluded:
		return "excluded by the request"
	case FilterDown:
		return "no hello since " + c.LastSeen.UTC().Format(time.RFC3339)
	case FilterSuspect:
		return "missed a hello, last " + c.LastSeen.UTC().Format(time.RFC3339)
	case FilterTier:
		switch {
		case len(cons.WantTiers) > 0 && !slices.Contains(cons.WantTiers, h.Tier):
			return "tier " + h.Tier + " not in " + strings.Join(cons.WantTiers, ",")
		case slices.Contains(cons.ForbidTiers, h.Tier):
			return "tier " + h.Tier + " forbidden"
		}
		_, why, _ := j.p.Rank(h.Tier, &j.req.Service)
		return why
	case FilterLabels:
		for _, k := range sortedKeys(cons.WantLabels) {
			v := cons.WantLabels[k]
			if got, ok := h.Labels[k]; !ok || got != v {
				return fmt.Sprintf("label %s=%q wanted, has %q", k, v, got)
			}
		}
	case FilterCapacity:
		return capacityShort(c.eff, j.req.Service.Resources)
	case FilterLink:
		if l, ok := j.linkTo(c); ok && !l.Up {
			return "link from " + j.from + " is down"
		}
		return "no link measured from " + j.from
	case FilterBandwidth:
		l, _ := j.linkTo(c)
		return fmt.Sprintf("%.0f Mbit/s from %s, %.0f needed", l.BandwidthMbps, j.from, cons.MinBandwidthMbps)
	case FilterRTT:
		l, _ := j.linkTo(c)
		return fmt.Sprintf("%.1f ms from %s, at most %.1f", l.RTTMs, j.from, cons.MaxRTTMs)
	}
	return cat
}

// capacityShort says what c lacks for res ("" when it fits). Reserved
// capacity counts as used.
func capacityShort(c Capacity, res Resources) string {
	cpu, mem, pods := c.Free()
	switch {
	case c.MilliCPU > 0 && cpu < res.MilliCPU:
		return fmt.Sprintf("%d milli-CPU free, %d needed", cpu, res.MilliCPU)
	case c.MemoryMB > 0 && mem < res.MemoryMB:
		return fmt.Sprintf("%d MB free, %d needed", mem, res.MemoryMB)
	case c.Pods > 0 && pods < 1:
		return "no pod slot free"
	}
	return ""
}

func loadAfter(c Capacity, res Resources) float64 {
	c.UsedMilliCPU += res.MilliCPU
	c.UsedMemoryMB += res.MemoryMB
	c.UsedPods++
	return c.Load()
}

// candidate turns a ranked cluster into a reply entry.
func candidate(r ranked) Candidate {
	h := &r.cv.c.Hello
	return Candidate{
		ClusterID:     h.ClusterID,
		ControllerURL: h.ControllerURL,
		DataAddrs:     slices.Clone(h.DataAddrs),
		Locator:       h.Locator,
		Tier:          h.Tier,
		Score:         r.score,
		Why:           string(appendCandidateWhy(nil, r)),
	}
}

// fill writes the top candidates into rep (or says why none fits); each
// alternative says why it ranked below the destination.
func (t *topK) fill(rep *PlacementReply, policy string) {
	for i := range t.n {
		cand := candidate(t.top[i])
		if i == 0 {
			rep.Destination = &cand
			rep.Reason = policy + ": " + cand.Why
			continue
		}
		cand.Why += "; ranked lower: " + lowerWhy(t.top[0], t.top[i])
		rep.Alternatives = append(rep.Alternatives, cand)
	}
}

// lowerWhy says why r ranks below best: the first term of the score that
// separates them.
func lowerWhy(best, r ranked) string { return string(appendLowerWhy(nil, best, r)) }

func summarize(m map[string]int) string {
	var b strings.Builder
	for i, k := range sortedKeys(m) {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%s %d", k, m[k])
	}
	return b.String()
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
