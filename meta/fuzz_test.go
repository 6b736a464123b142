package meta

import (
	"encoding/json"
	"reflect"
	"testing"
	"time"
)

// Seeds run in the normal test run; `go test -fuzz FuzzDecodeHello ./meta`
// explores further.

func FuzzDecodeHello(f *testing.F) {
	good, _ := json.Marshal(testHello("c1", TierEdge, 1000, 10, Link{Peer: "c2", BandwidthMbps: 100, RTTMs: 3, Up: true}))
	for _, s := range []string{
		string(good), "", "{", "null", "[]", `{"v":1}`, `{"v":2,"cluster_id":"a","seq":1}`,
		`{"v":1,"cluster_id":"a.b","seq":1,"tier":"edge","controller_url":"http://a:1"}`,
		`{"v":1,"cluster_id":"a","seq":1,"tier":"edge","controller_url":"http://a:1","capacity":{"milli_cpu":-1}}`,
		`{"v":1,"cluster_id":"a","seq":1,"tier":"edge","controller_url":"http://a:1","data_addrs":["0.0.0.0"]}`,
		`{"v":1,"cluster_id":"a","seq":1,"tier":"edge","controller_url":"http://a:1","links":[{"peer":"b","rtt_ms":1e400}]}`,
		`{"v":1,"cluster_id":"a","seq":18446744073709551616}`,
		string(good) + " trailing",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := DecodeHello(b)
		if err != nil {
			return
		}
		if err := h.Validate(); err != nil {
			t.Fatalf("decoded hello fails validation: %v", err)
		}
		h2 := reDecode(t, h, DecodeHello)
		if h.ClusterID != h2.ClusterID || h.Seq != h2.Seq || !reflect.DeepEqual(h.Capacity, h2.Capacity) {
			t.Fatalf("round trip changed the hello: %+v vs %+v", h, h2)
		}
	})
}

func FuzzDecodePlacementRequest(f *testing.F) {
	good, _ := json.Marshal(testRequest("c1", Constraints{WantTiers: []string{TierCloud}, MinBandwidthMbps: 10, LinkFrom: LinkFromHome}))
	for _, s := range []string{
		string(good), "", "{}", "null", `{"v":1,"request_id":"r"}`,
		`{"v":1,"request_id":"r","requester":"a","home":"a","reason":"manual","service":{"name":"s","ports":[{"port":0,"protocol":"tcp"}]}}`,
		`{"v":1,"request_id":"r","requester":"a","home":"a","reason":"manual","service":{"name":"s","ports":[{"port":80,"protocol":"sctp"}]}}`,
		`{"v":1,"request_id":"r","requester":"a","home":"a","reason":"why","service":{"name":"s","ports":[{"port":80,"protocol":"tcp"}]}}`,
		`{"v":1,"request_id":"r","requester":"a","home":"a","reason":"manual","service":{"name":"s","ports":[{"port":80,"protocol":"udp"}],"constraints":{"link_from":"moon"}}}`,
		`{"v":1,"request_id":"r","requester":"a","home":"a","reason":"manual","service":{"name":"s","ports":[{"port":70000,"protocol":"udp"}]}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := DecodePlacementRequest(b)
		if err != nil {
			return
		}
		r2 := reDecode(t, r, DecodePlacementRequest)
		if r.RequestID != r2.RequestID || r.Service.Name != r2.Service.Name || len(r.Service.Ports) != len(r2.Service.Ports) {
			t.Fatalf("round trip changed the request")
		}
		// Any valid request can be placed without panicking.
		reg := NewRegistry(0, 0)
		reg.Observe(testHello("x", TierEdge, 1000, 0), timeZero)
		rep := reg.Place(LeastLoaded{}, r, timeZero, 0)
		if err := rep.Validate(); err != nil {
			t.Fatalf("reply invalid: %v", err)
		}
	})
}

var timeZero = time.Unix(0, 0)

// reDecode encodes v again and decodes that with decode: both must work.
func reDecode[T any](t *testing.T, v T, decode func([]byte) (T, error)) T {
	t.Helper()
	again, err := json.Marshal(v)
	if err != nil {
		t.Fatalf("re-encode: %v", err)
	}
	v2, err := decode(again)
	if err != nil {
		t.Fatalf("round trip: %v", err)
	}
	return v2
}
