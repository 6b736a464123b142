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
