package migrate

import (
	"errors"
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/roamnet/roam/ctrl"
	"github.com/roamnet/roam/dataplane/lb"
)

// TestMigrationWarmsConnections: a migration opens, while the new copy
// deploys, the connections its reroute will use: the home's to its agents,
// a mover's to the home. A warm-up that fails changes nothing: the stage
// and commit dial again.
func TestMigrationWarmsConnections(t *testing.T) {
	w := newWorld(t, "a", "b", "c")
	w.deploy("a")
	ag := w.cluster("a").ag
	w.mustMigrate("a", "b")
	w.eventually("the home warmed its agents", func() error {
		ag.mu.Lock()
		defer ag.mu.Unlock()
		if ag.warms != 1 {
			return fmt.Errorf("%d warm-ups, want 1", ag.warms)
		}
		return nil
	})
	w.mustMigrate("a", "c") // b moves it on
	w.eventually("the mover warmed its connection to the home", func() error {
		w.mu.Lock()
		defer w.mu.Unlock()
		if n := w.healths["b->a"]; n != 1 {
			return fmt.Errorf("%d warm-ups b->a, want 1", n)
		}
		return nil
	})
	w.expectAt("a", "c")

	ag.faults.set("warm", fault{err: errInjected})
	if m := w.mustMigrate("a", "a"); m.State != ctrl.StateDone {
		t.Fatalf("migration %+v", m)
	}
	w.expectAt("a", "a")
	if m := w.mustMigrate("a", "b"); m.State != ctrl.StateDone {
		t.Fatalf("with the agents' warm-up failing: %+v", m)
	}
	w.expectAt("a", "b")
}

// TestCrashAfterCommitBeforeRecord: the commit stage times the agents'
// swap alone and the record is written after it. A crash between the two
// (every node points at the new copy, the record still at the old one)
// is settled by the journal, which said "commit" before any agent
// committed: the restarted home rolls forward (record written, old copy
// removed).
func TestCrashAfterCommitBeforeRecord(t *testing.T) {
	w := newWorld(t, "a", "b")
	w.deploy("a")
	a := w.cluster("a")
	f := lb.Frontend{Addr: a.addr, Port: testPort, Proto: lb.TCP}
	var crashed atomic.Bool
	var seen string
	a.crash = func(m ctrl.Migration) error {
		if m.Role != ctrl.RoleHome || m.Stage != ctrl.StageCommit {
			return nil
		}
		if a.ag.active(0, f).Kind != lb.TargetRedirect {
			return nil // the journal write before the commit
		}
		r, err := a.st.Record("web")
		if err != nil {
			seen = err.Error()
		} else {
			seen = string(r.Kind) + " at " + r.Cluster
		}
		if crashed.CompareAndSwap(false, true) {
			return errors.New("crash between the agents' commit and the record")
		}
		return nil
	}
	if _, err := w.migrate("a", "b"); !errors.Is(err, ErrCrash) {
		t.Fatalf("migrate did not stop after the agents' commit: %v", err)
	}
	if want := "local at a"; seen != want {
		t.Fatalf("record when the agents had committed: %q, want %q (written after the swap)", seen, want)
	}
	w.restart("a")
	ms, _ := w.eng("a").Migrations()
	if last := ms[len(ms)-1]; last.State != ctrl.StateDone {
		t.Fatalf("after the crash: %+v, want rolled forward to done", last)
	}
	w.expectAt("a", "b")
}

// TestCrashAfterRerouteNotCommitted: the home journals "commit" before it
// calls its agents; when they answer that nothing was committed, the
// journal goes back to "reroute" before the new copy is removed. A crash
// there, before or after the removal, is rolled back by the restarted
// home: the service is still served at home, no node points at the
// removed copy, and the copy at b is gone.
func TestCrashAfterRerouteNotCommitted(t *testing.T) {
	for _, removed := range []bool{false, true} {
		t.Run(fmt.Sprintf("removed=%v", removed), func(t *testing.T) {
			w := newWorld(t, "a", "b")
			w.deploy("a")
			a, b := w.cluster("a"), w.cluster("b")
			a.ag.faults.set("stage", fault{err: errInjected})
			var committing, crashed atomic.Bool
			a.crash = func(m ctrl.Migration) error {
				if m.Role != ctrl.RoleHome {
					return nil
				}
				if m.Stage == ctrl.StageCommit {
					committing.Store(true)
					return nil
				}
				if m.Stage != ctrl.StageReroute || !committing.Load() {
					return nil
				}
				if _, runs := b.be.running("web"); runs == removed {
					return nil
				}
				if crashed.CompareAndSwap(false, true) {
					return fmt.Errorf("crash after the agents did not commit (copy at b removed: %v)", removed)
				}
				return nil
			}
			if _, err := w.migrate("a", "b"); !errors.Is(err, ErrCrash) {
				t.Fatalf("migrate did not stop after the agents' refusal: %v", err)
			}
			if !crashed.Load() {
				t.Fatal("no crash point between the refusal and the migration's end")
			}
			a.ag.faults.set("stage", fault{})
			w.restart("a")
			ms, _ := w.eng("a").Migrations()
			if last := ms[len(ms)-1]; last.State != ctrl.StateFailed {
				t.Fatalf("after the crash: %+v, want rolled back (failed)", last)
			}
			w.expectAt("a", "a")
		})
	}
}
