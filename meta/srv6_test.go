package meta

import (
	"encoding/json"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// TestHelloLocator: a cluster's SRv6 locator travels in its hello and on to
// the placement's candidates; a bad one is refused with the reason.
func TestHelloLocator(t *testing.T) {
	h := testHello("a", TierEdge, 1000, 0)
	h.Locator = netip.MustParsePrefix("fc00:0:1::/48")
	if err := h.Validate(); err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(h)
	if err != nil || !strings.Contains(string(b), `"locator":"fc00:0:1::/48"`) {
		t.Fatalf("hello JSON %s, %v", b, err)
	}
	var back Hello
	if err := json.Unmarshal(b, &back); err != nil || back.Locator != h.Locator {
		t.Fatalf("round trip %v, %v", back.Locator, err)
	}
	plain, _ := json.Marshal(testHello("b", TierEdge, 1000, 0))
	if strings.Contains(string(plain), "locator") {
		t.Fatalf("hello without a locator carries one: %s", plain)
	}
	for _, bad := range []string{"10.0.0.0/8", "fc00:0:1::1/48", "fc00::/8", "fc00::/112"} {
		h.Locator = netip.MustParsePrefix(bad)
		if err := h.Validate(); err == nil || !strings.Contains(err.Error(), "locator") {
			t.Errorf("locator %s: %v", bad, err)
		}
	}

	now := time.Unix(1000, 0)
	r := NewRegistry(time.Second, 3)
	ha := testHello("a", TierEdge, 4000, 0)
	ha.Locator = netip.MustParsePrefix("fc00:0:2::/48")
	r.Observe(ha, now)
	rep := r.Place(LeastLoaded{}, testRequest("home", Constraints{}), now, 0)
	if !rep.OK() || rep.Destination.Locator != ha.Locator {
		t.Fatalf("placement %+v: want the destination's locator %s", rep, ha.Locator)
	}
}

// TestLocatorOverlapRefused: over a real NATS, a hello whose SRv6 locator
// overlaps another live cluster's (a covering prefix would let its cluster
// name the other's node SIDs) is refused and counted; the first holder
// keeps its locator, and a disjoint one is taken.
func TestLocatorOverlapRefused(t *testing.T) {
	s := startServer(t, ServerConfig{})
	nc := connect(t, s.ClientURL())
	publish := func(id, loc string, seq uint64) {
		t.Helper()
		h := testHello(id, TierEdge, 1000, 0)
		h.Seq, h.Locator = seq, netip.MustParsePrefix(loc)
		b, err := jsonMarshal(h)
		if err != nil {
			t.Fatal(err)
		}
		if err := nc.Publish(HelloSubject(id), b); err != nil {
			t.Fatal(err)
		}
		if err := nc.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	locatorOf := func(id string) (netip.Prefix, bool) {
		c, _, ok := s.Registry().Get(time.Now(), id)
		if !ok {
			return netip.Prefix{}, false
		}
		return c.Hello.Locator, true
	}
	taken := func() float64 {
		return metricValue(t, s, "roam_meta_hellos_total", map[string]string{"result": "locator_taken"})
	}
	publish("a", "fc00:0:1::/48", 1)
	waitFor(t, "a registered", func() bool { _, ok := locatorOf("a"); return ok })
	// b announces a prefix covering a's, then one inside it: both refused.
	publish("b", "fc00::/16", 1)
	waitFor(t, "b's covering locator refused", func() bool { return taken() == 1 })
	publish("b", "fc00:0:1:5::/64", 2)
	waitFor(t, "b's covered locator refused", func() bool { return taken() == 2 })
	if _, ok := locatorOf("b"); ok {
		t.Fatal("b registered with a locator overlapping a's")
	}
	// A disjoint one is taken.
	publish("b", "fc00:0:2::/48", 3)
	waitFor(t, "b registered", func() bool { l, ok := locatorOf("b"); return ok && l.String() == "fc00:0:2::/48" })
	// a may not move onto b's: it keeps its own.
	publish("a", "fc00:0:2:1::/64", 2)
	waitFor(t, "a's move onto b's locator refused", func() bool { return taken() == 3 })
	if l, _ := locatorOf("a"); l.String() != "fc00:0:1::/48" {
		t.Fatalf("a's locator is %s after a refused hello, want fc00:0:1::/48", l)
	}
	// Its next hello keeping its own is taken as ever.
	publish("a", "fc00:0:1::/48", 3)
	waitFor(t, "a's next hello", func() bool { c, _, _ := s.Registry().Get(time.Now(), "a"); return c.Hello.Seq == 3 })
	if taken() != 3 {
		t.Fatalf("locator_taken = %v, want 3", taken())
	}
}

// TestLocatorBackFromDown: a locator is held while its cluster is in the
// index; once the cluster is down (swept) another may take it, and the
// first one, back, is then refused until it announces another.
func TestLocatorBackFromDown(t *testing.T) {
	now := time.Unix(1000, 0)
	r := NewRegistry(time.Second, 2)
	ha := testHello("a", TierEdge, 1000, 0)
	ha.Locator = netip.MustParsePrefix("fc00:0:1::/48")
	if res := r.Observe(ha, now); res != ObserveNew {
		t.Fatalf("a: %v", res)
	}
	hb := testHello("b", TierEdge, 1000, 0)
	hb.Locator = netip.MustParsePrefix("fc00::/32")
	if res := r.Observe(hb, now); res != ObserveLocatorTaken {
		t.Fatalf("b over live a: %v, want ObserveLocatorTaken", res)
	}
	if got := r.LocatorHolder("b", hb.Locator); got != "a" {
		t.Fatalf("holder %q, want a", got)
	}
	now = now.Add(10 * time.Second)
	r.Sweep(now, nil) // a is down
	if res := r.Observe(hb, now); res != ObserveNew {
		t.Fatalf("b once a is down: %v", res)
	}
	ha.Seq = 2
	if res := r.Observe(ha, now); res != ObserveLocatorTaken {
		t.Fatalf("a back from down onto b's locator: %v, want ObserveLocatorTaken", res)
	}
	ha.Seq, ha.Locator = 3, netip.MustParsePrefix("fc01:0:1::/48")
	if res := r.Observe(ha, now); res != ObserveUpdated {
		t.Fatalf("a with a disjoint locator: %v", res)
	}
}
