package main

import (
	"fmt"
	"math/rand/v2"
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

func compare(nat, s6 []connResult) comparison { return compareTo(nat, s6, "srv6") }

// compareTo is compare with the second mode named name (in failures):
// "srv6", or "nat2" for the A/A control.
func compareTo(nat, s6 []connResult, name string) comparison {
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
		}{{"nat", nat[i]}, {name, s6[i]}} {
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

// The confidence interval of a p99 ratio: a block bootstrap. The
// openings of all the modes are cut into blocks of bootBlock of the
// rounds' time (the same blocks for every mode: they ran in the same
// moments); a resample draws, for each block position k of a round, as
// many blocks as there are rounds from the rounds' k-th blocks, with
// replacement, and takes each mode's p99 over the openings of the blocks
// drawn. Blocks, not single openings, because the machine's scheduling
// noise comes in bursts that hit every mode at once: resampling single
// openings would take them for independent and give too narrow an
// interval, and drawing the same blocks for both modes keeps the pairing.
// Stratified by position, because block k of every round is the same
// phase of the migration: drawing blocks freely would change the mix of
// phases from one resample to the next and add that to the interval.
const (
	bootBlock     = 500 * time.Millisecond
	bootResamples = 2000
)

// interval is a 95% confidence interval (2.5th and 97.5th percentiles of
// the bootstrap's ratios).
type interval struct{ lo, hi float64 }

// judge says where an interval of a ratio to NAT lies: "worse" (all of it
// above 1: the mode's p99 is higher than NAT's beyond the noise), "better"
// (all below 1), or "even" (it holds 1: no difference the run can tell
// from noise).
func (iv interval) judge() string {
	switch {
	case iv.lo > 1:
		return "worse"
	case iv.hi < 1:
		return "better"
	}
	return "even"
}

// noWorseMargin is the margin of the goal "connect p99 no worse than
// NAT": SRv6's p99 may exceed NAT's by at most this fraction. A claim
// that something is no worse needs a stated margin: without one, the
// goal held whenever the interval reached down to 1, so a noisier run
// (a wider interval) passed more easily. Why 0.10: see the README's
// A/A entry (test/bench/srv6/README.md).
const noWorseMargin = 0.10

// noWorse is the goal's verdict from the interval of SRv6's p99 over
// NAT's: "met" when all of it is at or below 1+margin (the run shows
// SRv6 at most margin worse), "worse" when all of it is above 1+margin,
// "inconclusive" when it holds 1+margin (the run cannot tell).
func (iv interval) noWorse(margin float64) string {
	switch {
	case iv.hi <= 1+margin:
		return "met"
	case iv.lo > 1+margin:
		return "worse"
	}
	return "inconclusive"
}

// blocksPerRound is the number of blocks of a round of length dur.
func blocksPerRound(dur time.Duration) int { return int((dur + bootBlock - 1) / bootBlock) }

// blocks cuts each round's openings (timed, failed dials as dialTimeout)
// into blocks of bootBlock by the time the dial started: block r*nb+k is
// round r's k-th (nb blocks per round of length dur).
func blocks(rounds []connResult, dur time.Duration) [][]time.Duration {
	nb := blocksPerRound(dur)
	out := make([][]time.Duration, nb*len(rounds))
	for r, res := range rounds {
		for _, o := range res.timed {
			k := min(max(int(o.at/bootBlock), 0), nb-1)
			out[r*nb+k] = append(out[r*nb+k], o.d)
		}
	}
	return out
}

// bootstrapP99Ratio is the block bootstrap's 95% interval of b's p99 over
// a's; a and b are the same blocks' openings (blocks), nb blocks per
// round. ok is false when no resample had an opening of a, or the blocks
// are not whole rounds of nb.
func bootstrapP99Ratio(a, b [][]time.Duration, nb, resamples int, rng *rand.Rand) (iv interval, ok bool) {
	if len(a) == 0 || len(a) != len(b) || nb <= 0 || len(a)%nb != 0 {
		return iv, false
	}
	rounds := len(a) / nb
	var ratios []float64
	var xa, xb []time.Duration
	for range resamples {
		xa, xb = xa[:0], xb[:0]
		for k := range nb {
			for range rounds {
				i := rng.IntN(rounds)*nb + k
				xa = append(xa, a[i]...)
				xb = append(xb, b[i]...)
			}
		}
		pa, pb := pct(xa, 99), pct(xb, 99)
		if pa == 0 || len(xb) == 0 {
			continue
		}
		ratios = append(ratios, pb/pa)
	}
	if len(ratios) == 0 {
		return iv, false
	}
	slices.Sort(ratios)
	return interval{ratios[len(ratios)*25/1000], ratios[len(ratios)*975/1000]}, true
}
