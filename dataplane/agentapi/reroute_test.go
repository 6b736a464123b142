package agentapi

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/roamnet/roam/dataplane/lb"
)

// TestRerouteOneCall: a group of one node stages and commits a
// migration's frontends in one call (/v1/reroute), each with its own
// target; the reply carries the data plane's time for each half. Again,
// to other targets: the new ones are active, nothing stays staged.
func TestRerouteOneCall(t *testing.T) {
	a := startAgent(t, "tok")
	g, c := Group{a.client}, ctx(t)
	fs := []lb.Frontend{fe, feUDP}
	for _, ts := range [][]lb.Target{{t1, t2}, {t2, t1}} {
		t0 := time.Now()
		times, err := g.Reroute(c, fs, ts)
		wall := time.Since(t0)
		if err != nil {
			t.Fatalf("reroute to %v: %v", ts, err)
		}
		if !times.OneCall || times.Stage <= 0 || times.Commit <= 0 {
			t.Fatalf("reroute times %+v: want one call, with the data plane's stage and commit times", times)
		}
		// The agent's own time holds its stage and commit, and is held
		// in the call's wall time (µs in the reply: 1 µs of rounding).
		if times.Agent < times.Stage+times.Commit-time.Microsecond || times.Agent > wall {
			t.Fatalf("reroute times %+v in a call of %s: want stage+commit <= agent <= the call", times, wall)
		}
		// The agent's wall clock (the same host's): its handler entered
		// and its answer ready within the call, Agent apart.
		end := time.Now()
		if times.Received.Before(t0) || times.Answered.Before(times.Received) || times.Answered.After(end) {
			t.Fatalf("reroute times %+v in a call from %s to %s: want the handler's entry and answer within it, in that order", times, t0, end)
		}
		if d := times.Answered.Sub(times.Received) - times.Agent; d < -time.Microsecond || d > time.Microsecond {
			t.Fatalf("reroute times %+v: answered - received %s, want agent's %s (µs in the reply)", times, times.Answered.Sub(times.Received), times.Agent)
		}
		a.wantSlots(t, "after the reroute", fs, ts, false)
	}
	if n := counter(t, a.reg, "roam_agent_api_requests_total", "route", "reroute"); n != 2 {
		t.Fatalf("%v reroute calls served, want 2 (one per reroute)", n)
	}
	for _, route := range []string{"stages", "commits"} {
		if n := counter(t, a.reg, "roam_agent_api_requests_total", "route", route); n != 0 {
			t.Fatalf("%v %s calls served, want none", n, route)
		}
	}
}

// TestRerouteStageFails: the node fails to stage the second frontend
// (its data plane refuses the target): nothing is committed, the first
// frontend's stage is aborted, and the error says so (ErrNotCommitted).
// In a group of two, a node that refuses leaves nothing committed on the
// other either (it staged; it is aborted).
func TestRerouteStageFails(t *testing.T) {
	a, b := startAgent(t, "tok"), startAgent(t, "tok")
	c := ctx(t)
	fs := []lb.Frontend{fe, feUDP}
	if _, err := (Group{a.client}).Reroute(c, fs, []lb.Target{t1, t1}); err != nil {
		t.Fatal(err)
	}
	srv6 := lb.SRv6(netip.MustParseAddr("fd00:5::1")) // this data plane has no SID: refused by Stage
	_, err := Group{a.client}.Reroute(c, fs, []lb.Target{t2, srv6})
	if !errors.Is(err, ErrNotCommitted) {
		t.Fatalf("reroute with a refused second frontend: %v, want ErrNotCommitted", err)
	}
	a.wantSlots(t, "after the failed reroute", fs, []lb.Target{t1, t1}, false)

	b.client = New(b.http.URL, "wrong") // refuses every call
	_, err = Group{a.client, b.client}.Reroute(c, fs, []lb.Target{t2, t2})
	if !errors.Is(err, ErrNotCommitted) || !strings.Contains(err.Error(), b.http.URL) {
		t.Fatalf("reroute with a refusing node: %v, want ErrNotCommitted naming %s", err, b.http.URL)
	}
	a.wantSlots(t, "on the healthy node (aborted)", fs, []lb.Target{t1, t1}, false)
}

