package migrate

// Tests of the faults the control-plane review found (issue 12): each
// injects its fault with the fakes and checks that no node's load balancer
// points at a deleted copy, that exactly one copy serves once things heal,
// and that nothing is deleted on "unknown".

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/roamnet/roam/ctrl"
	"github.com/roamnet/roam/dataplane/lb"
)

// TestPartialCommitRollsForward: the commit succeeds on node 0 and fails
// on node 1. Nothing is undone (node 0 already sends new flows to the new
// copy): the migration stays in the journal, both copies stay, every node
// points at a copy that runs; a user's new move is refused while it is
// unsettled; once node 1 answers, the next reconcile finishes the move.
// The same with a crash right after the partial commit.
func TestPartialCommitRollsForward(t *testing.T) {
	for _, crash := range []bool{false, true} {
		t.Run(fmt.Sprintf("crash=%v", crash), func(t *testing.T) {
			w := newWorld(t, "a", "b", "c")
			w.deploy("a")
			w.cluster("a").ag.faults.set("commit node1", fault{err: errInjected})
			m, err := w.migrate("a", "b")
			if !errors.Is(err, ErrUnsettled) || m.State != ctrl.StateRunning {
				t.Fatalf("migration %+v, %v: want unsettled (rolling forward)", m, err)
			}
			if err := w.noLBToNothing(); err != nil {
				t.Fatal(err)
			}
			for _, id := range []string{"a", "b"} {
				if _, ok := w.cluster(id).be.running("web"); !ok {
					t.Fatalf("the copy at %s was removed after a partial commit", id)
				}
			}
			if got := w.cluster("a").ag.active(0, w.frontend("a")); got.Kind != lb.TargetRedirect {
				t.Fatalf("node 0 points at %s, want the new copy", got)
			}
			// Still failing: a reconcile keeps everything, a new move is refused.
			w.reconcile("a")
			if err := w.noLBToNothing(); err != nil {
				t.Fatal(err)
			}
			if _, err := w.migrate("a", "c"); err == nil || !strings.Contains(err.Error(), "not settled") {
				t.Fatalf("a new move while the last is unsettled: %v", err)
			}
			if err := w.noLBToNothing(); err != nil {
				t.Fatal(err)
			}
			w.cluster("a").ag.faults.clear("commit node1")
			if crash {
				w.restart("a")
			} else {
				w.reconcile("a")
			}
			w.reconcile("b") // the refused hop's copy at c goes
			w.reconcile("c")
			w.expectAt("a", "b")
			if err := w.noLBToNothing(); err != nil {
				t.Fatal(err)
			}
			got, err := w.cluster("a").st.Migration(m.ID)
			if err != nil || got.State != ctrl.StateDone {
				t.Fatalf("migration after roll forward %+v, %v", got, err)
			}
		})
	}
}

// TestPartialCommitAfterMovedOn: the home's commit after a "moved on"
// notice fails on one node. The home rolls forward; the mover keeps both
// copies until the home has settled, then exactly one copy is left, at the
// new cluster.
func TestPartialCommitAfterMovedOn(t *testing.T) {
	w := newWorld(t, "a", "b", "c")
	w.deploy("a")
	w.mustMigrate("a", "b")
	w.cluster("a").ag.faults.set("commit node1", fault{err: errInjected})
	if _, err := w.migrate("b", "c"); !errors.Is(err, ErrUnsettled) {
		t.Fatalf("mover: %v, want unsettled", err)
	}
	if err := w.noLBToNothing(); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"b", "c"} {
		if _, ok := w.cluster(id).be.running("web"); !ok {
			t.Fatalf("the copy at %s was removed while the home's commit was partial", id)
		}
	}
	w.reconcile("b") // the home is still unsettled: the mover keeps both
	if _, ok := w.cluster("b").be.running("web"); !ok {
		t.Fatal("the mover dropped its copy before the home settled")
	}
	w.cluster("a").ag.faults.clear("commit node1")
	w.reconcile("a")
	w.reconcile("b")
	w.expectAt("a", "c")
}

// lose makes b lost as seen from a: its controller and its copy's
// endpoint unreachable, and the MO no longer hearing it.
func lose(w *world, id string) {
	w.net.set("->"+id, fault{err: errInjected})
	w.mo.mu.Lock()
	w.mo.gone = map[string]bool{id: true}
	w.mo.mu.Unlock()
}

