package meta

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
)

func BenchmarkDecodeHello(b *testing.B) {
	h := testHello("c1", TierEdge, 1000, 10, Link{Peer: "c2", BandwidthMbps: 100, RTTMs: 3, Up: true})
	h.Labels = map[string]string{"zone": "z1"}
	buf, _ := json.Marshal(h)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := DecodeHello(buf); err != nil {
			b.Fatal(err)
		}
	}
}

func benchRegistry(n int, now time.Time) *Registry {
	r := NewRegistry(time.Second, 3)
	for i := range n {
		h := testHello("c"+strconv.Itoa(i), []string{TierEdge, TierCloud, TierDeepEdge}[i%3], 16000, int64(i*37)%15000,
			Link{Peer: "c" + strconv.Itoa((i+1)%n), BandwidthMbps: 1000, RTTMs: 5, Up: true})
		h.Labels = map[string]string{"zone": "z" + strconv.Itoa(i%10)}
		h.Capacity = Capacity{MilliCPU: 16000, UsedMilliCPU: int64(i*37) % 15000, MemoryMB: 65536,
			UsedMemoryMB: int64(i*101) % 60000, Pods: 110, UsedPods: int64(i % 100)}
		r.Observe(h, now)
	}
	return r
}

// BenchmarkPlace compares the index with the full scan it replaces.
func BenchmarkPlace(b *testing.B) {
	now := time.Now()
	for _, n := range []int{10000, 100000} {
		r := benchRegistry(n, now)
		for _, tc := range []struct {
			name string
			cons Constraints
		}{
			{"any", Constraints{}},
			{"cloud", Constraints{WantTiers: []string{TierCloud}}},
			{"label", Constraints{WantLabels: map[string]string{"zone": "z3"}}},
		} {
			req := testRequest("c7", tc.cons)
			b.Run(fmt.Sprintf("index/%d/%s", n, tc.name), func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					if rep := r.Place(LeastLoaded{}, req, now, 0); !rep.OK() {
						b.Fatal(rep.NoPlacement)
					}
				}
			})
			b.Run(fmt.Sprintf("scan/%d/%s", n, tc.name), func(b *testing.B) {
				for b.Loop() {
					if rep := r.Explain(LeastLoaded{}, req, now); !rep.OK() {
						b.Fatal(rep.NoPlacement)
					}
				}
			})
		}
	}
}

// BenchmarkIngest compares a hello decoded in full and registered with one
// taken on the fast path (it differs from the cluster's last only in seq
// and sent_at).
func BenchmarkIngest(b *testing.B) {
	h := testHello("c1", TierEdge, 1000, 10, Link{Peer: "c2", BandwidthMbps: 100, RTTMs: 3, Up: true})
	h.Labels = map[string]string{"zone": "z1"}
	h.Incarnation, h.SentAt = "run", time.Now().UTC()
	const n = 1000
	bufs := make([][]byte, n)
	for i := range bufs {
		h.Seq = uint64(i + 1)
		bufs[i], _ = json.Marshal(h)
	}
	b.Run("decode", func(b *testing.B) {
		r := NewRegistry(time.Second, 3)
		now := time.Now()
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			h, err := DecodeHello(bufs[i%n])
			if err != nil {
				b.Fatal(err)
			}
			h.Seq = uint64(i + 1)
			r.Observe(h, now)
			i++
		}
	})
	b.Run("unchanged", func(b *testing.B) {
		r := NewRegistry(time.Second, 3)
		now := time.Now()
		f, _ := frameHello(bufs[0])
		h.Seq = 1
		r.observe(h, now, f.hash)
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			f, ok := frameHello(bufs[i%n])
			if !ok {
				b.Fatal("not framed")
			}
			f.seq = uint64(i + 2)
			if res, _, same := r.observeSame("c1", &f, now); !same || res != ObserveUpdated {
				b.Fatalf("same %v res %v", same, res)
			}
			i++
		}
	})
}

// BenchmarkPlaceRequest times placement requests over the real path: an
// MO with JetStream (its audit stream followed back) and 10,000 clusters,
// a requester on its own connection in the same process. Its allocs/op
// and B/op are the whole process's per placement (the requester's
// nc.Request included); bench-meta prints the MO process's alone.
// Without a spool, and with one (each record written to it before the
// reply, as a replica with a store directory does).
func BenchmarkPlaceRequest(b *testing.B) {
	b.Run("no-spool", func(b *testing.B) { benchPlaceRequest(b, "") })
	b.Run("spool", func(b *testing.B) { benchPlaceRequest(b, b.TempDir()) })
}

