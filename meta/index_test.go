package meta

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strconv"
	"testing"
	"time"

	"github.com/roamnet/roam/dataplane/lb"
)

// world is a random registry that evolves step by step: hellos (new,
// updated, moved between tiers, links and labels changed), clusters
// forgotten, sweeps, reservations made and expired.
type world struct {
	rng   *rand.Rand
	reg   *Registry
	now   time.Time
	seq   uint64
	ids   []string
	tiers []string
	// expiredAt is the time the step just passed to ExpireReservations
	// (zero when it did not).
	expiredAt time.Time
}

func newWorld(seed uint64) *world {
	w := &world{rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), reg: NewRegistry(time.Second, 3),
		now: time.Unix(100000, 0), tiers: []string{TierEdge, TierCloud, TierDeepEdge, "moon"}}
	n := 1 + w.rng.IntN(80)
	for i := range n {
		w.ids = append(w.ids, "c"+strconv.Itoa(i))
	}
	for range n {
		w.hello(w.pick())
	}
	return w
}

func (w *world) pick() string { return w.ids[w.rng.IntN(len(w.ids))] }

func (w *world) hello(id string) {
	r := w.rng
	w.seq++
	// Few distinct figures, so loads tie and the id order decides.
	caps := []int64{0, 1000, 4000, 16000}
	h := Hello{Version: Version, ClusterID: id, Seq: w.seq, Tier: w.tiers[r.IntN(len(w.tiers))],
		ControllerURL: "http://" + id + ":1", DataAddrs: []netip.Addr{netip.MustParseAddr("10.0.0.1")},
		Capacity: Capacity{MilliCPU: caps[r.IntN(len(caps))], MemoryMB: caps[r.IntN(len(caps))], Pods: int64(r.IntN(4) * 5)}}
	switch r.IntN(3) {
	case 0: // a fleet of identical idle clusters: ties everywhere
		h.Capacity = Capacity{MilliCPU: 16000, MemoryMB: 4000, Pods: 15}
	case 1:
		h.Capacity.UsedMilliCPU = h.Capacity.MilliCPU * int64(r.IntN(5)) / 4
		h.Capacity.UsedMemoryMB = h.Capacity.MemoryMB * int64(r.IntN(5)) / 4
		h.Capacity.UsedPods = h.Capacity.Pods * int64(r.IntN(5)) / 4
	default:
		h.Capacity.UsedMilliCPU = r.Int64N(h.Capacity.MilliCPU + 1)
		h.Capacity.UsedMemoryMB = r.Int64N(h.Capacity.MemoryMB + 1)
		h.Capacity.UsedPods = r.Int64N(h.Capacity.Pods + 1)
	}
	if r.IntN(3) == 0 {
		h.Labels = map[string]string{"zone": "z" + strconv.Itoa(r.IntN(3))}
		if r.IntN(2) == 0 {
			h.Labels["gpu"] = "yes"
		}
	}
	for range r.IntN(4) {
		h.Links = append(h.Links, Link{Peer: w.pick(), BandwidthMbps: float64(r.IntN(4) * 100), RTTMs: float64(r.IntN(4) * 10), Up: r.IntN(5) > 0})
	}
	if r.IntN(10) == 0 {
		h.IntervalMs = 3000
	}
	if r.IntN(4) == 0 {
		h.Locator = netip.MustParsePrefix("fd00:" + strconv.Itoa(r.IntN(9)) + "::/48")
	}
	// Some hellos are old: suspect or down at w.now.
	seen := w.now.Add(-[]time.Duration{0, 0, 0, 1600 * time.Millisecond, 10 * time.Second}[r.IntN(5)])
	if r.IntN(4) == 0 {
		for rid, rv := range w.reg.resv {
			if rv.dest == id {
				h.Placed = append(h.Placed, rid)
				break
			}
		}
	}
	w.reg.Observe(h, seen)
}

func (w *world) step() {
	r := w.rng
	switch r.IntN(10) {
	case 0:
		w.reg.Forget(w.pick())
	case 1:
		w.now = w.now.Add(time.Duration(r.IntN(3000)) * time.Millisecond)
		w.reg.Sweep(w.now, nil)
	case 2:
		w.expiredAt = w.now.Add(time.Duration(r.IntN(60)) * time.Second)
		if left := w.reg.ExpireReservations(w.expiredAt); left != len(w.reg.resv) {
			panic(fmt.Sprintf("ExpireReservations says %d left, %d held", left, len(w.reg.resv)))
		}
	case 3, 4:
		w.reg.Reserve("p"+strconv.Itoa(r.IntN(30)), w.pick(), Resources{MilliCPU: int64(r.IntN(3) * 500), MemoryMB: int64(r.IntN(3) * 512)},
			w.now.Add(time.Duration(1+r.IntN(60))*time.Second))
	default:
		w.hello(w.pick())
	}
}