// lostAbroad is a world where a's service runs at b (the migration that
// moved it is returned, a has probed b once) and then b is lost (lose),
// with a fail-safe of 50 ms.
func lostAbroad(t *testing.T) (*world, ctrl.Migration) {
	t.Helper()
	w := newWorld(t, "a", "b")
	w.failsafe = 50 * time.Millisecond
	w.restart("a")
	w.deploy("a")
	m := w.mustMigrate("a", "b")
	w.eng("a").Probe(context.Background())
	lose(w, "b")
	return w, m
}

// probeFor probes from home until a probe finds something lost or d
// passes; it returns what the last probe found.
func probeFor(w *world, home string, d time.Duration) []string {
	var got []string
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		got = w.eng(home).Probe(context.Background())
		if len(got) > 0 {
			return got
		}
	}
	return got
}

// TestFailsafeNeedsEveryVantagePoint: a cluster is lost only when its
// controller (answering as itself), its copy's endpoint and the MO all
// say so, and only after the grace; any one of them still answering, or
// an MO view that is empty, keeps the service where it is.
func TestFailsafeNeedsEveryVantagePoint(t *testing.T) {
	for _, tc := range []struct {
		name   string
		inject func(w *world)
		lost   bool
	}{
		{"controller down only (a restart, a lossy link)", func(w *world) {
			w.net.set("a->b", fault{err: errInjected})
		}, false},
		{"controller down and the MO agrees, the copy answers", func(w *world) {
			w.net.set("a->b", fault{err: errInjected})
			w.mo.mu.Lock()
			w.mo.gone = map[string]bool{"b": true}
			w.mo.mu.Unlock()
		}, false},
		{"controller and copy unreachable, the MO still hears it", func(w *world) {
			w.net.set("->b", fault{err: errInjected})
		}, false},
		{"controller and copy unreachable, the MO view empty", func(w *world) {
			w.net.set("->b", fault{err: errInjected})
			w.mo.mu.Lock()
			w.mo.gone = map[string]bool{"a": true, "b": true, "c": true}
			w.mo.mu.Unlock()
		}, false},
		{"another controller answers at b's URL, the copy answers", func(w *world) {
			w.alias("b", "c")
			w.mo.mu.Lock()
			w.mo.gone = map[string]bool{"b": true}
			w.mo.mu.Unlock()
		}, false},
		{"all three agree", func(w *world) { lose(w, "b") }, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(t, "a", "b", "c")
			w.failsafe = 100 * time.Millisecond
			w.restart("a")
			w.deploy("a")
			w.mustMigrate("a", "b")
			// The grace runs from the last probe that saw b answer.
			start := time.Now()
			w.eng("a").Probe(context.Background()) // b seen answering
			tc.inject(w)
			got := probeFor(w, "a", 500*time.Millisecond)
			if (len(got) > 0) != tc.lost {
				t.Fatalf("lost %v, want lost %v", got, tc.lost)
			}
			if tc.lost && time.Since(start) < w.failsafe {
				t.Fatalf("lost after %s, before the %s grace", time.Since(start), w.failsafe)
			}
			w.reconcile("a")
			if tc.lost {
				r, _ := w.eng("a").Get("web")
				if r.Kind != ctrl.KindLocal {
					t.Fatalf("not taken back: %+v", r)
				}
				return
			}
			if r, _ := w.eng("a").Get("web"); r.Kind != ctrl.KindAbroad || r.Cluster != "b" {
				t.Fatalf("a false positive took it back: %+v", r)
			}
			if _, ok := w.cluster("a").be.running("web"); ok {
				t.Fatal("a copy was started at home")
			}
		})
	}
}

// TestTakeBackRateLimited: a lost cluster ran three services; take-backs
// are rate limited, so one is taken back at once and the others are put
// off (no error, a later look), not all at the same instant.
func TestTakeBackRateLimited(t *testing.T) {
	w := newWorld(t, "a", "b")
	w.failsafe = 50 * time.Millisecond
	w.tune = func(c *Config) { c.TakeBackRate, c.TakeBackBurst = 0.001, 1 }
	w.restart("a")
	names := []string{"web", "api", "db"}
	for i, n := range names {
		d := w.descriptor()
		d.Name, d.Ports[0].Port = n, uint16(8080+i)
		if _, err := w.eng("a").Deploy(context.Background(), d); err != nil {
			t.Fatal(err)
		}
		if _, err := w.eng("a").Migrate(context.Background(), n, ctrl.MigrateRequest{Destination: "b"}); err != nil {
			t.Fatal(err)
		}
	}
	w.eng("a").Probe(context.Background())
	lose(w, "b")
	if got := probeFor(w, "a", time.Second); len(got) != 3 {
		t.Fatalf("lost %v, want all three", got)
	}
	taken, later := 0, 0
	for _, n := range names {
		// (An error says the orphans at b are still to remove.)
		again, _ := w.eng("a").Reconcile(context.Background(), n)
		r, _ := w.eng("a").Get(n)
		switch {
		case r.Kind == ctrl.KindLocal:
			taken++
		case again > 0:
			later++
		}
	}
	if taken != 1 || later != 2 {
		t.Fatalf("taken back %d, put off %d: want 1 and 2", taken, later)
	}
}