func benchPlaceRequest(b *testing.B, spool string) {
	s, err := NewServer(ServerConfig{Listen: "127.0.0.1:0", Logger: quietLogger(), WarmUp: time.Millisecond, HelloInterval: time.Hour,
		AuditSpool: spool})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	wctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := s.WaitServing(wctx); err != nil {
		b.Fatal(err)
	}
	now := time.Now()
	for i := range 10000 {
		h := testHello("c"+strconv.Itoa(i), []string{TierEdge, TierCloud, TierDeepEdge}[i%3], 16000, int64(i*37)%15000)
		h.Capacity = Capacity{MilliCPU: 16000, UsedMilliCPU: int64(i*37) % 15000, MemoryMB: 65536,
			UsedMemoryMB: int64(i*101) % 60000, Pods: 110, UsedPods: int64(i % 100)}
		s.reg.Observe(h, now)
	}
	nc, err := nats.Connect(s.ClientURL())
	if err != nil {
		b.Fatal(err)
	}
	defer nc.Close()
	req := testRequest("c7", Constraints{})
	req.Service.Resources = Resources{MilliCPU: 1, MemoryMB: 1}
	bufs := make([][]byte, 8192)
	for i := range bufs {
		req.RequestID = "bench-" + strconv.Itoa(i)
		bufs[i], _ = json.Marshal(req)
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		m, err := nc.Request(SubjectPlace, bufs[i%len(bufs)], 5*time.Second)
		if err != nil {
			b.Fatal(err)
		}
		if len(m.Data) == 0 || m.Header.Get(micro.ErrorCodeHeader) != "" {
			b.Fatalf("reply %q %v", m.Data, m.Header)
		}
		i++
	}
}

// BenchmarkPlaceEncoded is the MO's decision and reply encoding alone.
func BenchmarkPlaceEncoded(b *testing.B) {
	now := time.Now()
	r := benchRegistry(10000, now)
	req := testRequest("c7", Constraints{})
	var buf []byte
	b.ReportAllocs()
	for b.Loop() {
		var rep *PlacementReply
		if buf, _, rep = r.PlaceEncoded(LeastLoaded{}, &req, now, buf[:0], "mo-1"); rep != nil {
			b.Fatal(rep.NoPlacement)
		}
	}
}

// BenchmarkClientPlace is a requester's side of a placement: Client.Place
// against a responder on the same NATS server that answers as the MO
// does (the index's encoded reply, fastWorld), and, beside it, a bare
// nc.Request of the same bytes. allocs/op and B/op are the process's:
// both include the responder's receive and reply and what nats allocates
// for a request and its reply message; their difference is what the
// client adds (encoding the request, decoding the reply).
func BenchmarkClientPlace(b *testing.B) {
	ns := startNATS(b)
	rc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		b.Fatal(err)
	}
	defer rc.Close()
	now := time.Unix(1000, 0)
	reg := fastWorld(now)
	var q PlacementRequest
	var out []byte
	if _, err := rc.Subscribe(SubjectPlace, func(m *nats.Msg) {
		if err := decodePlacementRequestInto(m.Data, &q); err != nil {
			b.Error(err)
			return
		}
		var rep *PlacementReply
		if out, _, rep = reg.PlaceEncoded(LeastLoaded{}, &q, now, out[:0], "mo-1"); rep != nil {
			b.Error("full scan answered")
			return
		}
		_ = m.Respond(out)
	}); err != nil {
		b.Fatal(err)
	}
	if err := rc.Flush(); err != nil {
		b.Fatal(err)
	}
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		b.Fatal(err)
	}
	defer nc.Close()
	c, err := NewClient(nc, "c1", WithoutCache(), WithRetries(0))
	if err != nil {
		b.Fatal(err)
	}
	req := testRequest("c1", Constraints{})
	ctx := context.Background()
	b.Run("client", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if rep, err := c.Place(ctx, req); err != nil || len(rep.Alternatives) != MaxAlternatives {
				b.Fatal(rep, err)
			}
		}
	})
	raw := appendRequest(nil, &req)
	b.Run("nats", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := nc.Request(SubjectPlace, raw, 2*time.Second); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkClientCodec is the client's own work on a placement: encoding
// the request and decoding the MO's reply (its strings cut from the
// message, as Client.Place does; a copy of it per decode stands for the
// one nats makes).
func BenchmarkClientCodec(b *testing.B) {
	req := fastRequests()[1]
	now := time.Unix(1000, 0)
	plain := testRequest("c1", Constraints{})
	reply, _, rep := fastWorld(now).PlaceEncoded(LeastLoaded{}, &plain, now, nil, "mo-1")
	if rep != nil {
		b.Fatal("full scan answered")
	}
	b.Run("encode", func(b *testing.B) {
		buf := make([]byte, 0, 1024)
		b.ReportAllocs()
		for b.Loop() {
			buf = appendRequest(buf[:0], &req)
		}
	})
	b.Run("decode", func(b *testing.B) {
		msgs := make([][]byte, 1024)
		for i := range msgs {
			msgs[i] = append([]byte(nil), reply...)
		}
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			if _, err := decodePlacementReply(msgs[i%len(msgs)], true); err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
}
