package meta

import (
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/roamnet/roam/dataplane/lb"
)

func testHello(id, tier string, cpu, usedCPU int64, links ...Link) Hello {
	return Hello{
		Version: Version, ClusterID: id, Seq: 1, Tier: tier,
		ControllerURL: "http://" + id + ".example:8080",
		DataAddrs:     []netip.Addr{netip.MustParseAddr("10.9.0.1")},
		Capacity:      Capacity{MilliCPU: cpu, UsedMilliCPU: usedCPU, MemoryMB: 4096, UsedMemoryMB: 1024, Pods: 10, UsedPods: 1},
		Links:         links,
	}
}

func testRequest(requester string, c Constraints) PlacementRequest {
	return PlacementRequest{
		Version: Version, RequestID: "r1", Requester: requester, Home: requester, Reason: ReasonLackOfResources,
		Service: ServiceDescriptor{
			Name: "web", Ports: []Port{{Port: 80, Protocol: lb.TCP}},
			Resources: Resources{MilliCPU: 500, MemoryMB: 256}, Constraints: c,
		},
	}
}

func TestRegistryLiveness(t *testing.T) {
	r := NewRegistry(100*time.Millisecond, 3)
	t0 := time.Unix(1000, 0)
	h := testHello("a", TierEdge, 1000, 0)
	h.Seq = 5
	if got := r.Observe(h, t0); got != ObserveNew {
		t.Fatalf("first hello: %v", got)
	}
	for _, tc := range []struct {
		after time.Duration
		want  State
	}{
		{0, StateAlive}, {140 * time.Millisecond, StateAlive}, {160 * time.Millisecond, StateSuspect},
		{340 * time.Millisecond, StateSuspect}, {360 * time.Millisecond, StateDown}, {time.Hour, StateDown},
	} {
		c, st, ok := r.Get(t0.Add(tc.after), "a")
		if !ok || st != tc.want {
			t.Errorf("after %v: state %v (found %v), want %v", tc.after, st, ok, tc.want)
		}
		if c.Hello.Seq != 5 {
			t.Errorf("seq %d", c.Hello.Seq)
		}
	}
	old := h
	old.Seq = 5
	old.Tier = TierCloud
	if got := r.Observe(old, t0.Add(time.Second)); got != ObserveStale {
		t.Fatalf("same seq: %v, want stale", got)
	}
	old.Seq = 4
	if got := r.Observe(old, t0.Add(time.Second)); got != ObserveStale {
		t.Fatalf("older seq: %v, want stale", got)
	}
	if c, st, _ := r.Get(t0.Add(time.Second), "a"); c.Hello.Tier != TierEdge || st != StateDown {
		t.Fatalf("stale hello changed the entry or revived it: tier %s state %v", c.Hello.Tier, st)
	}
	h.Seq = 6
	if got := r.Observe(h, t0.Add(time.Second)); got != ObserveUpdated {
		t.Fatalf("newer seq: %v", got)
	}
	if _, st, _ := r.Get(t0.Add(time.Second), "a"); st != StateAlive {
		t.Fatalf("after a new hello: %v, want alive", st)
	}
	// A hello's own interval overrides the registry's.
	slow := testHello("slow", TierEdge, 1000, 0)
	slow.IntervalMs = 1000
	r.Observe(slow, t0)
	if _, st, _ := r.Get(t0.Add(time.Second), "slow"); st != StateAlive {
		t.Fatalf("slow cluster after one of its intervals: %v", st)
	}
	r.Forget("a")
	if _, _, ok := r.Get(t0, "a"); ok || r.Len() != 1 {
		t.Fatalf("forget: still there or len %d", r.Len())
	}
}