// checkReservations compares the registry's reservation bookkeeping with
// its reservations: the sums per destination (and each entry's Reserved)
// with a brute-force sum, the expiry heap with the set, and no
// reservation left that the last ExpireReservations should have ended.
func (w *world) checkReservations() error {
	r := w.reg
	want := map[string]Reserved{}
	for id, rv := range r.resv {
		if rv.id != id {
			return fmt.Errorf("reservation %s filed under %s", rv.id, id)
		}
		sum := want[rv.dest]
		sum.MilliCPU += rv.res.MilliCPU
		sum.MemoryMB += rv.res.MemoryMB
		sum.Pods++
		want[rv.dest] = sum
		if !w.expiredAt.IsZero() && !w.expiredAt.Before(rv.expires) {
			return fmt.Errorf("reservation %s expired at %s is still held after ExpireReservations(%s)", id, rv.expires, w.expiredAt)
		}
	}
	if len(r.resvSum) != len(want) {
		return fmt.Errorf("sums for %d destinations, reservations at %d", len(r.resvSum), len(want))
	}
	for dest, sum := range want {
		if r.resvSum[dest] != sum {
			return fmt.Errorf("reserved at %s: %+v, reservations add up to %+v", dest, r.resvSum[dest], sum)
		}
		if s := r.byID[dest]; s != nil && s.c().Reserved != sum {
			return fmt.Errorf("entry %s carries %+v reserved, reservations add up to %+v", dest, s.c().Reserved, sum)
		}
	}
	if len(r.resvExp) != len(r.resv) {
		return fmt.Errorf("expiry heap holds %d, reservations %d", len(r.resvExp), len(r.resv))
	}
	for i, rv := range r.resvExp {
		if rv.at != i || r.resv[rv.id] != rv {
			return fmt.Errorf("expiry heap slot %d: %s at %d", i, rv.id, rv.at)
		}
		if i > 0 && rv.expires.Before(r.resvExp[(i-1)/2].expires) {
			return fmt.Errorf("expiry heap out of order at %d", i)
		}
	}
	return nil
}

func (w *world) request() PlacementRequest {
	r := w.rng
	req := PlacementRequest{Version: Version, RequestID: "q", Requester: w.pick(), Home: w.pick(), Reason: ReasonManual,
		Service: ServiceDescriptor{Name: "s", Ports: []Port{{Port: 80, Protocol: lb.TCP}},
			Resources: Resources{MilliCPU: int64(r.IntN(4) * 250), MemoryMB: int64(r.IntN(4) * 256)}}}
	if r.IntN(3) == 0 {
		req.Service.Resources = Resources{MilliCPU: r.Int64N(3000), MemoryMB: r.Int64N(3000)}
	}
	if r.IntN(5) == 0 {
		req.Requester = "stranger"
	}
	c := &req.Service.Constraints
	if r.IntN(4) == 0 {
		c.WantTiers = []string{w.tiers[r.IntN(len(w.tiers))]}
	}
	if r.IntN(4) == 0 {
		c.ForbidTiers = []string{w.tiers[r.IntN(len(w.tiers))]}
	}
	if r.IntN(4) == 0 {
		c.WantLabels = map[string]string{"zone": "z" + strconv.Itoa(r.IntN(3))}
		if r.IntN(2) == 0 {
			c.WantLabels["gpu"] = "yes"
		}
	}
	if r.IntN(4) == 0 {
		c.ExcludeClusters = []string{w.pick(), w.pick()}
	}
	if r.IntN(6) == 0 {
		c.MinBandwidthMbps = float64(r.IntN(3) * 100)
	}
	if r.IntN(6) == 0 {
		c.MaxRTTMs = float64(r.IntN(3) * 10)
	}
	if r.IntN(3) == 0 {
		c.LinkFrom = LinkFromHome
	}
	return req
}

func sameDecision(a, b PlacementReply) error {
	ids := func(r PlacementReply) string {
		if r.Destination == nil {
			return "none"
		}
		s := fmt.Sprintf("%s:%v", r.Destination.ClusterID, r.Destination.Score)
		for _, c := range r.Alternatives {
			s += fmt.Sprintf(" %s:%v", c.ClusterID, c.Score)
		}
		return s
	}
	if ids(a) != ids(b) {
		return fmt.Errorf("index %s, scan %s", ids(a), ids(b))
	}
	return nil
}

