package migrate

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/roamnet/roam/ctrl"
)

// moverWorld is a, b, c with web homed at a and running at b, ready for
// the move on b -> c: the drain lasts up to twice stopFor (at least 2 s),
// and b's copy stops gracefully in stopFor unless killed. a's load
// balancer has one live flow to b's copy; flowsEnd (when set) ends it that
// long after a's commit of the move on.
func moverWorld(t *testing.T, flowsEnd, stopFor time.Duration) *world {
	t.Helper()
	w := newWorld(t, "a", "b", "c")
	w.tune = func(c *Config) { c.DrainTimeout = max(2*time.Second, 2*stopFor) }
	for _, id := range []string{"a", "b", "c"} {
		w.restart(id)
	}
	w.deploy("a")
	w.mustMigrate("a", "b")
	b := w.cluster("b").be
	b.mu.Lock()
	b.stopFor = stopFor
	b.mu.Unlock()
	ag := w.cluster("a").ag
	ag.mu.Lock()
	ag.flows = 1
	ag.mu.Unlock()
	var armed atomic.Bool
	w.cluster("a").crash = func(m ctrl.Migration) error {
		if m.Role == ctrl.RoleReroute && m.Stage == ctrl.StageCommit && flowsEnd > 0 && armed.CompareAndSwap(false, true) {
			time.AfterFunc(flowsEnd, func() {
				ag.mu.Lock()
				ag.flows = 0
				ag.ended = time.Now()
				ag.mu.Unlock()
			})
		}
		return nil
	}
	w.acts.take()
	return w
}

// TestMoverStopsWhenHomeSaysDrained: the home, which alone sees the flows
// its load balancer sends the mover's old copy, tells the mover once none
// is left; the mover then kills its copy at once instead of waiting out
// its graceful stop.
func TestMoverStopsWhenHomeSaysDrained(t *testing.T) {
	// A graceful stop of 3 s leaves room for a loaded machine between the
	// home's word and the kill while still telling the two apart.
	w := moverWorld(t, 40*time.Millisecond, 3*time.Second)
	m := w.mustMigrate("b", "c")
	if m.Role != ctrl.RoleMover {
		t.Fatalf("migration %+v", m)
	}
	if !w.acts.seen("a: peer Drained b") || !w.acts.seen("b: backend killed web") {
		t.Fatalf("actions %v: want the home's drained word and the copy killed on it", w.acts.take())
	}
	// Not before the home's last flow ended (40 ms after the home's
	// commit: compared as instants, since the mover's drain clock starts
	// after the home's commit by however long the machine takes), and
	// well before the 3 s graceful stop.
	ag, b := w.cluster("a").ag, w.cluster("b").be
	ag.mu.Lock()
	ended := ag.ended
	ag.mu.Unlock()
	b.mu.Lock()
	killed := b.killed
	b.mu.Unlock()
	if ended.IsZero() || killed.Before(ended) {
		t.Errorf("copy killed at %s, home's last flow ended at %s: want the kill after the last flow", killed.Format(time.StampMicro), ended.Format(time.StampMicro))
	}
	if m.Times.Drain > 2000 {
		t.Errorf("mover's drain %.1f ms: want it to end soon after the home's last flow (40 ms), before the 3 s stop", m.Times.Drain)
	}
	w.expectAt("a", "c")
}

// TestMoverNotKilledWhileFlowsLive: while the home's load balancer still
// sends the old copy a live flow, the home says nothing and the copy's
// graceful stop runs its course: no early kill.
func TestMoverNotKilledWhileFlowsLive(t *testing.T) {
	w := moverWorld(t, 0, 600*time.Millisecond)
	m := w.mustMigrate("b", "c")
	if m.Times.Drain < 590 {
		t.Errorf("mover's drain %.1f ms: the copy was stopped before its 600 ms graceful stop with a flow still live", m.Times.Drain)
	}
	if w.acts.seen("a: peer Drained b") || w.acts.seen("b: backend killed web") {
		t.Errorf("actions %v: a drained word or a kill with a live flow", w.acts.take())
	}
	w.expectAt("a", "c")
}

// TestMoverHomeSilent: a home whose word does not reach the mover
// (refused, or held until it is too late) leaves the mover as it was
// before: the graceful stop runs its course; nothing ends early, nothing
// fails.
func TestMoverHomeSilent(t *testing.T) {
	for _, tc := range []struct {
		name string
		f    fault
	}{
		{"unreachable", fault{err: errInjected}},
		{"late", fault{block: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := moverWorld(t, 20*time.Millisecond, 600*time.Millisecond)
			w.net.set("a->b Drained", tc.f)
			m := w.mustMigrate("b", "c")
			if m.State != ctrl.StateDone || m.Times.Drain < 590 {
				t.Errorf("mover's migration %s, drain %.1f ms: want done after the whole 600 ms graceful stop", m.State, m.Times.Drain)
			}
			if w.acts.seen("b: backend killed web") {
				t.Error("the copy was killed without the home's word")
			}
			w.expectAt("a", "c")
			// The word, arriving after the move on ended, changes nothing.
			w.net.clear("a->b Drained")
			err := w.eng("b").Drained(context.Background(), ctrl.Caller{Cluster: "a"}, "web", m.FromEpoch)
			if err == nil {
				t.Error("a late drained word for a copy gone: want an error")
			}
			w.expectAt("a", "c")
		})
	}
}

// TestDrainedOnlyFromHomeOfThatEpoch: only the copy's home, and only of
// the copy's own epoch, ends a mover's stop.
func TestDrainedOnlyFromHomeOfThatEpoch(t *testing.T) {
	w := newWorld(t, "a", "b", "c")
	w.deploy("a")
	w.mustMigrate("a", "b")
	ep := w.mustRecord("b").Epoch
	ch, forget := w.eng("b").expectDrained("web", ep)
	defer forget()
	closed := func() bool {
		select {
		case <-ch:
			return true
		default:
			return false
		}
	}
	for _, tc := range []struct {
		from  string
		epoch ctrl.Epoch
	}{
		{"c", ep},
		{"b", ep},
		{"a", ctrl.Epoch{MigrationID: ep.MigrationID, N: ep.N + 1}},
		{"a", ctrl.Epoch{MigrationID: "other", N: ep.N}},
	} {
		err := w.eng("b").Drained(context.Background(), ctrl.Caller{Cluster: tc.from}, "web", tc.epoch)
		if !errors.Is(err, ErrConflict) || closed() {
			t.Errorf("drained from %s of %s: %v, stopped %v: want a conflict and the copy left alone", tc.from, tc.epoch, err, closed())
		}
	}
	if err := w.eng("b").Drained(context.Background(), ctrl.Caller{Cluster: "a"}, "web", ep); err != nil || !closed() {
		t.Fatalf("the home's word: %v, stopped %v", err, closed())
	}
	// Said twice: still fine.
	if err := w.eng("b").Drained(context.Background(), ctrl.Caller{Cluster: "a"}, "web", ep); err != nil {
		t.Fatal(err)
	}
}
