// This file holds the reference placement: a full scan judging every
// cluster, which says why each one was ruled out. It answers requests
// with Explain, requests nothing fits, and the MO's /v1/explain; the index
// (index.go) must always agree with it.

package meta

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// Explain answers req with policy p by judging every cluster: the reply
// also counts every ruled-out cluster by reason (FilteredByReason), lists
// the first MaxFiltered with their reason (Filtered), and gives the
// verdict on every cluster named in req.ExplainClusters (Explained).
func (r *Registry) Explain(p Policy, req PlacementRequest, now time.Time) PlacementReply {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.explainLocked(p, &req, now)
}

func (r *Registry) explainLocked(p Policy, req *PlacementRequest, now time.Time) PlacementReply {
	rep := PlacementReply{Version: Version, RequestID: req.RequestID, Policy: p.Name(), Explain: true}
	j := newJudge(p, req, now, r.getLocked, r.StateOf)
	var t topK
	total := 0
	scores := map[string]float64{}
	var named map[string]bool
	if len(req.ExplainClusters) > 0 {
		named = make(map[string]bool, len(req.ExplainClusters))
		for _, id := range req.ExplainClusters {
			named[id] = true
		}
	}
	for _, s := range r.list {
		total++
		c := s.c()
		cat, rk := j.eval(c)
		id := c.Hello.ClusterID
		if cat == "" {
			t.add(rk)
			if named[id] {
				scores[id] = rk.score
			}
			continue
		}
		if rep.FilteredByReason == nil {
			rep.FilteredByReason = map[string]int{}
		}
		rep.FilteredByReason[cat]++
		rep.FilteredTotal++
		if len(rep.Filtered) < MaxFiltered || named[id] {
			rep.Filtered = append(rep.Filtered, Filtered{ClusterID: id, Why: cat + ": " + j.why(c, cat)})
		}
	}
	if t.n == 0 {
		if total == 0 {
			rep.NoPlacement = "no cluster registered"
		} else {
			rep.NoPlacement = fmt.Sprintf("no cluster fits: %d of %d filtered out (%s)", rep.FilteredTotal, total, summarize(rep.FilteredByReason))
		}
	} else {
		t.fill(&rep, p.Name())
		rep.Reason = fmt.Sprintf("%s: best of %d candidates (%s)", p.Name(), total-rep.FilteredTotal, rep.Destination.Why)
	}
	for _, id := range req.ExplainClusters {
		if sc, ok := scores[id]; ok {
			rep.Explained = append(rep.Explained, Filtered{ClusterID: id, Why: fmt.Sprintf("candidate: score %.4f%s", sc, versus(rep, id))})
		} else if r.byID[id] == nil {
			rep.Explained = append(rep.Explained, Filtered{ClusterID: id, Why: "unknown: no hello from it"})
		}
	}
	return rep
}

func versus(rep PlacementReply, id string) string {
	if rep.Destination == nil {
		return ""
	}
	if rep.Destination.ClusterID == id {
		return ", the destination"
	}
	return fmt.Sprintf(", the destination %s scores %.4f", rep.Destination.ClusterID, rep.Destination.Score)
}

// Verdict is one cluster's judgement for a request (/v1/explain).
type Verdict struct {
	ClusterID string  `json:"cluster_id"`
	State     string  `json:"state"`
	Filter    string  `json:"filter,omitempty"` // the category that rules it out
	Why       string  `json:"why,omitempty"`
	Score     float64 `json:"score,omitempty"` // candidates only
}

// Verdicts judges every cluster for req, sorted by id: the complete "why
// not" for every cluster, which a reply cannot carry at scale.
func (r *Registry) Verdicts(p Policy, req PlacementRequest, now time.Time) []Verdict {
	r.mu.RLock()
	defer r.mu.RUnlock()
	j := newJudge(p, &req, now, r.getLocked, r.StateOf)
	out := make([]Verdict, 0, len(r.list))
	for _, s := range r.list {
		c := s.c()
		v := Verdict{ClusterID: c.Hello.ClusterID, State: r.StateOf(c, now).String()}
		cat, rk := j.eval(c)
		if cat == "" {
			v.Score = rk.score
			v.Why = candidate(rk).Why
		} else {
			v.Filter, v.Why = cat, j.why(c, cat)
		}
		out = append(out, v)
	}
	slices.SortFunc(out, func(a, b Verdict) int { return strings.Compare(a.ClusterID, b.ClusterID) })
	return out
}
