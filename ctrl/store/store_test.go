package store

import (
	"errors"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"github.com/roamnet/roam/ctrl"
	"github.com/roamnet/roam/ctrl/backend"
	"github.com/roamnet/roam/dataplane/lb"
)

func TestReopenKeepsEverything(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ctrl.db")
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	d := ctrl.Descriptor{Name: "web", Demo: true, Ports: []backend.Port{{Port: 80, Protocol: lb.TCP}}}
	f, _ := lb.ParseFrontend("10.0.0.1:80/tcp")
	for _, r := range []ctrl.Record{
		{Service: d, Kind: ctrl.KindAbroad, Home: "a", Cluster: "b", Frontends: []lb.Frontend{f},
			Endpoints: []netip.AddrPort{netip.MustParseAddrPort("10.2.0.1:80")}},
		{Service: ctrl.Descriptor{Name: "api", Demo: true}, Kind: ctrl.KindForeign, Home: "c", Cluster: "a"},
	} {
		if err := s.PutRecord(r); err != nil {
			t.Fatal(err)
		}
	}
	m := ctrl.Migration{ID: "m1", Service: "web", State: ctrl.StateRunning, Stage: ctrl.StageReplication, Started: time.Now()}
	if err := s.PutMigration(m); err != nil {
		t.Fatal(err)
	}
	done := ctrl.Migration{ID: "m0", Service: "web", State: ctrl.StateDone, Started: time.Now().Add(-time.Minute)}
	if err := s.PutMigration(done); err != nil {
		t.Fatal(err)
	}
	if err := s.PutOrphan(ctrl.Orphan{Service: "web", Cluster: "b", ClusterURL: "http://x"}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s, err = Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	r, err := s.Record("web")
	if err != nil || r.Kind != ctrl.KindAbroad || r.Cluster != "b" || r.Frontends[0] != f || r.Endpoints[0].Port() != 80 {
		t.Fatalf("record %+v %v", r, err)
	}
	rs, _ := s.Records()
	if len(rs) != 2 {
		t.Fatalf("records %d", len(rs))
	}
	inf, _ := s.InFlight()
	if len(inf) != 1 || inf[0].ID != "m1" || inf[0].Stage != ctrl.StageReplication {
		t.Fatalf("in flight %+v", inf)
	}
	all, _ := s.Migrations()
	if len(all) != 2 || all[0].ID != "m0" {
		t.Fatalf("migrations %+v", all)
	}
	os, _ := s.Orphans()
	if len(os) != 1 || os[0].Cluster != "b" {
		t.Fatalf("orphans %+v", os)
	}
	if err := s.DeleteRecord("web"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Record("web"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("deleted record: %v", err)
	}
	if err := s.DeleteOrphan(os[0]); err != nil {
		t.Fatal(err)
	}
	if os, _ := s.Orphans(); len(os) != 0 {
		t.Fatal("orphan kept")
	}
}

func TestIncarnation(t *testing.T) {
	dir := t.TempDir()
	a, err := Open(filepath.Join(dir, "a.db"))
	if err != nil {
		t.Fatal(err)
	}
	inc := a.Incarnation()
	if len(inc) != 16 {
		t.Fatalf("incarnation %q", inc)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	a, err = Open(filepath.Join(dir, "a.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if a.Incarnation() != inc {
		t.Fatalf("reopened store has incarnation %q, want %q", a.Incarnation(), inc)
	}
	b, err := Open(filepath.Join(dir, "b.db")) // a reinstall: a new file
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if b.Incarnation() == inc {
		t.Fatal("a new store has the old incarnation")
	}
}
