package agentapi

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// startAgentWith serves a real data plane's agent API through wrap (plain
// HTTP), the server tuned by tune, and returns it with a client.
func startAgentWith(t *testing.T, wrap func(http.Handler) http.Handler, tune func(*http.Server)) *agent {
	t.Helper()
	a := newAgent(t, ServerConfig{})
	a.http = httptest.NewUnstartedServer(wrap(a.srv.Handler()))
	tune(a.http.Config)
	a.http.Start()
	t.Cleanup(a.http.Close)
	a.client = New(a.http.URL, "")
	return a
}

func nothing(h http.Handler) http.Handler { return h }

// hangUps returns hangUp for a test: it closes the call's connection
// without an answer, as an agent that dies does. It runs in the server's
// handler goroutines, where t.Error could come after the test ended (and
// panic): an error is kept and reported by a cleanup, which runs after
// the agent's server closed (and so after its handlers returned) when
// hangUps is called before startAgentWith.
func hangUps(t *testing.T) (hangUp func(http.ResponseWriter)) {
	errs := make(chan error, 1)
	t.Cleanup(func() {
		select {
		case err := <-errs:
			t.Errorf("hang up: %v", err)
		default:
		}
	})
	return func(w http.ResponseWriter) {
		err := fmt.Errorf("%T cannot be hijacked", w)
		if hj, ok := w.(http.Hijacker); ok {
			var conn net.Conn
			if conn, _, err = hj.Hijack(); err == nil {
				_ = conn.Close()
				return
			}
		}
		select {
		case errs <- err:
		default: // one is enough to fail the test
		}
	}
}

// TestAgentClosedKeptConnection: the agent closes a kept connection
// while it is idle (its idle timeout); the next call is made once, on a
// new connection, and succeeds.
func TestAgentClosedKeptConnection(t *testing.T) {
	a := startAgentWith(t, nothing, func(s *http.Server) { s.IdleTimeout = 50 * time.Millisecond })
	c, x := a.client, ctx(t)
	if err := c.Warm(x); err != nil {
		t.Fatal(err)
	}
	dials := c.Dials()
	time.Sleep(300 * time.Millisecond) // the agent closes both
	gen, err := c.Stage(x, fe, t1)
	if err != nil {
		t.Fatalf("stage on a connection the agent closed: %v", err)
	}
	if c.Dials() != dials+1 {
		t.Fatalf("%d dials after the agent closed the kept ones, want %d", c.Dials(), dials+1)
	}
	if n := counter(t, a.reg, "roam_agent_api_requests_total", "route", "stage"); n != 1 {
		t.Fatalf("the agent served %v stages, want 1", n)
	}
	if err := c.Commit(x, fe, gen); err != nil {
		t.Fatal(err)
	}
	if s, err := a.dp.Get(fe); err != nil || s.Active != t1 {
		t.Fatalf("%+v %v, want active %s", s, err, t1)
	}
}

// TestCallCancelled: a call whose context ends while the agent has not
// answered returns at once with the context's error; its connection is
// not kept (the answer, were it to come, would be read by the next call),
// and the next call succeeds on a new one.
func TestCallCancelled(t *testing.T) {
	release := make(chan struct{})
	var hold atomic.Bool
	a := startAgentWith(t, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if hold.Load() && r.URL.Path == "/v1/stage" {
				<-release
			}
			h.ServeHTTP(w, r)
		})
	}, func(*http.Server) {})
	defer close(release)
	c, x := a.client, ctx(t)
	if err := c.Warm(x); err != nil {
		t.Fatal(err)
	}
	hold.Store(true)
	cx, cancel := context.WithTimeout(x, 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := c.Stage(cx, fe, t1)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("stage past its deadline: %v, want the deadline's error", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("stage past its 100ms deadline returned after %s", d)
	}
	if n := c.sync.idleConns(); n != warmConns-1 {
		t.Fatalf("%d connections kept after the cancelled call, want %d (not its own)", n, warmConns-1)
	}
	hold.Store(false)
	if _, err := c.Stage(x, fe, t2); err != nil {
		t.Fatalf("stage after a cancelled call: %v", err)
	}
	if s, err := a.dp.Get(fe); err != nil || s.Staged != t2 {
		t.Fatalf("%+v %v, want %s staged", s, err, t2)
	}
}

