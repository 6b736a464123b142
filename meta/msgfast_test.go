package meta

import (
	"bytes"
	"encoding/json"
	"net/netip"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/roamnet/roam/dataplane/lb"
)

// fastWorld is a registry of 20 clusters in three tiers, some linked,
// one with an SRv6 locator.
func fastWorld(now time.Time) *Registry {
	reg := NewRegistry(time.Second, 3)
	for i := range 20 {
		id := "c" + strconv.Itoa(i)
		h := testHello(id, []string{TierEdge, TierCloud, TierDeepEdge}[i%3], 4000, int64(i*150),
			Link{Peer: "c" + strconv.Itoa((i+1)%20), BandwidthMbps: float64(100 * (i + 1)), RTTMs: float64(i) / 3, Up: i%4 != 0})
		h.Labels = map[string]string{"zone": "z" + strconv.Itoa(i%4), "gpu": strconv.FormatBool(i%5 == 0)}
		if i == 7 {
			h.Locator = netip.MustParsePrefix("fd00:7::/48")
			h.DataAddrs = append(h.DataAddrs, netip.MustParseAddr("fd00:7::1"))
		}
		reg.Observe(h, now)
	}
	return reg
}

// fastRequests are requests as json.Marshal writes them, with every
// field used somewhere.
func fastRequests() []PlacementRequest {
	full := testRequest("c1", Constraints{WantTiers: []string{TierCloud, TierEdge}, ForbidTiers: []string{TierDeepEdge},
		WantLabels: map[string]string{"zone": "z1", "é": "ü"}, ExcludeClusters: []string{"c4"}, MinBandwidthMbps: 50.5, MaxRTTMs: 2.25,
		LinkFrom: LinkFromHome})
	full.Service.Ports = append(full.Service.Ports, Port{Name: "dns", Port: 53, Protocol: lb.UDP})
	full.Explain, full.ExplainClusters = true, []string{"c2", "nope"}
	empty := testRequest("c2", Constraints{WantTiers: []string{}, WantLabels: map[string]string{}})
	return []PlacementRequest{testRequest("c1", Constraints{}), full, empty,
		testRequest("c3", Constraints{WantLabels: map[string]string{"gpu": "true"}, MaxRTTMs: 1e-3})}
}

// fastReplies are the replies the MO gives to fastRequests: encoded by
// PlaceEncoded (the index) and marshalled (the full scan, explained).
func fastReplies(t testing.TB) [][]byte {
	now := time.Unix(1000, 0)
	reg := fastWorld(now)
	var out [][]byte
	for _, req := range fastRequests() {
		b, _, rep := reg.PlaceEncoded(LeastLoaded{}, &req, now, nil, "mo-1")
		if rep != nil {
			var err error
			if b, err = json.Marshal(rep); err != nil {
				t.Fatal(err)
			}
		}
		out = append(out, b)
		rep2 := reg.Place(TierAware{}, req, now, 0)
		b2, err := json.Marshal(rep2)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, b2)
	}
	nothing := testRequest("c1", Constraints{WantLabels: map[string]string{"zone": "mars"}})
	b, err := json.Marshal(reg.Place(LeastLoaded{}, nothing, now, 0))
	if err != nil {
		t.Fatal(err)
	}
	local, err := json.Marshal(PlacementReply{Version: Version, RequestID: "r9", NoPlacement: "x", Local: true, DecidedBy: "c1",
		FilteredByReason: map[string]int{}, Filtered: []Filtered{}, Explained: []Filtered{{ClusterID: "c2", Why: "down"}}})
	if err != nil {
		t.Fatal(err)
	}
	return append(out, b, local)
}

