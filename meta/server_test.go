package meta

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	dto "github.com/prometheus/client_model/go"
)

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func startServer(t *testing.T, cfg ServerConfig) *Server {
	t.Helper()
	if cfg.Listen == "" && cfg.NATSURL == "" {
		cfg.Listen = "127.0.0.1:0"
	}
	if cfg.Logger == nil {
		cfg.Logger = quietLogger()
	}
	if cfg.WarmUp == 0 {
		// Tests about other things need not wait a hello round; the
		// warm-up has its own tests.
		cfg.WarmUp = time.Millisecond
	}
	s, err := NewServer(cfg)
	if err != nil {
		t.Fatalf("start meta server: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	if err := s.WaitServing(ctx(t)); err != nil {
		t.Fatal(err)
	}
	return s
}

func connect(t *testing.T, url string, opts ...nats.Option) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(url, append([]nats.Option{nats.Timeout(10 * time.Second)}, opts...)...)
	if err != nil {
		t.Fatalf("connect %s: %v", url, err)
	}
	t.Cleanup(nc.Close)
	return nc
}

func newClient(t *testing.T, nc *nats.Conn, id string, opts ...ClientOption) *Client {
	t.Helper()
	c, err := NewClient(nc, id, append([]ClientOption{WithLogger(quietLogger()), WithTimeout(10 * time.Second)}, opts...)...)
	if err != nil {
		t.Fatalf("new client %s: %v", id, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// every calls fn(1), fn(2), ... every iv in a goroutine until the
// returned stop is called; stop waits for the goroutine.
func every(iv time.Duration, fn func(n uint64)) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(iv)
		defer tick.Stop()
		for n := uint64(1); ; n++ {
			select {
			case <-done:
				return
			case <-tick.C:
			}
			fn(n)
		}
	}()
	return func() { close(done); wg.Wait() }
}

// keepHelloing publishes hs on nc every iv, Seq from seq up, until the
// returned stop is called (errors ignored: a connection may be failing
// over meanwhile).
func keepHelloing(nc *nats.Conn, iv time.Duration, seq uint64, hs ...Hello) (stop func()) {
	return every(iv, func(n uint64) {
		for _, h := range hs {
			h.Seq = seq + n - 1
			b, _ := jsonMarshal(h)
			_ = nc.Publish(HelloSubject(h.ClusterID), b)
		}
	})
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func metricValue(t *testing.T, s *Server, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := s.Gatherer().Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if v, ok := labels[lp.GetName()]; ok && v != lp.GetValue() {
					continue next
				}
			}
			return value(m)
		}
	}
	return -1
}

func value(m *dto.Metric) float64 {
	switch {
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	case m.Histogram != nil:
		return float64(m.Histogram.GetSampleCount())
	}
	return -1
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

func TestRegistrationAndMetrics(t *testing.T) {
	s := startServer(t, ServerConfig{HTTPAddr: "127.0.0.1:0"})
	nc := connect(t, s.ClientURL())
	c := newClient(t, nc, "c1")
	h := testHello("c1", TierEdge, 2000, 100)
	h.Seq = 0 // the client numbers it
	if err := c.PublishHello(ctx(t), h); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "c1 registered", func() bool { _, st, ok := s.Registry().Get(time.Now(), "c1"); return ok && st == StateAlive })
	got, _, _ := s.Registry().Get(time.Now(), "c1")
	if got.Hello.ControllerURL != h.ControllerURL || got.Hello.Tier != TierEdge || got.Hello.Seq == 0 {
		t.Fatalf("registered %+v", got.Hello)
	}
	if v := metricValue(t, s, "roam_meta_hellos_total", map[string]string{"result": "accepted"}); v != 1 {
		t.Fatalf("hellos accepted = %v", v)
	}
	// The client's cache sees its own hello too.
	waitFor(t, "client cache", func() bool { return len(c.Clusters()) == 1 })

	resp, err := http.Get("http://" + s.HTTPAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`roam_meta_clusters{state="alive"} 1`, `roam_meta_hellos_total{result="accepted"} 1`, "roam_meta_placement_seconds_bucket"} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	resp, err = http.Get("http://" + s.HTTPAddr() + "/healthz")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("healthz: %v %v", err, resp)
	}
	resp.Body.Close()
}

