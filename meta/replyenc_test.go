package meta

import (
	"encoding/json"
	"math"
	"testing"
)

// FuzzJSONString: appendJSONString quotes as encoding/json does.
func FuzzJSONString(f *testing.F) {
	for _, s := range []string{"", "plain", "tier edge, load after 12%", `q"b\s`, "<a>&", "\x00\x1f\x7f\t\n\r\b\f",
		"\u2028\u2029", "é€😀", "\xff\xfe bad", "a\xc3"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		want, _ := json.Marshal(s)
		if got := appendJSONString(nil, s); string(got) != string(want) {
			t.Fatalf("%q: got %s want %s", s, got, want)
		}
		if got := appendJSONString(nil, []byte(s)); string(got) != string(want) {
			t.Fatalf("%q as bytes: got %s want %s", s, got, want)
		}
	})
}

// FuzzJSONFloat: appendJSONFloat writes a float64 as encoding/json does.
func FuzzJSONFloat(f *testing.F) {
	for _, v := range []float64{0, math.Copysign(0, -1), 1, -1, 0.5, 1.0 / 3, 1e-6, 9.99e-7, 1e-9, 1e20, 1e21, 1.5e300, -2.5e-10, 10.25} {
		f.Add(v)
	}
	f.Fuzz(func(t *testing.T, v float64) {
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return
		}
		want, _ := json.Marshal(v)
		if got := appendJSONFloat(nil, v); string(got) != string(want) {
			t.Fatalf("%v: got %s want %s", v, got, want)
		}
	})
}
