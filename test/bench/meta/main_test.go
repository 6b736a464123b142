package main

import (
	"slices"
	"testing"
)

// TestABChunks: both requesters of -requester-ab take the n placements
// asked, also when n is not a multiple of two chunks.
func TestABChunks(t *testing.T) {
	for _, c := range []struct {
		n    int
		want []int
	}{
		{0, nil},
		{100, []int{100}},
		{250, []int{100, 100, 50}},
		{3000, slices.Repeat([]int{100}, 30)},
	} {
		got := abChunks(c.n, 100)
		if !slices.Equal(got, c.want) {
			t.Errorf("%d placements: chunks %v, want %v", c.n, got, c.want)
		}
		sum := 0
		for _, k := range got {
			sum += k
		}
		if sum != c.n {
			t.Errorf("%d placements: each requester takes %d", c.n, sum)
		}
	}
}

// TestCheckProfileFlags: -cpuprofile with -cpuprofile-rows is refused at
// the start (Go runs one CPU profile at a time: the first row's profile
// failed after the whole setup); each alone is fine.
func TestCheckProfileFlags(t *testing.T) {
	if err := checkProfileFlags("all.prof", "rows.prof"); err == nil {
		t.Error("-cpuprofile with -cpuprofile-rows accepted")
	}
	for _, c := range [][2]string{{"", ""}, {"all.prof", ""}, {"", "rows.prof"}} {
		if err := checkProfileFlags(c[0], c[1]); err != nil {
			t.Errorf("%q %q: %v", c[0], c[1], err)
		}
	}
}
