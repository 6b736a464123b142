package migrate

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/roamnet/roam/ctrl"
	"github.com/roamnet/roam/ctrl/backend"
	"github.com/roamnet/roam/dataplane/lb"
)

func TestDeploy(t *testing.T) {
	w := newWorld(t, "a")
	w.deploy("a")
	w.expectActions([]string{
		"a: backend deploy web 0",
		"a: agents stage 8080 local",
		"a: agents commit 8080",
	})
	w.expectAt("a", "a")
	if _, err := w.eng("a").Deploy(context.Background(), w.descriptor()); !errors.Is(err, ErrConflict) {
		t.Fatalf("second deploy: %v, want a conflict", err)
	}
	// Another service on the same (address, port, protocol), even while
	// the first runs abroad, is refused.
	w2 := newWorld(t, "a", "b")
	w2.deploy("a")
	w2.mustMigrate("a", "b")
	shop := w2.descriptor()
	shop.Name = "shop"
	if _, err := w2.eng("a").Deploy(context.Background(), shop); !errors.Is(err, ErrConflict) {
		t.Fatalf("a second service on web's frontend: %v, want a conflict", err)
	}
	bad := w.descriptor()
	bad.Ports = nil
	if _, err := w.eng("a").Deploy(context.Background(), bad); !errors.Is(err, ErrInvalid) {
		t.Fatalf("deploy without ports: %v, want invalid", err)
	}
}

func TestDeployProgramFailsRemovesCopy(t *testing.T) {
	w := newWorld(t, "a")
	w.cluster("a").ag.faults.set("stage", fault{err: errInjected})
	if _, err := w.eng("a").Deploy(context.Background(), w.descriptor()); err == nil {
		t.Fatal("deploy succeeded with every node failing")
	}
	w.expectActions([]string{
		"a: backend deploy web 0",
		"a: agents stage 8080 local",
		"a: backend delete web",
	})
	if _, ok := w.cluster("a").be.running("web"); ok {
		t.Fatal("a copy runs with no record")
	}
}

// TestMigrateStages moves a service home -> b, on to c (multi-hop: b is
// the mover, the home reroutes), and home again, and checks the actions
// each move takes and the picture after it.
func TestMigrateStages(t *testing.T) {
	w := newWorld(t, "a", "b", "c")
	w.deploy("a")
	w.acts.take()

	m := w.mustMigrate("a", "b")
	if m.State != ctrl.StateDone || m.Role != ctrl.RoleHome || m.Epoch.N != 1 || m.Epoch.MigrationID != m.ID {
		t.Fatalf("migration %+v", m)
	}
	var stages []string
	for _, s := range m.Stages {
		stages = append(stages, s.Stage.String())
	}
	if got := strings.Join(stages, " "); got != "trigger placement replication verify reroute commit drain cleanup" {
		t.Fatalf("stages %s", got)
	}
	w.expectActions([]string{
		"a: peer DeployForeign b",
		"b: backend deploy web 1",
		"a: agents stage 8080 redirect:10.0.0.2:8080",
		"a: agents commit 8080",
		"a: backend delete web",
	}, "a: peer", "b:", "a: agents", "a: backend")
	w.expectAt("a", "b")

	// The home forwards the call to b, which moves it on.
	m = w.mustMigrate("a", "c")
	if m.Role != ctrl.RoleMover || m.From != "b" || m.Epoch.N != 2 {
		t.Fatalf("multi-hop migration %+v", m)
	}
	// The home, seeing no flow left to b's copy, tells b so: it may
	// come before or after b starts stopping its copy.
	w.eventually("home says drained", func() error {
		if !w.acts.seen("a: peer Drained b") {
			return errors.New("not yet")
		}
		return nil
	})
	got := slices.DeleteFunc(w.acts.take("a: peer", "b:", "c:", "a: agents", "a: backend"), func(s string) bool { return s == "a: peer Drained b" })
	if want := []string{
		"a: peer Migrate b",
		"b: peer DeployForeign c",
		"c: backend deploy web 2",
		"b: peer MovedOn a",
		"a: agents stage 8080 redirect:10.0.0.3:8080",
		"a: agents commit 8080",
		"b: backend delete web",
	}; !slices.Equal(got, want) {
		t.Fatalf("actions:\n  got  %s\n  want %s", strings.Join(got, "\n       "), strings.Join(want, "\n       "))
	}
	w.expectAt("a", "c")

	m = w.mustMigrate("a", "a")
	if m.Role != ctrl.RoleMover || m.To != "a" {
		t.Fatalf("move home %+v", m)
	}
	w.expectAt("a", "a")
	r, _ := w.eng("a").Get("web")
	if r.Kind != ctrl.KindLocal || r.Epoch.N != 3 || r.LastMigration == nil || r.LastMigration.Role != ctrl.RoleReroute {
		t.Fatalf("home record %+v", r)
	}
}

