package e2e

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/roamnet/roam/dataplane"
	"github.com/roamnet/roam/dataplane/lb"
	"github.com/roamnet/roam/test/netns"
)

// directReturn makes the bed's locations answer directly (direct server
// return, what the controller asks of a location for a service with
// direct_return): no return route (removed), and an IPv4 default route
// over the IPv6 underlay's gateway (RFC 5549), as a network that carries
// the clients' family back to them must have.
func directReturn(t *testing.T, bed *srv6Bed) {
	t.Helper()
	for _, loc := range []struct{ ns, dev, gw string }{{bed.topo.Old, "o0", "fd20:2::1"}, {bed.topo.New, "n0", "fd20:3::1"}} {
		err := netns.Do(loc.ns, func() error {
			for i, fe := range []netip.Addr{netns.SRv6FrontendV4, netns.SRv6FrontendV6} {
				if err := (dataplane.SRv6Return{Frontend: fe, Table: 100 + i}).Remove(); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if out, err := netns.Cmd(context.Background(), loc.ns, "ip", "-4", "route", "add", "default", "via", "inet6", loc.gw, "dev", loc.dev).CombinedOutput(); err != nil {
			t.Fatalf("ipv4 route over the underlay in %s: %v: %s", loc.ns, err, out)
		}
	}
}

// TestSRv6DirectReturn runs the SRv6 path mode with direct server return
// in namespaces, for an IPv4 and an IPv6 client: the home encapsulates
// the client's packets as ever, the location's copy answers the client
// itself from the frontend's address (the home only routes the answers,
// as the WAN router it also is here: it decapsulates nothing). Through a
// migration: [old]; [old, new] with the old copy serving, then draining
// (its connection stays, a new one goes to the new copy); gone; [new].
// The service sees the client's real address throughout.
func TestSRv6DirectReturn(t *testing.T) {
	ctx := rootWithin(t, 2*time.Minute)
	bed := newSRv6Bed(t)
	topo, home, old, nw := bed.topo, bed.home, bed.old, bed.nw
	directReturn(t, bed)
	startCopy(t, topo.Old, "old")
	startCopy(t, topo.New, "new")
	for _, fam := range srv6Families {
		t.Logf("== %s", fam.name)
		ff := famFrontends(t, fam)
		fT, fU, tcpAddr, udpAddr, want := ff.tcp, ff.udp, ff.tcpAddr, ff.udpAddr, ff.want
		old.setCopy(t, dataplane.SRv6Serving, fT, fU)
		home.commit(t, lb.SRv6(netns.SRv6SIDOld), fT, fU)
		a := dialFrontend(ctx, t, topo.Client, tcpAddr)
		who, cl := a.ask(t)
		want("steady tcp", who, cl, "old")
		u := dialUDP(ctx, t, topo.Client, udpAddr)
		who, cl = u.ask(t)
		want("steady udp", who, cl, "old")
		a.bulk(t, 200_000)

		nw.setCopy(t, dataplane.SRv6Serving, fT, fU)
		home.commit(t, lb.SRv6(netns.SRv6SIDOld, netns.SRv6SIDNew), fT, fU)
		old.setCopy(t, dataplane.SRv6Draining, fT, fU)
		who, cl = a.ask(t)
		want("draining: open connection", who, cl, "old")
		b := dialFrontend(ctx, t, topo.Client, tcpAddr)
		who, cl = b.ask(t)
		want("draining: new connection", who, cl, "new")
		b.bulk(t, 200_000)

		a.c.Close()
		old.setCopy(t, dataplane.SRv6Gone, fT, fU)
		who, cl = u.ask(t)
		want("gone: the udp flow goes on", who, cl, "new")
		home.commit(t, lb.SRv6(netns.SRv6SIDNew), fT, fU)
		c := dialFrontend(ctx, t, topo.Client, tcpAddr)
		who, cl = c.ask(t)
		want("after: new connection", who, cl, "new")

		hs, err := home.d.SRv6Stats(fT)
		if err != nil || hs.Encap.Packets == 0 || hs.Decap.Packets != 0 {
			t.Fatalf("home counters %+v, %v: want encapsulated packets and no answer decapsulated", hs, err)
		}
		nw.setCopy(t, dataplane.SRv6Gone, fT, fU)
	}
}
