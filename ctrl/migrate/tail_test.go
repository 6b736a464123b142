package migrate

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/roamnet/roam/ctrl"
)

// migrateAtCommit asks from to move web to dest, answering at the commit.
func (w *world) migrateAtCommit(from, dest string) (ctrl.Migration, error) {
	w.t.Helper()
	return w.eng(from).Migrate(context.Background(), "web", ctrl.MigrateRequest{Destination: dest, Return: ctrl.ReturnCommitted})
}

// liveFlows makes id's agents count n live flows on every target (a
// drain then lasts until the drain timeout).
func (w *world) liveFlows(id string, n int) {
	ag := w.cluster(id).ag
	ag.mu.Lock()
	ag.flows = n
	ag.mu.Unlock()
}

// waitTail waits for id's tail of web to end (by taking the lock, as a
// second migration does).
func (w *world) waitTail(id string) {
	w.t.Helper()
	w.eng(id).lock("web")()
}

// migration is migration mid as id journalled it.
func (w *world) migration(id, mid string) ctrl.Migration {
	w.t.Helper()
	ms, err := w.eng(id).Migrations()
	if err != nil {
		w.t.Fatal(err)
	}
	for _, m := range ms {
		if m.ID == mid {
			return m
		}
	}
	w.t.Fatalf("no migration %s at %s", mid, id)
	return ctrl.Migration{}
}

// lastMigration is the last migration id journalled.
func (w *world) lastMigration(id string) ctrl.Migration {
	w.t.Helper()
	ms, err := w.eng(id).Migrations()
	if err != nil || len(ms) == 0 {
		w.t.Fatalf("migrations at %s: %v %v", id, ms, err)
	}
	return ms[len(ms)-1]
}

func stagesOf(m ctrl.Migration) []ctrl.Stage {
	var out []ctrl.Stage
	for _, s := range m.Stages {
		out = append(out, s.Stage)
	}
	return out
}

func hasStage(m ctrl.Migration, s ctrl.Stage) bool {
	for _, st := range m.Stages {
		if st.Stage == s {
			return true
		}
	}
	return false
}

// TestAnswerAtCommitHome: a migration asked to answer at its commit
// answers once the new copy serves and the home committed and recorded
// it, without the service's lock held; the drain (here to the drain
// timeout: a flow stays live) and the cleanup run behind the answer, the
// journal saying when they are done; nothing else sees the old copy half
// removed.
func TestAnswerAtCommitHome(t *testing.T) {
	w := newWorld(t, "a", "b")
	w.deploy("a")
	w.liveFlows("a", 1)
	start := time.Now()
	m, err := w.migrateAtCommit("a", "b")
	answeredAfter := time.Since(start)
	if err != nil {
		t.Fatal(err)
	}
	if m.State != ctrl.StateRunning || m.Stage != ctrl.StageDrain || !hasStage(m, ctrl.StageCommit) || hasStage(m, ctrl.StageDrain) {
		t.Fatalf("answer %s at %s, stages %v: want running, at drain, committed and not drained", m.State, m.Stage, stagesOf(m))
	}
	drain := w.eng("a").Config().DrainTimeout
	if answeredAfter >= drain {
		t.Fatalf("answered after %s: the drain (%s, a live flow) ran before the answer", answeredAfter, drain)
	}
	if r := w.mustRecord("a"); r.Cluster != "b" || r.Epoch != m.Epoch {
		t.Fatalf("record at the answer %+v: want at b, epoch %s", r, m.Epoch)
	}
	select {
	case w.eng("a").mutex("web") <- struct{}{}:
		<-w.eng("a").mutex("web")
	default:
		t.Fatal("the service's lock is held behind the answer")
	}
	if _, runs := w.cluster("a").be.running("web"); !runs {
		t.Fatal("the old copy went before its drain")
	}
	w.waitTail("a")
	if waited := time.Since(start); waited < drain {
		t.Fatalf("the lock was taken %s after the start, before the drain timeout %s with a live flow", waited, drain)
	}
	last := w.lastMigration("a")
	if last.ID != m.ID || last.State != ctrl.StateDone || !hasStage(last, ctrl.StageDrain) || !hasStage(last, ctrl.StageCleanup) || last.Times.Cleanup < last.Times.Drain {
		t.Fatalf("journal after the tail: %+v (stages %v), want %s done with its drain and cleanup", last, stagesOf(last), m.ID)
	}
	if r := w.mustRecord("a"); r.LastMigration == nil || r.LastMigration.State != ctrl.StateDone {
		t.Fatalf("record's last migration %+v, want done", r.LastMigration)
	}
	w.expectAt("a", "b")
}