// TestFastDecodersTakeWhatMarshalGives checks that the messages of real
// placements take the hand-written decoders (not the fallback), and that
// they decode to what encoding/json gives. Only a message with an escaped
// character (here the quotes in an explained reply's reasons) falls back.
func TestFastDecodersTakeWhatMarshalGives(t *testing.T) {
	for _, req := range fastRequests() {
		b, err := json.Marshal(req)
		if err != nil {
			t.Fatal(err)
		}
		var fast PlacementRequest
		if !fastRequest(b, &fast) {
			t.Fatalf("request left the fast path: %s", b)
		}
		var want PlacementRequest
		if err := json.Unmarshal(b, &want); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(fast, want) {
			t.Fatalf("request %s:\nfast %+v\njson %+v", b, fast, want)
		}
	}
	for _, b := range fastReplies(t) {
		var fast PlacementReply
		took := fastReply(b, &fast, false)
		if escaped := strings.Contains(string(b), `\`); took == escaped {
			t.Fatalf("reply with escapes %v, fast path %v: %s", escaped, took, b)
		}
		var want PlacementReply
		if err := json.Unmarshal(b, &want); err != nil {
			t.Fatal(err)
		}
		if took && !reflect.DeepEqual(fast, want) {
			t.Fatalf("reply %s:\nfast %+v\njson %+v", b, fast, want)
		}
		got, err := DecodePlacementReply(b)
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Fatalf("DecodePlacementReply(%s) = %+v, %v", b, got, err)
		}
		// The client's decode, its strings cut from the message itself.
		owned := append([]byte(nil), b...)
		if got, err := decodePlacementReply(owned, true); err != nil || !reflect.DeepEqual(got, want) {
			t.Fatalf("decodePlacementReply(%s, owned) = %+v, %v", b, got, err)
		}
	}
}

// TestFastDecodersFallBack checks inputs the fast path must not take
// (encoding/json decodes them, or refuses them, as before).
func TestFastDecodersFallBack(t *testing.T) {
	good, _ := json.Marshal(testRequest("c1", Constraints{}))
	g := string(good)
	for name, s := range map[string]string{
		"unknown key":      strings.Replace(g, `"home"`, `"homme"`, 1),
		"capital key":      strings.Replace(g, `"home"`, `"Home"`, 1),
		"duplicate key":    strings.Replace(g, `{"v":1,`, `{"v":1,"v":1,`, 1),
		"escape":           strings.Replace(g, `"web"`, `"w\u0065b"`, 1),
		"null":             strings.Replace(g, `"home":"c1"`, `"home":null`, 1),
		"float for int":    strings.Replace(g, `"v":1`, `"v":1.0`, 1),
		"port too large":   strings.Replace(g, `"port":80`, `"port":65536`, 1),
		"leading zero":     strings.Replace(g, `"port":80`, `"port":080`, 1),
		"trailing data":    g + " x",
		"bad utf-8":        strings.Replace(g, `"web"`, "\"w\xffb\"", 1),
		"bad protocol":     strings.Replace(g, `"tcp"`, `"sctp"`, 1),
		"int overflow":     strings.Replace(g, `"milli_cpu":500`, `"milli_cpu":9223372036854775808`, 1),
		"not an object":    `[` + g + `]`,
		"unclosed":         g[:len(g)-1],
		"string for float": strings.Replace(g, `"constraints":{}`, `"constraints":{"max_rtt_ms":"1"}`, 1),
	} {
		var q PlacementRequest
		if fastRequest([]byte(s), &q) {
			t.Errorf("%s: the fast path took %s", name, s)
		}
		// What the message decodes to (or the error) is encoding/json's.
		var want PlacementRequest
		jerr := json.Unmarshal([]byte(s), &want)
		got, err := DecodePlacementRequest([]byte(s))
		if jerr == nil && want.Validate() == nil {
			if err != nil || !reflect.DeepEqual(got, want) {
				t.Errorf("%s: got %+v, %v; want %+v", name, got, err, want)
			}
		} else if err == nil {
			t.Errorf("%s: decoded %+v, encoding/json refuses it", name, got)
		}
	}
	var q PlacementRequest
	if !fastRequest([]byte(`{"v":-9223372036854775808}`), &q) || q.Version != -1<<63 {
		t.Errorf("smallest int: %v", q.Version)
	}
}

// Seeds run in the normal test run; `go test -fuzz FuzzFastRequest ./meta`
// explores further.

func FuzzFastRequest(f *testing.F) {
	for _, req := range fastRequests() {
		b, _ := json.Marshal(req)
		f.Add(b)
		f.Add([]byte(strings.ReplaceAll(string(b), ",", " ,\n\t")))
	}
	for _, s := range []string{"", "{}", "null", `{"v":-0}`, `{"v":1e2}`, `{"service":{"ports":[]}}`, `{"service":{"ports":[{}]}}`,
		`{"service":{"constraints":{"want_labels":{"a":"b","a":"c"}}}}`, `{"explain":true,"explain_clusters":[]}`,
		`{"service":{"constraints":{"min_bandwidth_mbps":1e400}}}`, `{"service":{"constraints":{"max_rtt_ms":-0.5E-3}}}`} {
		f.Add([]byte(s))
	}
	// And the client's encoder writes what json.Marshal writes.
	f.Fuzz(fastAsJSON(fastRequest, checkAppendRequest))
}

// checkAppendRequest checks that appendRequest writes q as json.Marshal
// does.
func checkAppendRequest(t *testing.T, q *PlacementRequest) {
	t.Helper()
	want, err := json.Marshal(q)
	if err != nil {
		t.Fatal(err)
	}
	if got := appendRequest([]byte("x"), q); string(got[1:]) != string(want) {
		t.Fatalf("appendRequest:\n%s\njson.Marshal:\n%s", got[1:], want)
	}
}

// TestAppendRequestMatchesMarshal checks the client's request encoder
// against json.Marshal on requests using every field, and on the values
// json.Marshal escapes or omits.
func TestAppendRequestMatchesMarshal(t *testing.T) {
	reqs := fastRequests()
	odd := testRequest("c<1>", Constraints{WantLabels: map[string]string{"b": "\u2028 \"&\" \xff", "a": "", "c\n": "x"},
		ExcludeClusters: []string{}, MinBandwidthMbps: 1e21, MaxRTTMs: 1e-7, LinkFrom: LinkFromRequester})
	odd.Service.Ports = []Port{{Name: "a\tb", Port: 65535, Protocol: lb.Proto(9)}, {Port: 1, Protocol: lb.UDP}}
	odd.Service.Resources = Resources{MilliCPU: -5}
	odd.Reason, odd.ExplainClusters = "", []string{"<x>"}
	noPorts := testRequest("c2", Constraints{})
	noPorts.Service.Ports, noPorts.Service.Resources = nil, Resources{MemoryMB: 7}
	emptyPorts := testRequest("c2", Constraints{})
	emptyPorts.Service.Ports = []Port{}
	for _, q := range append(reqs, odd, noPorts, emptyPorts, PlacementRequest{}) {
		checkAppendRequest(t, &q)
	}
}

func FuzzFastReply(f *testing.F) {
	for _, b := range fastReplies(f) {
		f.Add(b)
	}
	for _, s := range []string{"", "{}", `{"destination":{}}`, `{"alternatives":[{"data_addrs":[]}]}`, `{"destination":{"locator":""}}`,
		`{"destination":{"data_addrs":["::1%eth0"]}}`, `{"filtered_by_reason":{"down":1,"down":2}}`, `{"explained":[{"why":"x"}]}`,
		`{"local":false,"filtered_total":-1}`, `{"destination":{"score":1e-400}}`} {
		f.Add([]byte(s))
	}
	// Both ways the decoder is called: DecodePlacementReply's, whose
	// strings are copies, and the client's (owned), whose strings are cut
	// from the message itself and whose destination and alternatives share
	// one array. Each decodes as encoding/json does.
	copied := fastAsJSON(func(b []byte, p *PlacementReply) bool { return fastReply(b, p, false) })
	owned := fastAsJSON(func(b []byte, p *PlacementReply) bool { return fastReply(b, p, true) }, candidatesApart)
	f.Fuzz(func(t *testing.T, b []byte) {
		copied(t, b)
		// The client's message is its own, never written again (the
		// fuzzer's b is not: it is reused for the next input).
		owned(t, bytes.Clone(b))
	})
}

// candidatesApart checks that the alternatives of a reply do not overlap
// its destination (they share one array): writing every alternative
// leaves the destination as it was.
func candidatesApart(t *testing.T, p *PlacementReply) {
	t.Helper()
	if p.Destination == nil {
		return
	}
	d := *p.Destination
	for i := range p.Alternatives {
		p.Alternatives[i] = Candidate{ClusterID: "overwritten", Score: -1}
	}
	if !reflect.DeepEqual(*p.Destination, d) {
		t.Fatalf("writing the alternatives changed the destination: %+v, was %+v", *p.Destination, d)
	}
}

// fastAsJSON is a fuzz target: what the fast decoder takes, encoding/json
// takes too and decodes to the same value; then each of also checks it.
func fastAsJSON[T any](fast func([]byte, *T) bool, also ...func(*testing.T, *T)) func(*testing.T, []byte) {
	return func(t *testing.T, b []byte) {
		var got T
		if !fast(b, &got) {
			return
		}
		var want T
		if err := json.Unmarshal(b, &want); err != nil {
			t.Fatalf("fast path took %q, encoding/json refuses it: %v", b, err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("%q:\nfast %+v\njson %+v", b, got, want)
		}
		for _, check := range also {
			check(t, &got)
		}
	}
}