func TestPlacementFiltersWithReasons(t *testing.T) {
	now := time.Unix(2000, 0)
	r := NewRegistry(time.Second, 3)
	req := "home"
	r.Observe(testHello(req, TierDeepEdge, 1000, 1000,
		Link{Peer: "slow", BandwidthMbps: 5, RTTMs: 10, Up: true},
		Link{Peer: "far", BandwidthMbps: 1000, RTTMs: 200, Up: true},
		Link{Peer: "cut", BandwidthMbps: 1000, RTTMs: 1, Up: false},
		Link{Peer: "good", BandwidthMbps: 1000, RTTMs: 5, Up: true},
		Link{Peer: "busy", BandwidthMbps: 1000, RTTMs: 5, Up: true},
		Link{Peer: "label", BandwidthMbps: 1000, RTTMs: 5, Up: true},
		Link{Peer: "excl", BandwidthMbps: 1000, RTTMs: 5, Up: true},
	), now)
	r.Observe(testHello("good", TierEdge, 4000, 0), now)   // ties with label: id order
	r.Observe(testHello("busy", TierEdge, 1000, 800), now) // 200 free < 500
	r.Observe(testHello("slow", TierEdge, 4000, 0), now)   // 5 Mbit/s
	r.Observe(testHello("far", TierEdge, 4000, 0), now)    // 200 ms
	r.Observe(testHello("cut", TierEdge, 4000, 0), now)    // link down
	r.Observe(testHello("nolink", TierEdge, 4000, 0), now) // nothing measured
	r.Observe(testHello("dead", TierEdge, 4000, 0), now.Add(-time.Hour))
	r.Observe(testHello("late", TierEdge, 4000, 0), now.Add(-1600*time.Millisecond))
	r.Observe(testHello("deep", TierDeepEdge, 4000, 0), now)
	r.Observe(testHello("excl", TierEdge, 4000, 0), now)
	lb := testHello("label", TierEdge, 4000, 0)
	lb.Labels = map[string]string{"zone": "b"}
	r.Observe(lb, now)

	explained := testRequest(req, Constraints{
		ForbidTiers: []string{TierDeepEdge}, WantLabels: nil, ExcludeClusters: []string{"excl"},
		MinBandwidthMbps: 100, MaxRTTMs: 50,
	})
	// Without explain, the index answers with no per-cluster reasons.
	rep := r.Place(LeastLoaded{}, explained, now, 0)
	if !rep.OK() || rep.Destination.ClusterID != "good" || rep.Explain || len(rep.Filtered) != 0 {
		t.Fatalf("indexed reply %+v", rep)
	}
	explained.Explain = true
	rep = r.Place(LeastLoaded{}, explained, now, 0)
	if err := rep.Validate(); err != nil {
		t.Fatalf("reply invalid: %v", err)
	}
	if !rep.OK() || rep.Destination.ClusterID != "good" {
		t.Fatalf("destination %+v, want good; filtered %+v", rep.Destination, rep.Filtered)
	}
	want := map[string]string{
		"home": FilterRequester, "busy": FilterCapacity, "slow": FilterBandwidth, "far": FilterRTT,
		"cut": FilterLink, "nolink": FilterLink, "dead": FilterDown, "late": FilterSuspect,
		"deep": FilterTier, "excl": FilterExcluded,
	}
	got := map[string]string{}
	for _, f := range rep.Filtered {
		got[f.ClusterID] = f.Why
	}
	for id, cat := range want {
		if !strings.HasPrefix(got[id], cat+":") {
			t.Errorf("cluster %s: why %q, want category %s", id, got[id], cat)
		}
	}
	if rep.FilteredTotal != len(want) || len(rep.Filtered) != len(want) {
		t.Errorf("filtered total %d (listed %d), want %d: %+v", rep.FilteredTotal, len(rep.Filtered), len(want), rep.Filtered)
	}
	if !strings.Contains(got["busy"], "200 milli-CPU free, 500 needed") {
		t.Errorf("capacity reason lacks figures: %q", got["busy"])
	}
	// label is a valid alternative; with a label constraint it is the only one.
	rep = r.Place(LeastLoaded{}, testRequest(req, Constraints{WantLabels: map[string]string{"zone": "b"}}), now, 0)
	if !rep.OK() || rep.Destination.ClusterID != "label" {
		t.Fatalf("with label zone=b: %+v", rep)
	}
	// Nothing fits: no placement says why.
	rep = r.Place(LeastLoaded{}, testRequest(req, Constraints{WantTiers: []string{"moon"}}), now, 0)
	if rep.OK() || !strings.Contains(rep.NoPlacement, "tier") || rep.FilteredByReason[FilterTier] == 0 {
		t.Fatalf("impossible tier: %+v", rep)
	}
	if err := rep.Validate(); err != nil {
		t.Fatalf("no-placement reply invalid: %v", err)
	}
}