func TestMigrateRollsBackBeforeCommit(t *testing.T) {
	for _, tc := range []struct {
		name   string
		inject func(w *world)
		want   []string
	}{
		{"replication fails", func(w *world) {
			w.cluster("b").be.faults.set("deploy", fault{err: errInjected})
		}, []string{"a: peer DeployForeign b", "b: backend deploy web 1", "b: backend delete web", "a: peer RemoveForeign b"}},
		{"stage fails", func(w *world) {
			w.cluster("a").ag.faults.set("stage node1", fault{err: errInjected})
		}, []string{"a: peer DeployForeign b", "b: backend deploy web 1", "a: agents stage 8080 redirect:10.0.0.2:8080",
			"a: peer RemoveForeign b", "b: backend delete web"}},
		// The new copy is verified before any node stages.
		{"verify fails", func(w *world) {
			w.net.set("verify ->b", fault{err: errInjected})
		}, []string{"a: peer DeployForeign b", "b: backend deploy web 1", "a: peer RemoveForeign b", "b: backend delete web"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(t, "a", "b")
			w.deploy("a")
			w.acts.take()
			tc.inject(w)
			m, err := w.migrate("a", "b")
			if err == nil || m.State != ctrl.StateFailed {
				t.Fatalf("migration %+v, %v: want failed", m, err)
			}
			w.expectActions(tc.want, "a: peer", "b:", "a: agents", "a: backend")
			w.expectAt("a", "a")
		})
	}
}

// TestUserGoneDuringDrain: the user's request ends (the client went away)
// while the old target drains; the migration still finishes: the old copy
// is removed and the migration is done.
func TestUserGoneDuringDrain(t *testing.T) {
	w := newWorld(t, "a", "b")
	w.deploy("a")
	w.cluster("a").ag.flows = 1 // the drain waits its whole timeout
	ctx, cancel := context.WithCancel(context.Background())
	w.cluster("a").crash = func(m ctrl.Migration) error {
		if m.Stage == ctrl.StageDrain {
			cancel()
		}
		return nil
	}
	m, err := w.eng("a").Migrate(ctx, "web", ctrl.MigrateRequest{Destination: "b"})
	if err != nil || m.State != ctrl.StateDone {
		t.Fatalf("migration %+v, %v: want done", m, err)
	}
	w.expectAt("a", "b")
}

// crashAt makes c's engine stop (as a kill -9 would) when it journals
// stage of a migration in role.
func crashAt(c *fakeCluster, role ctrl.Role, stage ctrl.Stage) {
	var once sync.Once
	c.crash = func(m ctrl.Migration) error {
		var err error
		if m.Role == role && m.Stage == stage {
			once.Do(func() { err = fmt.Errorf("crash at %s", stage) })
		}
		return err
	}
}

// TestCrashHomeAtEachStage kills the home's controller right after it
// journals each stage and restarts it on the same store: before the commit
// the service stays where it was; from the commit on, the move completes.
func TestCrashHomeAtEachStage(t *testing.T) {
	for _, stage := range ctrl.Stages() {
		t.Run(stage.String(), func(t *testing.T) {
			w := newWorld(t, "a", "b")
			w.deploy("a")
			crashAt(w.cluster("a"), ctrl.RoleHome, stage)
			if _, err := w.migrate("a", "b"); !errors.Is(err, ErrCrash) {
				t.Fatalf("migrate did not stop at %s: %v", stage, err)
			}
			w.restart("a")
			ms, _ := w.eng("a").Migrations()
			last := ms[len(ms)-1]
			if stage.BeforeCommit() {
				if last.State != ctrl.StateFailed {
					t.Fatalf("after a crash at %s: %+v, want rolled back", stage, last)
				}
				w.expectAt("a", "a")
				return
			}
			if last.State != ctrl.StateDone {
				t.Fatalf("after a crash at %s: %+v, want done", stage, last)
			}
			w.expectAt("a", "b")
		})
	}
}

