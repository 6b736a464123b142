package main

import (
	"fmt"
	"slices"
	"time"
)

// dialTimeout bounds one dial of a connect round. A dial that fails (times
// out, is refused or reset) is a lost connection opening, the worst one:
// the connect-time percentiles count it as dialTimeout, never leave it out.
const dialTimeout = 3 * time.Second

// pct is the p-th percentile of d in milliseconds (0 if empty).
func pct(d []time.Duration, p int) float64 {
	if len(d) == 0 {
		return 0
	}
	c := slices.Clone(d)
	slices.Sort(c)
	return float64(c[(len(c)*p)/100]) / 1e6
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	c := slices.Clone(v)
	slices.Sort(c)
	if len(c)%2 == 1 {
		return c[len(c)/2]
	}
	return (c[len(c)/2-1] + c[len(c)/2]) / 2
}

// opens are connection openings as the connect-time percentiles count
// them: each successful dial's time and, per failed dial, dialTimeout.
func opens(connects []time.Duration, failed int) []time.Duration {
	out := slices.Clone(connects)
	for range failed {
		out = append(out, dialTimeout)
	}
	return out
}

// connSummary is one mode's connect rounds. p99 and p50 are the connect
// time's over all the rounds' openings pooled (failed dials as
// dialTimeout); roundP99 and roundP50 the same per round, and rttP99 and
// rttP50 the path RTT sample's per round. empty are the rounds (1-based)
// in which no dial of the mode succeeded. over1s counts the successful
// dials over 1 s and every failed one.
type connSummary struct {
	p99, p50                               float64
	roundP99, roundP50, rttP99, rttP50     []float64
	empty                                  []int
	n, failed, over1s, synRetrans, rttZero int
}

func summarize(rs []connResult) connSummary {
	var s connSummary
	var all []time.Duration
	for i, r := range rs {
		o := opens(r.connects, r.failed)
		all = append(all, o...)
		s.roundP99 = append(s.roundP99, pct(o, 99))
		s.roundP50 = append(s.roundP50, pct(o, 50))
		s.rttP99 = append(s.rttP99, pct(r.pathRTTs, 99))
		s.rttP50 = append(s.rttP50, pct(r.pathRTTs, 50))
		if len(r.connects) == 0 {
			s.empty = append(s.empty, i+1)
		}
		s.n += len(r.connects)
		s.failed += r.failed
		s.over1s += r.over1s + r.failed
		s.synRetrans += r.synRetrans
		s.rttZero += r.rttZero
	}
	s.p99, s.p50 = pct(all, 99), pct(all, 50)
	return s
}

// comparison is the connect rounds of both modes side by side.
type comparison struct {
	nat, s6 connSummary
	// ratio is SRv6's pooled p99 over NAT's (ok false when NAT had no
	// opening at all).
	ratio   float64
	ratioOK bool
	// roundRatio is per round SRv6's p99 over NAT's, defined (roundOK)
	// only for a round in which both modes had a successful dial; a round
	// without is a failure (failures), never a ratio.
	roundRatio []float64
	roundOK    []bool
	// failures fail the run's verdict: a round in which a mode had no
	// successful dial.
	failures []string
}

func compare(nat, s6 []connResult) comparison {
	c := comparison{nat: summarize(nat), s6: summarize(s6)}
	if c.nat.p99 > 0 {
		c.ratio, c.ratioOK = c.s6.p99/c.nat.p99, true
	}
	for i := range nat {
		ok := len(nat[i].connects) > 0 && len(s6[i].connects) > 0
		r := 0.0
		if ok {
			r = c.s6.roundP99[i] / c.nat.roundP99[i]
		}
		c.roundRatio, c.roundOK = append(c.roundRatio, r), append(c.roundOK, ok)
		for _, m := range []struct {
			name string
			r    connResult
		}{{"nat", nat[i]}, {"srv6", s6[i]}} {
			if len(m.r.connects) == 0 {
				c.failures = append(c.failures, fmt.Sprintf("connect round %d: no successful %s dial (%d failed)", i+1, m.name, m.r.failed))
			}
		}
	}
	return c
}

// roundRatioMedian is the median of the defined rounds' ratios (ok false
// if no round has one).
func (c comparison) roundRatioMedian() (float64, bool) {
	var v []float64
	for i, r := range c.roundRatio {
		if c.roundOK[i] {
			v = append(v, r)
		}
	}
	return median(v), len(v) > 0
}

// verdict is "ok", or "fail" when failures is not empty.
func (c comparison) verdict() string {
	if len(c.failures) > 0 {
		return "fail"
	}
	return "ok"
}