func TestPlacementDeterministicTies(t *testing.T) {
	now := time.Unix(3000, 0)
	r := NewRegistry(time.Second, 3)
	for _, id := range []string{"d", "b", "c", "a", "e"} {
		r.Observe(testHello(id, TierEdge, 2000, 0), now)
	}
	for range 5 {
		rep := r.Place(LeastLoaded{}, testRequest("e", Constraints{}), now, 0)
		if rep.Destination.ClusterID != "a" || len(rep.Alternatives) != 3 ||
			rep.Alternatives[0].ClusterID != "b" || rep.Alternatives[1].ClusterID != "c" || rep.Alternatives[2].ClusterID != "d" {
			t.Fatalf("ties not broken by id: %+v %+v", rep.Destination, rep.Alternatives)
		}
	}
	// Less loaded wins over the id order.
	r.Observe(func() Hello { h := testHello("z", TierEdge, 8000, 0); h.Capacity.MemoryMB = 16384; h.Seq = 2; return h }(), now)
	if rep := r.Place(LeastLoaded{}, testRequest("e", Constraints{}), now, 0); rep.Destination.ClusterID != "z" {
		t.Fatalf("least loaded: %s", rep.Destination.ClusterID)
	}
}

func TestTierPolicy(t *testing.T) {
	now := time.Unix(4000, 0)
	build := func(cloudBW float64) *Registry {
		r := NewRegistry(time.Second, 3)
		r.Observe(testHello("deep", TierDeepEdge, 1000, 900,
			Link{Peer: "cloud", BandwidthMbps: cloudBW, RTTMs: 30, Up: true},
			Link{Peer: "edge", BandwidthMbps: 500, RTTMs: 5, Up: true},
			Link{Peer: "deep2", BandwidthMbps: 1000, RTTMs: 1, Up: true}), now)
		r.Observe(testHello("cloud", TierCloud, 64000, 60000), now) // busy but cloud
		r.Observe(testHello("edge", TierEdge, 4000, 0), now)
		r.Observe(testHello("deep2", TierDeepEdge, 4000, 0), now)
		return r
	}
	c := Constraints{MinBandwidthMbps: 100}
	if rep := build(200).Place(TierAware{}, testRequest("deep", c), now, 0); !rep.OK() || rep.Destination.ClusterID != "cloud" {
		t.Fatalf("cloud link meets the need: %+v", rep)
	}
	rep := build(50).Place(TierAware{}, testRequest("deep", c), now, 0)
	if !rep.OK() || rep.Destination.ClusterID != "edge" {
		t.Fatalf("cloud link too thin, want edge: %+v", rep)
	}
	// Edge too thin: stay (no placement), with each cluster's reason.
	r := build(50)
	r.Observe(func() Hello { h := testHello("edge", TierEdge, 4000, 4000); h.Seq = 2; return h }(), now)
	rep = r.Place(TierAware{}, testRequest("deep", c), now, 0)
	if rep.OK() || rep.FilteredTotal != 4 {
		t.Fatalf("nothing but deep edge left: %+v", rep)
	}
	for _, f := range rep.Filtered {
		if f.ClusterID == "deep2" && !strings.HasPrefix(f.Why, FilterTier) {
			t.Fatalf("deep2 filtered for %q, want the tier rule", f.Why)
		}
	}
}

func TestFilteredListBounded(t *testing.T) {
	now := time.Unix(5000, 0)
	r := NewRegistry(time.Second, 3)
	for i := range 500 {
		r.Observe(testHello("c"+strconv.Itoa(i), TierEdge, 100, 100), now)
	}
	rep := r.Place(LeastLoaded{}, testRequest("zz", Constraints{}), now, 0)
	if rep.OK() || rep.FilteredTotal != 500 || len(rep.Filtered) != MaxFiltered || rep.FilteredByReason[FilterCapacity] != 500 {
		t.Fatalf("total %d listed %d by reason %v", rep.FilteredTotal, len(rep.Filtered), rep.FilteredByReason)
	}
}

