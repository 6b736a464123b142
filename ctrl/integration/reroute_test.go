package integration

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"

	"github.com/roamnet/roam/ctrl"
	"github.com/roamnet/roam/ctrl/migrate"
	"github.com/roamnet/roam/dataplane/agentapi"
)

// agentFault makes an agent's API fail its /v1/reroute calls (a cluster
// of one node reroutes in that one call): "refuse" answers 409 without
// making the call, saying it committed nothing, as the agent answers a
// data plane refusing to stage (agentapi.OutcomeNotCommitted), "die" makes the
// call and drops the connection before answering (an agent that dies
// between its commit and its answer), every time (the controller's
// resend included).
type agentFault struct {
	mode atomic.Value // string
	hits atomic.Int64
}

func (f *agentFault) set(mode string) { f.mode.Store(mode) }

func (f *agentFault) wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mode, _ := f.mode.Load().(string)
		if r.URL.Path != "/v1/reroute" || mode == "" {
			h.ServeHTTP(w, r)
			return
		}
		f.hits.Add(1)
		switch mode {
		case "refuse":
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusConflict)
			_, _ = w.Write([]byte(`{"error":"stage: injected refusal","reason":"conflict","outcome":"` + agentapi.OutcomeNotCommitted + `"}`))
		case "die":
			h.ServeHTTP(httptest.NewRecorder(), r) // made; the answer lost
			if conn, _, err := w.(http.Hijacker).Hijack(); err == nil {
				_ = conn.Close()
			}
		}
	})
}

// TestRerouteAgentFaults: the home's only agent (a real data plane)
// refuses the reroute: nothing was committed, the migration is rolled
// back (the new copy removed, the service where it was). Then the agent
// makes the reroute but dies before answering, and again when the call is
// sent again: the outcome is unknown to the controller, which rolls
// forward (never removing the copy the load balancer may point at): the
// migration stays unsettled until the reconciler commits every node again
// and finishes it, the service then at b, the old copy gone.
func TestRerouteAgentFaults(t *testing.T) {
	e := newEnv(t, "a", "b")
	e.deploy("a")
	a := e.cl["a"]

	a.fault.set("refuse")
	m, err := a.c.Engine.Migrate(ctx(t), "web", ctrl.MigrateRequest{Destination: "b"})
	if err == nil || m.State != ctrl.StateFailed {
		t.Fatalf("migration with the agent refusing the reroute: %+v %v, want failed", m, err)
	}
	if a.fault.hits.Load() != 1 {
		t.Fatalf("%d reroute calls, want 1 (a refusal is not sent again)", a.fault.hits.Load())
	}
	e.eventually("the new copy at b removed", func() error {
		if e.running("b") {
			return errors.New("still runs at b")
		}
		return nil
	})
	e.expectAt("a", "a")

	a.fault.set("die")
	a.fault.hits.Store(0)
	m, err = a.c.Engine.Migrate(ctx(t), "web", ctrl.MigrateRequest{Destination: "b"})
	if !errors.Is(err, migrate.ErrUnsettled) || m.State != ctrl.StateRunning || m.Stage != ctrl.StageCommit {
		t.Fatalf("migration with the agent dying in the reroute: %s at %s, %v: want unsettled at commit", m.State, m.Stage, err)
	}
	if n := a.fault.hits.Load(); n != 2 {
		t.Fatalf("%d reroute calls, want 2 (sent again once)", n)
	}
	if !e.running("b") {
		t.Fatal("the new copy went while the load balancer may point at it")
	}
	a.fault.set("")
	e.eventually("the reconciler settles the migration", func() error {
		ms, err := a.c.Engine.Migrations()
		if err != nil {
			return err
		}
		for _, j := range ms {
			if j.ID == m.ID && j.State == ctrl.StateDone {
				return nil
			}
		}
		return errors.New("not done yet")
	})
	e.expectAt("a", "b")
}
