package defaults

import (
	"testing"
	"time"
)

func TestPositive(t *testing.T) {
	for _, tc := range []struct{ in, want time.Duration }{
		{0, 7 * time.Second},
		{-time.Second, 7 * time.Second},
		{time.Nanosecond, time.Nanosecond},
		{time.Minute, time.Minute},
	} {
		v := tc.in
		Positive(&v, 7*time.Second)
		if v != tc.want {
			t.Errorf("Positive(%v, 7s) = %v, want %v", tc.in, v, tc.want)
		}
	}
	f := 0.0
	Positive(&f, 2.5)
	if f != 2.5 {
		t.Errorf("Positive(0.0, 2.5) = %v", f)
	}
	var u uint
	Positive(&u, 4)
	if u != 4 {
		t.Errorf("Positive(uint 0, 4) = %v", u)
	}
}
