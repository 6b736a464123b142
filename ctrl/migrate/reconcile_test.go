package migrate

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/roamnet/roam/ctrl"
	"github.com/roamnet/roam/ctrl/backend"
	"github.com/roamnet/roam/dataplane/lb"
)

// TestResyncReprogramsRebootedNode: a node reboots and loses its pins (its
// frontends are gone); the next resync re-programs it from the records.
func TestResyncReprogramsRebootedNode(t *testing.T) {
	w := newWorld(t, "a", "b")
	w.deploy("a")
	w.mustMigrate("a", "b")
	w.cluster("a").ag.reboot(1)
	if got := w.cluster("a").ag.active(1, w.frontend("a")); got.Kind != lb.TargetNone {
		t.Fatalf("rebooted node still points at %s", got)
	}
	w.acts.take()
	w.reconcile("a")
	w.expectActions([]string{"a: agents stage 8080 redirect:10.0.0.2:8080", "a: agents commit 8080"}, "a: agents")
	w.expectAt("a", "b")
	// Nothing to do the next time.
	w.reconcile("a")
	w.expectActions(nil, "a: agents", "a: backend")
}

// TestResyncRestartsMissingCopy: the copy a record names is gone (a
// controller restarted without its copies); the resync starts it again
// with the record's epoch.
func TestResyncRestartsMissingCopy(t *testing.T) {
	w := newWorld(t, "a", "b")
	w.deploy("a")
	w.mustMigrate("a", "b")
	if err := w.cluster("b").be.Delete(context.Background(), "web"); err != nil {
		t.Fatal(err)
	}
	w.acts.take()
	w.reconcile("b")
	w.expectActions([]string{"b: backend deploy web 1"}, "b: backend")
	w.expectAt("a", "b")
}

// TestCollectUnownedCopyAndFrontend: a copy and a frontend no record owns
// (leaked by a crash between two writes) are removed once they have been
// unowned for CollectAfter; what records own is left alone.
func TestCollectUnownedCopyAndFrontend(t *testing.T) {
	w := newWorld(t, "a")
	w.tune = func(c *Config) { c.CollectAfter = 50 * time.Millisecond }
	w.restart("a")
	w.deploy("a")
	leak := backend.Spec{Name: "leak", Demo: true, Ports: []backend.Port{{Port: 9000, Protocol: lb.TCP}}}
	if _, err := w.cluster("a").be.Deploy(context.Background(), leak); err != nil {
		t.Fatal(err)
	}
	stray := lb.Frontend{Addr: w.cluster("a").addr, Port: 9000, Proto: lb.TCP}
	if _, err := w.cluster("a").ag.StageAll(context.Background(), []lb.Frontend{stray}, []lb.Target{lb.Local}); err != nil {
		t.Fatal(err)
	}
	w.acts.take()
	if err := w.eng("a").Collect(context.Background()); err != nil {
		t.Fatal(err)
	}
	w.expectActions(nil, "a: backend delete", "a: agents remove") // not yet: the grace period
	time.Sleep(60 * time.Millisecond)
	if err := w.eng("a").Collect(context.Background()); err != nil {
		t.Fatal(err)
	}
	w.expectActions([]string{"a: backend delete leak", "a: agents remove 9000"}, "a: backend delete", "a: agents remove")
	w.expectAt("a", "a")
}

// TestServeWhileRecovering: a restarted controller answers at once; calls
// about a service it has not reconciled yet get ErrRecovering (503 with
// Retry-After at the API) until its first reconcile.
func TestServeWhileRecovering(t *testing.T) {
	w := newWorld(t, "a", "b")
	w.deploy("a")
	w.mustMigrate("a", "b")
	w.stop("b")
	eng := w.start("b")
	if _, err := eng.MarkRecovering(); err != nil {
		t.Fatal(err)
	}
	if _, err := eng.Where(context.Background(), ctrl.Caller{Cluster: "a"}, "web"); !errors.Is(err, ErrRecovering) {
		t.Fatalf("where while recovering: %v", err)
	}
	if _, err := w.migrate("a", "a"); err == nil {
		t.Fatal("a move of a service being recovered went ahead")
	}
	if eng.Recovering() != 1 {
		t.Fatalf("recovering %d, want 1", eng.Recovering())
	}
	w.reconcile("b")
	if eng.Recovering() != 0 {
		t.Fatalf("recovering %d after a reconcile", eng.Recovering())
	}
	w.mustMigrate("a", "a")
	w.expectAt("a", "a")
}

// TestStaleSnapshotDoesNotUndoCommit is the review's first finding: a loop
// read the journal (migration M1 running at verify), stalled, and acted on
// that old copy after M1 had committed, removing the copy the home's load
// balancer now pointed at. Settling re-reads the entry under the service's
// lock, so a late action on an old snapshot does nothing.
func TestStaleSnapshotDoesNotUndoCommit(t *testing.T) {
	w := newWorld(t, "a", "b")
	w.deploy("a")
	var snapshot []ctrl.Migration
	w.cluster("a").crash = func(m ctrl.Migration) error {
		if m.Stage == ctrl.StageVerify {
			var err error
			snapshot, err = w.cluster("a").st.InFlight()
			return err
		}
		return nil
	}
	w.mustMigrate("a", "b")
	if len(snapshot) != 1 || snapshot[0].Stage != ctrl.StageVerify {
		t.Fatalf("snapshot %+v", snapshot)
	}
	// The stalled loop wakes up with its snapshot.
	if err := w.eng("a").recoverOne(context.Background(), snapshot[0]); err != nil {
		t.Fatal(err)
	}
	if err := w.noLBToNothing(); err != nil {
		t.Fatal(err)
	}
	w.expectAt("a", "b")
}

// TestTakeBackBounded: the fail-safe's copy at home never becomes ready
// (a pod Pending because the home is full). The take-back gives up at its
// deadline, leaves the load balancer on the lost cluster (where the copy
// still may run) and the service is retried later; other services are
// reconciled meanwhile.
func TestTakeBackBounded(t *testing.T) {
	w := newWorld(t, "a", "b")
	w.failsafe = 50 * time.Millisecond
	w.tune = func(c *Config) { c.DeployTimeout = 200 * time.Millisecond }
	w.restart("a")
	w.deploy("a")
	w.mustMigrate("a", "b")
	api := w.descriptor()
	api.Name, api.Ports[0].Port = "api", 8081
	if _, err := w.eng("a").Deploy(context.Background(), api); err != nil {
		t.Fatal(err)
	}
	w.net.set("->b", fault{block: true})
	w.mo.mu.Lock()
	w.mo.gone = map[string]bool{"b": true}
	w.mo.mu.Unlock()
	w.cluster("a").be.faults.set("deploy web", fault{block: true})
	w.eventually("b counts as lost", func() error {
		if len(w.eng("a").Probe(context.Background())) == 0 {
			return fmt.Errorf("not yet")
		}
		return nil
	})
	start := time.Now()
	done := make(chan error, 1)
	go func() {
		_, err := w.eng("a").Reconcile(context.Background(), "web")
		done <- err
	}()
	// Another service is reconciled while the take-back waits.
	if _, err := w.eng("a").Reconcile(context.Background(), "api"); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("a take-back whose copy never got ready succeeded")
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("the take-back still blocks after %s", time.Since(start))
	}
	want := lb.Redirect(netip.AddrPortFrom(w.cluster("b").addr, testPort))
	if got := w.cluster("a").ag.active(0, w.frontend("a")); got != want {
		t.Fatalf("after a failed take-back the LB points at %s, want %s", got, want)
	}
}
