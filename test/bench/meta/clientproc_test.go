package main

import (
	"slices"
	"testing"
)

// TestClientEnv: the client processes run at Go's GC defaults, and at the
// GOMAXPROCS -client-gomaxprocs says: with 0, Go's default, not the
// benchmark's own GOMAXPROCS.
func TestClientEnv(t *testing.T) {
	environ := []string{"PATH=/bin", "GOGC=400", "GOMAXPROCS=1", "GOMEMLIMIT=1GiB", "HOME=/root"}
	for _, c := range []struct {
		procs int
		want  []string
	}{
		{0, []string{"PATH=/bin", "HOME=/root"}},
		{2, []string{"PATH=/bin", "HOME=/root", "GOMAXPROCS=2"}},
	} {
		if got := clientEnv(environ, c.procs); !slices.Equal(got, c.want) {
			t.Errorf("procs %d: env %q, want %q", c.procs, got, c.want)
		}
	}
}
