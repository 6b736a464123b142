package agentapi

import (
	"errors"
	"net/http"
	"net/netip"
	"strings"
	"testing"

	"github.com/roamnet/roam/dataplane/lb"
)

var feUDP = mustFrontend("10.0.0.1:80/udp")

// TestStageAllCommitAll: a migration's frontends are staged, then
// committed, in one call per node; each takes its own target and
// generation.
func TestStageAllCommitAll(t *testing.T) {
	a, b := startAgent(t, "tok"), startAgent(t, "tok")
	g := Group{a.client, b.client}
	c := ctx(t)
	fs := []lb.Frontend{fe, feUDP}
	gens, err := g.StageAll(c, fs, []lb.Target{t1, t2})
	if err != nil {
		t.Fatalf("stage all: %v", err)
	}
	if len(gens) != 2 || len(gens[0]) != 2 || len(gens[1]) != 2 {
		t.Fatalf("generations %v, want 2 frontends x 2 nodes", gens)
	}
	for _, n := range []*agent{a, b} {
		n.wantSlots(t, "after stage", fs, []lb.Target{t1, t2}, true)
	}
	if err := g.CommitAll(c, fs, gens); err != nil {
		t.Fatalf("commit all: %v", err)
	}
	for _, n := range []*agent{a, b} {
		n.wantSlots(t, "after commit", fs, []lb.Target{t1, t2}, false)
	}
	// Committing those generations again is a no-op; one short is refused.
	if err := g.CommitAll(c, fs, gens); err != nil {
		t.Fatalf("commit all again: %v", err)
	}
	if err := g.CommitAll(c, fs, gens[:1]); err == nil {
		t.Fatal("commit all with a frontend's generations missing: want an error")
	}
	// A generation aborted meanwhile is not committed: the error says which.
	gens, err = g.StageAll(c, fs, []lb.Target{t2, t1})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.client.Abort(c, feUDP, gens[1][0]); err != nil {
		t.Fatal(err)
	}
	err = g.CommitAll(c, fs, gens)
	if err == nil || !strings.Contains(err.Error(), feUDP.String()) || !strings.Contains(err.Error(), a.http.URL) {
		t.Fatalf("commit all after an abort on one node: %v, want an error naming %s on %s", err, feUDP, a.http.URL)
	}
	if s, _ := a.dp.Get(fe); s.Active != t2 {
		t.Fatalf("%s on the node whose other frontend failed: %+v, want its own commit done", fe, s)
	}
	if s, _ := a.dp.Get(feUDP); s.Active != t2 {
		t.Fatalf("%s aborted on the node: %+v, want still %s", feUDP, s, t2)
	}
}

// TestStageAllRollsBack: a call that fails on its second frontend (the
// data plane refuses it) leaves nothing staged of the call on that node;
// a node that refuses leaves the group's other nodes aborted.
func TestStageAllRollsBack(t *testing.T) {
	a, b := startAgent(t, "tok"), startAgent(t, "tok")
	c := ctx(t)
	srv6 := lb.SRv6(netip.MustParseAddr("fd00:5::1")) // this data plane has no SID: refused by Stage
	_, err := a.client.StageAll(c, []lb.Frontend{fe, feUDP}, []lb.Target{t1, srv6})
	var ae *Error
	if !errors.As(err, &ae) || !strings.Contains(ae.Msg, "aborted the 1 staged before it") {
		t.Fatalf("stage all with a refused second frontend: %v, want an error saying the first was aborted", err)
	}
	if s, err := a.dp.Get(fe); err == nil && s.Staged.Kind != lb.TargetNone {
		t.Fatalf("%s after the failed call: %+v, want nothing staged", fe, s)
	}

	b.client = New(b.http.URL, "wrong")
	g := Group{a.client, b.client}
	if _, err := g.StageAll(c, []lb.Frontend{fe, feUDP}, []lb.Target{t1, t2}); err == nil || !strings.Contains(err.Error(), b.http.URL) {
		t.Fatalf("group stage all with a refusing node: %v, want an error naming %s", err, b.http.URL)
	}
	for _, f := range []lb.Frontend{fe, feUDP} {
		if s, err := a.dp.Get(f); err == nil && s.Staged.Kind != lb.TargetNone {
			t.Fatalf("%s on the healthy node: %+v, want aborted", f, s)
		}
	}
}

// TestStageAllBadRequests: an empty call, a frontend given twice, a bad
// target: refused with a reason, nothing staged.
func TestStageAllBadRequests(t *testing.T) {
	a := startAgent(t, "")
	c := ctx(t)
	for _, tc := range []struct {
		name   string
		fs     []lb.Frontend
		ts     []lb.Target
		reason string
	}{
		{"empty", nil, nil, ReasonBadRequest},
		{"frontend twice", []lb.Frontend{fe, fe}, []lb.Target{t1, t2}, ReasonBadFrontend},
		{"no target", []lb.Frontend{fe, feUDP}, []lb.Target{t1, {}}, ReasonBadTarget},
	} {
		_, err := a.client.StageAll(c, tc.fs, tc.ts)
		var ae *Error
		if !errors.As(err, &ae) || ae.Status != http.StatusBadRequest || ae.Reason != tc.reason {
			t.Errorf("%s: %v, want 400 %s", tc.name, err, tc.reason)
		}
	}
	if svcs, _ := a.dp.List(); len(svcs) != 0 {
		t.Fatalf("a refused call changed the data plane: %v", svcs)
	}
	if err := a.client.CommitAll(c, []lb.Frontend{fe, fe}, []uint64{1, 1}); err == nil {
		t.Fatal("commit all with a frontend twice: want an error")
	}
}
