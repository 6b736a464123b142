package agentapi

import (
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/roamnet/roam/dataplane"
	"github.com/roamnet/roam/dataplane/dptest"
	"github.com/roamnet/roam/dataplane/lb"
)

// srv6Dataplane is a data plane with SRv6 on and the location's kernel
// part left out (its return routes are cmd/roam-agent's).
type srv6Dataplane struct{ *dataplane.Dataplane }

func (srv6Dataplane) SetSRv6Return(lb.Frontend, netip.Addr, bool) error { return nil }

// TestSRv6Node: GET /v1/srv6/node answers the node's SID and roam's
// locators, and a group gives each node's SID in its order; a node whose
// data plane has no SRv6 path mode answers 501, which fails the group's
// call naming that node.
func TestSRv6Node(t *testing.T) {
	loc := netip.MustParsePrefix("fc00:0:7::/48")
	var clients []*Client
	for node := range 2 {
		sid, err := lb.NodeSID(loc, uint16(node))
		if err != nil {
			t.Fatal(err)
		}
		dp := dptest.New(t, dataplane.Config{IdleTimeout: time.Minute, SRv6: dataplane.SRv6Config{SID: sid, Locators: []netip.Prefix{loc}}})
		srv, err := NewServer(srv6Dataplane{dp}, ServerConfig{Registerer: prometheus.NewRegistry()})
		if err != nil {
			t.Fatal(err)
		}
		h := httptest.NewServer(srv.Handler())
		t.Cleanup(h.Close)
		clients = append(clients, New(h.URL, ""))
	}
	n, err := clients[1].SRv6Node(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if want, _ := lb.NodeSID(loc, 1); n.SID != want || len(n.Locators) != 1 || n.Locators[0] != loc {
		t.Fatalf("node 1: %+v, want SID %s and locators [%s]", n, want, loc)
	}
	sids, err := Group(clients).SRv6SIDs(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	for i, s := range sids {
		if want, _ := lb.NodeSID(loc, uint16(i)); s.SID != want || s.Old {
			t.Fatalf("group: node %d: %+v, want SID %s", i, s, want)
		}
	}

	plain := startAgent(t, "")
	_, err = Group{clients[0], plain.client}.SRv6SIDs(ctx(t))
	var ae *Error
	if err == nil || !errors.As(err, &ae) || ae.Status != http.StatusNotImplemented {
		t.Fatalf("a node without SRv6: %v, want 501", err)
	}

	// An agent from before per-node SIDs: its server has no such route
	// and answers 404 not_found (its mux's fallback). It is Old, not an
	// error; the others' SIDs are read as usual.
	old := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusNotFound)
		fmt.Fprintf(w, `{"error":"no route %s %s","reason":"not_found"}`, r.Method, r.URL.Path)
	}))
	t.Cleanup(old.Close)
	sids, err = Group{clients[0], New(old.URL, ""), clients[1]}.SRv6SIDs(ctx(t))
	if err != nil {
		t.Fatalf("a group with an old agent: %v", err)
	}
	s0, _ := lb.NodeSID(loc, 0)
	s1, _ := lb.NodeSID(loc, 1)
	if want := []NodeSID{{SID: s0}, {Old: true}, {SID: s1}}; !slices.Equal(sids, want) {
		t.Fatalf("a group with an old agent: %+v, want %+v", sids, want)
	}
}
