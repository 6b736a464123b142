// This file holds the placement policies: a shared filter that says why
// each cluster is ruled out, then a score (least loaded with link quality,
// or tier-aware), with deterministic ties.

package meta

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// Policy chooses where a service goes. Implementations must be safe for
// concurrent use and deterministic for a given view.
type Policy interface {
	Name() string
	Place(req PlacementRequest, view View, now time.Time) PlacementReply
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

// MaxFiltered bounds the per-cluster reasons listed in a reply; the rest
// are only counted in FilteredByReason.
const MaxFiltered = 64

// MaxAlternatives is how many ranked alternatives a reply lists.
const MaxAlternatives = 3

// LeastLoaded prefers the cluster with the most room left after the
// service lands, weighted with the link quality toward the requester.
type LeastLoaded struct{}

// Name implements Policy.
func (LeastLoaded) Name() string { return "least-loaded" }

// Place implements Policy.
func (p LeastLoaded) Place(req PlacementRequest, view View, now time.Time) PlacementReply {
	return place(p.Name(), req, view, now, func(cv candView, explain bool) (float64, string, bool) {
		if !explain {
			return loadScore(cv), "", true
		}
		return loadScore(cv), fmt.Sprintf("load after %.0f%%, link %s", 100*cv.loadAfter, cv.linkText()), true
	})
}

// TierAware follows the paper's deep-edge / edge / cloud use case: go to
// the cloud when its link meets the service's need, else to the edge, else
// stay (no placement). Within a tier, least loaded wins.
type TierAware struct{}

// Name implements Policy.
func (TierAware) Name() string { return "tier" }

// Place implements Policy.
func (p TierAware) Place(req PlacementRequest, view View, now time.Time) PlacementReply {
	wanted := req.Service.Constraints.WantTiers
	return place(p.Name(), req, view, now, func(cv candView, explain bool) (float64, string, bool) {
		rank := 0.0
		switch cv.c.Hello.Tier {
		case TierCloud:
			rank = 2
		case TierEdge:
			rank = 1
		default:
			if !slices.Contains(wanted, cv.c.Hello.Tier) {
				return 0, "tier policy moves services to edge or cloud only", false
			}
		}
		if !explain {
			return rank*10 + loadScore(cv), "", true
		}
		return rank*10 + loadScore(cv), fmt.Sprintf("tier %s, load after %.0f%%, link %s", cv.c.Hello.Tier, 100*cv.loadAfter, cv.linkText()), true
	})
}

// candView is a cluster that passed the filter, with what scoring needs.
type candView struct {
	c         *Cluster
	loadAfter float64
	link      Link
	hasLink   bool
}

func (cv candView) linkText() string {
	if !cv.hasLink {
		return "unknown"
	}
	return fmt.Sprintf("%.0f Mbit/s %.1f ms", cv.link.BandwidthMbps, cv.link.RTTMs)
}

// loadScore is in [0, 1.5]: room left (weight 1) plus link quality
// (weight 0.5; 0.25 when unknown).
func loadScore(cv candView) float64 {
	q := 0.5
	if cv.hasLink {
		bw := cv.link.BandwidthMbps / (cv.link.BandwidthMbps + 100)
		rtt := 1 / (1 + cv.link.RTTMs/20)
		q = bw * rtt
	}
	return (1 - cv.loadAfter) + 0.5*q
}

// scoreFunc scores a candidate; why is only formatted when explain is set
// (for the few clusters a reply lists), ok false rules the cluster out.
type scoreFunc func(cv candView, explain bool) (score float64, why string, ok bool)

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

func place(policy string, req PlacementRequest, view View, now time.Time, score scoreFunc) PlacementReply {
	rep := PlacementReply{Version: Version, RequestID: req.RequestID, Policy: policy}
	cons := req.Service.Constraints
	from := req.Requester
	if cons.LinkFrom == LinkFromHome {
		from = req.Home
	}
	origin, _, _ := view.Get(now, from)
	needLink := cons.MinBandwidthMbps > 0 || cons.MaxRTTMs > 0

	var top [MaxAlternatives + 1]ranked
	n := 0
	// filter records why a cluster is out; why is only formatted for the
	// first MaxFiltered clusters.
	filter := func(id, cat string, why func() string) {
		if rep.FilteredByReason == nil {
			rep.FilteredByReason = map[string]int{}
		}
		rep.FilteredByReason[cat]++
		rep.FilteredTotal++
		if len(rep.Filtered) < MaxFiltered {
			rep.Filtered = append(rep.Filtered, Filtered{ClusterID: id, Why: cat + ": " + why()})
		}
	}
	total := 0
	view.Each(now, func(c *Cluster, st State) bool {
		total++
		h := &c.Hello
		id := h.ClusterID
		switch {
		case id == req.Requester:
			filter(id, FilterRequester, func() string { return "the service is leaving it" })
			return true
		case slices.Contains(cons.ExcludeClusters, id):
			filter(id, FilterExcluded, func() string { return "excluded by the request" })
			return true
		case st == StateDown:
			filter(id, FilterDown, func() string { return "no hello since " + c.LastSeen.UTC().Format(time.RFC3339) })
			return true
		case st == StateSuspect:
			filter(id, FilterSuspect, func() string { return "missed a hello, last " + c.LastSeen.UTC().Format(time.RFC3339) })
			return true
		case len(cons.WantTiers) > 0 && !slices.Contains(cons.WantTiers, h.Tier):
			filter(id, FilterTier, func() string { return "tier " + h.Tier + " not in " + strings.Join(cons.WantTiers, ",") })
			return true
		case slices.Contains(cons.ForbidTiers, h.Tier):
			filter(id, FilterTier, func() string { return "tier " + h.Tier + " forbidden" })
			return true
		}
		for k, v := range cons.WantLabels {
			if got, ok := h.Labels[k]; !ok || got != v {
				filter(id, FilterLabels, func() string { return fmt.Sprintf("label %s=%q wanted, has %q", k, v, got) })
				return true
			}
		}
		cpu, mem, pods := h.Capacity.Free()
		res := req.Service.Resources
		switch {
		case h.Capacity.MilliCPU > 0 && cpu < res.MilliCPU:
			filter(id, FilterCapacity, func() string { return fmt.Sprintf("%d milli-CPU free, %d needed", cpu, res.MilliCPU) })
			return true
		case h.Capacity.MemoryMB > 0 && mem < res.MemoryMB:
			filter(id, FilterCapacity, func() string { return fmt.Sprintf("%d MB free, %d needed", mem, res.MemoryMB) })
			return true
		case h.Capacity.Pods > 0 && pods < 1:
			filter(id, FilterCapacity, func() string { return "no pod slot free" })
			return true
		}
		cv := candView{c: c, loadAfter: loadAfter(h.Capacity, res)}
		if origin != nil {
			cv.link, cv.hasLink = origin.Link(id)
		}
		if !cv.hasLink {
			cv.link, cv.hasLink = c.Link(from)
		}
		if cv.hasLink && !cv.link.Up {
			filter(id, FilterLink, func() string { return "link from " + from + " is down" })
			return true
		}
		if needLink {
			switch {
			case !cv.hasLink:
				filter(id, FilterLink, func() string { return "no link measured from " + from })
				return true
			case cons.MinBandwidthMbps > 0 && cv.link.BandwidthMbps < cons.MinBandwidthMbps:
				filter(id, FilterBandwidth, func() string {
					return fmt.Sprintf("%.0f Mbit/s from %s, %.0f needed", cv.link.BandwidthMbps, from, cons.MinBandwidthMbps)
				})
				return true
			case cons.MaxRTTMs > 0 && cv.link.RTTMs > cons.MaxRTTMs:
				filter(id, FilterRTT, func() string { return fmt.Sprintf("%.1f ms from %s, at most %.1f", cv.link.RTTMs, from, cons.MaxRTTMs) })
				return true
			}
		}
		s, why, ok := score(cv, false)
		if !ok {
			filter(id, FilterTier, func() string { return why })
			return true
		}
		// Keep the best MaxAlternatives+1 by insertion.
		r := ranked{cv: cv, score: s}
		i := n
		for i > 0 && better(r, top[i-1]) {
			if i < len(top) {
				top[i] = top[i-1]
			}
			i--
		}
		if i < len(top) {
			top[i] = r
			if n < len(top) {
				n++
			}
		}
		return true
	})
	if n == 0 {
		switch {
		case total == 0:
			rep.NoPlacement = "no cluster registered"
		default:
			rep.NoPlacement = fmt.Sprintf("no cluster fits: %d of %d filtered out (%s)", rep.FilteredTotal, total, summarize(rep.FilteredByReason))
		}
		return rep
	}
	for i := range n {
		cand := candidate(top[i], score)
		if i == 0 {
			rep.Destination = &cand
			rep.Reason = fmt.Sprintf("%s: best of %d candidates (%s)", policy, total-rep.FilteredTotal, cand.Why)
			continue
		}
		rep.Alternatives = append(rep.Alternatives, cand)
	}
	return rep
}

func candidate(r ranked, score scoreFunc) Candidate {
	_, why, _ := score(r.cv, true)
	h := &r.cv.c.Hello
	return Candidate{
		ClusterID:     h.ClusterID,
		ControllerURL: h.ControllerURL,
		DataAddrs:     slices.Clone(h.DataAddrs),
		Tier:          h.Tier,
		Score:         r.score,
		Why:           why,
	}
}

func loadAfter(c Capacity, res Resources) float64 {
	c.UsedMilliCPU += res.MilliCPU
	c.UsedMemoryMB += res.MemoryMB
	c.UsedPods++
	return c.Load()
}

func summarize(m map[string]int) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var b strings.Builder
	for i, k := range keys {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%s %d", k, m[k])
	}
	return b.String()
}