func TestLivenessOverNATS(t *testing.T) {
	s := startServer(t, ServerConfig{HelloInterval: 200 * time.Millisecond, DownAfter: 2})
	nc := connect(t, s.ClientURL())
	a := newClient(t, nc, "a")
	b := newClient(t, nc, "b")
	req := newClient(t, nc, "req")
	publish := func(c *Client) {
		h := testHello(c.ClusterID(), TierEdge, 4000, 0)
		h.Seq = 0
		if c.ClusterID() == "a" {
			h.Capacity.UsedMilliCPU = 0
			h.Capacity.MemoryMB = 65536 // a is clearly the least loaded
		}
		if err := c.PublishHello(ctx(t), h); err != nil {
			t.Fatal(err)
		}
	}
	publish(a)
	publish(b)
	waitFor(t, "both alive", func() bool { return s.Registry().Counts(time.Now())[StateAlive] == 2 })
	// Keep b alive; a goes silent and must become suspect, then down.
	defer every(50*time.Millisecond, func(uint64) { publish(b) })()
	// (The suspect step in between is checked with a fake clock in
	// TestRegistryLiveness; polling for it here would be flaky.)
	waitFor(t, "a down", func() bool {
		_, st, _ := s.Registry().Get(time.Now(), "a")
		return st == StateDown
	})
	// b may itself look suspect for a moment on a loaded machine: ask until
	// the MO picks it, and a must never be picked.
	var rep PlacementReply
	waitFor(t, "placement on b", func() bool {
		var err error
		pr := testRequest("req", Constraints{})
		pr.Explain = true
		rep, err = req.Place(ctx(t), pr)
		if err != nil {
			t.Fatal(err)
		}
		if rep.Local || (rep.OK() && rep.Destination.ClusterID == "a") {
			t.Fatalf("down cluster chosen or local decision: %+v", rep)
		}
		return rep.OK()
	})
	var whyA string
	for _, f := range rep.Filtered {
		if f.ClusterID == "a" {
			whyA = f.Why
		}
	}
	if !strings.HasPrefix(whyA, FilterDown) {
		t.Fatalf("a filtered for %q, want down", whyA)
	}
	// a comes back.
	publish(a)
	waitFor(t, "a alive again", func() bool { _, st, _ := s.Registry().Get(time.Now(), "a"); return st == StateAlive })
}

func TestPlacementOverNATS(t *testing.T) {
	s := startServer(t, ServerConfig{Policy: TierAware{}})
	nc := connect(t, s.ClientURL())
	deep := newClient(t, nc, "deep")
	for _, h := range []Hello{
		testHello("deep", TierDeepEdge, 1000, 1000, Link{Peer: "cloud", BandwidthMbps: 20, RTTMs: 40, Up: true},
			Link{Peer: "edge", BandwidthMbps: 400, RTTMs: 4, Up: true}),
		testHello("cloud", TierCloud, 64000, 0),
		testHello("edge", TierEdge, 4000, 0),
	} {
		b, _ := jsonMarshal(h)
		if err := nc.Publish(HelloSubject(h.ClusterID), b); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "three clusters", func() bool { return s.Registry().Len() == 3 })
	pr := testRequest("deep", Constraints{MinBandwidthMbps: 100})
	pr.ExplainClusters = []string{"cloud", "edge", "nowhere"}
	rep, err := deep.Place(ctx(t), pr)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Explained) != 2 || rep.Explained[0].ClusterID != "edge" || !strings.Contains(rep.Explained[0].Why, "the destination") ||
		rep.Explained[1].ClusterID != "nowhere" || !strings.HasPrefix(rep.Explained[1].Why, "unknown") {
		t.Fatalf("explained %+v", rep.Explained)
	}
	if !rep.OK() || rep.Destination.ClusterID != "edge" || rep.Destination.ControllerURL != "http://edge.example:8080" ||
		len(rep.Destination.DataAddrs) != 1 || rep.Policy != "tier" || rep.DecidedBy != s.Name() {
		t.Fatalf("reply %+v", rep)
	}
	var whyCloud string
	for _, f := range rep.Filtered {
		if f.ClusterID == "cloud" {
			whyCloud = f.Why
		}
	}
	if !strings.Contains(whyCloud, "20 Mbit/s from deep, 100 needed") {
		t.Fatalf("cloud filtered for %q", whyCloud)
	}
	// The MO counts right after replying: wait for it.
	waitFor(t, "placement counted", func() bool {
		return metricValue(t, s, "roam_meta_placements_total", map[string]string{"result": "placed"}) == 1 &&
			metricValue(t, s, "roam_meta_placement_seconds", nil) == 1
	})
	// An invalid request never leaves the client.
	bad := testRequest("deep", Constraints{})
	bad.Reason = "boredom"
	if _, err := deep.Place(ctx(t), bad); err == nil || !strings.Contains(err.Error(), "reason") {
		t.Fatalf("invalid reason: %v", err)
	}
}