// TestRerouteNodeDiesBeforeCommit: in a group of two, the second node's
// agent stages, then dies before the commit: the first node commits (make
// before break: every node had staged), and the error is not
// ErrNotCommitted (the controller rolls forward, it does not remove the
// new copy).
func TestRerouteNodeDiesBeforeCommit(t *testing.T) {
	a := startAgent(t, "")
	var dead atomic.Bool
	hangUp := hangUps(t)
	b := startAgentWith(t, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/v1/stages" {
				h.ServeHTTP(w, r)
				dead.Store(true) // dies once it answered the stage
				return
			}
			if dead.Load() {
				hangUp(w)
				return
			}
			h.ServeHTTP(w, r)
		})
	}, func(*http.Server) {})
	c := ctx(t)
	fs := []lb.Frontend{fe}
	times, err := Group{a.client, b.client}.Reroute(c, fs, []lb.Target{t1})
	if err == nil || errors.Is(err, ErrNotCommitted) || !strings.Contains(err.Error(), b.http.URL) {
		t.Fatalf("reroute with a node dead before its commit: %v, want an error naming %s, not ErrNotCommitted", err, b.http.URL)
	}
	if times.OneCall {
		t.Fatal("a group of two rerouted in one call per node")
	}
	if s, err := a.dp.Get(fe); err != nil || s.Active != t1 {
		t.Fatalf("%s on the live node: %+v %v, want committed to %s", fe, s, err, t1)
	}
	if s, err := b.dp.Get(fe); err != nil || s.Active.Kind != lb.TargetNone || s.Staged != t1 {
		t.Fatalf("%s on the dead node: %+v %v, want staged, not committed", fe, s, err)
	}
}

// TestRerouteResentAndOldAgent: the agent made a reroute and dropped its
// connection before answering: the call is sent again and the second
// making changes nothing (the same targets active). An agent that does
// not know /v1/reroute (404, no route) is rerouted in two calls.
func TestRerouteResentAndOldAgent(t *testing.T) {
	var drop, old atomic.Bool
	hangUp := hangUps(t)
	a := startAgentWith(t, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/v1/reroute" && old.Load() {
				r.URL.Path = "/v1/reroute-unknown" // as an agent without the route answers
			}
			if r.URL.Path == "/v1/reroute" && drop.CompareAndSwap(true, false) {
				h.ServeHTTP(httptest.NewRecorder(), r) // made; its answer lost
				hangUp(w)
				return
			}
			h.ServeHTTP(w, r)
		})
	}, func(*http.Server) {})
	c := ctx(t)
	if err := a.client.Warm(c); err != nil {
		t.Fatal(err)
	}
	fs := []lb.Frontend{fe}
	drop.Store(true)
	if _, err := (Group{a.client}).Reroute(c, fs, []lb.Target{t1}); err != nil {
		t.Fatalf("reroute whose first answer was lost: %v", err)
	}
	if n := counter(t, a.reg, "roam_agent_api_requests_total", "route", "reroute"); n != 2 {
		t.Fatalf("%v reroutes made, want 2 (sent again)", n)
	}
	a.wantSlots(t, "after the resent reroute", []lb.Frontend{fe}, []lb.Target{t1}, false)

	old.Store(true)
	times, err := Group{a.client}.Reroute(c, fs, []lb.Target{t2})
	if err != nil {
		t.Fatalf("reroute on an agent without /v1/reroute: %v", err)
	}
	if times.OneCall {
		t.Fatalf("times %+v: want two calls", times)
	}
	if s, err := a.dp.Get(fe); err != nil || s.Active != t2 {
		t.Fatalf("%s after the two-call reroute: %+v %v", fe, s, err)
	}
}

// TestRerouteReplayChangesNothing: /v1/reroute made again (its answer
// lost) finds each frontend's active target already the one asked for,
// with nothing staged, and leaves it alone: no stage (the generation
// stays, so the other slot, which may hold an SRv6 previous path, is not
// written) and no commit. A frontend of the same call that is not yet at
// its target is rerouted.
func TestRerouteReplayChangesNothing(t *testing.T) {
	a := startAgent(t, "tok")
	c := ctx(t)
	fs := []lb.Frontend{fe, feUDP}
	if _, err := a.client.Reroute(c, fs, []lb.Target{t1, t1}); err != nil {
		t.Fatal(err)
	}
	before := map[lb.Frontend]lb.Service{}
	for _, f := range fs {
		s, err := a.dp.Get(f)
		if err != nil {
			t.Fatal(err)
		}
		before[f] = s
	}
	if _, err := a.client.Reroute(c, fs, []lb.Target{t1, t1}); err != nil {
		t.Fatalf("the same reroute again: %v", err)
	}
	for _, f := range fs {
		if s, err := a.dp.Get(f); err != nil || s != before[f] {
			t.Fatalf("%s after the same reroute again: %+v %v, want unchanged %+v", f, s, err, before[f])
		}
	}
	if _, err := a.client.Reroute(c, fs, []lb.Target{t1, t2}); err != nil {
		t.Fatal(err)
	}
	if s, err := a.dp.Get(fe); err != nil || s != before[fe] {
		t.Fatalf("%s (already at its target) in a reroute of another frontend: %+v %v, want unchanged %+v", fe, s, err, before[fe])
	}
	if s, err := a.dp.Get(feUDP); err != nil || s.Active != t2 || s.Staged.Kind != lb.TargetNone || s.Generation == before[feUDP].Generation {
		t.Fatalf("%s rerouted to %s: %+v %v", feUDP, t2, s, err)
	}
}

