package meta

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strconv"
	"testing"
	"time"
)

func mustFrame(t *testing.T, h Hello) ([]byte, helloFrame) {
	t.Helper()
	b, err := json.Marshal(h)
	if err != nil {
		t.Fatal(err)
	}
	f, ok := frameHello(b)
	if !ok {
		t.Fatalf("frameHello refused %s", b)
	}
	return b, f
}

// The fast path refreshes liveness and the sequence, applies the same
// sequence checks as Observe, ends reservations the hello lists, and a
// hello that changed anything else takes the slow path.
func TestObserveSameHello(t *testing.T) {
	r := NewRegistry(time.Second, 3)
	t0 := time.Unix(1000, 0)
	h := testHello("c1", TierEdge, 4000, 1000)
	h.Incarnation, h.SentAt = "run1", t0.UTC()
	_, f := mustFrame(t, h)
	if f.seq != 1 || !f.sentAt.Equal(t0) {
		t.Fatalf("frame seq %d sent %v", f.seq, f.sentAt)
	}
	if res, _ := r.observe(h, t0, f.hash); res != ObserveNew {
		t.Fatalf("first hello: %v", res)
	}
	// Ten seconds of unchanged hellos, once a second: without the fast
	// path's refresh the cluster would be down after three.
	var now time.Time
	for i := 2; i <= 11; i++ {
		now = t0.Add(time.Duration(i-1) * time.Second)
		h.Seq, h.SentAt = uint64(i), now.UTC()
		_, f := mustFrame(t, h)
		res, c, same := r.observeSame("c1", &f, now)
		if !same || res != ObserveUpdated {
			t.Fatalf("hello %d: same %v res %v", i, same, res)
		}
		if c.Hello.Seq != uint64(i) || !c.LastSeen.Equal(now) || !c.Hello.SentAt.Equal(now) {
			t.Fatalf("hello %d: entry seq %d seen %v sent %v", i, c.Hello.Seq, c.LastSeen, c.Hello.SentAt)
		}
	}
	if c, st, _ := r.Get(now.Add(100*time.Millisecond), "c1"); st != StateAlive || c.Hello.Seq != 11 {
		t.Fatalf("after unchanged hellos: state %v seq %d", st, c.Hello.Seq)
	}
	// A replay is stale, a far-ahead seq is rejected: nothing changes.
	_, f = mustFrame(t, h)
	if res, _, same := r.observeSame("c1", &f, now.Add(time.Second)); !same || res != ObserveStale {
		t.Fatalf("replay: same %v res %v", same, res)
	}
	far := h
	far.Seq = 1 << 40
	_, f = mustFrame(t, far)
	if res, _, same := r.observeSame("c1", &f, now.Add(time.Second)); !same || res != ObserveAhead {
		t.Fatalf("far ahead: same %v res %v", same, res)
	}
	if c, _, _ := r.Get(now, "c1"); c.Hello.Seq != 11 || !c.LastSeen.Equal(now) {
		t.Fatalf("a rejected hello changed the entry: seq %d seen %v", c.Hello.Seq, c.LastSeen)
	}

	// A change: the frame differs, the slow path keeps it, and the next
	// unchanged hello is fast again and keeps the change.
	now = now.Add(time.Second)
	h.Seq, h.SentAt = 12, now.UTC()
	h.Capacity.UsedMilliCPU = 3000
	_, f = mustFrame(t, h)
	if _, _, same := r.observeSame("c1", &f, now); same {
		t.Fatal("a changed hello took the fast path")
	}
	if res, _ := r.observe(h, now, f.hash); res != ObserveUpdated {
		t.Fatalf("changed hello: %v", res)
	}
	now = now.Add(time.Second)
	h.Seq, h.SentAt = 13, now.UTC()
	_, f = mustFrame(t, h)
	if res, c, same := r.observeSame("c1", &f, now); !same || res != ObserveUpdated || c.Hello.Capacity.UsedMilliCPU != 3000 || c.load != 0.75 {
		t.Fatalf("after the change: same %v res %v capacity %+v load %v", same, res, c.Hello.Capacity, c.load)
	}
	// The index follows: the placement sees the new load.
	r.Observe(testHello("c2", TierEdge, 4000, 0), now)
	rep := r.Place(LeastLoaded{}, testRequest("c3", Constraints{}), now, 0)
	if !rep.OK() || rep.Destination.ClusterID != "c2" {
		t.Fatalf("placement after the change: %+v", rep)
	}

	// A hello listing a placement ends its reservation, on the fast path
	// too (the reservation may come after the hello that listed it).
	h.Placed = []string{"p1"}
	now = now.Add(time.Second)
	h.Seq = 14
	_, f = mustFrame(t, h)
	r.observe(h, now, f.hash)
	r.Reserve("p1", "c1", Resources{MilliCPU: 500}, now.Add(time.Minute))
	if c, _, _ := r.Get(now, "c1"); c.Reserved.MilliCPU != 500 {
		t.Fatalf("reserved %+v", c.Reserved)
	}
	now = now.Add(time.Second)
	h.Seq = 15
	_, f = mustFrame(t, h)
	if res, c, same := r.observeSame("c1", &f, now); !same || res != ObserveUpdated || c.Reserved != (Reserved{}) || r.Reservations() != 0 {
		t.Fatalf("listed placement: same %v res %v reserved %+v, %d reservations", same, res, c.Reserved, r.Reservations())
	}

	// An entry from elsewhere (the compact view restored) has no frame.
	h.Seq = 20
	r.restore(h, now.Add(time.Second))
	h.Seq = 21
	_, f = mustFrame(t, h)
	if _, _, same := r.observeSame("c1", &f, now.Add(2*time.Second)); same {
		t.Fatal("fast path on a restored entry")
	}
	// And a cluster never seen has none either.
	h.ClusterID = "c9"
	_, f = mustFrame(t, h)
	if _, _, same := r.observeSame("c9", &f, now); same {
		t.Fatal("fast path for an unknown cluster")
	}
}

