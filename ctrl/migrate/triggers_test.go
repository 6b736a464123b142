package migrate

import (
	"context"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/roamnet/roam/ctrl"
	"github.com/roamnet/roam/ctrl/backend"
	"github.com/roamnet/roam/dataplane/lb"
	"github.com/roamnet/roam/meta"
)

// clock is a fake clock the tests advance by hand.
type clock struct{ t time.Time }

func (c *clock) add(d time.Duration) time.Time { c.t = c.t.Add(d); return c.t }

func newClock() *clock { return &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)} }

func link(cluster, tier string, mbps float64, at time.Time) Path {
	return Path{Cluster: cluster, Tier: tier, Known: true, At: at,
		Link: meta.Link{Peer: cluster, BandwidthMbps: mbps, RTTMs: 1, Up: true}}
}

func home() Path {
	return Path{Cluster: "home", Tier: meta.TierDeepEdge, Local: true, Known: true, Link: meta.Link{Peer: "home", Up: true}}
}

var need10 = Need{Mbps: 10}

func TestTriggerConfirmsBelowNeed(t *testing.T) {
	c := newClock()
	tr := NewTrigger(TriggerConfig{Hold: time.Hour})
	cands := []Path{home(), link("edge", meta.TierEdge, 100, c.t)}
	// One low measurement is not enough.
	if d := tr.Decide(c.t, "s", need10, link("cloud", meta.TierCloud, 9, c.add(time.Second)), cands, time.Time{}); d.Move {
		t.Fatalf("moved on one measurement: %+v", d)
	}
	// Looking again at the same measurement does not count.
	at := c.t
	if d := tr.Decide(c.add(200*time.Millisecond), "s", need10, link("cloud", meta.TierCloud, 9, at), cands, time.Time{}); d.Move {
		t.Fatalf("moved on the same measurement seen twice: %+v", d)
	}
	// A good one in between resets the count.
	tr.Decide(c.t, "s", need10, link("cloud", meta.TierCloud, 11, c.add(time.Second)), cands, time.Time{})
	if d := tr.Decide(c.t, "s", need10, link("cloud", meta.TierCloud, 9, c.add(time.Second)), cands, time.Time{}); d.Move {
		t.Fatalf("moved: the count was not reset: %+v", d)
	}
	d := tr.Decide(c.t, "s", need10, link("cloud", meta.TierCloud, 2, c.add(200*time.Millisecond)), cands, time.Time{})
	if !d.Move || d.Reason != meta.ReasonNetworkChange || d.Why == "" {
		t.Fatalf("two low measurements in a row: %+v", d)
	}
	t.Log(d.Why)
}

func TestTriggerRTTAndLoss(t *testing.T) {
	c := newClock()
	tr := NewTrigger(TriggerConfig{Confirm: 1, Hold: time.Hour})
	p := link("cloud", meta.TierCloud, 100, c.add(time.Second))
	p.Link.RTTMs = 40
	if d := tr.Decide(c.t, "s", Need{MaxRTTMs: 30}, p, nil, time.Time{}); !d.Move {
		t.Fatalf("rtt 40 > 30: %+v", d)
	}
	p = link("cloud", meta.TierCloud, 100, c.add(time.Second))
	p.Link.LossPct = 50
	if d := tr.Decide(c.t, "t", need10, p, nil, time.Time{}); !d.Move {
		t.Fatalf("loss 50%%: %+v", d)
	}
}

func TestTriggerLeavesDownLinksToFailsafe(t *testing.T) {
	c := newClock()
	tr := NewTrigger(TriggerConfig{Confirm: 1, Hold: time.Hour})
	p := link("edge", meta.TierEdge, 0, c.add(time.Second))
	p.Link.Up = false
	for range 5 {
		p.At = c.add(time.Second)
		if d := tr.Decide(c.t, "s", need10, p, []Path{home()}, time.Time{}); d.Move {
			t.Fatalf("moved on a down link: %+v", d)
		}
	}
}

