package api

import (
	"net/netip"
	"strings"
	"testing"
)

// TestEndpointPolicy: what a peer may name as a copy's endpoint (in a
// moved-on notice or a reply): a unicast address the cluster declares in
// its hello; never loopback or link-local outside the in-process tests.
func TestEndpointPolicy(t *testing.T) {
	dir := testDir{data: map[string][]netip.Addr{
		"b": {netip.MustParseAddr("192.0.2.10"), netip.MustParseAddr("2001:db8::10")},
	}}
	cases := []struct {
		ep, cluster string
		loopback    bool
		err         string // "" accepted
	}{
		{"192.0.2.10:80", "b", false, ""},
		{"[2001:db8::10]:80", "b", false, ""},
		{"192.0.2.11:80", "b", false, "not among the addresses b declares"},
		{"[2001:db8::11]:80", "b", false, "not among the addresses b declares"},
		{"192.0.2.10:0", "b", false, "invalid"},
		{"127.0.0.1:80", "b", false, "loopback or link-local"},
		{"[::1]:80", "b", false, "loopback or link-local"},
		{"169.254.1.1:80", "b", false, "loopback or link-local"},
		{"[fe80::1]:80", "b", false, "loopback or link-local"},
		{"[fe80::1%eth0]:80", "b", false, "zoned"},
		{"[::ffff:192.0.2.10]:80", "b", false, "IPv4-mapped"},
		{"0.0.0.0:80", "b", false, "not a unicast address"},
		{"255.255.255.255:80", "b", false, "not a unicast address"},
		{"224.0.0.1:80", "b", false, "not a unicast address"},
		{"[ff02::1]:80", "b", false, "not a unicast address"},
		// The in-process tests' clusters live on lo: allowed there only,
		// and still only where the cluster declares.
		{"127.0.0.1:80", "c", true, ""},
		{"127.0.0.1:80", "b", true, "not among the addresses b declares"},
		// A cluster that declares nothing (a configured peer without a
		// hello) is held to the address checks alone.
		{"198.51.100.1:80", "c", false, ""},
	}
	for _, tc := range cases {
		err := EndpointPolicy{AllowLoopback: tc.loopback}.Check(dir, tc.cluster, netip.MustParseAddrPort(tc.ep))
		switch {
		case tc.err == "" && err != nil:
			t.Errorf("%s of %s (loopback %v): refused: %v", tc.ep, tc.cluster, tc.loopback, err)
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("%s of %s (loopback %v): %v, want %q", tc.ep, tc.cluster, tc.loopback, err, tc.err)
		}
	}
}