// TestTakeBackFailureReusesIDAndRemovesCopy: the copy the fail-safe starts
// at home never gets ready. Each attempt reuses the take-back's id (the
// journal does not grow), removes the copy it started, and leaves the
// load balancer on the lost cluster; once the copy can start, the
// take-back succeeds, and when the cluster returns its orphan is removed:
// exactly one copy.
func TestTakeBackFailureReusesIDAndRemovesCopy(t *testing.T) {
	w, _ := lostAbroad(t)
	w.cluster("a").be.faults.set("ready web", fault{err: errInjected})
	if got := probeFor(w, "a", time.Second); len(got) != 1 {
		t.Fatalf("lost %v", got)
	}
	before, _ := w.eng("a").Migrations()
	for range 3 {
		w.eng("a").Reconcile(context.Background(), "web")
		m, err := w.cluster("a").st.Migration(failsafeID(w.mustRecord("a").Epoch))
		if err != nil || m.State != ctrl.StateFailed || !strings.Contains(m.Error, "injected") {
			t.Fatalf("take-back %+v, %v: want failed on the copy's deploy", m, err)
		}
		if _, ok := w.cluster("a").be.running("web"); ok {
			t.Fatal("the failed take-back left its copy running")
		}
		if err := w.noLBToNothing(); err != nil {
			t.Fatal(err)
		}
	}
	after, _ := w.eng("a").Migrations()
	if len(after) != len(before)+1 {
		t.Fatalf("journal grew from %d to %d entries over 3 attempts: want 1 entry reused", len(before), len(after))
	}
	w.cluster("a").be.faults.clear("ready web")
	w.reconcile("a")
	w.expectTakenBack("a")
	w.net.clear("->b")
	w.reconcile("a")
	w.reconcile("b")
	w.expectAt("a", "a")
}

// TestReturnedClusterAsksHomeFirst: b restarts after a partition without
// its copy (the node rebooted). The home took the service back meanwhile:
// b does not start its copy again (two copies would serve); while the home
// cannot be asked, b starts nothing and deletes nothing.
func TestReturnedClusterAsksHomeFirst(t *testing.T) {
	w, _ := lostAbroad(t)
	probeFor(w, "a", time.Second)
	w.reconcile("a")
	w.expectTakenBack("a")
	// b comes back without its copy, but cannot reach a yet.
	w.stop("b")
	if err := w.cluster("b").be.Delete(context.Background(), "web"); err != nil {
		t.Fatal(err)
	}
	w.net.clear("->b")
	w.net.set("b->a", fault{err: errInjected})
	w.restart("b")
	if _, ok := w.cluster("b").be.running("web"); ok {
		t.Fatal("b started its foreign copy without its home's word")
	}
	if _, err := w.cluster("b").st.Record("web"); err != nil {
		t.Fatalf("b dropped its record on no answer: %v", err)
	}
	w.net.clear("b->a")
	w.reconcile("b")
	w.reconcile("a")
	w.expectAt("a", "a")
}

// TestUnknownHomeDeletesNothing: a foreign copy's home lost its store (a
// reinstall: a new incarnation that knows nothing), or its URL reaches
// another controller. Neither answer removes the copy; only the word of
// the incarnation that asked for it does.
func TestUnknownHomeDeletesNothing(t *testing.T) {
	w := newWorld(t, "a", "b", "c")
	w.tune = func(c *Config) { c.ForeignCheckAfter = time.Millisecond }
	for _, id := range []string{"a", "b", "c"} {
		w.restart(id)
	}
	w.deploy("a")
	w.mustMigrate("a", "b")
	time.Sleep(5 * time.Millisecond)

	// a's URL reaches c's controller.
	w.alias("a", "c")
	w.reconcile("b")
	if _, ok := w.cluster("b").be.running("web"); !ok {
		t.Fatal("b removed its copy on the word of another controller")
	}
	w.unalias("a")

	// a reinstalled: a new store, no records.
	w.stop("a")
	if err := os.Remove(w.cluster("a").store); err != nil {
		t.Fatal(err)
	}
	w.restart("a")
	w.reconcile("b")
	if _, ok := w.cluster("b").be.running("web"); !ok {
		t.Fatal("b removed its copy on the word of a home that forgot it")
	}
	if _, err := w.cluster("b").st.Record("web"); err != nil {
		t.Fatalf("b dropped its record: %v", err)
	}
}