func TestTriggerHoldTime(t *testing.T) {
	c := newClock()
	tr := NewTrigger(TriggerConfig{Hold: 5 * time.Second})
	cloud := link("cloud", meta.TierCloud, 100, c.t)
	cands := []Path{home(), link("edge", meta.TierEdge, 100, c.t), cloud}
	for range 4 { // 4 s of a better cloud
		if d := tr.Decide(c.add(time.Second), "s", need10, home(), cands, time.Time{}); d.Move {
			t.Fatalf("moved before the hold time: %+v", d)
		}
	}
	// The cloud falls below need*(1+margin) once: the hold starts again
	// (the edge is now the best, and its own hold starts).
	cands[2] = link("cloud", meta.TierCloud, 12, c.t)
	if d := tr.Decide(c.add(time.Second), "s", need10, home(), cands, time.Time{}); d.Move {
		t.Fatalf("moved: %+v", d)
	}
	cands[2] = cloud
	for range 5 { // the first look starts the hold
		if d := tr.Decide(c.add(time.Second), "s", need10, home(), cands, time.Time{}); d.Move {
			t.Fatalf("moved before the hold time since the cloud recovered: %+v", d)
		}
	}
	d := tr.Decide(c.add(time.Second), "s", need10, home(), cands, time.Time{})
	if !d.Move || d.Reason != meta.ReasonBetterPlacement || d.Toward != "cloud" {
		t.Fatalf("after the hold time: %+v", d)
	}
	t.Log(d.Why)
}

func TestTriggerCooldown(t *testing.T) {
	c := newClock()
	tr := NewTrigger(TriggerConfig{Hold: time.Second, Cooldown: 30 * time.Second})
	tr.Moved("s", c.t)
	cands := []Path{home(), link("edge", meta.TierEdge, 100, c.t)}
	for range 29 {
		p := link("cloud", meta.TierCloud, 1, c.add(time.Second))
		if d := tr.Decide(c.t, "s", need10, p, cands, time.Time{}); d.Move {
			t.Fatalf("moved %s after the last move: %+v", c.t.Sub(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)), d)
		}
	}
	// The record's last move counts too, when it is later.
	if d := tr.Decide(c.add(time.Second), "s", need10, link("cloud", meta.TierCloud, 1, c.t), cands, c.t.Add(-time.Second)); d.Move {
		t.Fatalf("moved within the cooldown of the record's move: %+v", d)
	}
	c.add(30 * time.Second)
	if d := tr.Decide(c.t, "s", need10, link("cloud", meta.TierCloud, 1, c.add(time.Second)), cands, time.Time{}); !d.Move {
		t.Fatalf("no move after the cooldown: %+v", d)
	}
}

func TestTriggerMargin(t *testing.T) {
	c := newClock()
	tr := NewTrigger(TriggerConfig{Hold: time.Second, Margin: 0.3})
	// At the edge, the cloud just above the need is not worth a move.
	for range 10 {
		cands := []Path{home(), link("cloud", meta.TierCloud, 12.9, c.add(time.Second))}
		if d := tr.Decide(c.t, "s", need10, link("edge", meta.TierEdge, 100, c.t), cands, time.Time{}); d.Move {
			t.Fatalf("moved to a cloud within the margin: %+v", d)
		}
	}
	// In the same tier, 20% more bandwidth is not enough; 50% is.
	for range 5 {
		cands := []Path{home(), link("edge2", meta.TierEdge, 60, c.add(time.Second))}
		if d := tr.Decide(c.t, "t", need10, link("edge", meta.TierEdge, 50, c.t), cands, time.Time{}); d.Move {
			t.Fatalf("moved for 20%% more: %+v", d)
		}
	}
	var d Decision
	for range 3 {
		cands := []Path{home(), link("edge2", meta.TierEdge, 75, c.add(time.Second))}
		d = tr.Decide(c.t, "u", need10, link("edge", meta.TierEdge, 50, c.t), cands, time.Time{})
	}
	if !d.Move || d.Toward != "edge2" {
		t.Fatalf("50%% more in the same tier: %+v", d)
	}
	// The home's local path wins only by rank: a same-tier home is not
	// better than a good abroad path.
	tr2 := NewTrigger(TriggerConfig{Hold: time.Second, Policy: meta.LeastLoaded{}})
	for range 5 {
		if d := tr2.Decide(c.add(time.Second), "s", need10, link("b", meta.TierEdge, 50, c.t), []Path{home()}, time.Time{}); d.Move {
			t.Fatalf("moved home for its local path: %+v", d)
		}
	}
}