// TestHelloSequence: within one incarnation a hello must be above the last
// kept and not far ahead of it (MaxSeqAhead plus one per 10 ms elapsed); a
// new incarnation is a restart whose seq starts over, and the incarnation
// it replaced cannot come back.
func TestHelloSequence(t *testing.T) {
	r := NewRegistry(time.Second, 3)
	t0 := time.Unix(1000, 0)
	h := testHello("a", TierEdge, 1000, 0)
	h.Incarnation, h.Seq = "run1", 1
	if got := r.Observe(h, t0); got != ObserveNew {
		t.Fatalf("first hello: %v", got)
	}
	seqOf := func() uint64 { c, _, _ := r.Get(t0, "a"); return c.Hello.Seq }
	for _, tc := range []struct {
		name string
		inc  string
		seq  uint64
		at   time.Duration
		want ObserveResult
		kept uint64
	}{
		{"next", "run1", 2, 0, ObserveUpdated, 2},
		{"forged far ahead", "run1", 1<<64 - 1, 0, ObserveAhead, 2},
		{"just past the bound", "run1", 2 + MaxSeqAhead + 1, 0, ObserveAhead, 2},
		{"at the bound", "run1", 2 + MaxSeqAhead, 0, ObserveUpdated, 2 + MaxSeqAhead},
		// 10 s without a hello kept allow 1,000 more (hellos the MO missed).
		{"after a gap", "run1", 2 + 2*MaxSeqAhead + 1000, 10 * time.Second, ObserveUpdated, 2 + 2*MaxSeqAhead + 1000},
		{"replayed", "run1", 5, 10 * time.Second, ObserveStale, 2 + 2*MaxSeqAhead + 1000},
		{"restart: new incarnation from 1", "run2", 1, 11 * time.Second, ObserveUpdated, 1},
		{"old incarnation late", "run1", 3000, 11 * time.Second, ObserveStale, 1},
		{"new incarnation forged far ahead", "run3", 1 << 40, 11 * time.Second, ObserveAhead, 1},
		{"run2 goes on", "run2", 2, 12 * time.Second, ObserveUpdated, 2},
	} {
		h.Incarnation, h.Seq = tc.inc, tc.seq
		if got := r.Observe(h, t0.Add(tc.at)); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
		if got := seqOf(); got != tc.kept {
			t.Errorf("%s: kept seq %d, want %d", tc.name, got, tc.kept)
		}
	}
}

// TestNetworkAwareFromHome plays the paper's degraded phase: the service
// runs at the cloud (the requester), its need is checked on the path from
// the home, where users' traffic enters. The home measured 2 Mbit/s to the
// cloud and 900 to the edge: the edge is chosen, the home itself (deep
// edge) is ruled out by tier and says so, and an alternative says why it
// ranked lower.
func TestNetworkAwareFromHome(t *testing.T) {
	now := time.Unix(1000, 0)
	r := NewRegistry(time.Second, 3)
	r.Observe(testHello("home", TierDeepEdge, 4000, 0,
		Link{Peer: "cloud", BandwidthMbps: 2, RTTMs: 0.1, Up: true},
		Link{Peer: "edge", BandwidthMbps: 900, RTTMs: 0.1, Up: true},
		Link{Peer: "edge2", BandwidthMbps: 900, RTTMs: 0.1, Up: true},
		Link{Peer: "cloud2", BandwidthMbps: 5, RTTMs: 0.1, Up: true}), now)
	r.Observe(testHello("cloud", TierCloud, 4000, 0), now)
	r.Observe(testHello("cloud2", TierCloud, 4000, 0), now)
	r.Observe(testHello("edge", TierEdge, 4000, 0), now)
	r.Observe(testHello("edge2", TierEdge, 4000, 2000), now)
	req := testRequest("cloud", Constraints{MinBandwidthMbps: 10, LinkFrom: LinkFromHome})
	req.Home = "home"
	req.Reason = ReasonNetworkChange
	for _, explain := range []bool{false, true} {
		req.Explain = explain
		rep := r.Place(TierAware{}, req, now, 0)
		if rep.Destination == nil || rep.Destination.ClusterID != "edge" {
			t.Fatalf("explain %v: reply %+v, want edge", explain, rep)
		}
		if len(rep.Alternatives) != 1 || rep.Alternatives[0].ClusterID != "edge2" || !strings.Contains(rep.Alternatives[0].Why, "ranked lower: load after") {
			t.Fatalf("explain %v: alternatives %+v", explain, rep.Alternatives)
		}
		if !explain {
			continue
		}
		why := map[string]string{}
		for _, f := range rep.Filtered {
			why[f.ClusterID] = f.Why
		}
		for id, want := range map[string]string{"cloud": "requester", "cloud2": "bandwidth: 5 Mbit/s from home, 10 needed", "home": "tier"} {
			if !strings.HasPrefix(why[id], want) {
				t.Errorf("%s filtered %q, want %q", id, why[id], want)
			}
		}
		t.Logf("reply: %s; alternatives %+v; filtered %+v", rep.Reason, rep.Alternatives, rep.Filtered)
	}
	// When the home may take it (least-loaded), its own path is local and
	// meets any bandwidth need.
	req2 := testRequest("edge", Constraints{MinBandwidthMbps: 10, LinkFrom: LinkFromHome, ExcludeClusters: []string{"edge2", "cloud2"}})
	req2.Home = "home"
	rep := r.Place(LeastLoaded{}, req2, now, 0)
	if rep.Destination == nil || rep.Destination.ClusterID != "home" || !strings.Contains(rep.Destination.Why, "link local") {
		t.Fatalf("home as a candidate: %+v", rep)
	}
}
