package main

import (
	"net/netip"
	"testing"

	"github.com/roamnet/roam/dataplane"
	"github.com/roamnet/roam/dataplane/dptest"
	"github.com/roamnet/roam/dataplane/lb"
)

// TestDataplaneDumpSRv6: the dump shows the node's SID, a home frontend's
// SRv6 path (active and staged) with its counters, and a copy at this node
// with its state.
func TestDataplaneDumpSRv6(t *testing.T) {
	pin := dptest.PinPath(t)
	locs := []netip.Prefix{netip.MustParsePrefix("fc00:0:1::/48"), netip.MustParsePrefix("fc00:0:2::/48"), netip.MustParsePrefix("fc00:0:3::/48")}
	dp := dptest.New(t, dataplane.Config{PinPath: pin, SRv6: dataplane.SRv6Config{SID: netip.MustParseAddr("fc00:0:1::1"), Locators: locs}})
	f, _ := lb.ParseFrontend("10.0.0.1:80/tcp")
	one, _ := lb.ParseTarget("srv6:fc00:0:2::1")
	two, _ := lb.ParseTarget("srv6:fc00:0:2::1,fc00:0:3::1")
	activeAndStaged(t, dp, f, one, two)
	c, _ := lb.ParseFrontend("10.9.9.9:7000/udp")
	if err := dp.SetSRv6Copy(c, dataplane.SRv6Draining); err != nil {
		t.Fatal(err)
	}
	dumpShows(t, pin, "srv6: SID fc00:0:1::1", "ACTIVE PATH", "srv6:fc00:0:2::1  ", "srv6:fc00:0:2::1,fc00:0:3::1", "10.9.9.9:7000/udp  draining")
}
