package dataplane

import (
	"testing"
	"time"
)

// TestAgedBy: AgeFlows' stamp arithmetic never gives 0 (the programs'
// "no packet"), and moves a stamp back by exactly by otherwise.
func TestAgedBy(t *testing.T) {
	for _, c := range []struct {
		seen uint64
		by   time.Duration
		want uint64
	}{
		{seen: 5e9, by: 2 * time.Second, want: 3e9},
		{seen: 5e9, by: 5 * time.Second, want: 1},
		{seen: 5e9, by: time.Minute, want: 1},
		{seen: 1, by: time.Minute, want: 1},
		{seen: 0, by: time.Minute, want: 1},
	} {
		if got := agedBy(c.seen, c.by); got != c.want {
			t.Errorf("agedBy(%d, %s) = %d, want %d", c.seen, c.by, got, c.want)
		}
	}
}
