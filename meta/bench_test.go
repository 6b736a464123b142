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