// TestConcurrentCalls: calls made at once each take a connection of
// their own (one carries one call at a time); at most maxIdle are kept.
func TestConcurrentCalls(t *testing.T) {
	a := startAgentWith(t, nothing, func(*http.Server) {})
	c, x := a.client, ctx(t)
	var wg sync.WaitGroup
	errs := make([]error, 16)
	for i := range errs {
		wg.Go(func() {
			_, err := c.List(x)
			errs[i] = err
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	if n := c.sync.idleConns(); n < 1 || n > c.sync.maxIdle {
		t.Fatalf("%d connections kept, want 1 to %d", n, c.sync.maxIdle)
	}
	if n := counter(t, a.reg, "roam_agent_api_requests_total", "route", "services"); n != 16 {
		t.Fatalf("the agent served %v listings, want 16", n)
	}
}

// TestResendOnlyReplayable: the agent makes a call and then drops its
// kept connection before answering (it died, or closed the connection,
// right after the call: the controller cannot tell this from a
// connection closed while idle). A call that may be made twice is sent
// again on a new connection and succeeds: a stage (the second supersedes
// the first), a commit of a named generation (the second is a no-op). One
// that may not is not sent again, and its error says the connection
// broke: a remove (a second one would fail, or remove a frontend staged
// in between), a commit of "whatever is staged".
func TestResendOnlyReplayable(t *testing.T) {
	var drop sync.Map // path -> *atomic.Bool: drop the next call's answer
	dropNext := func(path string) {
		v, _ := drop.LoadOrStore(path, new(atomic.Bool))
		v.(*atomic.Bool).Store(true)
	}
	hangUp := hangUps(t)
	a := startAgentWith(t, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if v, ok := drop.Load(r.URL.Path); ok && v.(*atomic.Bool).CompareAndSwap(true, false) {
				h.ServeHTTP(httptest.NewRecorder(), r) // made; its answer lost
				hangUp(w)
				return
			}
			h.ServeHTTP(w, r)
		})
	}, func(*http.Server) {})
	c, x := a.client, ctx(t)
	served := func(route string) float64 { // whatever the answer's code
		mfs, err := a.reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		var n float64
		for _, mf := range mfs {
			if mf.GetName() != "roam_agent_api_requests_total" {
				continue
			}
			for _, m := range mf.GetMetric() {
				for _, l := range m.GetLabel() {
					if l.GetName() == "route" && l.GetValue() == route {
						n += m.GetCounter().GetValue()
					}
				}
			}
		}
		return n
	}
	if err := c.Warm(x); err != nil {
		t.Fatal(err)
	}

	dropNext("/v1/stage")
	gen, err := c.Stage(x, fe, t1)
	if err != nil {
		t.Fatalf("stage whose first answer was lost: %v", err)
	}
	if n := served("stage"); n != 2 {
		t.Fatalf("the agent made %v stages, want 2 (sent again)", n)
	}
	dropNext("/v1/commit")
	if err := c.Commit(x, fe, gen); err != nil {
		t.Fatalf("commit of generation %d whose first answer was lost: %v", gen, err)
	}
	if n := served("commit"); n != 2 {
		t.Fatalf("the agent made %v commits, want 2 (sent again)", n)
	}
	if s, err := a.dp.Get(fe); err != nil || s.Active != t1 {
		t.Fatalf("%+v %v, want active %s", s, err, t1)
	}

	if _, err := c.Stage(x, fe, t2); err != nil {
		t.Fatal(err)
	}
	dropNext("/v1/commit")
	if err := c.Commit(x, fe, 0); err == nil || !closedIdle(err) {
		t.Fatalf("commit of whatever is staged whose answer was lost: %v, want the broken connection's error", err)
	}
	if n := served("commit"); n != 3 {
		t.Fatalf("the agent made %v commits, want 3 (the one of generation 0 not sent again)", n)
	}
	if s, err := a.dp.Get(fe); err != nil || s.Active != t2 {
		t.Fatalf("%+v %v, want active %s (made once)", s, err, t2)
	}

	dropNext("/v1/services/" + fe.String())
	if s, err := c.Get(x, fe); err != nil || s.Active != t2 {
		t.Fatalf("get whose first answer was lost: %+v %v, want active %s (a read is sent again)", s, err, t2)
	}

	dropNext("/v1/remove")
	if err := c.Remove(x, fe); err == nil || !closedIdle(err) {
		t.Fatalf("remove whose answer was lost: %v, want the broken connection's error", err)
	}
	if n := served("remove"); n != 1 {
		t.Fatalf("the agent made %v removes, want 1 (not sent again)", n)
	}
	if _, err := a.dp.Get(fe); err == nil {
		t.Fatalf("%s still there after its remove was made", fe)
	}
}