// TestComingHomeWaitsForTail: the service comes home (b moves it back to
// a) while a still drains and removes the old copy of the previous move:
// the new copy at home is started only once that removal is over (else
// the removal would take it), and a second migration asked at a waits
// for the tail too.
func TestComingHomeWaitsForTail(t *testing.T) {
	w := newWorld(t, "a", "b")
	w.tune = func(c *Config) { c.DrainTimeout = 2 * time.Second }
	w.restart("a")
	w.deploy("a")
	w.liveFlows("a", 1)
	// The old copy's graceful stop lasts until the drain ends (it is
	// then killed and removed).
	be := w.cluster("a").be
	be.mu.Lock()
	be.stopFor = 2 * time.Second
	be.mu.Unlock()
	first, err := w.migrateAtCommit("a", "b")
	if err != nil {
		t.Fatal(err)
	}
	// The home's flows to the old copy end only after the second
	// migration has started its copy at home (its deploy comes within
	// milliseconds).
	go func() {
		time.Sleep(150 * time.Millisecond)
		w.liveFlows("a", 0)
	}()
	second, err := w.migrateAtCommit("a", "a") // forwarded to b, which moves it home
	if err != nil {
		t.Fatalf("second migration during the first's tail: %v", err)
	}
	if second.Role != ctrl.RoleMover || second.To != "a" {
		t.Fatalf("second migration %+v: want b moving it home", second)
	}
	w.waitTail("a")
	w.waitTail("b")
	if m := w.migration("a", first.ID); m.State != ctrl.StateDone {
		t.Fatalf("first migration %+v, want done", m)
	}
	if m := w.migration("b", second.ID); m.State != ctrl.StateDone {
		t.Fatalf("second migration %+v, want done", m)
	}
	w.expectAt("a", "a")
}

// TestCrashDuringTail kills the controller right after it journals the
// drain or the cleanup behind an answer given at the commit (a kill -9
// during the background drain), for the home and for a mover: the
// caller had its answer; the restarted controller settles the journal,
// the old copy goes, the new one stays, one copy serves.
func TestCrashDuringTail(t *testing.T) {
	for _, stage := range []ctrl.Stage{ctrl.StageDrain, ctrl.StageCleanup} {
		t.Run("home/"+stage.String(), func(t *testing.T) {
			w := newWorld(t, "a", "b")
			w.deploy("a")
			crashAt(w.cluster("a"), ctrl.RoleHome, stage)
			m, err := w.migrateAtCommit("a", "b")
			if err != nil {
				t.Fatalf("the answer at the commit: %v", err)
			}
			w.waitTail("a")
			if last := w.lastMigration("a"); last.ID != m.ID || last.State != ctrl.StateRunning || last.Stage != stage {
				t.Fatalf("journal after the crash: %s at %s, want running at %s", last.State, last.Stage, stage)
			}
			w.restart("a")
			if last := w.lastMigration("a"); last.State != ctrl.StateDone {
				t.Fatalf("after the restart: %+v, want done", last)
			}
			w.expectAt("a", "b")
		})
	}
	t.Run("mover/cleanup", func(t *testing.T) {
		w := newWorld(t, "a", "b", "c")
		w.deploy("a")
		w.mustMigrate("a", "b")
		crashAt(w.cluster("b"), ctrl.RoleMover, ctrl.StageCleanup)
		m, err := w.migrateAtCommit("b", "c")
		if err != nil {
			t.Fatalf("the answer at the commit: %v", err)
		}
		if m.Role != ctrl.RoleMover || m.State != ctrl.StateRunning {
			t.Fatalf("answer %+v, want the mover's, running", m)
		}
		w.waitTail("b")
		w.restart("b")
		if last := w.lastMigration("b"); last.ID != m.ID || last.State != ctrl.StateDone {
			t.Fatalf("mover after the restart: %+v, want %s done", last, m.ID)
		}
		w.expectAt("a", "c")
	})
}

// TestTailFaultsSettle: the old copy's removal fails behind the answer
// (the backend refuses): the migration is settled as failed in the
// journal after the answer (the move itself stands: the record says b),
// and the collector removes the copy no record owns.
func TestTailFaultsSettle(t *testing.T) {
	w := newWorld(t, "a", "b")
	w.tune = func(c *Config) { c.CollectAfter = 50 * time.Millisecond }
	w.restart("a")
	w.deploy("a")
	w.cluster("a").be.faults.set("delete web", fault{err: errors.New("backend down")})
	m, err := w.migrateAtCommit("a", "b")
	if err != nil {
		t.Fatal(err)
	}
	w.waitTail("a")
	last := w.lastMigration("a")
	if last.ID != m.ID || last.State != ctrl.StateFailed {
		t.Fatalf("journal after a failed removal: %+v, want failed", last)
	}
	if r := w.mustRecord("a"); r.Cluster != "b" {
		t.Fatalf("record %+v: the committed move must stand", r)
	}
	w.cluster("a").be.faults.clear("delete web")
	w.eventually("the old copy collected", func() error {
		if err := w.eng("a").Collect(context.Background()); err != nil {
			return err
		}
		return w.check("a", "b")
	})
}