func TestTriggerNoNeedNoMove(t *testing.T) {
	c := newClock()
	tr := NewTrigger(TriggerConfig{Hold: time.Second, Confirm: 1})
	for range 5 {
		if d := tr.Decide(c.add(time.Second), "s", Need{}, link("cloud", meta.TierCloud, 0.1, c.t), []Path{home(), link("edge", meta.TierEdge, 100, c.t)}, time.Time{}); d.Move {
			t.Fatalf("moved a service with no need: %+v", d)
		}
	}
}

// TestTriggerNoisyNoFlap plays 10 minutes of a home-cloud path shaped at
// the need +-10%, measured with a further +-5% error every 2 s (and a
// confirmation right after a big change), the triggers deciding every
// 250 ms: the service may leave the cloud once, and never comes back.
func TestTriggerNoisyNoFlap(t *testing.T) {
	for seed := range uint64(20) {
		rng := rand.New(rand.NewPCG(seed, 42))
		c := newClock()
		tr := NewTrigger(TriggerConfig{Hold: 5 * time.Second, Cooldown: 30 * time.Second})
		where := "cloud"
		moves := 0
		var sample time.Time
		bw := 10.0
		nextSample := c.t
		for c.t.Before(time.Date(2026, 1, 1, 0, 10, 0, 0, time.UTC)) {
			now := c.add(250 * time.Millisecond)
			if !now.Before(nextSample) {
				rate := 10 * (0.9 + 0.2*rng.Float64())
				bw = rate * (0.95 + 0.1*rng.Float64())
				sample = now
				nextSample = now.Add(2 * time.Second)
			}
			cloud := link("cloud", meta.TierCloud, bw, sample)
			edge := link("edge", meta.TierEdge, 1000, now)
			cur, cands := cloud, []Path{home(), edge}
			if where == "edge" {
				cur, cands = edge, []Path{home(), cloud}
			}
			if d := tr.Decide(now, "s", need10, cur, cands, time.Time{}); d.Move {
				moves++
				tr.Moved("s", now)
				if where == "cloud" {
					where = "edge"
				} else {
					where = "cloud"
				}
				t.Logf("seed %d: %s moved to %s: %s", seed, d.Reason, where, d.Why)
			}
		}
		if moves > 1 {
			t.Fatalf("seed %d: %d moves in 10 minutes of noise around the need, want at most 1", seed, moves)
		}
	}
}

func TestPathFromBothDirections(t *testing.T) {
	own := map[string]Measured{"cloud": {Link: meta.Link{Peer: "cloud", BandwidthMbps: 50, RTTMs: 1, Up: true}, At: time.Unix(5, 0)}}
	hs := []meta.Hello{{ClusterID: "cloud", Tier: meta.TierCloud, Links: []meta.Link{{Peer: "home", BandwidthMbps: 2, RTTMs: 3, Up: true}}},
		{ClusterID: "edge", Tier: meta.TierEdge, Links: []meta.Link{{Peer: "home", BandwidthMbps: 7, RTTMs: 3, Up: true}}}}
	p := pathFrom("home", "cloud", own, hs)
	if !p.Known || p.Tier != meta.TierCloud || p.Link.BandwidthMbps != 2 || p.Link.RTTMs != 3 || !p.At.Equal(time.Unix(5, 0)) {
		t.Fatalf("cloud path %+v: want the worse direction", p)
	}
	if p := pathFrom("home", "edge", own, hs); !p.Known || p.Link.BandwidthMbps != 7 || !p.At.IsZero() {
		t.Fatalf("edge path %+v: want the peer's report", p)
	}
	if p := pathFrom("home", "home", own, hs); !p.Local {
		t.Fatalf("home path %+v", p)
	}
	if p := pathFrom("home", "gone", own, hs); p.Known {
		t.Fatalf("unknown path %+v", p)
	}
}