// TestCrashMoverAtEachStage crashes the abroad cluster while it moves the
// service on: before the home rerouted it stays at b, after it ends at c.
func TestCrashMoverAtEachStage(t *testing.T) {
	for _, stage := range []ctrl.Stage{ctrl.StageTrigger, ctrl.StagePlacement, ctrl.StageReplication, ctrl.StageReroute, ctrl.StageCleanup} {
		t.Run(stage.String(), func(t *testing.T) {
			w := newWorld(t, "a", "b", "c")
			w.deploy("a")
			w.mustMigrate("a", "b")
			crashAt(w.cluster("b"), ctrl.RoleMover, stage)
			if _, err := w.migrate("b", "c"); err == nil {
				t.Fatalf("migrate did not stop at %s", stage)
			}
			w.restart("b")
			if stage == ctrl.StageCleanup {
				w.expectAt("a", "c")
				return
			}
			w.expectAt("a", "b")
		})
	}
}

// TestCrashHomeDuringMovedOn crashes the home while it reroutes after a
// "moved on" notice. The mover keeps both copies until the restarted home
// says where the service is; then exactly one copy is left.
// not drain after a "moved on": the mover's graceful stop of its own copy
// is the drain.)
func TestCrashHomeDuringMovedOn(t *testing.T) {
	for _, stage := range []ctrl.Stage{ctrl.StageReroute, ctrl.StageVerify, ctrl.StageCommit} {
		t.Run(stage.String(), func(t *testing.T) {
			w := newWorld(t, "a", "b", "c")
			w.deploy("a")
			w.mustMigrate("a", "b")
			crashAt(w.cluster("a"), ctrl.RoleReroute, stage)
			m, err := w.migrate("b", "c")
			if !errors.Is(err, ErrUnsettled) || m.State != ctrl.StateRunning {
				t.Fatalf("mover's migration %+v, %v: want unsettled", m, err)
			}
			for _, id := range []string{"b", "c"} {
				if _, ok := w.cluster(id).be.running("web"); !ok {
					t.Fatalf("the copy at %s went before the home settled", id)
				}
			}
			w.restart("a")
			w.reconcile("b")
			want := "b"
			if !stage.BeforeCommit() {
				want = "c"
			}
			w.expectAt("a", want)
		})
	}
}

// TestFailsafeTakesBackAndRemovesOrphan: the abroad cluster's controller
// and copy are gone; the home takes the service back; when the cluster
// returns the orphan copy there is removed: exactly one copy.
func TestFailsafeTakesBackAndRemovesOrphan(t *testing.T) {
	w := newWorld(t, "a", "b")
	w.failsafe = 100 * time.Millisecond
	w.restart("a")
	w.deploy("a")
	w.mustMigrate("a", "b")
	w.stop("b")
	w.net.set("->b", fault{err: errInjected})
	w.mo.mu.Lock()
	w.mo.gone = map[string]bool{"b": true}
	w.mo.mu.Unlock()
	w.eventually("the home takes the service back", func() error {
		w.eng("a").Probe(context.Background())
		w.reconcile("a")
		r, _ := w.eng("a").Get("web")
		if r.Kind != ctrl.KindLocal {
			return fmt.Errorf("still %s at %s", r.Kind, r.Cluster)
		}
		return nil
	})
	if _, ok := w.cluster("b").be.running("web"); !ok {
		t.Fatal("the cut-off cluster's copy should still run")
	}
	w.net.clear("->b")
	w.restart("b")
	w.reconcile("a")
	w.expectAt("a", "a")
}

// TestDrainAgentErrorNotDrained: an agent that cannot count its flows
// leaves the old target not drained: the drain lasts its timeout instead of
// ending at once (the old copy could still carry flows).
func TestDrainAgentErrorNotDrained(t *testing.T) {
	w := newWorld(t, "a")
	w.cluster("a").ag.faults.set("flows", fault{err: errInjected})
	fs := []lb.Frontend{{Addr: netip.MustParseAddr("10.0.0.1"), Port: 80, Proto: lb.TCP}}
	start := time.Now()
	left := w.eng("a").drain(context.Background(), fs, func(int) lb.Target { return lb.Local })
	if left == 0 || time.Since(start) < 200*time.Millisecond {
		t.Fatalf("drain with an agent error: %d flows left after %s, want > 0 after the 200 ms drain timeout", left, time.Since(start))
	}
}

