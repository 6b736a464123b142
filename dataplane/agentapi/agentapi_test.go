package agentapi

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/roamnet/roam/dataplane"
	"github.com/roamnet/roam/dataplane/dptest"
	"github.com/roamnet/roam/dataplane/lb"
)

// openDataplane opens a real data plane on a pin path unique to the test.
func openDataplane(t testing.TB) *dataplane.Dataplane {
	t.Helper()
	return dptest.New(t, dataplane.Config{SNATv4: netip.MustParseAddr("10.99.0.1"), IdleTimeout: time.Minute})
}

type agent struct {
	dp     *dataplane.Dataplane
	srv    *Server
	reg    *prometheus.Registry
	http   *httptest.Server
	client *Client
}

// newAgent is an agent API server over a real data plane, with cfg and
// its own metrics registry; not serving yet.
func newAgent(t testing.TB, cfg ServerConfig) *agent {
	t.Helper()
	a := &agent{dp: openDataplane(t), reg: prometheus.NewRegistry()}
	cfg.Registerer = a.reg
	var err error
	if a.srv, err = NewServer(a.dp, cfg); err != nil {
		t.Fatalf("new server: %v", err)
	}
	return a
}

// wantSlots: on a's data plane each fs[i] has ts[i] staged and nothing
// active (staged), or ts[i] active and nothing staged (!staged).
func (a *agent) wantSlots(t *testing.T, when string, fs []lb.Frontend, ts []lb.Target, staged bool) {
	t.Helper()
	for i, f := range fs {
		s, err := a.dp.Get(f)
		slot, other, name := s.Active, s.Staged, "active"
		if staged {
			slot, other, name = s.Staged, s.Active, "staged"
		}
		if err != nil || slot != ts[i] || other.Kind != lb.TargetNone {
			t.Fatalf("%s %s: %+v %v; want %s %s, the other slot empty", f, when, s, err, ts[i], name)
		}
	}
}

func startAgent(t *testing.T, token string) *agent {
	t.Helper()
	a := newAgent(t, ServerConfig{Token: token})
	a.http = httptest.NewServer(a.srv.Handler())
	t.Cleanup(a.http.Close)
	a.client = New(a.http.URL, token)
	return a
}

