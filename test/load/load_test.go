package load

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/roamnet/roam/test/netns"
	"github.com/roamnet/roam/test/testport"
)

// server is an HTTP server on loopback that answers "cluster <name>", and a
// UDP responder on the same port that answers as roam's demo service does.
type server struct {
	name    atomic.Value // string
	http    *http.Server
	ln      net.Listener
	pc      net.PacketConn
	handler func(w http.ResponseWriter, r *http.Request) bool // true: handled
}

func startServer(t *testing.T, name string, opts ...func(*server)) *server {
	t.Helper()
	s := &server{}
	s.name.Store(name)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s.ln = ln
	pc, err := net.ListenPacket("udp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s.pc = pc
	s.http = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.handler != nil && s.handler(w, r) {
			return
		}
		fmt.Fprintf(w, "cluster %s (test)\n", s.name.Load())
	})}
	for _, o := range opts {
		o(s)
	}
	go func() { _ = s.http.Serve(ln) }()
	netns.ServePackets(pc, func(_ net.Addr, p []byte) []byte {
		return append(fmt.Appendf(nil, "cluster %s (test)\n", s.name.Load()), p...)
	})
	t.Cleanup(func() {
		_ = s.http.Close()
		_ = pc.Close()
	})
	return s
}

func (s *server) addr() string { return s.ln.Addr().String() }

func allKinds(addr string) []Client {
	return []Client{
		{Kind: Short, Addr: addr, Interval: 5 * time.Millisecond},
		{Kind: KeepAlive, Addr: addr, Conns: 8, Interval: time.Millisecond},
		{Kind: UDP, Addr: addr, Interval: 5 * time.Millisecond},
	}
}

func TestEveryKindCountsAndSaysWhoAnswered(t *testing.T) {
	s := startServer(t, "a")
	l, err := Start(context.Background(), Config{Clients: allKinds(s.addr())})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := l.WaitServedBy(ctx, "a", 20); err != nil {
		t.Fatal(err)
	}
	rep := l.Stop()
	rep.Print(testWriter{t}, 5)
	for _, k := range Kinds {
		kr := rep.Kinds[k]
		if kr.Requests < 20 || kr.Failed != 0 || kr.OK != kr.Requests || kr.ServedBy["a"] != kr.OK {
			t.Errorf("%s: %+v", k, kr)
		}
		if kr.P99 <= 0 || kr.P99 < kr.P50 || kr.Max < kr.P99 {
			t.Errorf("%s: latency p50 %v p99 %v max %v", k, kr.P50, kr.P99, kr.Max)
		}
	}
	if d := rep.Kinds[KeepAlive].Dials; d != 8 {
		t.Errorf("keep-alive client opened %d connections, want 8 (one per worker, kept)", d)
	}
	if kr := rep.Kinds[Short]; kr.Dials < kr.Requests {
		t.Errorf("short client: %d connections for %d requests, want one each", kr.Dials, kr.Requests)
	}
	if rep.Failed() != 0 || rep.Requests() < 60 {
		t.Errorf("total: %d requests, %d failed", rep.Requests(), rep.Failed())
	}
}

// TestKeepAliveReconnectsAndRetries: a server that answers with
// "Connection: close" makes the keep-alive client open a new connection for
// its next request, without a failure; a server that closes a reused
// connection under a request makes Go's transport retry it on a new one,
// counted as retried, not failed.
func TestKeepAliveReconnectsAndRetries(t *testing.T) {
	type connKey struct{}
	var conns atomic.Int64
	s := startServer(t, "a", func(s *server) {
		s.http.ConnContext = func(ctx context.Context, c net.Conn) context.Context {
			return context.WithValue(ctx, connKey{}, &[2]int64{conns.Add(1), 0})
		}
		s.handler = func(w http.ResponseWriter, r *http.Request) bool {
			c := r.Context().Value(connKey{}).(*[2]int64)
			c[1]++
			switch {
			case c[0]%2 == 0: // answer and close
				w.Header().Set("Connection", "close")
				return false
			case c[1] == 1: // answer, keep the connection
				return false
			}
			// Close the reused connection without an answer: the client sent
			// its request on a connection the server was closing.
			hj, ok := w.(http.Hijacker)
			if !ok {
				t.Error("no hijacker")
				return false
			}
			c2, _, err := hj.Hijack()
			if err == nil {
				_ = c2.Close()
			}
			return true
		}
	})
	l, err := Start(context.Background(), Config{Clients: []Client{{Kind: KeepAlive, Addr: s.addr(), Conns: 2}}})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	rep := l.Stop()
	kr := rep.Kinds[KeepAlive]
	t.Logf("%+v", kr)
	if kr.Requests < 20 || kr.Failed != 0 {
		t.Errorf("keep-alive: %d requests, %d failed (%v)", kr.Requests, kr.Failed, kr.Failures)
	}
	if kr.Retried == 0 || kr.Dials < kr.Requests/3 {
		t.Errorf("keep-alive: %d retried, %d connections for %d requests: want retries and reconnections", kr.Retried, kr.Dials, kr.Requests)
	}
}

