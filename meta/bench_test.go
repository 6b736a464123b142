package meta

import (
	"encoding/json"
	"fmt"
	"strconv"
	"testing"
	"time"
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