// TestConcurrentRepliesKept: many placements at once from one client over
// NATS (run with -race), every reply kept. The client cuts a reply's
// strings from its message, and its destination and alternatives share
// one array: this holds only because nats gives each message a payload
// of its own. Each reply, as first read, must be unchanged after all the
// later calls.
func TestConcurrentRepliesKept(t *testing.T) {
	const callers, calls = 8, 40
	// No reservations: every call finds room.
	s := startServer(t, ServerConfig{ReservationTTL: -1})
	nc := connect(t, s.ClientURL())
	home := newClient(t, nc, "c0")
	for i := range 8 {
		h := testHello("c"+strconv.Itoa(i), TierCloud, 64000, int64(i*1000))
		b, _ := jsonMarshal(h)
		if err := nc.Publish(HelloSubject(h.ClusterID), b); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "eight clusters", func() bool { return s.Registry().Len() == 8 })
	type kept struct {
		id    string
		rep   PlacementReply
		first []byte // rep as json, right after it came
	}
	all := make([][]kept, callers)
	x := ctx(t)
	var wg sync.WaitGroup
	for g := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range calls {
				pr := testRequest("c0", Constraints{})
				// Ids of different lengths: the replies' bytes differ.
				pr.RequestID = "g" + strconv.Itoa(g) + "-" + strings.Repeat("x", (g*calls+i)%23) + "-" + strconv.Itoa(i)
				pr.ExplainClusters = []string{"c" + strconv.Itoa(i%8)}
				rep, err := home.Place(x, pr)
				if err != nil {
					t.Error(err)
					return
				}
				first, err := jsonMarshal(rep)
				if err != nil {
					t.Error(err)
					return
				}
				all[g] = append(all[g], kept{pr.RequestID, rep, first})
			}
		}()
	}
	wg.Wait()
	alternatives := 0
	for g := range all {
		if len(all[g]) != calls {
			t.Fatalf("caller %d kept %d replies, want %d", g, len(all[g]), calls)
		}
		for _, k := range all[g] {
			if !k.rep.OK() || k.rep.RequestID != k.id {
				t.Fatalf("reply to %s: %+v", k.id, k.rep)
			}
			now, err := jsonMarshal(k.rep)
			if err != nil {
				t.Fatal(err)
			}
			if string(now) != string(k.first) {
				t.Fatalf("reply to %s changed after later calls:\nfirst %s\nnow   %s", k.id, k.first, now)
			}
			alternatives += len(k.rep.Alternatives)
		}
	}
	if alternatives == 0 {
		t.Fatal("no reply had alternatives: the shared array is not exercised")
	}
}

func TestRestartKeepsClusters(t *testing.T) {
	dir := t.TempDir()
	s1 := startServer(t, ServerConfig{StoreDir: dir})
	nc := connect(t, s1.ClientURL(), nats.MaxReconnects(0))
	for _, id := range []string{"x1", "x2"} {
		h := testHello(id, TierCloud, 1000, 0)
		h.Seq = 10
		b, _ := jsonMarshal(h)
		if err := nc.Publish(HelloSubject(id), b); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "two clusters", func() bool { return s1.Registry().Len() == 2 })
	s1.Close()

	s2 := startServer(t, ServerConfig{StoreDir: dir})
	if n := s2.Registry().Len(); n != 2 {
		t.Fatalf("restarted MO knows %d clusters, want 2", n)
	}
	c, _, _ := s2.Registry().Get(time.Now(), "x2")
	if c.Hello.Tier != TierCloud || c.Hello.Seq != 10 {
		t.Fatalf("restored %+v", c.Hello)
	}
	// The restored sequence still rejects a replayed hello.
	nc2 := connect(t, s2.ClientURL())
	old := testHello("x1", TierEdge, 1000, 0)
	old.Seq = 9
	b, _ := jsonMarshal(old)
	if err := nc2.Publish(HelloSubject("x1"), b); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "stale hello counted", func() bool {
		return metricValue(t, s2, "roam_meta_hellos_total", map[string]string{"result": "stale"}) == 1
	})
}

