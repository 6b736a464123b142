package main

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/roamnet/roam/dataplane"
)

// TestRefusesWithoutAuthentication: the agent API can point any frontend
// anywhere, so the agent does not start with neither an identity
// (--tls-dir) nor an explicit --insecure (issue 11 item 5).
func TestRefusesWithoutAuthentication(t *testing.T) {
	if _, err := parseFlags(nil); err == nil || !strings.Contains(err.Error(), "--tls-dir") {
		t.Fatalf("no --tls-dir, no --insecure: %v, want a refusal naming --tls-dir", err)
	}
	for _, args := range [][]string{{"--insecure"}, {"--tls-dir", t.TempDir()}} {
		o, err := parseFlags(args)
		if err != nil {
			t.Fatalf("%v: %v", args, err)
		}
		if o.insecure != (args[0] == "--insecure") || (o.tlsDir != "") == o.insecure {
			t.Fatalf("%v: parsed %+v", args, o)
		}
	}
	for _, gone := range []string{"--api-token", "--token"} {
		if _, err := parseFlags([]string{"--insecure", gone, "x"}); err == nil {
			t.Errorf("%s is still a flag (a secret in argv)", gone)
		}
	}
}

// TestSNATPoolFlags: --snat-addr takes a pool per family; bad pools and a
// second pool of a family are refused with the flag named.
func TestSNATPoolFlags(t *testing.T) {
	o, err := parseFlags([]string{"--insecure", "--snat-addr", "10.9.0.16/29,2001:db8::1-2001:db8::4", "--syn-evict", "100ms"})
	if err != nil {
		t.Fatal(err)
	}
	if o.snat4.String() != "10.9.0.16" || o.snat4Count != 8 || o.snat6.String() != "2001:db8::1" || o.snat6Count != 4 || o.synEvict.String() != "100ms" {
		t.Fatalf("parsed %+v", o)
	}
	for _, bad := range []string{"10.9.0.17/29", "10.9.0.1,10.9.0.2", "10.9.0.9-10.9.0.1", "x"} {
		if _, err := parseFlags([]string{"--insecure", "--snat-addr", bad}); err == nil || !strings.Contains(err.Error(), "--snat-addr") {
			t.Errorf("--snat-addr %s: %v, want a refusal naming the flag", bad, err)
		}
	}
	if _, err := parseFlags([]string{"--insecure", "--syn-evict", "0s"}); err == nil {
		t.Error("--syn-evict 0s accepted")
	}
}

// TestSYNProxyFlag: --syn-proxy is flood unless told (always, off); any
// other value is refused with the flag named.
func TestSYNProxyFlag(t *testing.T) {
	for args, want := range map[string]dataplane.SYNProxyMode{"": dataplane.SYNProxyFlood, "always": dataplane.SYNProxyAlways, "off": dataplane.SYNProxyOff, "flood": dataplane.SYNProxyFlood} {
		a := []string{"--insecure"}
		if args != "" {
			a = append(a, "--syn-proxy", args)
		}
		o, err := parseFlags(a)
		if err != nil || o.synProxy != want {
			t.Errorf("--syn-proxy %q: %v, %v; want %v", args, o.synProxy, err, want)
		}
	}
	if _, err := parseFlags([]string{"--insecure", "--syn-proxy", "sometimes"}); err == nil || !strings.Contains(err.Error(), "--syn-proxy") {
		t.Errorf("--syn-proxy sometimes: %v, want a refusal naming the flag", err)
	}
}

// TestPreallocFlowsFlag: the agent preallocates its flow tables unless told not to.
func TestPreallocFlowsFlag(t *testing.T) {
	for args, want := range map[string]bool{"": true, "--prealloc-flows=false": false, "--prealloc-flows": true} {
		a := []string{"--insecure"}
		if args != "" {
			a = append(a, args)
		}
		o, err := parseFlags(a)
		if err != nil || o.preallocFlows != want {
			t.Errorf("%q: %v, %v; want %v", args, o.preallocFlows, err, want)
		}
	}
}

// TestSRv6Flags: the agent's SRv6 flags reach the data plane's config, and
// a SID outside the locators, locators without a SID, or a previous-path
// hold that is not positive are refused.
func TestSRv6Flags(t *testing.T) {
	o, err := parseFlags([]string{"--insecure", "--srv6-sid", "fc00:0:1::1", "--srv6-locators", "fc00:0:1::/48,fc00:0:2::/48", "--srv6-mtu", "9000"})
	if err != nil {
		t.Fatal(err)
	}
	if o.srv6.SID != netip.MustParseAddr("fc00:0:1::1") || len(o.srv6.Locators) != 2 || o.srv6.MTU != 9000 {
		t.Fatalf("srv6 config %+v", o.srv6)
	}
	if o.srv6.PreviousHold != dataplane.DefaultSRv6PreviousHold {
		t.Fatalf("--srv6-previous-hold default %s, want %s", o.srv6.PreviousHold, dataplane.DefaultSRv6PreviousHold)
	}
	o, err = parseFlags([]string{"--insecure", "--srv6-sid", "fc00:0:1::1", "--srv6-locators", "fc00:0:1::/48", "--srv6-previous-hold", "2m"})
	if err != nil || o.srv6.PreviousHold != 2*time.Minute {
		t.Fatalf("--srv6-previous-hold 2m: %s, %v", o.srv6.PreviousHold, err)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--insecure", "--srv6-sid", "fc00:0:9::1", "--srv6-locators", "fc00:0:1::/48"}, "inside none"},
		{[]string{"--insecure", "--srv6-locators", "fc00:0:1::/48"}, "without the node's SID"},
		{[]string{"--insecure", "--srv6-sid", "nope"}, "--srv6-sid"},
		{[]string{"--insecure", "--srv6-sid", "fc00:0:1::1", "--srv6-locators", "fc00:0:1::/200"}, "--srv6-locators"},
		{[]string{"--insecure", "--srv6-previous-hold", "0s"}, "--srv6-previous-hold 0s: must be positive"},
		{[]string{"--insecure", "--srv6-previous-hold", "-5s"}, "--srv6-previous-hold -5s: must be positive"},
		{[]string{"--insecure", "--srv6-previous-hold", "soon"}, "srv6-previous-hold"},
	} {
		if _, err := parseFlags(c.args); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: %v, want %q", c.args, err, c.want)
		}
	}
}