// TestTriggerCountsTheOtherEndsMeasurements replays the demo's degraded
// phase as the home's controller saw it (make demo at 14:38:19, issue
// 13): the home-cloud path shaped at T; the home's own last sample of it,
// taken at T-0.1 s, still says 1918 Mbit/s, its next is due at T+1.9 s
// and, on the shaped link, ends at T+2.6 s; the cloud measures its
// direction at T+1.1 s and re-measures at once at T+1.45 s (2.0 and 2.08
// Mbit/s), each said in a hello. The home looks every 250 ms. Two fresh
// measurements below the need in a row are there at T+1.5 s: the move
// must not wait for the home's own (it waited until T+3.1 s, and the
// commit came 3.6 s after the change).
func TestTriggerCountsTheOtherEndsMeasurements(t *testing.T) {
	c := newClock()
	tr := NewTrigger(TriggerConfig{Hold: time.Hour})
	t0 := c.t
	ownAt := t0.Add(-100 * time.Millisecond)
	own := map[string]Measured{"cloud": {Link: meta.Link{Peer: "cloud", BandwidthMbps: 1918, RTTMs: 1, Up: true, Samples: 7}, At: ownAt}}
	edge := meta.Hello{ClusterID: "edge", Tier: meta.TierEdge, Links: []meta.Link{{Peer: "home", BandwidthMbps: 2000, RTTMs: 1, Up: true, Samples: 3}}}
	cloudSays := meta.Link{Peer: "home", BandwidthMbps: 3140, RTTMs: 1, Up: true, Samples: 9}
	var moved time.Time
	for now := t0; now.Before(t0.Add(4 * time.Second)); now = c.add(250 * time.Millisecond) {
		switch el := now.Sub(t0); {
		case el >= 2600*time.Millisecond:
			own["cloud"] = Measured{Link: meta.Link{Peer: "cloud", BandwidthMbps: 1.3, RTTMs: 11, Up: true, Samples: 8}, At: t0.Add(2600 * time.Millisecond)}
		case el >= 1450*time.Millisecond:
			cloudSays.BandwidthMbps, cloudSays.Samples = 2.08, 11
		case el >= 1100*time.Millisecond:
			cloudSays.BandwidthMbps, cloudSays.Samples = 2.0, 10
		}
		hs := []meta.Hello{{ClusterID: "cloud", Tier: meta.TierCloud, Links: []meta.Link{cloudSays}}, edge}
		cur := pathFrom("home", "cloud", own, hs)
		cands := []Path{home(), pathFrom("home", "edge", own, hs)}
		if d := tr.Decide(now, "classifier", need10, cur, cands, time.Time{}); d.Move {
			if d.Reason != meta.ReasonNetworkChange {
				t.Fatalf("moved for %s, want %s: %+v", d.Reason, meta.ReasonNetworkChange, d)
			}
			moved = now
			t.Logf("moved %s after the change: %s", now.Sub(t0), d.Why)
			break
		}
	}
	if moved.IsZero() {
		t.Fatal("no move within 4 s of the change")
	}
	if el := moved.Sub(t0); el > 1750*time.Millisecond {
		t.Fatalf("moved %s after the change, want at the first look after the cloud's second measurement (1.5 s)", el)
	}
	// The cloud's hellos repeat its figure every second: a repeat is not
	// a measurement.
	tr2 := NewTrigger(TriggerConfig{Hold: time.Hour})
	cloudSays = meta.Link{Peer: "home", BandwidthMbps: 2, RTTMs: 1, Up: true, Samples: 10}
	own["cloud"] = Measured{Link: meta.Link{Peer: "cloud", BandwidthMbps: 1918, RTTMs: 1, Up: true, Samples: 7}, At: ownAt}
	for range 12 {
		hs := []meta.Hello{{ClusterID: "cloud", Tier: meta.TierCloud, Links: []meta.Link{cloudSays}}, edge}
		if d := tr2.Decide(c.add(250*time.Millisecond), "classifier", need10, pathFrom("home", "cloud", own, hs), nil, time.Time{}); d.Move {
			t.Fatalf("moved on one measurement of the cloud's, said again in every hello: %+v", d)
		}
	}
}