func TestTwoReplicasServe(t *testing.T) {
	// Without reservations every request lands on p, whoever answers
	// (reservations have their own tests).
	s1 := startServer(t, ServerConfig{Name: "mo1", ReservationTTL: -1})
	s2 := startServer(t, ServerConfig{Name: "mo2", NATSURL: s1.ClientURL(), ReservationTTL: -1})
	nc := connect(t, s1.ClientURL())
	c := newClient(t, nc, "req")
	for _, id := range []string{"p", "q"} {
		b, _ := jsonMarshal(testHello(id, TierEdge, 1000, 0))
		if err := nc.Publish(HelloSubject(id), b); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "both replicas registered both clusters", func() bool {
		return s1.Registry().Len() == 2 && s2.Registry().Len() == 2
	})
	by := map[string]int{}
	for i := 0; i < 60 && len(by) < 2; i++ {
		rep, err := c.Place(ctx(t), testRequest("req", Constraints{}))
		if err != nil {
			t.Fatal(err)
		}
		if rep.Local || !rep.OK() || rep.Destination.ClusterID != "p" {
			t.Fatalf("reply %+v", rep)
		}
		by[rep.DecidedBy]++
	}
	if by["mo1"] == 0 || by["mo2"] == 0 {
		t.Fatalf("queue group did not share the load: %v", by)
	}
	// micro discovery sees two instances.
	m, err := nc.Request("$SRV.PING."+ServiceName, nil, 5*time.Second)
	if err != nil || !strings.Contains(string(m.Data), ServiceName) {
		t.Fatalf("micro ping: %v", err)
	}
}

func TestImpersonationRefused(t *testing.T) {
	auth := &AuthConfig{Clusters: []ClusterCredentials{{ID: "c1", Password: "p1"}, {ID: "c2", Password: "p2"}}}
	s := startServer(t, ServerConfig{Auth: auth})
	asyncErr := make(chan error, 16)
	nc := connect(t, s.ClientURL(), append(ClusterConnectOptions("c1", "p1"), errorsTo(asyncErr))...)
	c1 := newClient(t, nc, "c1")

	// c1 claims to be c2: the server refuses the publish.
	fake := testHello("c2", TierCloud, 1000, 0)
	b, _ := jsonMarshal(fake)
	if err := nc.Publish(HelloSubject("c2"), b); err != nil {
		t.Fatal(err)
	}
	wantPermissionError(t, asyncErr, "publishing as c2")
	// Its own hello goes through; c2 never appears.
	own := testHello("c1", TierEdge, 1000, 0)
	own.Seq = 0
	if err := c1.PublishHello(ctx(t), own); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "c1 registered", func() bool { _, _, ok := s.Registry().Get(time.Now(), "c1"); return ok })
	if _, _, ok := s.Registry().Get(time.Now(), "c2"); ok {
		t.Fatal("c2 registered from c1's credentials")
	}
	// Placement works for itself...
	rep, err := c1.Place(ctx(t), testRequest("c1", Constraints{}))
	if err != nil || rep.Local || rep.OK() {
		t.Fatalf("own placement: %+v %v (only c1 exists: no placement)", rep, err)
	}
	// ...and is refused when it claims to ask for c2.
	_, err = c1.Place(ctx(t), testRequest("c2", Constraints{}))
	var re *RemoteError
	if !errors.As(err, &re) || re.Code != CodeForbidden || !errors.Is(err, ErrRejected) {
		t.Fatalf("placement as c2: %v, want code %s", err, CodeForbidden)
	}
	// Wrong password: no connection at all.
	if nc, err := nats.Connect(s.ClientURL(), ClusterConnectOptions("c2", "wrong")...); err == nil {
		nc.Close()
		t.Fatal("connected with a wrong password")
	}
}

func TestMalformedMessages(t *testing.T) {
	s := startServer(t, ServerConfig{})
	nc := connect(t, s.ClientURL())
	for _, p := range [][]byte{[]byte("{"), []byte("null"), []byte(`{"v":1}`), []byte(`{"v":99,"cluster_id":"m"}`), make([]byte, MaxMessageSize+1)} {
		if err := nc.Publish(HelloSubject("m"), p); err != nil {
			t.Fatal(err)
		}
	}
	mismatch, _ := jsonMarshal(testHello("other", TierEdge, 1, 0))
	if err := nc.Publish(HelloSubject("m"), mismatch); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "malformed hellos counted", func() bool {
		return metricValue(t, s, "roam_meta_hellos_total", map[string]string{"result": "malformed"}) == 5 &&
			metricValue(t, s, "roam_meta_hellos_total", map[string]string{"result": "mismatch"}) == 1
	})
	if s.Registry().Len() != 0 {
		t.Fatalf("registry has %d clusters from bad hellos", s.Registry().Len())
	}
	for _, p := range [][]byte{[]byte("garbage"), []byte(`{"v":1,"request_id":"x","requester":"a.b"}`), nil} {
		m, err := nc.Request(SubjectPlace, p, 10*time.Second)
		if err != nil {
			t.Fatalf("request %q: %v", p, err)
		}
		if code := m.Header.Get(micro.ErrorCodeHeader); code != CodeBadRequest || m.Header.Get(micro.ErrorHeader) == "" {
			t.Fatalf("reply to %q: code %q desc %q", p, code, m.Header.Get(micro.ErrorHeader))
		}
	}
	if v := metricValue(t, s, "roam_meta_placements_total", map[string]string{"result": "bad_request"}); v != 3 {
		t.Fatalf("bad requests = %v", v)
	}
	// Still serving.
	c := newClient(t, nc, "ok")
	if rep, err := c.Place(ctx(t), testRequest("ok", Constraints{})); err != nil || rep.Local || rep.NoPlacement != "no cluster registered" {
		t.Fatalf("after bad input: %+v %v", rep, err)
	}
}