// TestSecondMigrationHonoursContext: a call on a service asked right
// after a migration of it answered at its commit waits for that
// migration's drain and cleanup (here to the drain timeout: the old copy
// does not stop by itself), but no longer than its caller's context: it
// then returns the context's error, having changed nothing and holding no
// lock. At the home (a delete) and at a mover (a second migration). Once
// the tail is over, the next migration goes through.
func TestSecondMigrationHonoursContext(t *testing.T) {
	w := newWorld(t, "a", "b", "c")
	w.tune = func(c *Config) { c.DrainTimeout = 2 * time.Second }
	for _, id := range []string{"a", "b"} {
		w.restart(id)
		be := w.cluster(id).be
		be.mu.Lock()
		be.stopFor = 2 * time.Second // a graceful stop to the drain timeout
		be.mu.Unlock()
	}
	w.deploy("a")
	w.liveFlows("a", 1)
	within := func(what string, call func(ctx context.Context) error) {
		t.Helper()
		x, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		start := time.Now()
		err := call(x)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("%s during the tail, past its caller's deadline: %v, want the deadline's error", what, err)
		}
		if waited := time.Since(start); waited > time.Second {
			t.Fatalf("%s returned %s after its 100ms deadline: it waited for the tail", what, waited)
		}
	}

	first, err := w.migrateAtCommit("a", "b")
	if err != nil {
		t.Fatal(err)
	}
	if w.eng("a").tail("web") == nil {
		t.Fatal("no tail at the home behind the answer at the commit")
	}
	within("delete at the home", func(x context.Context) error { return w.eng("a").Delete(x, "web") })
	if r := w.mustRecord("a"); r.Cluster != "b" || r.Epoch != first.Epoch {
		t.Fatalf("record %+v after the refused delete, want the first move's", r)
	}
	w.waitTail("a")
	if m := w.migration("a", first.ID); m.State != ctrl.StateDone {
		t.Fatalf("first migration %+v, want done", m)
	}

	// b moves it on to c and answers at the commit; its own copy's
	// graceful stop runs behind the answer (the home, its flows live,
	// does not say "drained").
	second, err := w.migrateAtCommit("b", "c")
	if err != nil {
		t.Fatal(err)
	}
	if second.Role != ctrl.RoleMover || w.eng("b").tail("web") == nil {
		t.Fatalf("second migration %+v: want b's, with a tail", second)
	}
	within("a migration at the mover", func(x context.Context) error {
		_, err := w.eng("b").Migrate(x, "web", ctrl.MigrateRequest{Destination: "a", Return: ctrl.ReturnCommitted})
		return err
	})
	if ms, _ := w.eng("b").Migrations(); ms[len(ms)-1].ID != second.ID {
		t.Fatalf("the refused migration was journalled at b: %+v", ms[len(ms)-1])
	}
	w.liveFlows("a", 0)
	w.waitTail("b")
	if m := w.migration("b", second.ID); m.State != ctrl.StateDone {
		t.Fatalf("second migration %+v, want done", m)
	}
	if m := w.mustMigrate("a", "a"); m.State != ctrl.StateDone {
		t.Fatalf("migration after the tails: %+v", m)
	}
	w.expectAt("a", "a")
}

// TestReturnValues: "removed" answers once the old copy is removed (as
// ""), an unknown value is refused (ErrInvalid) before anything starts.
func TestReturnValues(t *testing.T) {
	w := newWorld(t, "a", "b")
	w.deploy("a")
	if _, err := w.eng("a").Migrate(context.Background(), "web", ctrl.MigrateRequest{Destination: "b", Return: "soon"}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("migrate with return \"soon\": %v, want ErrInvalid", err)
	}
	if ms, _ := w.eng("a").Migrations(); len(ms) != 0 {
		t.Fatalf("a refused migration was journalled: %+v", ms)
	}
	m, err := w.eng("a").Migrate(context.Background(), "web", ctrl.MigrateRequest{Destination: "b", Return: ctrl.ReturnRemoved})
	if err != nil || m.State != ctrl.StateDone || !hasStage(m, ctrl.StageCleanup) {
		t.Fatalf("migrate with return %q: %+v %v, want done with its cleanup", ctrl.ReturnRemoved, m, err)
	}
	w.expectAt("a", "b")
}