// TestHomeSaysElsewhereRemovesCopy: the positive answer, from the
// incarnation that asked for the copy, removes it.
func TestHomeSaysElsewhereRemovesCopy(t *testing.T) {
	w := newWorld(t, "a", "b")
	w.tune = func(c *Config) { c.ForeignCheckAfter = time.Millisecond }
	w.restart("a")
	w.restart("b")
	w.deploy("a")
	w.mustMigrate("a", "b")
	// The home forgets the move (as after a take-back whose orphan
	// removal has not reached b yet).
	r, _ := w.cluster("a").st.Record("web")
	r.Kind, r.Cluster, r.Epoch = ctrl.KindLocal, "a", r.Epoch.Next("m-x")
	if err := w.cluster("a").st.PutRecord(r); err != nil {
		t.Fatal(err)
	}
	time.Sleep(5 * time.Millisecond)
	w.reconcile("b")
	if _, ok := w.cluster("b").be.running("web"); ok {
		t.Fatal("b kept a copy its home says runs elsewhere")
	}
}

// TestEpochFencesStaleCalls: a late RemoveForeign or DeployForeign that
// names an older epoch does not touch the newer copy.
func TestEpochFencesStaleCalls(t *testing.T) {
	w := newWorld(t, "a", "b")
	w.deploy("a")
	first := w.mustMigrate("a", "b")
	w.mustMigrate("a", "a")
	w.mustMigrate("a", "b")
	w.acts.take()
	if err := w.eng("b").RemoveForeign(context.Background(), ctrl.Caller{Cluster: "a"}, "web", "a", first.Epoch); err != nil {
		t.Fatal(err)
	}
	w.expectActions(nil, "b: backend")
	_, err := w.eng("b").DeployForeign(context.Background(), ctrl.Caller{Cluster: "a"},
		ctrl.ForeignRequest{Home: "a", HomeURL: "fake://a", Epoch: first.Epoch, Service: w.descriptor()})
	if !errors.Is(err, ErrConflict) {
		t.Fatalf("a replayed deploy of an older epoch: %v", err)
	}
	w.expectAt("a", "b")
	// A stale "moved on" from an older epoch is refused too.
	_, err = w.eng("a").MovedOn(context.Background(), ctrl.Caller{Cluster: "b"}, ctrl.MovedOn{Service: "web",
		Epoch: first.Epoch.Next("m-late"), FromEpoch: first.Epoch, From: "b", To: "a"})
	if !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), "epoch") {
		t.Fatalf("a stale moved-on: %v", err)
	}
	w.expectAt("a", "b")
}

// TestOrphanEpochChecked: the fail-safe took the service home from b and
// remembered b's copy as an orphan; before b answered again, the service
// was moved to b once more (a newer epoch; b's running copy is reused and
// relabelled). The orphan's removal names the old epoch: b keeps the copy
// the home now points at, and exactly one copy serves.
func TestOrphanEpochChecked(t *testing.T) {
	w, old := lostAbroad(t)
	probeFor(w, "a", time.Second)
	w.reconcile("a")
	if r := w.mustRecord("a"); r.Kind != ctrl.KindLocal {
		t.Fatalf("not taken back: %+v", r)
	}
	os, _ := w.cluster("a").st.Orphans()
	if len(os) != 1 || os[0].Epoch != old.Epoch {
		t.Fatalf("orphans %+v, want b's copy at %s", os, old.Epoch)
	}
	// b answers again; the user moves the service there before the
	// home's reconcile removed the orphan.
	w.net.clear("->b")
	w.mo.mu.Lock()
	w.mo.gone = nil
	w.mo.mu.Unlock()
	again := w.mustMigrate("a", "b")
	if again.Epoch.N <= old.Epoch.N {
		t.Fatalf("new epoch %s not after %s", again.Epoch, old.Epoch)
	}
	w.reconcile("a")
	w.reconcile("b")
	w.expectAt("a", "b")
	if os, _ := w.cluster("a").st.Orphans(); len(os) != 0 {
		t.Fatalf("orphans left: %+v", os)
	}
}

// expectTakenBack: home's engine serves web from home again.
func (w *world) expectTakenBack(home string) {
	w.t.Helper()
	if r, _ := w.eng(home).Get("web"); r.Kind != ctrl.KindLocal {
		w.t.Fatalf("not taken back: %+v", r)
	}
}