func TestClientFallbackToCache(t *testing.T) {
	s := startServer(t, ServerConfig{})
	nc := connect(t, s.ClientURL(), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	c := newClient(t, nc, "home", WithTimeout(2*time.Second), WithRetries(1), WithBackoff(10*time.Millisecond),
		WithLiveness(time.Hour, 3)) // the cache must not age out while the MO times out
	for _, h := range []Hello{testHello("busy", TierEdge, 1000, 900), testHello("idle", TierEdge, 1000, 0)} {
		b, _ := jsonMarshal(h)
		if err := nc.Publish(HelloSubject(h.ClusterID), b); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "cache and MO filled", func() bool { return len(c.Clusters()) == 2 && s.Registry().Len() == 2 })
	rep, err := c.Place(ctx(t), testRequest("home", Constraints{}))
	if err != nil || rep.Local || !rep.OK() || rep.Destination.ClusterID != "idle" {
		t.Fatalf("with the MO: %+v %v", rep, err)
	}
	bare := newClient(t, nc, "bare", WithoutCache(), WithTimeout(300*time.Millisecond), WithRetries(0))
	if len(bare.Clusters()) != 0 {
		t.Fatal("client without cache has clusters")
	}
	s.Close() // the MO and its NATS are gone
	if _, err := bare.Place(ctx(t), testRequest("bare", Constraints{})); err == nil || !strings.Contains(err.Error(), "no cache") {
		t.Fatalf("without cache and MO: %v, want an error", err)
	}
	rep, err = c.Place(ctx(t), testRequest("home", Constraints{}))
	if err != nil {
		t.Fatal(err)
	}
	if !rep.Local || rep.DecidedBy != "home" || !rep.OK() || rep.Destination.ClusterID != "idle" {
		t.Fatalf("fallback reply %+v", rep)
	}
	if c.LocalDecisions() != 1 {
		t.Fatalf("local decisions %d", c.LocalDecisions())
	}
	if hs := c.Clusters(); len(hs) != 2 || hs[0].ClusterID != "busy" || hs[1].ClusterID != "idle" {
		t.Fatalf("cached clusters %+v", hs)
	}
}

func jsonMarshal(v any) ([]byte, error) { return json.Marshal(v) }

func TestExplainEndpoint(t *testing.T) {
	s := startServer(t, ServerConfig{HTTPAddr: "127.0.0.1:0"})
	nc := connect(t, s.ClientURL())
	for _, h := range []Hello{testHello("big", TierEdge, 8000, 0), testHello("full", TierEdge, 1000, 1000), testHello("home", TierEdge, 1000, 0)} {
		b, _ := jsonMarshal(h)
		if err := nc.Publish(HelloSubject(h.ClusterID), b); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "three clusters", func() bool { return s.Registry().Len() == 3 })
	body, _ := jsonMarshal(testRequest("home", Constraints{}))
	resp, err := http.Post("http://"+s.HTTPAddr()+"/v1/explain", "application/json", strings.NewReader(string(body)))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %s", resp.Status)
	}
	var got []Verdict
	dec := json.NewDecoder(resp.Body)
	for dec.More() {
		var v Verdict
		if err := dec.Decode(&v); err != nil {
			t.Fatal(err)
		}
		got = append(got, v)
	}
	if len(got) != 3 || got[0].ClusterID != "big" || got[0].Filter != "" || got[0].Score <= 0 ||
		got[1].ClusterID != "full" || got[1].Filter != FilterCapacity || !strings.Contains(got[1].Why, "0 milli-CPU free, 500 needed") ||
		got[2].ClusterID != "home" || got[2].Filter != FilterRequester {
		t.Fatalf("verdicts %+v", got)
	}
	resp, err = http.Post("http://"+s.HTTPAddr()+"/v1/explain", "application/json", strings.NewReader("{"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("bad body: %s", resp.Status)
	}
}
