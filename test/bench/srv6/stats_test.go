package main

import (
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"
)

func durs(n int, d time.Duration) []time.Duration {
	out := make([]time.Duration, n)
	for i := range out {
		out[i] = d
	}
	return out
}

// A bad round is not hidden: two clean rounds and one with 10 slow
// connects of 100 have per-round p99s 1, 1 and 80 ms (median 1), but the
// pooled p99 (300 connects, 10 of them slow) is 80 ms.
func TestPooledP99(t *testing.T) {
	bad := append(durs(90, time.Millisecond), durs(10, 80*time.Millisecond)...)
	rounds := []connResult{
		{connects: durs(100, time.Millisecond)},
		{connects: durs(100, time.Millisecond)},
		{connects: bad},
	}
	s := summarize(rounds)
	if got := median(s.roundP99); got != 1 {
		t.Errorf("median of the rounds' p99s = %v ms, want 1", got)
	}
	if s.p99 != 80 {
		t.Errorf("pooled p99 = %v ms, want 80", s.p99)
	}
	if s.p50 != 1 {
		t.Errorf("pooled p50 = %v ms, want 1", s.p50)
	}
	if s.n != 300 || s.failed != 0 || len(s.empty) != 0 {
		t.Errorf("n %d failed %d empty %v, want 300, 0, none", s.n, s.failed, s.empty)
	}
}

// A failed dial is the worst opening: it enters the percentiles as the
// dial timeout and counts as over 1 s.
func TestFailedDialCountsAsTimeout(t *testing.T) {
	s := summarize([]connResult{{connects: durs(99, time.Millisecond), failed: 2}})
	want := float64(dialTimeout) / 1e6
	if s.p99 != want {
		t.Errorf("p99 with 2 failed dials of 101 = %v ms, want the dial timeout %v ms", s.p99, want)
	}
	if s.roundP99[0] != want {
		t.Errorf("round p99 = %v ms, want %v", s.roundP99[0], want)
	}
	if s.n != 99 || s.failed != 2 || s.over1s != 2 {
		t.Errorf("n %d failed %d over1s %d, want 99, 2, 2", s.n, s.failed, s.over1s)
	}
	// Without the failures the same connects' p99 is 1 ms: the failures moved it.
	if p := summarize([]connResult{{connects: durs(99, time.Millisecond)}}).p99; p != 1 {
		t.Errorf("p99 without failures = %v ms, want 1", p)
	}
}

// A round in which every SRv6 dial failed is a failure of the run, never a
// ratio of 0: the round has no ratio, the median of the ratios is the
// other rounds', the pooled SRv6 p99 is the dial timeout, and the verdict
// fails naming the round.
func TestEmptyRoundFailsVerdict(t *testing.T) {
	nat := []connResult{
		{connects: durs(100, 2*time.Millisecond)},
		{connects: durs(100, 2*time.Millisecond)},
		{connects: durs(100, 2*time.Millisecond)},
	}
	s6 := []connResult{
		{connects: durs(100, 3*time.Millisecond)},
		{failed: 100},
		{connects: durs(100, 3*time.Millisecond)},
	}
	c := compare(nat, s6)
	if c.verdict() != "fail" {
		t.Fatalf("verdict %q with an SRv6 round without a successful connect, want fail", c.verdict())
	}
	if len(c.failures) != 1 || !strings.Contains(c.failures[0], "round 2") || !strings.Contains(c.failures[0], "srv6") {
		t.Errorf("failures %q, want one naming round 2 and srv6", c.failures)
	}
	if c.roundOK[1] {
		t.Errorf("round 2 has a ratio (%v), want none", c.roundRatio[1])
	}
	if !c.roundOK[0] || !c.roundOK[2] {
		t.Errorf("rounds 1 and 3 have no ratio")
	}
	m, ok := c.roundRatioMedian()
	if !ok || m != 1.5 {
		t.Errorf("median of the rounds' ratios = %v (ok %v), want 1.5 from rounds 1 and 3", m, ok)
	}
	if got, want := c.s6.p99, float64(dialTimeout)/1e6; got != want {
		t.Errorf("pooled SRv6 p99 = %v ms, want the dial timeout %v ms", got, want)
	}
	if !c.ratioOK || c.ratio != c.s6.p99/2 {
		t.Errorf("pooled ratio %v (ok %v), want %v", c.ratio, c.ratioOK, c.s6.p99/2)
	}
	if len(c.s6.empty) != 1 || c.s6.empty[0] != 2 || len(c.nat.empty) != 0 {
		t.Errorf("empty rounds nat %v srv6 %v, want none and [2]", c.nat.empty, c.s6.empty)
	}

	// The same on NAT's side, and a round with no dial at all.
	c = compare([]connResult{{}, {connects: durs(10, time.Millisecond)}}, []connResult{{connects: durs(10, time.Millisecond)}, {connects: durs(10, time.Millisecond)}})
	if c.verdict() != "fail" || len(c.nat.empty) != 1 || c.roundOK[0] {
		t.Errorf("NAT round without a dial: verdict %q, empty %v, ratio ok %v; want fail, [1], false", c.verdict(), c.nat.empty, c.roundOK[0])
	}

	// Every round with a successful connect of each mode: ok.
	c = compare(nat, []connResult{{connects: durs(100, 3*time.Millisecond)}, {connects: durs(99, 3*time.Millisecond), failed: 1}, {connects: durs(100, 3*time.Millisecond)}})
	if c.verdict() != "ok" || len(c.failures) != 0 {
		t.Errorf("verdict %q failures %q, want ok", c.verdict(), c.failures)
	}
}

