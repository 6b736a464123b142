package main

import (
	"bytes"
	"context"
	"net/http/httptest"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/roamnet/roam/dataplane"
	"github.com/roamnet/roam/dataplane/agentapi"
	"github.com/roamnet/roam/dataplane/dptest"
	"github.com/roamnet/roam/dataplane/lb"
)

// activeAndStaged makes active f's committed target and stages staged
// after it, so that a dump has both to show.
func activeAndStaged(t *testing.T, dp *dataplane.Dataplane, f lb.Frontend, active, staged lb.Target) {
	t.Helper()
	dptest.SetActive(t, dp, f, active)
	if _, err := dp.Stage(f, staged); err != nil {
		t.Fatal(err)
	}
}

// dumpShows dumps the pins under pin and checks that the dump shows each
// of wants.
func dumpShows(t *testing.T, pin string, wants ...string) {
	t.Helper()
	var out bytes.Buffer
	if err := dumpPins(&out, pin); err != nil {
		t.Fatalf("dump pins: %v", err)
	}
	t.Logf("\n%s", out.String())
	for _, want := range wants {
		if !strings.Contains(out.String(), want) {
			t.Errorf("dump lacks %q", want)
		}
	}
}

func TestDataplaneDump(t *testing.T) {
	pin := dptest.PinPath(t)
	dp := dptest.New(t, dataplane.Config{PinPath: pin, SNATv4: netip.MustParseAddr("10.99.0.1")})
	f, _ := lb.ParseFrontend("10.0.0.1:80/tcp")
	t1, _ := lb.ParseTarget("redirect:10.2.0.1:8080")
	t2, _ := lb.ParseTarget("redirect:10.3.0.1:8080")
	activeAndStaged(t, dp, f, t1, t2)

	dumpShows(t, pin, "1 frontends", "10.0.0.1:80/tcp", "redirect:10.2.0.1:8080", "redirect:10.3.0.1:8080", "GENERATION")
	var out bytes.Buffer
	if err := dumpPins(&out, filepath.Join(pin, "nothing")); err == nil || !strings.Contains(err.Error(), "--pin-path") {
		t.Errorf("dump of a missing pin path: got %v, want a hint about --pin-path", err)
	}
	// A pin path where one map of the set is missing: the error names it.
	if _, err := openPinned(pin, "roam_services", "roam_no_such_map"); err == nil || !strings.Contains(err.Error(), "roam_no_such_map") {
		t.Errorf("open of a set with a missing map: got %v, want an error naming roam_no_such_map", err)
	}

	srv, err := agentapi.NewServer(dp, agentapi.ServerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv.Handler())
	defer hs.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out.Reset()
	if err := dumpAgent(ctx, &out, agentapi.New(hs.URL, "")); err != nil {
		t.Fatalf("dump agent: %v", err)
	}
	if !strings.Contains(out.String(), "redirect:10.3.0.1:8080") {
		t.Errorf("agent dump lacks the staged target:\n%s", out.String())
	}
}