// A cluster down (out of the index) comes back on an unchanged hello.
func TestObserveSameBringsBackDown(t *testing.T) {
	r := NewRegistry(time.Second, 3)
	t0 := time.Unix(1000, 0)
	h := testHello("c1", TierCloud, 4000, 1000)
	_, f := mustFrame(t, h)
	r.observe(h, t0, f.hash)
	later := t0.Add(10 * time.Second)
	r.Sweep(later, nil)
	if rep := r.Place(LeastLoaded{}, testRequest("c3", Constraints{}), later, 0); rep.OK() {
		t.Fatalf("down cluster placed: %+v", rep)
	}
	h.Seq = 2
	_, f = mustFrame(t, h)
	if res, _, same := r.observeSame("c1", &f, later); !same || res != ObserveUpdated {
		t.Fatalf("same %v res %v", same, res)
	}
	if rep := r.Place(LeastLoaded{}, testRequest("c3", Constraints{}), later, 0); !rep.OK() || rep.Destination.ClusterID != "c1" {
		t.Fatalf("back cluster not placed: %+v", rep)
	}
}

func TestFrameHelloRefuses(t *testing.T) {
	good, _ := json.Marshal(testHello("c1", TierEdge, 1000, 10))
	for _, s := range []string{
		"", "{}", "[]", "null", `{"seq":0}`, `{"seq":-1}`, `{"seq":1.0}`, `{"seq":1e3}`, `{"seq":"1"}`, `{"seq":01}`,
		`{"seq":18446744073709551616}`, `{"seq":1,"seq":2}`, `{"Seq":1}`, `{"seq":1,"Tier":"edge"}`, `{"se\u0071":1}`,
		`{"seq":1,"sent_at":null}`, `{"seq":1,"sent_at":"yesterday"}`, `{"seq":1,"sent_at":"2026-01-01T00:00:00Z","sent_at":"2026-01-01T00:00:00Z"}`,
		`{"seq":1,"sent_at":"2026-01-01T00:00:00\u005a"}`, `{"seq":1} x`, `{"seq":1,}`, `{"seq":1 "a":2}`, `{"a":{"b":}, "seq":1}`,
		string(good[:len(good)-1]),
	} {
		if f, ok := frameHello([]byte(s)); ok {
			t.Errorf("frameHello(%s) = %+v, want refused", s, f)
		}
	}
	if f, ok := frameHello([]byte(`{"seq":18446744073709551615}`)); !ok || f.seq != 1<<64-1 {
		t.Errorf("largest seq: %+v %v", f, ok)
	}
}

