package meta

import (
	"io/fs"
	"math"
	"runtime/debug"
	"strings"
	"testing"
)

func TestCgroupMemoryLimit(t *testing.T) {
	const v1Self = "4:memory:/pod/a\n0::/\n"
	for name, tc := range map[string]struct {
		files map[string]string
		want  int64
		ok    bool
	}{
		"v2":            {map[string]string{"/proc/self/cgroup": "0::/pod/a\n", "/sys/fs/cgroup/pod/a/memory.max": "1073741824\n"}, 1 << 30, true},
		"v2 namespaced": {map[string]string{"/proc/self/cgroup": "0::/pod/a\n", "/sys/fs/cgroup/memory.max": "2048"}, 2048, true},
		"v2 max":        {map[string]string{"/proc/self/cgroup": "0::/\n", "/sys/fs/cgroup/memory.max": "max\n"}, 0, false},
		"v1":            {map[string]string{"/proc/self/cgroup": v1Self, "/sys/fs/cgroup/memory/pod/a/memory.limit_in_bytes": "536870912"}, 512 << 20, true},
		"v1 unlimited":  {map[string]string{"/proc/self/cgroup": v1Self, "/sys/fs/cgroup/memory/memory.limit_in_bytes": "9223372036854771712"}, 0, false},
		"no cgroup":     {map[string]string{}, 0, false},
		"garbage":       {map[string]string{"/proc/self/cgroup": "0::/\n", "/sys/fs/cgroup/memory.max": "lots"}, 0, false},
	} {
		read := func(name string) ([]byte, error) {
			if s, ok := tc.files[name]; ok {
				return []byte(s), nil
			}
			return nil, fs.ErrNotExist
		}
		if got, ok := cgroupMemoryLimit(read); got != tc.want || ok != tc.ok {
			t.Errorf("%s: %d, %v; want %d, %v", name, got, ok, tc.want, tc.ok)
		}
	}
}

// TestTuneGC checks the defaults, that GOGC and GOMEMLIMIT set in the
// environment win, and that set empty they count as unset (as the runtime
// reads them).
func TestTuneGC(t *testing.T) {
	gc0, lim0 := debug.SetGCPercent(-1), debug.SetMemoryLimit(-1)
	t.Cleanup(func() { debug.SetGCPercent(gc0); debug.SetMemoryLimit(lim0) })
	cg := map[string]string{"/proc/self/cgroup": "0::/\n", "/sys/fs/cgroup/memory.max": "1000000000"}
	read := func(name string) ([]byte, error) {
		if s, ok := cg[name]; ok {
			return []byte(s), nil
		}
		return nil, fs.ErrNotExist
	}
	// env("K=v", ...) is an environment of those variables.
	env := func(set ...string) func(string) (string, bool) {
		return func(k string) (string, bool) {
			for _, s := range set {
				if name, v, _ := strings.Cut(s, "="); name == k {
					return v, true
				}
			}
			return "", false
		}
	}
	debug.SetGCPercent(100)
	debug.SetMemoryLimit(math.MaxInt64)
	if gogc, limit := tuneGC(env(), read); gogc != DefaultGOGC || limit != 800000000 {
		t.Fatalf("defaults: GOGC %d, limit %d", gogc, limit)
	}
	debug.SetGCPercent(150)
	debug.SetMemoryLimit(math.MaxInt64)
	if gogc, limit := tuneGC(env("GOGC=150", "GOMEMLIMIT=1GiB"), read); gogc != 150 || limit != math.MaxInt64 {
		t.Fatalf("environment set: GOGC %d, limit %d", gogc, limit)
	}
	debug.SetGCPercent(100)
	debug.SetMemoryLimit(math.MaxInt64)
	if gogc, limit := tuneGC(env("GOGC=", "GOMEMLIMIT="), read); gogc != DefaultGOGC || limit != 800000000 {
		t.Fatalf("environment set empty: GOGC %d, limit %d", gogc, limit)
	}
}

func TestMemLimitText(t *testing.T) {
	if got := MemLimitText(math.MaxInt64); got != "none" {
		t.Errorf("no limit: %q", got)
	}
	if got := MemLimitText(410 << 20); got != "410 MiB" {
		t.Errorf("410 MiB: %q", got)
	}
}
