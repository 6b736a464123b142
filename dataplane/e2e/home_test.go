package e2e

import (
	"net/netip"
	"testing"

	"github.com/roamnet/roam/dataplane"
	"github.com/roamnet/roam/test/netns"
)

// The tests that drive a data plane in the home namespace directly (no
// roam-agent) share these steps.

// abroadTopology builds the test topology with the HTTP server "abroad"
// at target in its abroad namespace, both gone when the test ends.
func abroadTopology(t *testing.T, target netip.AddrPort) *netns.Topology {
	t.Helper()
	topo := netns.NewTestTopology(t)
	srv, err := netns.StartAbroadServer(topo.Abroad, target.String(), "abroad", "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return topo
}

// openHome opens a data plane with cfg in topo's home namespace and, if
// attach, attaches its XDP program natively to h0 and h1. On an attach
// error it returns the open data plane too, for the caller to close.
func openHome(topo *netns.Topology, cfg dataplane.Config, attach bool) (*dataplane.Dataplane, error) {
	var d *dataplane.Dataplane
	err := netns.Do(topo.Home, func() error {
		var err error
		if d, err = dataplane.Open(cfg); err != nil || !attach {
			return err
		}
		for _, ifc := range []string{"h0", "h1"} {
			if err := d.AttachXDP(ifc, dataplane.XDPNative); err != nil {
				return err
			}
		}
		return nil
	})
	return d, err
}
