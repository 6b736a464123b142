// Package dptest gives tests a real data plane: the BPF programs loaded and
// their maps pinned on a bpffs path of their own, removed when the test
// ends (as net/http/httptest gives a real server). Tests that need it run
// as root; elsewhere they skip, saying why.
package dptest

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"path/filepath"
	"testing"

	"github.com/roamnet/roam/dataplane"
	"github.com/roamnet/roam/dataplane/lb"
)

// PinPath returns a fresh directory under /sys/fs/bpf, unique on a shared
// machine, that is removed (with anything pinned in it) when the test ends.
// It skips the test when not root.
func PinPath(t testing.TB) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (BPF, bpffs): run as root, as make test and CI do")
	}
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	p := filepath.Join("/sys/fs/bpf", "roam-test-"+hex.EncodeToString(b))
	t.Cleanup(func() {
		if err := dataplane.Unpin(p); err != nil {
			t.Errorf("unpin %s: %v", p, err)
		}
	})
	return p
}

// New opens a data plane with cfg on a fresh PinPath (unless cfg names
// one); it is closed and unpinned when the test ends.
func New(t testing.TB, cfg dataplane.Config) *dataplane.Dataplane {
	t.Helper()
	if cfg.PinPath == "" {
		cfg.PinPath = PinPath(t)
	}
	d, err := dataplane.Open(cfg)
	if err != nil {
		t.Fatalf("open data plane: %v", err)
	}
	t.Cleanup(func() { _ = d.Close() })
	return d
}

// SetActive stages target for f on d and commits it, failing the test on
// either error.
func SetActive(t testing.TB, d *dataplane.Dataplane, f lb.Frontend, target lb.Target) {
	t.Helper()
	gen, err := d.Stage(f, target)
	if err != nil {
		t.Fatalf("stage %s -> %s: %v", f, target, err)
	}
	if err := d.Commit(f, gen); err != nil {
		t.Fatalf("commit %s -> %s: %v", f, target, err)
	}
}

// Drops reads d's drop counters by reason, failing the test on an error.
func Drops(t testing.TB, d *dataplane.Dataplane) map[string]uint64 {
	t.Helper()
	m, err := d.Drops()
	if err != nil {
		t.Fatalf("read drop counters: %v", err)
	}
	return m
}

// DropsSince is how much each of d's drop counters grew since before (a
// Drops reading); a reason that did not move is left out.
func DropsSince(t testing.TB, d *dataplane.Dataplane, before map[string]uint64) map[string]uint64 {
	t.Helper()
	delta := map[string]uint64{}
	for k, v := range Drops(t, d) {
		if v != before[k] {
			delta[k] = v - before[k]
		}
	}
	return delta
}