// timedRounds makes rounds of n openings each, evenly over dur, the i-th
// taking f(round, i).
func timedRounds(rounds, n int, dur time.Duration, f func(r, i int) time.Duration) []connResult {
	out := make([]connResult, rounds)
	for r := range out {
		for i := range n {
			d := f(r, i)
			out[r].connects = append(out[r].connects, d)
			out[r].timed = append(out[r].timed, timedOpen{dur * time.Duration(i) / time.Duration(n), d})
		}
	}
	return out
}

// The bootstrap's interval: two modes drawn from one distribution (an
// A/A) hold 1 and judge "even"; one twice as slow as the other is judged
// "worse", and the other way "better". Blocks keep what happened in the
// same moments together: a burst hitting both modes at once moves both.
func TestBootstrapP99Ratio(t *testing.T) {
	const dur = 6 * time.Second
	rng := rand.New(rand.NewPCG(1, 2))
	noise := func(seed uint64) func(r, i int) time.Duration {
		g := rand.New(rand.NewPCG(seed, 7))
		return func(r, i int) time.Duration {
			d := time.Duration(300+g.IntN(400)) * time.Microsecond
			if i%100 < 3 { // a burst, the same moments in every mode
				d += time.Duration(1+g.IntN(3)) * time.Millisecond
			}
			return d
		}
	}
	a := timedRounds(12, 500, dur, noise(1))
	b := timedRounds(12, 500, dur, noise(2))
	slow := timedRounds(12, 500, dur, func(r, i int) time.Duration { return 2 * a[r].connects[i] })
	if got := len(blocks(a, dur)); got != 12*12 {
		t.Fatalf("blocks: %d, want 12 rounds of 12", got)
	}
	for _, c := range []struct {
		name string
		x, y []connResult
		want string
	}{
		{"A/A", a, b, "even"},
		{"twice as slow", a, slow, "worse"},
		{"twice as fast", slow, a, "better"},
	} {
		iv, ok := bootstrapP99Ratio(blocks(c.x, dur), blocks(c.y, dur), blocksPerRound(dur), 500, rng)
		if !ok || iv.lo > iv.hi || iv.judge() != c.want {
			t.Errorf("%s: interval %+v (ok %v) judged %q, want %q", c.name, iv, ok, iv.judge(), c.want)
		}
	}
	// A failed dial is in its block as the dial timeout.
	f := timedRounds(1, 100, dur, func(r, i int) time.Duration { return time.Millisecond })
	f[0].timed = append(f[0].timed, timedOpen{dur - time.Millisecond, dialTimeout}, timedOpen{dur - time.Millisecond, dialTimeout})
	bl := blocks(f, dur)
	if last := bl[len(bl)-1]; !slices.Contains(last, dialTimeout) {
		t.Errorf("last block %v: the failed dials missing", last)
	}
	if _, ok := bootstrapP99Ratio(nil, nil, 1, 10, rng); ok {
		t.Error("no blocks: an interval")
	}
}

// aaNoise is openings with the noise of the recorded A/A controls: a
// base of 0.3-0.7 ms and, in about 2% of the openings, a delay of 0.5-4
// ms that each mode meets on its own (the scheduling of its own dial).
// With the bench's shape (12 rounds of 440 openings over 5.3 s) the A/A
// interval is about as wide as the recorded ones ([0.62, 1.02] and
// [0.82, 1.47]).
func aaNoise(seed uint64, scale float64) func(r, i int) time.Duration {
	g := rand.New(rand.NewPCG(seed, 11))
	return func(r, i int) time.Duration {
		d := time.Duration(300+g.IntN(400)) * time.Microsecond
		if g.IntN(100) < 3 {
			d += time.Duration(500*math.Exp(1.2*g.NormFloat64())) * time.Microsecond
		}
		return time.Duration(float64(d) * scale)
	}
}