// TestTriggerStaleLowOfOneEndIsOneMeasurement: bench-trigger -noise 10m
// (16:00) moved the service 3 times: one end's single low figure (a
// probe that shared the shaped link with another's, 4.89 Mbit/s at
// 10 +-10%) stayed in its hellos, and every new figure of the other end
// counted as low too, since the path is the worse end. Each measurement
// is judged by itself: one low figure is one measurement.
func TestTriggerStaleLowOfOneEndIsOneMeasurement(t *testing.T) {
	c := newClock()
	tr := NewTrigger(TriggerConfig{Hold: time.Hour})
	own := map[string]Measured{}
	cloudSays := meta.Link{Peer: "home", BandwidthMbps: 10.5, RTTMs: 1, Up: true, Samples: 40}
	for i := range 20 {
		now := c.add(time.Second)
		if i == 5 {
			cloudSays.BandwidthMbps, cloudSays.Samples = 4.89, 41 // one low figure, said in every hello from now on
		}
		own["cloud"] = Measured{Link: meta.Link{Peer: "cloud", BandwidthMbps: 10.2, RTTMs: 1, Up: true, Samples: uint64(100 + i)}, At: now}
		hs := []meta.Hello{{ClusterID: "cloud", Tier: meta.TierCloud, Links: []meta.Link{cloudSays}}}
		if d := tr.Decide(now, "classifier", need10, pathFrom("home", "cloud", own, hs), []Path{home()}, time.Time{}); d.Move {
			t.Fatalf("look %d: moved on the cloud's one low figure and the home's good ones: %+v", i, d)
		}
	}
	// The cloud's second low figure in a row confirms it.
	cloudSays.BandwidthMbps, cloudSays.Samples = 4.5, 42
	hs := []meta.Hello{{ClusterID: "cloud", Tier: meta.TierCloud, Links: []meta.Link{cloudSays}}}
	own["cloud"] = Measured{Link: own["cloud"].Link, At: own["cloud"].At} // the home's own: not new
	if d := tr.Decide(c.add(250*time.Millisecond), "classifier", need10, pathFrom("home", "cloud", own, hs), []Path{home()}, time.Time{}); d.Move {
		t.Fatalf("moved on low figures with a good one in between: %+v", d)
	}
	cloudSays.BandwidthMbps, cloudSays.Samples = 4.6, 43
	hs = []meta.Hello{{ClusterID: "cloud", Tier: meta.TierCloud, Links: []meta.Link{cloudSays}}}
	if d := tr.Decide(c.add(250*time.Millisecond), "classifier", need10, pathFrom("home", "cloud", own, hs), []Path{home()}, time.Time{}); !d.Move {
		t.Fatalf("no move on two low figures of the cloud in a row: %+v", d)
	}
}

// TestWatchedAreTheBetterPlaces: the clusters a home probes as often as
// the paths in use are those of a tier ranked above where its services
// with a network need run, best tier and least loaded first, at most n.
func TestWatchedAreTheBetterPlaces(t *testing.T) {
	w := newWorld(t, "home", "edge", "cloud")
	hs := []meta.Hello{
		{ClusterID: "home"},
		{ClusterID: "edge", Tier: meta.TierEdge},
		{ClusterID: "cloud2", Tier: meta.TierCloud, Capacity: meta.Capacity{MilliCPU: 1000, UsedMilliCPU: 500}},
		{ClusterID: "cloud", Tier: meta.TierCloud, Capacity: meta.Capacity{MilliCPU: 1000, UsedMilliCPU: 100}},
	}
	eng := w.eng("home")
	check := func(n int, want ...string) {
		t.Helper()
		if got := eng.Watched(hs, n); !slices.Equal(got, want) {
			t.Fatalf("Watched(%d) = %v, want %v", n, got, want)
		}
	}
	check(2) // no service
	w.deploy("home")
	check(2) // a service without a need: placed by hand only
	d := w.descriptor()
	d.Name, d.NeedMbps = "classifier", 10
	d.Ports = []backend.Port{{Port: testPort + 1, Protocol: lb.TCP}}
	if _, err := eng.Deploy(context.Background(), d); err != nil {
		t.Fatal(err)
	}
	// At home (a tier the policy rules out): every other ranks above.
	check(2, "cloud", "cloud2")
	check(5, "cloud", "cloud2", "edge")
	check(0)
	move := func(dest string) {
		t.Helper()
		if _, err := eng.Migrate(context.Background(), "classifier", ctrl.MigrateRequest{Destination: dest}); err != nil {
			t.Fatal(err)
		}
	}
	move("cloud")
	check(2) // the best tier: nothing to wait for
	move("edge")
	check(2, "cloud", "cloud2")
	check(1, "cloud")
}
