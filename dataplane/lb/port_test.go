package lb

import (
	"encoding/json"
	"strings"
	"testing"
)

func TestPortValidate(t *testing.T) {
	for _, tc := range []struct {
		p    Port
		want string // "" for valid
	}{
		{Port{Port: 80, Protocol: TCP}, ""},
		{Port{Name: "dns", Port: 53, Protocol: UDP}, ""},
		{Port{Port: 0, Protocol: TCP}, "port 0"},
		{Port{Port: 80, Protocol: 1}, "port 80: protocol must be tcp or udp"},
		{Port{Port: 80}, "protocol must be tcp or udp"},
	} {
		err := tc.p.Validate()
		if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("%+v: got %v, want %q", tc.p, err, tc.want)
		}
	}
	var p Port
	if err := json.Unmarshal([]byte(`{"port":8080,"protocol":"udp"}`), &p); err != nil || p != (Port{Port: 8080, Protocol: UDP}) {
		t.Fatalf("decode: %+v %v", p, err)
	}
	if err := json.Unmarshal([]byte(`{"port":8080,"protocol":"sctp"}`), &p); err == nil {
		t.Fatal("sctp decoded")
	}
}

// TestValidateWorkload: a service needs a port, every port valid, and no
// negative resource ask; zero asks are fine.
func TestValidateWorkload(t *testing.T) {
	web := []Port{{Port: 80, Protocol: TCP}, {Name: "dns", Port: 53, Protocol: UDP}}
	for _, tc := range []struct {
		ports    []Port
		cpu, mem int64
		want     string // "" for valid
	}{
		{web, 0, 0, ""},
		{web, 250, 128, ""},
		{nil, 250, 128, "at least one port"},
		{[]Port{{Port: 80, Protocol: TCP}, {Port: 0, Protocol: UDP}}, 0, 0, "port 0"},
		{web, -1, 0, "negative resources"},
		{web, 0, -1, "negative resources"},
	} {
		err := ValidateWorkload(tc.ports, tc.cpu, tc.mem)
		if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("%v cpu %d mem %d: got %v, want %q", tc.ports, tc.cpu, tc.mem, err, tc.want)
		}
	}
}