func TestFailuresBelongToTheOutageTheyOverlap(t *testing.T) {
	l := &Load{cfg: Config{Timeout: time.Second}, kinds: map[Kind]*counts{Short: {served: map[string]int{}, hist: newHist()}}}
	t0 := time.Now()
	l.outages = []*outage{
		{name: "cut", start: t0.Add(10 * time.Second), end: t0.Add(20 * time.Second)},
		{name: "open", start: t0.Add(60 * time.Second)},
	}
	fail := func(at time.Duration) {
		l.record(context.Background(), result{kind: Short, sent: t0.Add(at), err: errors.New("boom")})
	}
	fail(5 * time.Second)                       // before: gave up at 6s
	fail(9*time.Second + 500*time.Millisecond)  // in flight at the cut
	fail(15 * time.Second)                      // during
	fail(20 * time.Second)                      // sent at the end
	fail(20*time.Second + 100*time.Millisecond) // after
	fail(59*time.Second + 100*time.Millisecond) // in flight at the second's start
	fail(100 * time.Second)                     // during the open one
	l.record(context.Background(), result{kind: Short, sent: t0, cluster: "a"})
	rep := l.Report()
	kr := rep.Kinds[Short]
	var got []string
	for _, f := range kr.Failures {
		got = append(got, f.Outage)
	}
	want := []string{"", "cut", "cut", "cut", "", "open", "open"}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("owners %q, want %q", got, want)
	}
	if kr.Requests != 8 || kr.OK != 1 || kr.Failed != 2 || kr.FailedOutage != 5 {
		t.Errorf("report %+v", kr)
	}
	if rep.Outages[0].Failed != 3 || rep.Outages[1].Failed != 2 {
		t.Errorf("outages %+v", rep.Outages)
	}
}

func TestOutageEndsOnce(t *testing.T) {
	s := startServer(t, "a")
	l, err := Start(context.Background(), Config{Clients: allKinds(s.addr())[:1]})
	if err != nil {
		t.Fatal(err)
	}
	end := l.Outage("x")
	end()
	first := l.Report().Outages[0].End
	time.Sleep(5 * time.Millisecond)
	end()
	rep := l.Stop()
	if len(rep.Outages) != 1 || rep.Outages[0].End != first || first.IsZero() {
		t.Errorf("outages %+v", rep.Outages)
	}
}

func TestWaitServedByFollowsTheAnswer(t *testing.T) {
	s := startServer(t, "a")
	l, err := Start(context.Background(), Config{Clients: allKinds(s.addr())})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := l.WaitServedBy(ctx, "a", 5); err != nil {
		t.Fatal(err)
	}
	s.name.Store("b")
	if err := l.WaitServedBy(ctx, "b", 5); err != nil {
		t.Fatal(err)
	}
	short, cancel2 := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel2()
	if err := l.WaitServedBy(short, "a", 1); err == nil {
		t.Error("served by a again")
	}
	if err := l.WaitServedBy(ctx, "b", 1, UDP); err != nil {
		t.Fatal(err)
	}
}

