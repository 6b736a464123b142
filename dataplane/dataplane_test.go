package dataplane

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// testPinPath returns a unique bpffs directory removed when the test ends.
func testPinPath(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("dataplane tests need root (BPF)")
	}
	b := make([]byte, 6)
	rand.Read(b)
	p := filepath.Join("/sys/fs/bpf", "roam-test-"+hex.EncodeToString(b))
	t.Cleanup(func() {
		if err := Unpin(p); err != nil {
			t.Errorf("unpin: %v", err)
		}
	})
	return p
}

func openTest(t *testing.T, cfg Config) *Dataplane {
	t.Helper()
	if cfg.PinPath == "" {
		cfg.PinPath = testPinPath(t)
	}
	if !cfg.SNATv4.IsValid() {
		cfg.SNATv4 = netip.MustParseAddr("192.0.2.100")
	}
	if !cfg.SNATv6.IsValid() {
		cfg.SNATv6 = netip.MustParseAddr("2001:db8:ff::100")
	}
	d, err := Open(cfg)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

func mustFrontend(t *testing.T, s string) Frontend {
	t.Helper()
	f, err := ParseFrontend(s)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func mustTarget(t *testing.T, s string) Target {
	t.Helper()
	v, err := ParseTarget(s)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestStageCommitAbortRemove(t *testing.T) {
	d := openTest(t, Config{IdleTimeout: time.Minute})
	f := mustFrontend(t, "10.0.0.1:80/tcp")
	x := mustTarget(t, "local")
	y := mustTarget(t, "redirect:10.2.0.1:8080")

	gen, err := d.Stage(f, x)
	if err != nil {
		t.Fatal(err)
	}
	s, err := d.Get(f)
	if err != nil {
		t.Fatal(err)
	}
	if s.Active.Kind != TargetNone || s.Staged != x || s.Generation != gen || s.ID == 0 {
		t.Fatalf("after stage: %v", s)
	}
	if err := d.Commit(f, gen+1); err == nil {
		t.Fatal("commit of a wrong generation succeeded")
	}
	if err := d.Commit(f, gen); err != nil {
		t.Fatal(err)
	}
	if err := d.Commit(f, gen); err != nil {
		t.Fatalf("repeated commit: %v", err)
	}
	if err := d.Commit(f, 0); err == nil {
		t.Fatal("commit with nothing staged succeeded")
	}
	s, _ = d.Get(f)
	if s.Active != x || s.Staged.Kind != TargetNone {
		t.Fatalf("after commit: %v", s)
	}
	gen2, err := d.Stage(f, y)
	if err != nil {
		t.Fatal(err)
	}
	if gen2 <= gen {
		t.Fatalf("generation did not grow: %d then %d", gen, gen2)
	}
	if err := d.Abort(f); err != nil {
		t.Fatal(err)
	}
	s, _ = d.Get(f)
	if s.Active != x || s.Staged.Kind != TargetNone {
		t.Fatalf("after abort: %v", s)
	}
	if _, err := d.Stage(f, y); err != nil {
		t.Fatal(err)
	}
	if err := d.Commit(f, 0); err != nil {
		t.Fatal(err)
	}
	s, _ = d.Get(f)
	if s.Active != y {
		t.Fatalf("after second commit: %v", s)
	}
	list, err := d.List()
	if err != nil || len(list) != 1 || list[0].Frontend != f {
		t.Fatalf("list: %v %v", list, err)
	}
	if _, err := d.Stage(f, mustTarget(t, "redirect:[2001:db8::2]:80")); err == nil {
		t.Fatal("staged a target of another family")
	}
	if err := d.Remove(f); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Get(f); !errors.Is(err, ErrNotFound) {
		t.Fatalf("get after remove: %v", err)
	}
	if err := d.Remove(f); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second remove: %v", err)
	}
}

func TestReopenKeepsState(t *testing.T) {
	p := testPinPath(t)
	d1 := openTest(t, Config{PinPath: p})
	f := mustFrontend(t, "[2001:db8::1]:443/udp")
	y := mustTarget(t, "redirect:[2001:db8:2::1]:8443")
	gen, err := d1.Stage(f, y)
	if err != nil {
		t.Fatal(err)
	}
	if err := d1.Commit(f, gen); err != nil {
		t.Fatal(err)
	}
	s1, _ := d1.Get(f)
	d1.Close()

	d2 := openTest(t, Config{PinPath: p})
	s2, err := d2.Get(f)
	if err != nil {
		t.Fatal(err)
	}
	if s2 != s1 || s2.Active != y {
		t.Fatalf("state after reopen: %v, want %v", s2, s1)
	}
	g := mustFrontend(t, "10.9.9.9:53/udp")
	if _, err := d2.Stage(g, Local); err != nil {
		t.Fatal(err)
	}
	sg, _ := d2.Get(g)
	if sg.ID == s2.ID {
		t.Fatalf("reopened data plane reused id %d", sg.ID)
	}
}
