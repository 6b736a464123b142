package meta

import (
	"encoding/json"
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

func BenchmarkPlace10000(b *testing.B) {
	now := time.Now()
	r := NewRegistry(time.Second, 3)
	for i := range 10000 {
		h := testHello("c"+strconv.Itoa(i), TierEdge, 16000, int64(i*37)%15000, Link{Peer: "c" + strconv.Itoa((i+1)%10000), BandwidthMbps: 1000, RTTMs: 5, Up: true})
		r.Observe(h, now)
	}
	req := testRequest("req", Constraints{})
	b.ReportAllocs()
	for b.Loop() {
		if rep := (LeastLoaded{}).Place(req, r, now); !rep.OK() {
			b.Fatal(rep.NoPlacement)
		}
	}
}
