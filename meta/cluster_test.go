package meta

import (
	"context"
	"fmt"
	"math"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/roamnet/roam/test/testport"
)

// startCluster starts n MO replicas, each embedding one node of a NATS
// cluster (routes on loopback, random ports), and waits until all serve.
func startCluster(t *testing.T, n int, tune func(*ServerConfig)) []*Server {
	t.Helper()
	ports := testport.N(t, n)
	var routes []string
	for _, p := range ports {
		routes = append(routes, "nats://127.0.0.1:"+strconv.Itoa(p))
	}
	out := make([]*Server, n)
	for i := range n {
		cfg := ServerConfig{Name: "mo" + strconv.Itoa(i), Listen: "127.0.0.1:0", Logger: quietLogger(), WarmUp: time.Millisecond,
			Cluster: &ClusterConfig{Name: "roam-test", Listen: "127.0.0.1:" + strconv.Itoa(ports[i]), Routes: routes}}
		if tune != nil {
			tune(&cfg)
		}
		s, err := NewServer(cfg)
		if err != nil {
			t.Fatalf("start replica %d: %v", i, err)
		}
		t.Cleanup(func() { s.Close() })
		out[i] = s
	}
	wctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	for _, s := range out {
		if err := s.WaitServing(wctx); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

func urls(ss []*Server) string {
	var u []string
	for _, s := range ss {
		u = append(u, s.ClientURL())
	}
	return strings.Join(u, ",")
}

func publishHellos(t *testing.T, nc *nats.Conn, hs ...Hello) {
	t.Helper()
	for _, h := range hs {
		b, _ := jsonMarshal(h)
		if err := nc.Publish(HelloSubject(h.ClusterID), b); err != nil {
			t.Fatal(err)
		}
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
}

// TestClusterOfThree: three nodes clustered by nats-server itself; the
// bucket and the audit stream have three replicas; the three MO replicas
// are in the queue group and each answers; reservations spread concurrent
// placements.
func TestClusterOfThree(t *testing.T) {
	ss := startCluster(t, 3, nil)
	nc := connect(t, urls(ss))
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{viewStream, AuditStream} {
		st, err := js.Stream(ctx(t), name)
		if err != nil {
			t.Fatal(err)
		}
		info := st.CachedInfo()
		if info.Config.Replicas != 3 || info.Cluster == nil || len(info.Cluster.Replicas) != 2 {
			t.Fatalf("stream %s: replicas %d, cluster %+v", name, info.Config.Replicas, info.Cluster)
		}
	}
	for _, s := range ss {
		if s.Replicas() != 3 {
			t.Fatalf("%s: replicas %d", s.Name(), s.Replicas())
		}
	}
	publishHellos(t, nc, testHello("a", TierEdge, 4000, 0), testHello("b", TierEdge, 4000, 1000))
	waitFor(t, "every replica knows both clusters", func() bool {
		for _, s := range ss {
			if s.Registry().Len() != 2 {
				return false
			}
		}
		return true
	})
	c := newClient(t, nc, "req", WithoutCache())
	by := map[string]int{}
	for i := 0; i < 200 && len(by) < 3; i++ {
		req := testRequest("req", Constraints{})
		req.RequestID = "r" + strconv.Itoa(i)
		rep, err := c.Place(ctx(t), req)
		if err != nil || rep.Local || !rep.OK() {
			t.Fatalf("placement %d: %+v %v", i, rep, err)
		}
		by[rep.DecidedBy]++
	}
	if len(by) != 3 {
		t.Fatalf("not every replica answered: %v", by)
	}
	// 100 identical placements at once, spread over the three replicas,
	// onto 10 identical clusters: reservations (each replica's own at
	// once, the others' through the audit stream) keep any cluster under
	// 1.5 times its fair share, and every replica ends up holding all 100
	// reservations.
	t.Run("reservations under concurrency", func(t *testing.T) {
		var hs []Hello
		for i := range 10 {
			h := testHello("c"+strconv.Itoa(i), TierCloud, 64000, 0)
			h.Capacity = Capacity{MilliCPU: 64000, MemoryMB: 65536, Pods: 1000}
			hs = append(hs, h)
		}
		publishHellos(t, nc, hs...)
		waitFor(t, "every replica knows the clusters", func() bool {
			for _, s := range ss {
				if s.Registry().Len() != 2+len(hs) {
					return false
				}
			}
			return true
		})
		var mu sync.Mutex
		by := map[string]int{}
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := range 100 {
			c := newClient(t, nc, "req"+strconv.Itoa(i), WithoutCache())
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				req := testRequest(c.ClusterID(), Constraints{WantTiers: []string{TierCloud}})
				req.RequestID = "" // the client picks a unique one
				rep, err := c.Place(context.Background(), req)
				mu.Lock()
				defer mu.Unlock()
				if err != nil || rep.Local || !rep.OK() {
					t.Errorf("placement: %+v %v", rep, err)
					return
				}
				by[rep.Destination.ClusterID]++
			}()
		}
		close(start)
		wg.Wait()
		total := 0
		for id, n := range by {
			total += n
			if n > 15 {
				t.Errorf("%s got %d of 100 placements (fair share 10, at most 15): %v", id, n, by)
			}
		}
		if total != 100 {
			t.Fatalf("%d placements counted: %v", total, by)
		}
		waitFor(t, "every replica holds the 100 reservations", func() bool {
			for _, s := range ss {
				n := int64(0)
				for _, h := range hs {
					c, _, _ := s.Registry().Get(time.Now(), h.ClusterID)
					n += c.Reserved.Pods
				}
				if n != 100 {
					return false
				}
			}
			return true
		})
		// A hello that shows some of them ends them everywhere.
		var placed []string
		for id, rv := range ss[0].Registry().resv {
			if rv.dest == "c3" {
				placed = append(placed, id)
			}
		}
		h := hs[3]
		h.Seq, h.Placed = 2, placed
		publishHellos(t, nc, h)
		waitFor(t, "c3's reservations ended", func() bool {
			for _, s := range ss {
				if c, _, _ := s.Registry().Get(time.Now(), "c3"); c.Reserved != (Reserved{}) {
					return false
				}
			}
			return true
		})

	})
}

// TestFailoverKillsNodeAndReplica: under a steady placement load from
// requesters connected to every node, one node and the MO replica in it
// die at once (the embedded server shuts down: every connection to it
// drops). No placement fails or falls back to a local decision; the
// survivors keep the bucket writable (three replicas: quorum holds).
func TestFailoverKillsNodeAndReplica(t *testing.T) {
	ss := startCluster(t, 3, nil)
	seed := connect(t, urls(ss))
	var hs []Hello
	for i := range 20 {
		h := testHello("c"+strconv.Itoa(i), TierEdge, 1<<30, int64(i*1000))
		h.Capacity.Pods, h.Capacity.MemoryMB = 1<<30, 1<<30
		hs = append(hs, h)
	}
	publishHellos(t, seed, hs...)
	waitFor(t, "every replica knows the clusters", func() bool {
		for _, s := range ss {
			if s.Registry().Len() != len(hs) {
				return false
			}
		}
		return true
	})
	// Keep the clusters alive: hellos every 200ms from a connection to a
	// node that stays.
	helloConn := connect(t, ss[2].ClientURL(), nats.MaxReconnects(-1))
	defer keepHelloing(helloConn, 200*time.Millisecond, 10, hs...)()

	// Requesters: one connected first to each node (each fails over to
	// the others).
	type result struct{ ok, local, failed, during int }
	var mu sync.Mutex
	var res result
	var killed, done = make(chan struct{}), make(chan struct{})
	var wg sync.WaitGroup
	for i, s := range ss {
		nc, err := nats.Connect(s.ClientURL()+","+urls(ss), nats.DontRandomize(), nats.MaxReconnects(-1),
			nats.ReconnectWait(50*time.Millisecond), nats.Timeout(5*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		c := newClient(t, nc, "req"+strconv.Itoa(i), WithoutCache(), WithTimeout(500*time.Millisecond), WithRetries(5), WithBackoff(20*time.Millisecond))
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; ; n++ {
				select {
				case <-done:
					return
				default:
				}
				req := testRequest(c.ClusterID(), Constraints{})
				req.RequestID = fmt.Sprintf("%s-%d", c.ClusterID(), n)
				rep, err := c.Place(context.Background(), req)
				mu.Lock()
				switch {
				case err != nil:
					res.failed++
					t.Errorf("placement %s: %v", req.RequestID, err)
				case rep.Local:
					res.local++
				case !rep.OK():
					res.failed++
					t.Errorf("placement %s: no placement: %s", req.RequestID, rep.NoPlacement)
				default:
					res.ok++
				}
				select {
				case <-killed:
					res.during++
				default:
				}
				mu.Unlock()
				time.Sleep(5 * time.Millisecond)
			}
		}()
	}
	waitFor(t, "steady load", func() bool { mu.Lock(); defer mu.Unlock(); return res.ok >= 60 })
	ss[0].kill()
	close(killed)
	waitFor(t, "load after the kill", func() bool { mu.Lock(); defer mu.Unlock(); return res.during >= 200 })
	close(done)
	wg.Wait()
	if res.failed != 0 || res.local != 0 {
		t.Fatalf("across the failover: %d placed, %d failed, %d local decisions", res.ok, res.failed, res.local)
	}
	// The survivors still write the compact view: a new cluster shows up.
	publishHellos(t, helloConn, testHello("late", TierCloud, 1000, 0))
	view := newClient(t, connect(t, ss[1].ClientURL()), "viewer")
	waitFor(t, "the new cluster in the view", func() bool {
		for _, h := range view.Clusters() {
			if h.ClusterID == "late" {
				return true
			}
		}
		return false
	})
}

// TestWarmUpGating: a replica that starts while the compact view holds
// clusters last seen long ago (so that, restored alone, it would find them
// all down) does not join the queue group until it has heard a round of
// hellos; meanwhile every request is answered, and placed, by the warm
// replica. Once it serves, it places too, from the warm view.
func TestWarmUpGating(t *testing.T) {
	ns := startNATS(t)
	const iv = time.Second // long enough for a loaded machine not to miss a hello
	mo1 := startServer(t, ServerConfig{Name: "mo1", NATSURL: ns.ClientURL(), HelloInterval: iv, ReservationTTL: -1})
	nc := connect(t, ns.ClientURL())
	h := testHello("a", TierEdge, 4000, 0)
	publishHellos(t, nc, h)
	// The view holds a; then a stays silent long enough to be down.
	viewer := newClient(t, nc, "viewer")
	waitFor(t, "a in the view", func() bool { return len(viewer.Clusters()) == 1 })
	waitFor(t, "a down", func() bool { _, st, _ := mo1.Registry().Get(time.Now(), "a"); return st == StateDown })
	// a speaks again, every interval, from now on.
	defer keepHelloing(nc, iv, 2, h)()
	waitFor(t, "a alive at mo1", func() bool { _, st, _ := mo1.Registry().Get(time.Now(), "a"); return st == StateAlive })

	const warmUp = 3 * time.Second
	started := time.Now() // mo2's warm-up starts after this
	mo2, err := NewServer(ServerConfig{Name: "mo2", NATSURL: ns.ClientURL(), HelloInterval: iv, WarmUp: warmUp, ReservationTTL: -1, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mo2.Close() })
	c := newClient(t, nc, "req", WithoutCache())
	// mo2 subscribes to the queue group inside its join, a moment before
	// Serving reports it, so a request sent just after Serving said false
	// may be answered by mo2: that is fine once mo2 is warm. What must never
	// happen is an answer from mo2 before its warm-up has passed.
	asked := 0
	for !mo2.Serving() {
		rep, err := c.Place(ctx(t), testRequest("req", Constraints{}))
		asked++
		if err != nil || !rep.OK() {
			t.Fatalf("request %d while mo2 warms up: %+v %v", asked, rep, err)
		}
		if rep.DecidedBy != "mo1" {
			if rep.DecidedBy != "mo2" || time.Since(started) < warmUp || !mo2.Serving() {
				t.Fatalf("request %d answered by %s %v after mo2 started (warm-up %v, serving %v): %+v",
					asked, rep.DecidedBy, time.Since(started), warmUp, mo2.Serving(), rep)
			}
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if asked < 10 {
		t.Fatalf("only %d requests during mo2's %v warm-up: the gate was not exercised", asked, warmUp)
	}
	if err := mo2.WaitServing(ctx(t)); err != nil {
		t.Fatal(err)
	}
	// mo1 goes: mo2 alone answers, from its warm view.
	mo1.kill()
	for i := range 20 {
		rep, err := c.Place(ctx(t), testRequest("req", Constraints{}))
		if err != nil || !rep.OK() || rep.DecidedBy != "mo2" {
			t.Fatalf("request %d to mo2 alone: %+v %v", i, rep, err)
		}
	}
}

// TestWarmUpRound is the gating rule on its own, with a fake clock.
func TestWarmUpRound(t *testing.T) {
	var st servingState
	st.init()
	t0 := time.Unix(1000, 0)
	w := time.Second
	check := func(now time.Time, want bool) {
		t.Helper()
		if got, _ := st.warmLocked(now, w); got != want {
			t.Fatalf("at %v: warm %v, want %v", now.Sub(t0), got, want)
		}
	}
	st.connected(true, true, t0)
	check(t0.Add(time.Hour), false) // not restored yet
	st.restoredNow()
	check(t0.Add(999*time.Millisecond), false)
	check(t0.Add(w), true)
	// The hello connection drops: cold at once; back at t0+5s: a new round.
	st.connected(false, true, t0.Add(4*time.Second))
	check(t0.Add(4*time.Second), false)
	st.connected(true, true, t0.Add(5*time.Second))
	check(t0.Add(5*time.Second+999*time.Millisecond), false)
	check(t0.Add(6*time.Second), true)
	// The placement connection drops: cold; back: no new round needed.
	st.connected(true, false, t0.Add(7*time.Second))
	check(t0.Add(7*time.Second), false)
	st.connected(true, true, t0.Add(8*time.Second))
	check(t0.Add(8*time.Second), true)
}

// startNATS starts a plain NATS server with JetStream, as an external
// NATS for MO replicas.
func startNATS(t testing.TB) *server.Server {
	t.Helper()
	return startSmallNATS(t, 0)
}

// TestCompactView: controllers follow one summary per cluster, written
// when something a placement reads changes, not at every hello; a state
// change reaches them; a cluster's credentials can read the view but not
// write it.
func TestCompactView(t *testing.T) {
	auth := &AuthConfig{Clusters: []ClusterCredentials{{ID: "c1", Password: "p1"}, {ID: "x", Password: "px"}}}
	const iv = time.Second // long enough for a loaded machine not to miss a hello
	s := startServer(t, ServerConfig{Auth: auth, HelloInterval: iv})
	asyncErr := make(chan error, 16)
	nc := connect(t, s.ClientURL(), append(ClusterConnectOptions("c1", "p1"),
		errorsTo(asyncErr))...)
	c := newClient(t, nc, "c1")
	xc := connect(t, s.ClientURL(), ClusterConnectOptions("x", "px")...)
	x, err := NewClient(xc, "x", WithoutCache())
	if err != nil {
		t.Fatal(err)
	}
	h := testHello("x", TierEdge, 4000, 0)
	h.Seq = 0
	written := func() float64 {
		return metricValue(t, s, "roam_meta_view_writes_total", map[string]string{"result": "written"})
	}
	if err := x.PublishHello(ctx(t), h); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "x in c1's view", func() bool {
		st := c.ClusterStates()
		return len(st) == 1 && st[0].Hello.ClusterID == "x" && st[0].State == "alive"
	})
	base := written()
	// 30 hellos over 1.5 s (many flushes and a liveness sweep), nothing
	// material changes: no write (the next refresh is 30 intervals away).
	// They keep x alive: a pause of 1.5 intervals after the last would
	// make it suspect, a state change, rightly written.
	for range 30 {
		if err := x.PublishHello(ctx(t), h); err != nil {
			t.Fatal(err)
		}
		time.Sleep(iv / 20)
	}
	waitFor(t, "hellos taken in", func() bool {
		return metricValue(t, s, "roam_meta_hellos_total", map[string]string{"result": "accepted"}) == 31
	})
	time.Sleep(5 * viewFlushEvery) // flushes after the last hello
	if n := written() - base; n != 0 {
		t.Fatalf("%v summaries written for 30 unchanged hellos", n)
	}
	// Load up by half: rewritten, and the view shows it.
	h.Capacity.UsedMilliCPU = 2000
	if err := x.PublishHello(ctx(t), h); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "new load in the view", func() bool {
		st := c.ClusterStates()
		return len(st) == 1 && st[0].Hello.Capacity.UsedMilliCPU == 2000
	})
	// x goes silent: the view says down.
	waitFor(t, "x down in the view", func() bool {
		st := c.ClusterStates()
		return len(st) == 1 && st[0].State == "down"
	})
	// c1 may not write the view (nor read hellos).
	if err := nc.Publish("$KV."+KVBucket+".x", []byte("{}")); err != nil {
		t.Fatal(err)
	}
	if _, err := nc.SubscribeSync(SubjectHelloAll); err != nil {
		t.Fatal(err)
	}
	for range 2 { // either order
		wantPermissionError(t, asyncErr, "c1 writing the view or reading hellos")
	}
	select {
	case err := <-asyncErr:
		t.Fatalf("unexpected async error (the view's permissions?): %v", err)
	default:
	}
}

// TestSharedReservations: a placement decided by one replica counts at
// the others (through the audit stream), and a replica started later
// learns it too.
func TestSharedReservations(t *testing.T) {
	ns := startNATS(t)
	mo1 := startServer(t, ServerConfig{Name: "mo1", NATSURL: ns.ClientURL()})
	nc := connect(t, ns.ClientURL())
	publishHellos(t, nc, testHello("a", TierEdge, 4000, 0))
	waitFor(t, "a known", func() bool { return mo1.Registry().Len() == 1 })
	c := newClient(t, nc, "req", WithoutCache())
	rep, err := c.Place(ctx(t), testRequest("req", Constraints{}))
	if err != nil || !rep.OK() || rep.DecidedBy != "mo1" {
		t.Fatalf("%+v %v", rep, err)
	}
	mo2 := startServer(t, ServerConfig{Name: "mo2", NATSURL: ns.ClientURL()})
	h := testHello("a", TierEdge, 4000, 0)
	h.Seq = 2
	publishHellos(t, nc, h) // a's next hello (its hellos do not stop)
	waitFor(t, "mo2 holds mo1's reservation", func() bool {
		a, _, ok := mo2.Registry().Get(time.Now(), "a")
		return mo2.Registry().Reservations() == 1 && ok && a.Reserved.MilliCPU == 500
	})
	// mo2 was delivered mo1's batch; mo1, which published it before, was
	// not delivered it at all (its follower's filters leave it out), and
	// mo2 was not delivered batches of its own either.
	req2 := testRequest("req2", Constraints{})
	req2.RequestID = "r2"
	rep, err = newClient(t, nc, "req2", WithoutCache()).Place(ctx(t), req2)
	if err != nil || !rep.OK() {
		t.Fatalf("%+v %v", rep, err)
	}
	other := mo1
	if rep.DecidedBy == "mo1" {
		other = mo2
	}
	waitFor(t, "the other replica holds the second reservation", func() bool { return other.Registry().Reservations() == 2 })
	for _, mo := range []*Server{mo1, mo2} {
		if n := mo.auditOwnDelivered.Load(); n != 0 {
			t.Errorf("%s was delivered %d batches of its own", mo.name, n)
		}
	}
	if mo2.auditFollowed.Load() < 1 || other.auditFollowed.Load() < 1 {
		t.Errorf("followed batches: mo1 %d, mo2 %d", mo1.auditFollowed.Load(), mo2.auditFollowed.Load())
	}
}

// TestOneViewWriterPerCluster: three replicas take every hello, but a
// cluster's material change is written to the compact view once, by the
// cluster's writer (the replica that wrote its summary last), not by the
// three racing each other's compare-and-set (lost_race): the view's
// writes do not grow with the replicas. When the writer dies, another
// replica writes the cluster's changes after the grace, and becomes its
// writer.
func TestOneViewWriterPerCluster(t *testing.T) {
	const iv = 4 * time.Second // the owner's grace; no refresh (30 intervals) within the test
	ss := startCluster(t, 3, func(c *ServerConfig) { c.HelloInterval, c.ReservationTTL = iv, -1 })
	nc := connect(t, urls(ss))
	const n, rounds = 40, 5
	hs := make([]Hello, n)
	for i := range hs {
		hs[i] = testHello("w"+strconv.Itoa(i), TierEdge, 4000, 0)
	}
	publishHellos(t, nc, hs...)
	mark := func(s *Server, id string) (viewMark, bool) {
		v := s.view.Load()
		if v == nil {
			return viewMark{}, false
		}
		v.mu.Lock()
		defer v.mu.Unlock()
		m, ok := v.marks[id]
		return m, ok
	}
	// inView: every replica (of ss) has seen the bucket hold load for
	// each of hs, written by one replica they agree on.
	inView := func(ss []*Server, hs []Hello) bool {
		for _, h := range hs {
			by := ""
			for _, s := range ss {
				m, ok := mark(s, h.ClusterID)
				if !ok || m.by == "" || math.Abs(m.load-h.Capacity.Load()) > 1e-9 || by != "" && m.by != by {
					return false
				}
				by = m.by
			}
		}
		return true
	}
	waitFor(t, "every cluster's first summary, seen by every replica", func() bool { return inView(ss, hs) })
	writes := func(result string) float64 {
		sum := 0.0
		for _, s := range ss {
			sum += metricValue(t, s, "roam_meta_view_writes_total", map[string]string{"result": result})
		}
		return sum
	}
	written0, lost0 := writes("written"), writes("lost_race")
	for r := range rounds {
		for i := range hs {
			hs[i].Seq++
			hs[i].Capacity.UsedMilliCPU = int64(3000 * ((r + 1) % 2)) // load 0.75, 0.25, ...
		}
		publishHellos(t, nc, hs...)
		waitFor(t, "round "+strconv.Itoa(r)+" in the view", func() bool { return inView(ss, hs) })
	}
	// Past the grace: a replica that deferred to the writer finds the
	// bucket up to date and writes nothing. An unchanged hello first
	// keeps the clusters alive meanwhile (a state change is rightly
	// written).
	for i := range hs {
		hs[i].Seq++
	}
	publishHellos(t, nc, hs...)
	time.Sleep(iv + iv/4)
	written, lost := writes("written")-written0, writes("lost_race")-lost0
	t.Logf("%d changes: %v summaries written, %v writes lost a race", n*rounds, written, lost)
	// Each change is written once, by the cluster's writer, which every
	// replica knows and which is alive: 0 writes lost, none twice. The
	// slack (2) is for a deferral's grace ending while the writer's write
	// of a newer change is in flight, which a slow run can make (the
	// rounds outlasting the grace): that replica's write then loses its
	// race, or, when it lands first, adds a write. A non-writer writing
	// again after the grace with a successful compare-and-set adds n.
	if written < n*rounds || written > n*rounds+2 {
		t.Fatalf("%v summaries written for %d changes", written, n*rounds)
	}
	if lost > 2 {
		t.Fatalf("%v writes lost a race for %d changes (%v written): the replicas write the same summaries", lost, n*rounds, written)
	}

	// The replica writing the most clusters dies: the survivors write
	// those clusters' next change after the grace.
	owned := map[string][]Hello{}
	for _, h := range hs {
		m, _ := mark(ss[0], h.ClusterID)
		owned[m.by] = append(owned[m.by], h)
	}
	victim := ss[0]
	for _, s := range ss {
		if len(owned[s.name]) > len(owned[victim.name]) {
			victim = s
		}
	}
	var survivors []*Server
	for _, s := range ss {
		if s != victim {
			survivors = append(survivors, s)
		}
	}
	mine := owned[victim.name]
	victim.kill()
	sc := connect(t, survivors[0].ClientURL())
	for i := range mine {
		mine[i].Seq += 10
		mine[i].Capacity.UsedMilliCPU = 2000 // load 0.5
	}
	publishHellos(t, sc, mine...)
	deadline := time.Now().Add(time.Minute) // a leader may be elected again first
	for !inView(survivors, mine) {
		if time.Now().After(deadline) {
			t.Fatalf("the %d clusters %s wrote are not written by the survivors after its death", len(mine), victim.name)
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, h := range mine {
		if m, _ := mark(survivors[0], h.ClusterID); m.by == victim.name {
			t.Fatalf("%s: still written by %s", h.ClusterID, victim.name)
		}
	}
}
