package lb

import (
	"net/netip"
	"strings"
	"testing"
)

func TestSRv6TargetText(t *testing.T) {
	for _, c := range []struct {
		in, out string
		err     string
	}{
		{"srv6:fc00:0:2::1", "srv6:fc00:0:2::1", ""},
		{"srv6:fc00:0:2::1,fc00:0:3::1", "srv6:fc00:0:2::1,fc00:0:3::1", ""},
		{"srv6:fc00:0:2::1,fc00:0:3::1,fc00:0:4::1", "", "at most 2"},
		{"srv6:10.0.0.1", "", "not a unicast IPv6"},
		{"srv6:::ffff:10.0.0.1", "", "not a unicast IPv6"},
		{"srv6:ff02::1", "", "not a unicast IPv6"},
		{"srv6:fc00::1,fc00::1", "", "the same SID twice"},
		{"srv6:", "", "ParseAddr"},
	} {
		tg, err := ParseTarget(c.in)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%s: err %v, want %q", c.in, err, c.err)
			}
			continue
		}
		if err != nil || tg.String() != c.out || tg.Kind != TargetSRv6 {
			t.Errorf("%s: %v %v", c.in, tg, err)
		}
		back, err := ParseTarget(tg.String())
		if err != nil || back != tg {
			t.Errorf("%s: round trip %v %v", c.in, back, err)
		}
	}
	if got := SRv6(netip.MustParseAddr("fc00::1"), netip.MustParseAddr("fc00::2")).Segments(); len(got) != 2 || got[1] != netip.MustParseAddr("fc00::2") {
		t.Errorf("segments %v", got)
	}
	if err := SRv6().Validate(); err == nil {
		t.Error("empty path accepted")
	}
}

func TestNodeSID(t *testing.T) {
	for _, c := range []struct {
		loc  string
		node uint16
		want string
		err  string
	}{
		{"fc00:0:1::/48", 0, "fc00:0:1::1", ""},
		{"fc00:0:1::/48", 1, "fc00:0:1:1::1", ""},
		{"fc00:0:1::/48", 0xabcd, "fc00:0:1:abcd::1", ""},
		{"fc00:0:1:8000::/49", 1, "fc00:0:1:8000:8000::1", ""},
		{"fc00::/96", 2, "fc00::2:1", ""},
		{"fc00::/97", 2, "", "longer than /96"},
		{"10.0.0.0/8", 2, "", "not an IPv6 prefix"},
	} {
		got, err := NodeSID(netip.MustParsePrefix(c.loc), c.node)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%s/%d: %v, want %q", c.loc, c.node, err, c.err)
			}
			continue
		}
		if err != nil || got != netip.MustParseAddr(c.want) {
			t.Errorf("%s/%d: %s %v, want %s", c.loc, c.node, got, err, c.want)
		}
		if !netip.MustParsePrefix(c.loc).Contains(got) {
			t.Errorf("%s/%d: %s outside its locator", c.loc, c.node, got)
		}
	}
}

func TestValidateLocator(t *testing.T) {
	if err := ValidateLocator(netip.MustParsePrefix("fc00:0:1::/48")); err != nil {
		t.Error(err)
	}
	for _, bad := range []string{"fc00:0:1::1/48", "10.0.0.0/8", "fc00::/8", "fc00::/112"} {
		if err := ValidateLocator(netip.MustParsePrefix(bad)); err == nil {
			t.Errorf("%s accepted", bad)
		}
	}
}