// failingCommits is a data plane whose commits fail (after its stages
// succeeded): a /v1/reroute that staged every frontend, then could not
// commit.
type failingCommits struct{ Dataplane }

func (failingCommits) Commit(lb.Frontend, uint64) error { return errors.New("injected commit failure") }

// TestRerouteOutcome: Client.Reroute reads ErrNotCommitted only from an
// agent's explicit "not committed" outcome: a refused call, a stage the
// data plane refused (real agent), or an injected reply that says so. A
// commit that failed (real server over a data plane whose commits fail),
// and every error reply that does not say (an agent's 409 or 500
// without the outcome, a proxy's plain 502), leave the outcome unknown:
// not ErrNotCommitted (the controller rolls forward).
func TestRerouteOutcome(t *testing.T) {
	c := ctx(t)
	fs := []lb.Frontend{fe}

	// The real agent says it committed nothing.
	a := startAgent(t, "tok")
	srv6 := lb.SRv6(netip.MustParseAddr("fd00:5::1")) // no SID here: Stage refuses it
	_, err := a.client.Reroute(c, fs, []lb.Target{srv6})
	var ae *Error
	if !errors.Is(err, ErrNotCommitted) || !errors.As(err, &ae) || ae.Outcome != OutcomeNotCommitted {
		t.Fatalf("reroute to a target the data plane refuses: %v, want ErrNotCommitted from the agent's outcome", err)
	}
	_, err = New(a.http.URL, "wrong").Reroute(c, fs, []lb.Target{t1})
	if !errors.Is(err, ErrNotCommitted) || !errors.As(err, &ae) || ae.Status != http.StatusUnauthorized {
		t.Fatalf("reroute refused (wrong token): %v, want a 401 and ErrNotCommitted", err)
	}

	// The real server over a data plane whose commits fail.
	fc, err := NewServer(failingCommits{openDataplane(t)}, ServerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(fc.Handler())
	t.Cleanup(hs.Close)
	_, err = New(hs.URL, "").Reroute(c, fs, []lb.Target{t1})
	if err == nil || errors.Is(err, ErrNotCommitted) || !errors.As(err, &ae) || ae.Reason != ReasonCommitFailed || ae.Outcome != "" {
		t.Fatalf("reroute whose commit failed: %v, want commit_failed without an outcome, not ErrNotCommitted", err)
	}

	// Injected replies.
	for _, tc := range []struct {
		name, ctype, body string
		status            int
		notCommitted      bool
	}{
		{"says not committed", "application/json", `{"error":"stage: conflict","reason":"conflict","outcome":"not_committed"}`, http.StatusConflict, true},
		{"agent 409 that does not say", "application/json", `{"error":"stage: conflict","reason":"conflict"}`, http.StatusConflict, false},
		{"agent 500 that does not say", "application/json", `{"error":"boom","reason":"internal"}`, http.StatusInternalServerError, false},
		{"commit failed", "application/json", `{"error":"commit: boom","reason":"commit_failed"}`, http.StatusInternalServerError, false},
		{"another outcome", "application/json", `{"error":"x","reason":"internal","outcome":"maybe"}`, http.StatusInternalServerError, false},
		{"proxy 502", "text/plain", "bad gateway", http.StatusBadGateway, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", tc.ctype)
				w.WriteHeader(tc.status)
				_, _ = w.Write([]byte(tc.body))
			}))
			t.Cleanup(hs.Close)
			_, err := New(hs.URL, "").Reroute(c, fs, []lb.Target{t1})
			if err == nil || errors.Is(err, ErrNotCommitted) != tc.notCommitted {
				t.Fatalf("reply %d %s: %v, want ErrNotCommitted %v", tc.status, tc.body, err, tc.notCommitted)
			}
		})
	}
}
