package ctrl

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/roamnet/roam/ctrl/backend"
	"github.com/roamnet/roam/dataplane/lb"
)

// TestDescriptorRedirect: a descriptor names its redirect mode or takes the
// cluster's default (nat when the cluster names none); an unknown mode is
// refused.
func TestDescriptorRedirect(t *testing.T) {
	var d Descriptor
	if err := json.Unmarshal([]byte(`{"name":"web","demo":true,"ports":[{"name":"http","port":80,"protocol":"tcp"}],"redirect":"srv6"}`), &d); err != nil {
		t.Fatal(err)
	}
	if err := d.Validate(); err != nil {
		t.Fatal(err)
	}
	if d.RedirectMode(lb.ModeNAT) != lb.ModeSRv6 {
		t.Fatalf("mode %q, want srv6", d.RedirectMode(lb.ModeNAT))
	}
	d.Redirect = ""
	if d.RedirectMode(lb.ModeSRv6) != lb.ModeSRv6 || d.RedirectMode("") != lb.ModeNAT {
		t.Fatalf("defaults: %q %q", d.RedirectMode(lb.ModeSRv6), d.RedirectMode(""))
	}
	if err := json.Unmarshal([]byte(`{"name":"web","redirect":"gre"}`), &d); err == nil || !strings.Contains(err.Error(), "want nat or srv6") {
		t.Fatalf("unknown mode in JSON: %v", err)
	}
	d = Descriptor{Name: "web", Demo: true, Ports: []backend.Port{{Name: "http", Port: 80, Protocol: lb.TCP}}, Redirect: "gre"}
	if err := d.Validate(); err == nil || !strings.Contains(err.Error(), "redirect mode") {
		t.Fatalf("unknown mode: %v", err)
	}
}