// TestOldCopyStoppedAtTheCommit: the old copy is told to stop right after
// the commit, while the drain watches its flows (a keep-alive client is
// told to reconnect then), and the drain ends as soon as no flow is left,
// not at its timeout.
func TestOldCopyStoppedAtTheCommit(t *testing.T) {
	w := newWorld(t, "a", "b")
	w.deploy("a")
	ag := w.cluster("a").ag
	ag.mu.Lock()
	ag.flows = 1
	ag.mu.Unlock()
	var runningAtCleanup bool
	w.cluster("a").crash = func(m ctrl.Migration) error {
		switch m.Stage {
		case ctrl.StageDrain:
			time.AfterFunc(30*time.Millisecond, func() {
				ag.mu.Lock()
				ag.flows = 0
				ag.mu.Unlock()
			})
		case ctrl.StageCleanup:
			_, runningAtCleanup = w.cluster("a").be.running("web")
		}
		return nil
	}
	m := w.mustMigrate("a", "b")
	if runningAtCleanup {
		t.Error("the old copy still ran when the drain ended: it was not stopped at the commit")
	}
	if m.Times.Drain < 25 || m.Times.Drain > 150 {
		t.Errorf("drain took %.1f ms: want it to end soon after the last flow (30 ms), well before the 200 ms timeout", m.Times.Drain)
	}
	if m.Times.Cleanup < m.Times.Drain || m.DrainedFlows != 0 {
		t.Errorf("cleanup %.1f ms, drain %.1f ms, %d flows left", m.Times.Cleanup, m.Times.Drain, m.DrainedFlows)
	}
	w.expectAt("a", "b")
}

// TestTimesSameForEveryRole: Table I's measures are there for the home and
// the mover alike; the mover reports the home's staging and commit.
func TestTimesSameForEveryRole(t *testing.T) {
	w := newWorld(t, "a", "b", "c")
	w.deploy("a")
	home := w.mustMigrate("a", "b")
	mover := w.mustMigrate("b", "c")
	for _, m := range []ctrl.Migration{home, mover} {
		tm := m.Times
		if tm.Wait <= 0 || tm.Replication <= 0 || tm.Replication > tm.Wait || tm.Reroute <= 0 || tm.Commit <= 0 ||
			tm.Verify <= 0 || tm.Cleanup <= 0 || tm.Cleanup < tm.Drain {
			t.Errorf("%s: times %+v", m.Role, tm)
		}
	}
	ms, err := w.eng("a").Migrations()
	if err != nil {
		t.Fatal(err)
	}
	var reroute ctrl.Migration
	for _, m := range ms {
		if m.Role == ctrl.RoleReroute {
			reroute = m
		}
	}
	if reroute.Times.Reroute == 0 || reroute.Times.Reroute != mover.Times.Reroute || reroute.Times.Commit != mover.Times.Commit {
		t.Errorf("mover's reroute/commit %v/%v, home's %v/%v", mover.Times.Reroute, mover.Times.Commit, reroute.Times.Reroute, reroute.Times.Commit)
	}
}

// TestStageFailsOnOneFrontend: a service with two frontends is staged on
// both at once (one call per node); when the second frontend's stage
// fails, the first one, staged before it, is aborted: nothing stays
// staged on any node, both frontends still point at the old copy, and the
// new copy is removed.
func TestStageFailsOnOneFrontend(t *testing.T) {
	w := newWorld(t, "a", "b")
	d := w.descriptor()
	d.Ports = append(d.Ports, backend.Port{Port: testPort, Protocol: lb.UDP})
	if _, err := w.eng("a").Deploy(context.Background(), d); err != nil {
		t.Fatal(err)
	}
	ag := w.cluster("a").ag
	ag.faults.set("stage udp", fault{err: errInjected, times: 1}) // after the TCP frontend staged
	m, err := w.migrate("a", "b")
	if !errors.Is(err, errInjected) || m.State != ctrl.StateFailed {
		t.Fatalf("migration %+v, %v: want failed by the injected stage fault", m, err)
	}
	ag.mu.Lock()
	defer ag.mu.Unlock()
	for i := range ag.nodes {
		for _, proto := range []lb.Proto{lb.TCP, lb.UDP} {
			f := lb.Frontend{Addr: w.clusters["a"].addr, Port: testPort, Proto: proto}
			s := ag.nodes[i][f]
			if s == nil || s.Active != lb.Local || s.Staged.Kind != lb.TargetNone {
				t.Fatalf("node %d frontend %s: %+v, want local and nothing staged", i, f, s)
			}
		}
	}
	if _, runs := w.cluster("b").be.running("web"); runs {
		t.Fatal("the new copy at b still runs")
	}
}
