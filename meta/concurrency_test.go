package meta

import (
	"strconv"
	"sync"
	"testing"
	"time"
)

// TestConcurrentIngestAndPlacement runs hellos (unchanged ones on the
// fast path, changed ones that keep or move a cluster's place in the
// index), placements with and without reservations, sweeps and expiries
// at once, two hello senders per cluster racing on the same entries (run
// with -race). Then: every cluster keeps the highest seq sent, the index
// holds every indexed cluster at its key in order, and the index answers
// as the full scan does.
func TestConcurrentIngestAndPlacement(t *testing.T) {
	const clusters, hellos = 40, 60
	now := time.Unix(9000, 0)
	r := NewRegistry(time.Second, 3)
	base := make([]Hello, clusters)
	for i := range clusters {
		h := testHello("k"+strconv.Itoa(i), []string{TierEdge, TierCloud}[i%2], 16000, int64(i*100))
		h.Incarnation, h.Capacity.Pods = "run1", 110
		h.Labels = map[string]string{"zone": "z" + strconv.Itoa(i%3)}
		base[i] = h
		_, f := mustFrame(t, h)
		r.observe(h, now, f.hash)
	}
	var wg sync.WaitGroup
	// Two senders per cluster, each with every seq: hello seq s is
	// unchanged (fast path) unless s%5 == 0 (Services changed: decoded,
	// same place) or s%11 == 0 (used CPU changed: the cluster moves).
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for s := 2; s <= hellos; s++ {
				for i := range clusters {
					h := base[i]
					h.Seq = uint64(s)
					if s%5 == 0 {
						h.Services = s
					}
					if s%11 == 0 {
						h.Capacity.UsedMilliCPU += int64(s * 10)
					}
					b, f := mustFrame(t, h)
					if _, _, same := r.observeSame(h.ClusterID, &f, now); same {
						continue
					}
					dh, err := DecodeHello(b)
					if err != nil {
						t.Error(err)
						return
					}
					r.observe(dh, now, f.hash)
				}
			}
		}()
	}
	wg.Add(2)
	go func() {
		defer wg.Done()
		for i := range 300 {
			req := testRequest("home", Constraints{})
			req.RequestID = "p" + strconv.Itoa(i)
			if rep := r.Place(LeastLoaded{}, req, now, time.Duration(i%2)*time.Second); !rep.OK() {
				t.Errorf("placement %d: %s", i, rep.NoPlacement)
				return
			}
			if i%3 == 0 {
				r.Reserve("x"+strconv.Itoa(i), "k"+strconv.Itoa(i%clusters), Resources{MilliCPU: 10}, now.Add(time.Second))
			}
		}
	}()
	go func() {
		defer wg.Done()
		for i := range 50 {
			r.Sweep(now, nil)
			r.ExpireReservations(now.Add(time.Duration(i%2) * 2 * time.Second))
		}
	}()
	wg.Wait()
	if t.Failed() {
		return
	}
	for i := range clusters {
		c, st, ok := r.Get(now, base[i].ClusterID)
		if !ok || st != StateAlive || c.Hello.Seq != hellos {
			t.Fatalf("cluster %d: ok %v state %v seq %d, want seq %d", i, ok, st, c.Hello.Seq, hellos)
		}
	}
	r.mu.RLock()
	n := 0
	for tier, tt := range r.tiers {
		var prev *slot
		tt.tree.Ascend(func(s *slot) bool {
			n++
			if !s.indexed || s.key != s.c().load || s.c().Hello.Tier != tier {
				t.Errorf("%s: indexed %v key %v load %v tier %s in tree %s", s.c().Hello.ClusterID, s.indexed, s.key, s.c().load, s.c().Hello.Tier, tier)
			}
			if prev != nil && !slotLess(prev, s) {
				t.Errorf("tree %s out of order at %s", tier, s.c().Hello.ClusterID)
			}
			prev = s
			return true
		})
	}
	r.mu.RUnlock()
	if n != clusters {
		t.Fatalf("%d clusters in the index, want %d", n, clusters)
	}
	for _, p := range []Policy{LeastLoaded{}, TierAware{}} {
		req := testRequest("home", Constraints{WantLabels: map[string]string{"zone": "z1"}})
		for _, q := range []PlacementRequest{req, testRequest("home", Constraints{})} {
			if err := sameDecision(r.Place(p, q, now, 0), r.Explain(p, q, now)); err != nil {
				t.Fatalf("policy %s: %v", p.Name(), err)
			}
		}
	}
}