// sameEncoding checks that PlaceEncoded gives the bytes json.Marshal
// gives for Place's reply (with DecidedBy), or that reply to marshal.
func sameEncoding(reg *Registry, p Policy, req PlacementRequest, now time.Time, want PlacementReply) error {
	want.DecidedBy = "mo-<1>&\u2028"
	wantB, err := json.Marshal(want)
	if err != nil {
		return err
	}
	got, dest, rep := reg.PlaceEncoded(p, &req, now, []byte("kept"), want.DecidedBy)
	if rep != nil {
		if string(got) != "kept" {
			return fmt.Errorf("PlaceEncoded wrote %q and returned a reply", got)
		}
		if got, err = json.Marshal(rep); err != nil {
			return err
		}
	} else if !bytes.HasPrefix(got, []byte("kept")) {
		return fmt.Errorf("PlaceEncoded did not append: %q", got)
	} else {
		got = got[len("kept"):]
	}
	if string(got) != string(wantB) {
		return fmt.Errorf("encoded reply\n%s\nwant\n%s", got, wantB)
	}
	if want.Destination != nil && dest != want.Destination.ClusterID || want.Destination == nil && dest != "" {
		return fmt.Errorf("destination %q, reply %+v", dest, want.Destination)
	}
	return nil
}

// checkWorld compares the index with the reference scan for random
// requests under both policies.
func checkWorld(t *testing.T, seed uint64) {
	w := newWorld(seed)
	for step := range 40 {
		w.expiredAt = time.Time{}
		w.step()
		if err := w.checkReservations(); err != nil {
			t.Fatalf("seed %d step %d: %v", seed, step, err)
		}
		req := w.request()
		for _, p := range []Policy{LeastLoaded{}, TierAware{}} {
			idx := w.reg.Place(p, req, w.now, 0)
			scan := w.reg.Explain(p, req, w.now)
			if err := sameDecision(idx, scan); err != nil {
				t.Fatalf("seed %d step %d policy %s request %+v: %v", seed, step, p.Name(), req.Service.Constraints, err)
			}
			if err := idx.Validate(); err != nil {
				t.Fatalf("seed %d: reply invalid: %v", seed, err)
			}
			if err := sameEncoding(w.reg, p, req, w.now, idx); err != nil {
				t.Fatalf("seed %d step %d policy %s: %v", seed, step, p.Name(), err)
			}
		}
	}
}

// TestIndexMatchesScan is the property the index must keep: on any
// registry, for any request, it answers as the full scan does.
func TestIndexMatchesScan(t *testing.T) {
	for seed := range uint64(500) {
		checkWorld(t, seed)
	}
}

func FuzzIndexMatchesScan(f *testing.F) {
	for _, s := range []uint64{1, 2, 3, 42, 1 << 40} {
		f.Add(s)
	}
	f.Fuzz(checkWorld)
}

// TestReservationsSpreadPlacements: identical clusters, identical requests
// placed one after another with a reservation each: they spread evenly;
// a hello listing a placement ends its reservation, and so does time.
func TestReservationsSpreadPlacements(t *testing.T) {
	now := time.Unix(6000, 0)
	r := NewRegistry(time.Second, 3)
	for i := range 10 {
		h := testHello("c"+strconv.Itoa(i), TierEdge, 16000, 0)
		h.Capacity.Pods = 110
		r.Observe(h, now)
	}
	by := map[string]int{}
	for i := range 100 {
		req := testRequest("home", Constraints{})
		req.RequestID = "r" + strconv.Itoa(i)
		rep := r.Place(LeastLoaded{}, req, now, time.Minute)
		if !rep.OK() {
			t.Fatalf("placement %d: %s", i, rep.NoPlacement)
		}
		by[rep.Destination.ClusterID]++
	}
	for id, n := range by {
		if n != 10 {
			t.Fatalf("%s got %d of 100 placements, want 10 each: %v", id, n, by)
		}
	}
	if r.Reservations() != 100 {
		t.Fatalf("%d reservations, want 100", r.Reservations())
	}
	c, _, _ := r.Get(now, "c0")
	if c.Reserved.MilliCPU != 10*500 || c.Reserved.Pods != 10 || c.Effective().UsedMilliCPU != 10*500 {
		t.Fatalf("c0 reserved %+v effective %+v", c.Reserved, c.Effective())
	}
	// c0's hello shows two of its placements: their reservations end.
	var placed []string
	for id, rv := range r.resv {
		if rv.dest == "c0" && len(placed) < 2 {
			placed = append(placed, id)
		}
	}
	h := testHello("c0", TierEdge, 16000, 1000)
	h.Seq, h.Placed, h.Capacity.Pods = 2, placed, 110
	r.Observe(h, now)
	if c, _, _ := r.Get(now, "c0"); c.Reserved.Pods != 8 || c.Effective().UsedMilliCPU != 1000+8*500 {
		t.Fatalf("after the hello: reserved %+v effective %+v", c.Reserved, c.Effective())
	}
	// Placing again under the same id moves the reservation.
	if left := r.ExpireReservations(now.Add(time.Minute)); left != 0 {
		t.Fatalf("%d reservations left after expiry", left)
	}
	if c, _, _ := r.Get(now, "c5"); c.Reserved != (Reserved{}) || c.Effective() != c.Hello.Capacity {
		t.Fatalf("c5 after expiry: %+v", c.Reserved)
	}
}