// FuzzFrameHello checks the fast path against encoding/json: whenever the
// framer accepts a message json decodes, the frame has json's seq and
// sent_at, and a message that differs only in those values has the same
// frame hash and decodes to the same hello but for them.
func FuzzFrameHello(f *testing.F) {
	h := testHello("c1", TierEdge, 1000, 10, Link{Peer: "c2", BandwidthMbps: 100, RTTMs: 3, Up: true})
	h.Labels = map[string]string{"seq": "9", "sent_at": "x", "zone": "a\"b\\c"}
	h.Incarnation, h.SentAt, h.Placed = "run", time.Unix(1700000000, 5).UTC(), []string{"p1"}
	good, _ := json.Marshal(h)
	h.SentAt = time.Time{}
	noSent, _ := json.Marshal(h)
	for _, s := range []string{
		string(good), string(noSent),
		`{"sent_at":"2026-01-01T00:00:00+02:00","v":1,"seq":7}`,
		` { "seq" : 5 , "labels" : { "seq" : 1 } , "links":[{"peer":"x","up":true},[1,{"seq":2}]] } `,
		`{"tier":"ed\u0067e","seq":3,"x":[true,false,null,-1.5e3]}`,
		`{"seq":3,"seq_":4,"_seq":5}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		fr, ok := frameHello(b)
		if !ok {
			return
		}
		var h1 Hello
		if err := json.Unmarshal(b, &h1); err != nil {
			return // the slow path reports it
		}
		if h1.Seq != fr.seq || !h1.SentAt.Equal(fr.sentAt) {
			t.Fatalf("frame seq %d sent %v, json seq %d sent %v", fr.seq, fr.sentAt, h1.Seq, h1.SentAt)
		}
		// Another seq (and sent_at, when present): same hash, same hello.
		seq := fr.seq%1000 + 1
		sent := time.Date(2030, 1, 2, 3, 4, 5, 6, time.UTC)
		var b2 []byte
		type span struct {
			at  [2]int
			val string
		}
		spans := []span{{fr.seqAt, strconv.FormatUint(seq, 10)}}
		if fr.sentAtAt != [2]int{} {
			sb, _ := json.Marshal(sent)
			spans = append(spans, span{fr.sentAtAt, string(sb)})
			if spans[1].at[0] < spans[0].at[0] {
				spans[0], spans[1] = spans[1], spans[0]
			}
		}
		last := 0
		for _, s := range spans {
			b2 = append(append(b2, b[last:s.at[0]]...), s.val...)
			last = s.at[1]
		}
		b2 = append(b2, b[last:]...)
		fr2, ok := frameHello(b2)
		if !ok || fr2.hash != fr.hash || fr2.seq != seq {
			t.Fatalf("changed seq: ok %v hash %x vs %x seq %d (%s)", ok, fr2.hash, fr.hash, fr2.seq, b2)
		}
		var h2 Hello
		if err := json.Unmarshal(b2, &h2); err != nil {
			t.Fatalf("json refuses %s: %v", b2, err)
		}
		want := h1
		want.Seq = seq
		if fr.sentAtAt != [2]int{} {
			want.SentAt = sent
			if !h2.SentAt.Equal(sent) {
				t.Fatalf("sent_at %v, want %v", h2.SentAt, sent)
			}
			h2.SentAt = sent
		}
		if !reflect.DeepEqual(h2, want) {
			t.Fatalf("decoded %+v, want %+v", h2, want)
		}
		// Any other byte changed outside the values changes the hash
		// (one byte, so a collision would be a hash bug).
		if k := len(b) / 2; (k < fr.seqAt[0] || k >= fr.seqAt[1]) && (k < fr.sentAtAt[0] || k >= fr.sentAtAt[1]) {
			b3 := bytes.Clone(b)
			b3[k] ^= 1
			if fr3, ok := frameHello(b3); ok && fr3.hash == fr.hash {
				t.Fatalf("byte %d changed, same hash", k)
			}
		}
	})
}

// Over NATS: a controller's hellos that differ only in seq and sent_at are
// taken on the fast path, keep the cluster alive, and a change is seen at
// once; a malformed hello is still refused and counted.
func TestUnchangedHelloFastPathOverNATS(t *testing.T) {
	s := startServer(t, ServerConfig{HelloInterval: 100 * time.Millisecond, DownAfter: 2})
	nc := connect(t, s.ClientURL())
	c := newClient(t, nc, "c1")
	h := testHello("c1", TierEdge, 4000, 1000)
	h.Seq = 0 // the client numbers them and sets sent_at
	unchanged := func() float64 { return metricValue(t, s, "roam_meta_hellos_unchanged_total", nil) }
	if err := c.PublishHello(ctx(t), h); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "c1 registered", func() bool { _, _, ok := s.Registry().Get(time.Now(), "c1"); return ok })
	// 1 s of hellos every 50 ms: ten intervals, five times the down time.
	// Each one refreshes c1's liveness (LastSeen is its arrival, never
	// before it was sent), so c1 is alive when the next one is due, 50 ms
	// later. That moment is given to the registry, not read from the
	// clock after a sleep: on a loaded machine the sleep alone can outlast
	// the down time (it failed so once, with the MO's part done).
	end := time.Now().Add(time.Second)
	for time.Now().Before(end) {
		sent := time.Now()
		if err := c.PublishHello(ctx(t), h); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "c1's liveness refreshed by its unchanged hello", func() bool {
			got, _, ok := s.Registry().Get(time.Now(), "c1")
			return ok && !got.LastSeen.Before(sent)
		})
		if _, st, _ := s.Registry().Get(sent.Add(50*time.Millisecond), "c1"); st != StateAlive {
			t.Fatalf("c1 %s when its next unchanged hello is due", st)
		}
		time.Sleep(50 * time.Millisecond)
	}
	waitFor(t, "unchanged hellos counted", func() bool { return unchanged() >= 10 })
	if v := metricValue(t, s, "roam_meta_hellos_total", map[string]string{"result": "malformed"}); v != 0 {
		t.Fatalf("malformed = %v", v)
	}
	before := unchanged()
	h.Capacity.UsedMilliCPU = 3500
	if err := c.PublishHello(ctx(t), h); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the change registered", func() bool {
		got, _, _ := s.Registry().Get(time.Now(), "c1")
		return got.Hello.Capacity.UsedMilliCPU == 3500
	})
	if v := unchanged(); v != before {
		t.Fatalf("the changed hello counted as unchanged (%v -> %v)", before, v)
	}
	// Malformed: a seq the framer takes but a body that does not validate.
	pub := connect(t, s.ClientURL())
	for _, bad := range []string{`{"v":1,"cluster_id":"c1","seq":999,"tier":"","controller_url":"http://c1:1"}`, `{"seq":1000`} {
		if err := pub.Publish(HelloSubject("c1"), []byte(bad)); err != nil {
			t.Fatal(err)
		}
	}
	_ = pub.Flush()
	waitFor(t, "malformed hellos counted", func() bool {
		return metricValue(t, s, "roam_meta_hellos_total", map[string]string{"result": "malformed"}) == 2
	})
}
