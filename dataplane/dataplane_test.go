package dataplane_test

import (
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/roamnet/roam/dataplane"
	"github.com/roamnet/roam/dataplane/dptest"
	"github.com/roamnet/roam/dataplane/lb"
)

// openTest opens a real data plane (dptest.New) with SNAT addresses in
// both families unless cfg sets them.
func openTest(t *testing.T, cfg dataplane.Config) *dataplane.Dataplane {
	t.Helper()
	if !cfg.SNATv4.IsValid() {
		cfg.SNATv4 = netip.MustParseAddr("192.0.2.100")
	}
	if !cfg.SNATv6.IsValid() {
		cfg.SNATv6 = netip.MustParseAddr("2001:db8:ff::100")
	}
	return dptest.New(t, cfg)
}

func mustFrontend(t *testing.T, s string) lb.Frontend {
	t.Helper()
	return mustParse(t, lb.ParseFrontend, s)
}

func mustTarget(t *testing.T, s string) lb.Target {
	t.Helper()
	return mustParse(t, lb.ParseTarget, s)
}

// mustParse is parse(s), failing the test on an error.
func mustParse[T any](t *testing.T, parse func(string) (T, error), s string) T {
	t.Helper()
	v, err := parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestStageCommitAbortRemove(t *testing.T) {
	d := openTest(t, dataplane.Config{IdleTimeout: time.Minute})
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
	if s.Active.Kind != lb.TargetNone || s.Staged != x || s.Generation != gen || s.ID == 0 {
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
	if s.Active != x || s.Staged.Kind != lb.TargetNone {
		t.Fatalf("after commit: %v", s)
	}
	gen2, err := d.Stage(f, y)
	if err != nil {
		t.Fatal(err)
	}
	if gen2 <= gen {
		t.Fatalf("generation did not grow: %d then %d", gen, gen2)
	}
	if err := d.Abort(f, gen); !errors.Is(err, dataplane.ErrGeneration) {
		t.Fatalf("abort of the committed generation: %v, want ErrGeneration", err)
	}
	if err := d.Abort(f, gen2); err != nil {
		t.Fatal(err)
	}
	s, _ = d.Get(f)
	if s.Active != x || s.Staged.Kind != lb.TargetNone {
		t.Fatalf("after abort: %v", s)
	}
	if err := d.Abort(f, gen2); err != nil {
		t.Fatalf("repeated abort: %v", err)
	}
	if err := d.Commit(f, gen2); !errors.Is(err, dataplane.ErrGeneration) {
		t.Fatalf("commit of an aborted generation: %v, want ErrGeneration", err)
	}
	gen3, err := d.Stage(f, y)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Commit(f, gen2); !errors.Is(err, dataplane.ErrGeneration) {
		t.Fatalf("commit of an aborted generation with another staged: %v, want ErrGeneration", err)
	}
	if err := d.Abort(f, gen2); !errors.Is(err, dataplane.ErrGeneration) {
		t.Fatalf("abort of an old generation with another staged: %v, want ErrGeneration", err)
	}
	if s, _ = d.Get(f); s.Staged != y {
		t.Fatalf("a refused abort cleared the stage: %v", s)
	}
	if err := d.Commit(f, 0); err != nil {
		t.Fatal(err)
	}
	if err := d.Commit(f, gen3); err != nil {
		t.Fatalf("commit of the generation committed with 0: %v", err)
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
	if _, err := d.Get(f); !errors.Is(err, dataplane.ErrNotFound) {
		t.Fatalf("get after remove: %v", err)
	}
	if err := d.Remove(f); !errors.Is(err, dataplane.ErrNotFound) {
		t.Fatalf("second remove: %v", err)
	}

	// A frontend that was only staged is removed by its abort; a commit of
	// that generation then fails, and so does one of a frontend re-created
	// since (its generations start afresh from the clock).
	genA, err := d.Stage(f, x)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Abort(f, genA); err != nil {
		t.Fatal(err)
	}
	if err := d.Commit(f, genA); !errors.Is(err, dataplane.ErrNotFound) {
		t.Fatalf("commit after the abort removed the frontend: %v, want ErrNotFound", err)
	}
	if _, err := d.Stage(f, y); err != nil {
		t.Fatal(err)
	}
	if err := d.Commit(f, genA); !errors.Is(err, dataplane.ErrGeneration) {
		t.Fatalf("commit of an aborted generation of a re-created frontend: %v, want ErrGeneration", err)
	}
}

func TestReopenKeepsState(t *testing.T) {
	p := dptest.PinPath(t)
	d1 := openTest(t, dataplane.Config{PinPath: p})
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

	d2 := openTest(t, dataplane.Config{PinPath: p})
	s2, err := d2.Get(f)
	if err != nil {
		t.Fatal(err)
	}
	if s2 != s1 || s2.Active != y {
		t.Fatalf("state after reopen: %v, want %v", s2, s1)
	}
	g := mustFrontend(t, "10.9.9.9:53/udp")
	if _, err := d2.Stage(g, lb.Local); err != nil {
		t.Fatal(err)
	}
	sg, _ := d2.Get(g)
	if sg.ID == s2.ID {
		t.Fatalf("reopened data plane reused id %d", sg.ID)
	}
}
