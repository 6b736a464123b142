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