// stage stages tg for f through the agent's API and returns its
// generation; an error fails the test.
func (a *agent) stage(t *testing.T, c context.Context, f lb.Frontend, tg lb.Target) uint64 {
	t.Helper()
	gen, err := a.client.Stage(c, f, tg)
	if err != nil {
		t.Fatal(err)
	}
	return gen
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

var (
	fe  = mustFrontend("10.0.0.1:80/tcp")
	fe6 = mustFrontend("[2001:db8::1]:53/udp")
	t1  = lb.Redirect(netip.MustParseAddrPort("10.2.0.1:8080"))
	t2  = lb.Redirect(netip.MustParseAddrPort("10.3.0.1:8080"))
)

func mustFrontend(s string) lb.Frontend {
	f, err := lb.ParseFrontend(s)
	if err != nil {
		panic(err)
	}
	return f
}

func counter(t *testing.T, reg *prometheus.Registry, name, label, value string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather metrics: %v", err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == label && l.GetValue() == value {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

func TestStageCommitAbortRemove(t *testing.T) {
	a := startAgent(t, "")
	c := ctx(t)

	if err := a.client.Health(c); err != nil {
		t.Fatalf("health: %v", err)
	}
	if _, err := a.client.Get(c, fe); !IsNotFound(err) {
		t.Fatalf("get unknown frontend: got %v, want not found", err)
	}

	gen := a.stage(t, c, fe, t1)
	svc, err := a.client.Get(c, fe)
	if err != nil {
		t.Fatalf("get: %v", err)
	}
	if svc.Staged != t1 || svc.Active.Kind != lb.TargetNone || svc.Generation != gen {
		t.Fatalf("after stage: %+v, want staged %s, nothing active, generation %d", svc, t1, gen)
	}
	// The real data plane agrees with what the API says.
	direct, err := a.dp.List()
	if err != nil || len(direct) != 1 || direct[0].Staged != t1 {
		t.Fatalf("data plane after stage: %v %v", direct, err)
	}

	if err := a.client.Commit(c, fe, gen); err != nil {
		t.Fatalf("commit: %v", err)
	}
	svc, err = a.client.Get(c, fe)
	if err != nil || svc.Active != t1 || svc.Staged.Kind != lb.TargetNone {
		t.Fatalf("after commit: %+v %v, want active %s and nothing staged", svc, err, t1)
	}

	// Stage then abort leaves the active target alone.
	a.stage(t, c, fe, t2)
	if err := a.client.Abort(c, fe, 0); err != nil {
		t.Fatalf("abort: %v", err)
	}
	svc, err = a.client.Get(c, fe)
	if err != nil || svc.Active != t1 || svc.Staged.Kind != lb.TargetNone {
		t.Fatalf("after abort: %+v %v, want active %s and nothing staged", svc, err, t1)
	}

	// A second frontend, IPv6 UDP, local.
	gen6 := a.stage(t, c, fe6, lb.Local)
	if err := a.client.Commit(c, fe6, gen6); err != nil {
		t.Fatalf("commit v6: %v", err)
	}
	list, err := a.client.List(c)
	if err != nil || len(list) != 2 {
		t.Fatalf("list: %v %v, want 2 services", list, err)
	}

	n, err := a.client.Flows(c, fe, t1)
	if err != nil || n != 0 {
		t.Fatalf("flows: %d %v, want 0 (no traffic)", n, err)
	}

	if err := a.client.Remove(c, fe); err != nil {
		t.Fatalf("remove: %v", err)
	}
	if _, err := a.client.Get(c, fe); !IsNotFound(err) {
		t.Fatalf("get removed frontend: got %v, want not found", err)
	}
	if got := counter(t, a.reg, "roam_agent_api_requests_total", "route", "stage"); got < 3 {
		t.Fatalf("roam_agent_api_requests_total{route=stage} = %v, want >= 3", got)
	}
}

func TestCommitStaleGenerationRefused(t *testing.T) {
	a := startAgent(t, "")
	c := ctx(t)
	g1 := a.stage(t, c, fe, t1)
	g2 := a.stage(t, c, fe, t2)
	if g2 == g1 {
		t.Fatalf("restage kept generation %d", g1)
	}
	err := a.client.Commit(c, fe, g1)
	var ae *Error
	if !errors.As(err, &ae) || ae.Status/100 != 4 {
		t.Fatalf("commit of a stale generation: got %v, want a 4xx refusal", err)
	}
	svc, err := a.client.Get(c, fe)
	if err != nil || svc.Active.Kind != lb.TargetNone || svc.Staged != t2 {
		t.Fatalf("after refused commit: %+v %v, want nothing active and %s staged", svc, err, t2)
	}
	if err := a.client.Commit(c, fe, g2); err != nil {
		t.Fatalf("commit current generation: %v", err)
	}
}

// The generation contract: an abort names its generation; a commit of an
// aborted generation fails (409), on one agent and through a Group.
func TestCommitAfterAbortRefused(t *testing.T) {
	a := startAgent(t, "")
	c := ctx(t)
	g1 := a.stage(t, c, fe, t1)
	if err := a.client.Commit(c, fe, g1); err != nil {
		t.Fatal(err)
	}
	g2 := a.stage(t, c, fe, t2)
	conflict := func(what string, err error) {
		t.Helper()
		var ae *Error
		if !errors.As(err, &ae) || ae.Status != http.StatusConflict || ae.Reason != ReasonConflict {
			t.Fatalf("%s: got %v, want 409 %s", what, err, ReasonConflict)
		}
	}
	conflict("abort of the committed generation", a.client.Abort(c, fe, g1))
	if err := a.client.Abort(c, fe, g2); err != nil {
		t.Fatalf("abort: %v", err)
	}
	if err := a.client.Abort(c, fe, g2); err != nil {
		t.Fatalf("abort again: %v", err)
	}
	conflict("commit of the aborted generation", a.client.Commit(c, fe, g2))
	svc, err := a.client.Get(c, fe)
	if err != nil || svc.Active != t1 || svc.Staged.Kind != lb.TargetNone {
		t.Fatalf("after the refused commit: %+v %v, want %s active and nothing staged", svc, err, t1)
	}
	g3 := a.stage(t, c, fe, t2)
	conflict("abort of a superseded generation", a.client.Abort(c, fe, g2))
	if svc, _ := a.client.Get(c, fe); svc.Staged != t2 {
		t.Fatalf("a refused abort touched the stage: %+v", svc)
	}
	if err := a.client.Commit(c, fe, g3); err != nil {
		t.Fatalf("commit of the current generation: %v", err)
	}

	// Through a Group: abort with the generations Stage returned, then the
	// commit of those generations fails on every node.
	b, d := startAgent(t, "tok"), startAgent(t, "tok")
	g := Group{b.client, d.client}
	gens, err := g.Stage(c, fe, t1)
	if err != nil {
		t.Fatal(err)
	}
	if err := g.Abort(c, fe, gens[:1]); err == nil {
		t.Fatal("abort with a generation short: want an error")
	}
	if err := g.Abort(c, fe, gens); err != nil {
		t.Fatalf("group abort: %v", err)
	}
	err = g.Commit(c, fe, gens)
	for _, n := range []*agent{b, d} {
		if err == nil || !strings.Contains(err.Error(), n.client.URL()) {
			t.Fatalf("group commit after the group abort: %v, want a failure naming node %s", err, n.client.URL())
		}
		if svcs, _ := n.dp.List(); len(svcs) != 0 {
			t.Fatalf("node %s after abort and refused commit: %v, want nothing (the frontend was only staged)", n.client.URL(), svcs)
		}
	}
}

func TestGroupTwoPhase(t *testing.T) {
	a, b := startAgent(t, "tok"), startAgent(t, "tok")
	g := Group{a.client, b.client}
	c := ctx(t)

	if err := g.Health(c); err != nil {
		t.Fatalf("health: %v", err)
	}
	gens, err := g.Stage(c, fe, t1)
	if err != nil {
		t.Fatalf("group stage: %v", err)
	}
	for _, n := range []*agent{a, b} {
		svc, err := n.client.Get(c, fe)
		if err != nil || svc.Staged != t1 || svc.Active.Kind != lb.TargetNone {
			t.Fatalf("node %s after stage: %+v %v", n.client.URL(), svc, err)
		}
	}
	if err := g.Commit(c, fe, gens); err != nil {
		t.Fatalf("group commit: %v", err)
	}
	lists, err := g.List(c)
	if err != nil {
		t.Fatalf("group list: %v", err)
	}
	for i, l := range lists {
		if len(l) != 1 || l[0].Active != t1 {
			t.Fatalf("node %d after commit: %v", i, l)
		}
	}
	if n, err := g.Flows(c, fe, t1); err != nil || n != 0 {
		t.Fatalf("group flows: %d %v", n, err)
	}
	if err := g.Commit(c, fe, gens[:1]); err == nil {
		t.Fatal("commit with a generation short: want an error")
	}
}

// A node that fails to stage leaves nothing staged anywhere.
func TestGroupStageFailureRollsBack(t *testing.T) {
	for _, tc := range []struct {
		name      string
		breakNode func(t *testing.T, b *agent)
	}{
		{"agent down", func(t *testing.T, b *agent) { b.http.Close() }},
		{"wrong token", func(t *testing.T, b *agent) { b.client = New(b.http.URL, "wrong") }},
		{"data plane closed", func(t *testing.T, b *agent) {
			if err := b.dp.Close(); err != nil {
				t.Fatalf("close: %v", err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, b := startAgent(t, "tok"), startAgent(t, "tok")
			c := ctx(t)
			// a already serves t1; the migration to t2 fails on b.
			if gens, err := (Group{a.client, b.client}).Stage(c, fe, t1); err != nil {
				t.Fatalf("first stage: %v", err)
			} else if err := (Group{a.client, b.client}).Commit(c, fe, gens); err != nil {
				t.Fatalf("first commit: %v", err)
			}
			tc.breakNode(t, b)
			g := Group{a.client, b.client}
			if _, err := g.Stage(c, fe, t2); err == nil {
				t.Fatal("group stage with a broken node: want an error")
			} else if !strings.Contains(err.Error(), b.http.URL) {
				t.Fatalf("error does not name the failed node %s: %v", b.http.URL, err)
			}
			svcs, err := a.dp.List()
			if err != nil || len(svcs) != 1 {
				t.Fatalf("healthy node: %v %v", svcs, err)
			}
			if svcs[0].Staged.Kind != lb.TargetNone || svcs[0].Active != t1 {
				t.Fatalf("healthy node after failed group stage: %+v, want nothing staged and %s active", svcs[0], t1)
			}
			if tc.name == "wrong token" {
				svcs, err := b.dp.List()
				if err != nil || len(svcs) != 1 || svcs[0].Staged.Kind != lb.TargetNone {
					t.Fatalf("refusing node: %v %v, want nothing staged", svcs, err)
				}
			}
		})
	}
}

func TestMalformedRequests(t *testing.T) {
	a := startAgent(t, "")
	for _, tc := range []struct {
		name, method, path, ctype, body string
		status                          int
		reason                          string
	}{
		{"not json", "POST", "/v1/stage", "application/json", "{", 400, ReasonBadJSON},
		{"empty body", "POST", "/v1/stage", "application/json", "", 400, ReasonBadJSON},
		{"unknown field", "POST", "/v1/stage", "application/json", `{"frontend":"10.0.0.1:80/tcp","target":"local","x":1}`, 400, ReasonBadJSON},
		{"wrong type", "POST", "/v1/commit", "application/json", `{"frontend":"10.0.0.1:80/tcp","generation":"one"}`, 400, ReasonBadJSON},
		{"trailing data", "POST", "/v1/abort", "application/json", `{"frontend":"10.0.0.1:80/tcp"} {}`, 400, ReasonBadJSON},
		{"missing frontend", "POST", "/v1/stage", "application/json", `{"target":"local"}`, 400, ReasonBadFrontend},
		{"bad frontend", "POST", "/v1/stage", "application/json", `{"frontend":"10.0.0.1/tcp","target":"local"}`, 400, ReasonBadFrontend},
		{"bad protocol", "POST", "/v1/remove", "application/json", `{"frontend":"10.0.0.1:80/sctp"}`, 400, ReasonBadFrontend},
		{"port zero", "POST", "/v1/abort", "application/json", `{"frontend":"10.0.0.1:0/tcp"}`, 400, ReasonBadFrontend},
		{"missing target", "POST", "/v1/stage", "application/json", `{"frontend":"10.0.0.1:80/tcp"}`, 400, ReasonBadTarget},
		{"target none", "POST", "/v1/stage", "application/json", `{"frontend":"10.0.0.1:80/tcp","target":"none"}`, 400, ReasonBadTarget},
		{"bad target", "POST", "/v1/stage", "application/json", `{"frontend":"10.0.0.1:80/tcp","target":"redirect:nowhere"}`, 400, ReasonBadTarget},
		{"family mismatch", "POST", "/v1/stage", "application/json", `{"frontend":"10.0.0.1:80/tcp","target":"redirect:[2001:db8::2]:80"}`, 400, ReasonBadTarget},
		{"wrong content type", "POST", "/v1/stage", "text/plain", `{"frontend":"10.0.0.1:80/tcp","target":"local"}`, 415, ReasonBadRequest},
		{"flows without query", "GET", "/v1/flows", "", "", 400, ReasonBadFrontend},
		{"flows bad target", "GET", "/v1/flows?frontend=10.0.0.1:80/tcp&target=elsewhere", "", "", 400, ReasonBadTarget},
		{"bad path frontend", "GET", "/v1/services/garbage", "", "", 400, ReasonBadFrontend},
		{"unknown frontend", "GET", "/v1/services/10.9.9.9:80%2Ftcp", "", "", 404, ReasonNotFound},
		{"commit nothing staged", "POST", "/v1/commit", "application/json", `{"frontend":"10.0.0.1:80/tcp","generation":7}`, 0, ""},
		{"wrong method", "GET", "/v1/stage", "", "", 405, ReasonBadRequest},
		{"no route", "GET", "/v2/nothing", "", "", 404, ReasonNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := counter(t, a.reg, "roam_agent_api_errors_total", "reason", tc.reason)
			req, err := http.NewRequest(tc.method, a.http.URL+tc.path, strings.NewReader(tc.body))
			if err != nil {
				t.Fatal(err)
			}
			if tc.ctype != "" {
				req.Header.Set("Content-Type", tc.ctype)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatalf("request: %v", err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if tc.status == 0 {
				// Refused by the data plane itself: any 4xx with a reason.
				if resp.StatusCode/100 != 4 || !strings.Contains(string(body), `"reason"`) {
					t.Fatalf("got %d %s, want a 4xx JSON error", resp.StatusCode, body)
				}
				return
			}
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d (%s), want %d", resp.StatusCode, body, tc.status)
			}
			if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
				t.Fatalf("content type %q, want application/json", ct)
			}
			if !strings.Contains(string(body), `"reason":"`+tc.reason+`"`) || !strings.Contains(string(body), `"error":"`) {
				t.Fatalf("body %s, want error with reason %s", body, tc.reason)
			}
			if after := counter(t, a.reg, "roam_agent_api_errors_total", "reason", tc.reason); after != before+1 {
				t.Fatalf("roam_agent_api_errors_total{reason=%s}: %v -> %v, want +1", tc.reason, before, after)
			}
		})
	}
	// Nothing of the above changed the data plane.
	if svcs, err := a.dp.List(); err != nil || len(svcs) != 0 {
		t.Fatalf("data plane after malformed requests: %v %v, want empty", svcs, err)
	}
}

func TestToken(t *testing.T) {
	a := startAgent(t, "s3cret")
	c := ctx(t)
	if _, err := a.client.List(c); err != nil {
		t.Fatalf("list with token: %v", err)
	}
	if err := New(a.http.URL, "").Health(c); err != nil {
		t.Fatalf("healthz needs no token: %v", err)
	}
	for _, tok := range []string{"", "s3cre", "s3cretx"} {
		_, err := New(a.http.URL, tok).Stage(c, fe, t1)
		var ae *Error
		if !errors.As(err, &ae) || ae.Status != http.StatusUnauthorized || ae.Reason != ReasonUnauthorized {
			t.Fatalf("stage with token %q: got %v, want 401 unauthorized", tok, err)
		}
	}
	if got := counter(t, a.reg, "roam_agent_api_errors_total", "reason", ReasonUnauthorized); got != 3 {
		t.Fatalf("unauthorized errors counted %v, want 3", got)
	}
	if svcs, _ := a.dp.List(); len(svcs) != 0 {
		t.Fatalf("unauthorized stage changed the data plane: %v", svcs)
	}
}