// The goal "no worse than NAT" is a non-inferiority claim with the
// margin noWorseMargin: SRv6 1.3x slower than NAT under the A/A's noise
// must not meet it in any of 8 runs (seeds), though its interval reaches
// down to 1 in some of them: the old rule (met unless the interval lies
// above 1) passed those.
func TestNoWorseMargin(t *testing.T) {
	const dur, rounds, n, runs = 5300 * time.Millisecond, 12, 440, 8
	rng := rand.New(rand.NewPCG(3, 4))
	var reachOne int
	for run := range uint64(runs) {
		nat := timedRounds(rounds, n, dur, aaNoise(10*run+1, 1))
		nat2 := timedRounds(rounds, n, dur, aaNoise(10*run+2, 1))
		slow := timedRounds(rounds, n, dur, aaNoise(10*run+3, 1.3))
		aa, ok := bootstrapP99Ratio(blocks(nat, dur), blocks(nat2, dur), blocksPerRound(dur), 500, rng)
		if !ok || aa.hi-aa.lo < 0.3 {
			t.Fatalf("run %d: A/A interval %+v (ok %v): want one about as wide as the recorded A/A's (>= 0.3)", run, aa, ok)
		}
		iv, ok := bootstrapP99Ratio(blocks(nat, dur), blocks(slow, dur), blocksPerRound(dur), 500, rng)
		t.Logf("run %d: A/A [%.2f, %.2f], 1.3x [%.2f, %.2f] -> %s", run, aa.lo, aa.hi, iv.lo, iv.hi, iv.noWorse(noWorseMargin))
		if !ok || iv.noWorse(noWorseMargin) == "met" {
			t.Errorf("run %d: 1.3x slower: interval %+v (ok %v) -> %q, want not met", run, iv, ok, iv.noWorse(noWorseMargin))
		}
		if iv.lo <= 1 {
			reachOne++
		}
	}
	if reachOne == 0 {
		t.Errorf("no run's 1.3x interval reaches down to 1: the noise is narrower than the A/A's, the test does not test the margin")
	}
	for _, c := range []struct {
		iv   interval
		want string
	}{
		{interval{0.73, 1.46}, "inconclusive"}, // the recorded runs: not met
		{interval{0.76, 1.26}, "inconclusive"},
		{interval{0.80, 1.10}, "met"},
		{interval{0.95, 1.05}, "met"},
		{interval{1.11, 1.50}, "worse"},
		{interval{1.05, 1.30}, "inconclusive"}, // above 1 but within reach of the margin
	} {
		if got := c.iv.noWorse(noWorseMargin); got != c.want {
			t.Errorf("%+v: %q, want %q", c.iv, got, c.want)
		}
	}
}

// The bootstrap keeps each resample's mix of migration phases: block k
// of every round is the same phase, and a resample draws as many k-th
// blocks as there are rounds. Here each round has two blocks: a first
// phase of 99 openings of 1 ms in both modes, and a second of one
// opening, 10 ms in NAT and 20 ms in SRv6. With the phases kept, 1% of
// every resample's openings are the second phase's, its p99 is that
// opening and the ratio 2 in every resample: the interval is [2, 2].
// Blocks drawn freely (the old bootstrap) vary the mix: resamples with
// fewer second-phase blocks have a p99 of 1 ms in both modes (ratio 1),
// and the interval spread to [1, 2].
func TestBootstrapStratified(t *testing.T) {
	const rounds, nb = 12, 2
	var a, b [][]time.Duration
	for range rounds {
		a = append(a, durs(99, time.Millisecond), []time.Duration{10 * time.Millisecond})
		b = append(b, durs(99, time.Millisecond), []time.Duration{20 * time.Millisecond})
	}
	rng := rand.New(rand.NewPCG(5, 6))
	iv, ok := bootstrapP99Ratio(a, b, nb, 2000, rng)
	if !ok || iv.lo != 2 || iv.hi != 2 {
		t.Errorf("interval %+v (ok %v), want [2, 2]: every resample has the phases' mix of the rounds", iv, ok)
	}
	// Blocks that are not whole rounds: no interval.
	if _, ok := bootstrapP99Ratio(a[:3], b[:3], nb, 10, rng); ok {
		t.Error("3 blocks of rounds of 2: an interval")
	}
}