func TestStopDoesNotCountCutRequests(t *testing.T) {
	stuck := make(chan struct{})
	s := startServer(t, "a", func(s *server) {
		s.handler = func(w http.ResponseWriter, r *http.Request) bool {
			<-stuck
			return false
		}
	})
	l, err := Start(context.Background(), Config{Clients: []Client{{Kind: Short, Addr: s.addr(), Interval: 5 * time.Millisecond}}, Timeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	rep := l.Stop()
	close(stuck)
	if kr := rep.Kinds[Short]; kr.Requests != 0 || kr.Failed != 0 {
		t.Errorf("requests cut by Stop counted: %+v", kr)
	}
}

func TestUnansweredRequestsFail(t *testing.T) {
	// A UDP port nobody answers and a TCP port nobody listens on.
	pc := testport.ListenPacket(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().String()
	ln.Close()
	l, err := Start(context.Background(), Config{Timeout: 100 * time.Millisecond, Clients: []Client{
		{Kind: UDP, Addr: pc.LocalAddr().String(), Interval: 10 * time.Millisecond},
		{Kind: Short, Addr: closed, Interval: 10 * time.Millisecond},
	}})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(400 * time.Millisecond)
	rep := l.Stop()
	for _, k := range []Kind{UDP, Short} {
		if kr := rep.Kinds[k]; kr.Failed == 0 || kr.OK != 0 || kr.Failed != kr.Requests {
			t.Errorf("%s: %+v", k, kr)
		}
	}
}

func TestStartRejectsBadConfig(t *testing.T) {
	for _, cfg := range []Config{
		{},
		{Clients: []Client{{Kind: "tcp", Addr: "127.0.0.1:1"}}},
		{Clients: []Client{{Kind: Short, Addr: "nowhere"}}},
		{Clients: []Client{{Kind: Short, Addr: "127.0.0.1:1"}, {Kind: Short, Addr: "127.0.0.1:2"}}},
	} {
		if l, err := Start(context.Background(), cfg); err == nil {
			l.Stop()
			t.Errorf("Start(%+v) accepted", cfg)
		}
	}
}

const wrkOutput = `Running 2s test @ http://172.16.1.2/
  2 threads and 8 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   310.12us  120.33us   5.01ms   91.23%
    Req/Sec    12.31k     1.02k   14.20k    70.00%
  Latency Distribution
     50%  290.00us
     75%  340.00us
     90%  410.00us
     99%    1.20ms
  48996 requests in 2.00s, 6.12MB read
  Socket errors: connect 0, read 48, write 1, timeout 2
  Non-2xx or 3xx responses: 3
Requests/sec:  24498.12
Transfer/sec:      3.06MB
`

func TestParseWrk(t *testing.T) {
	r, err := ParseWrk(wrkOutput)
	if err != nil {
		t.Fatal(err)
	}
	if r.Requests != 48996 || r.Duration != 2*time.Second || r.ReadErrors != 48 || r.WriteErrors != 1 ||
		r.Timeouts != 2 || r.Non2xx != 3 || r.Errors() != 54 || r.P50 != 290*time.Microsecond ||
		r.P99 != 1200*time.Microsecond || r.RequestsPerSec != 24498.12 {
		t.Errorf("parsed %+v", r)
	}
	if _, err := ParseWrk("wrk: command not found"); err == nil {
		t.Error("garbage parsed")
	}
	args := strings.Join(Wrk{URL: "http://x/", Conns: 8, Duration: 3 * time.Second, Header: "Connection: close"}.Args(), " ")
	if args != "-t2 -c8 -d3s --timeout 2s --latency -H Connection: close http://x/" {
		t.Errorf("args %q", args)
	}
}

// TestWrkRuns runs the real wrk against a loopback server.
func TestWrkRuns(t *testing.T) {
	if _, err := exec.LookPath("wrk"); err != nil {
		t.Fatal("wrk not found: install Debian's wrk package (make deps)")
	}
	s := startServer(t, "a")
	r, err := Wrk{URL: "http://" + s.addr() + "/", Conns: 4, Duration: time.Second}.Run(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s: %d requests, %.0f/s, p99 %v", r.Command, r.Requests, r.RequestsPerSec, r.P99)
	if r.Requests == 0 || r.Errors() != 0 || r.P99 == 0 {
		t.Errorf("wrk: %+v", r)
	}
	// Stopped early, it still reports.
	run, err := Wrk{URL: "http://" + s.addr() + "/", Conns: 4, Duration: time.Hour}.Start(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	r, err = run.Stop()
	if err != nil {
		t.Fatal(err)
	}
	if r.Requests == 0 || r.Errors() != 0 || r.Duration > 5*time.Second {
		t.Errorf("wrk stopped: %+v", r)
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func TestServedBy(t *testing.T) {
	for in, want := range map[string]string{"cluster home\n": "home", "cluster edge (foreign copy)": "edge", "hello": "",
		"cluster cloud (node)\nroam-load 7\n": "cloud"} {
		if got := ServedBy(in); got != want {
			t.Errorf("ServedBy(%q) = %q", in, got)
		}
	}
}
