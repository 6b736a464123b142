package e2e

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/roamnet/roam/dataplane"
	"github.com/roamnet/roam/dataplane/dptest"
	"github.com/roamnet/roam/dataplane/lb"
	"github.com/roamnet/roam/test/netns"
)

// TestSRv6HomeSender: a sender on the home node itself (a host socket)
// reaches a frontend on an SRv6 path through roam's tc program, which
// encapsulates at the home's egress (bpf_skb_adjust_room) and sends the
// packet to the path's first segment. For an IPv4 and an IPv6 frontend:
// TCP requests and 300 KB both ways (the socket's GSO packets are
// segmented after the encapsulation), and UDP; the copy sees the home's
// own address; the path [old] and then [old, new] with the old copy
// draining (a new connection reaches the new copy); nothing dropped as
// srv6_no_encap or too big.
func TestSRv6HomeSender(t *testing.T) {
	ctx := rootWithin(t, 2*time.Minute)
	bed := newSRv6Bed(t)
	topo, home, old, nw := bed.topo, bed.home, bed.old, bed.nw
	homeSendsByTC(t, bed)
	oldCopy := startCopy(t, topo.Old, "old")
	newCopy := startCopy(t, topo.New, "new")

	for _, fam := range srv6Families {
		t.Logf("== %s", fam.name)
		ff := famFrontends(t, fam)
		ff.seen = fam.home // the home's own connections, from its address on the client's link
		fT, fU, want := ff.tcp, ff.udp, ff.want
		old.setCopy(t, dataplane.SRv6Serving, fT, fU)
		home.commit(t, lb.SRv6(netns.SRv6SIDOld), fT, fU)
		a := dialFrontend(ctx, t, topo.Home, ff.tcpAddr)
		who, cl := a.ask(t)
		want("[old] tcp", who, cl, "old")
		a.bulk(t, 300_000)
		u := dialUDP(ctx, t, topo.Home, ff.udpAddr)
		who, cl = u.ask(t)
		want("[old] udp", who, cl, "old")

		nw.setCopy(t, dataplane.SRv6Serving, fT, fU)
		home.commit(t, lb.SRv6(netns.SRv6SIDOld, netns.SRv6SIDNew), fT, fU)
		old.setCopy(t, dataplane.SRv6Draining, fT, fU)
		who, cl = a.ask(t)
		want("[old, new], old draining: open connection", who, cl, "old")
		b := dialFrontend(ctx, t, topo.Home, ff.tcpAddr)
		who, cl = b.ask(t)
		want("[old, new], old draining: new connection", who, cl, "new")
		b.bulk(t, 300_000)

		hs, err := home.d.SRv6Stats(fT)
		if err != nil || hs.Encap.Packets == 0 || hs.Decap.Packets == 0 {
			t.Fatalf("home counters %+v, %v", hs, err)
		}
		old.setCopy(t, dataplane.SRv6Gone, fT, fU)
		nw.setCopy(t, dataplane.SRv6Gone, fT, fU)
	}
	for _, c := range []struct {
		name string
		s    *netns.CopyServer
		n    int
	}{{"old", oldCopy, 4}, {"new", newCopy, 2}} {
		seen := c.s.Seen()
		if seen[netns.SRv6HomeV4]+seen[netns.SRv6HomeV6] < c.n || len(seen) != 2 {
			t.Errorf("%s copy saw %v, want the home's two addresses only (%d+ times)", c.name, seen, c.n)
		}
	}
	drops := dptest.Drops(t, home.d)
	for _, r := range []string{"srv6_no_encap", "srv6_too_big", "no_route"} {
		if drops[r] != 0 {
			t.Errorf("home dropped %d packets as %s", drops[r], r)
		}
	}
}

// homeSendsByTC makes the home's own sockets reach the frontends through
// h0 (towards the client, which does not forward), with roam's tc program
// at h0's egress: only its encapsulation gets a packet to a copy.
func homeSendsByTC(t *testing.T, bed *srv6Bed) {
	t.Helper()
	topo, home := bed.topo, bed.home
	err := netns.Do(topo.Home, func() error {
		if err := home.d.AttachTC("h0"); err != nil {
			return err
		}
		l, err := netlink.LinkByName("h0")
		if err != nil {
			return err
		}
		for _, r := range []struct {
			dst netip.Prefix
			gw  netip.Addr
		}{
			{netip.PrefixFrom(netns.SRv6FrontendV4, 32), netns.SRv6ClientV4},
			{netip.PrefixFrom(netns.SRv6FrontendV6, 128), netns.SRv6ClientV6},
		} {
			if err := netlink.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Dst: prefixNet(r.dst), Gw: r.gw.AsSlice()}); err != nil {
				return fmt.Errorf("route %s: %w", r.dst, err)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestSRv6MTUEdge: the underlay path from the home to the old location
// carries 1400 bytes (less than the 1500 the MSS clamp assumes), so an
// encapsulated packet ([old]: 64 bytes more) fits only if the client's
// packet is at most 1336. For an IPv4 and an IPv6 client: a UDP datagram
// of exactly 1336 bytes (don't fragment) is delivered; one byte more is
// answered by the home with a too-big (ICMP fragmentation needed / ICMPv6
// packet too big) of 1336, which the client's kernel takes as the path
// MTU. Before that, a TCP transfer of 300 KB each way completes, its
// full-size segments answered with too-bigs until the client's fit.
func TestSRv6MTUEdge(t *testing.T) {
	ctx := rootWithin(t, 2*time.Minute)
	bed := newSRv6Bed(t)
	topo, home, old := bed.topo, bed.home, bed.old
	const underlay, fits = 1400, 1400 - 64
	// The home's route to the old location's locator says so, locked (the
	// MTU bpf_fib_lookup checks against); the links stay at 1500, so the
	// copy, which sees only its own link, offers an MSS for 1500, as
	// behind a narrower WAN hop it would.
	if err := netns.Handle(topo.Home, func(h *netlink.Handle) error {
		l, err := h.LinkByName("h1")
		if err != nil {
			return err
		}
		return h.RouteReplace(&netlink.Route{LinkIndex: l.Attrs().Index, Dst: prefixNet(netns.SRv6LocOld),
			Gw: netip.MustParseAddr("fd20:2::2").AsSlice(), MTU: underlay, MTULock: true})
	}); err != nil {
		t.Fatal(err)
	}
	startCopy(t, topo.Old, "old")

	for _, fam := range srv6Families {
		t.Logf("== %s", fam.name)
		ff := famFrontends(t, fam)
		fT, fU := ff.tcp, ff.udp
		hdrs := 48 // IP and UDP headers
		if fam.frontend.Is4() {
			hdrs = 28
		}
		old.setCopy(t, dataplane.SRv6Serving, fT, fU)
		home.commit(t, lb.SRv6(netns.SRv6SIDOld), fT, fU)

		// TCP first: full-size segments (the clamp assumes 1500) meet the home's too-bigs.
		big0 := dptest.Drops(t, home.d)["srv6_too_big"]
		k := dialFrontend(ctx, t, topo.Client, ff.tcpAddr)
		who, cl := k.ask(t)
		ff.want("tcp", who, cl, "old")
		k.bulk(t, 300_000)
		if n := dptest.Drops(t, home.d)["srv6_too_big"] - big0; n == 0 {
			t.Fatalf("the TCP transfer met no too-big: the test did not reach the edge (path mtu %d, mss %d)", pathMTU(t, k.c, fam.frontend.Is4()), tcpMSS(t, k.c))
		}
		// Forget the path MTU TCP learnt, so UDP starts from 1500 again.
		for _, v := range []string{"-4", "-6"} {
			if out, err := netns.Cmd(ctx, topo.Client, "ip", v, "route", "flush", "cache").CombinedOutput(); err != nil {
				t.Fatalf("ip %s route flush cache: %v: %s", v, err, out)
			}
		}

		delivered := func() uint64 {
			s, err := old.d.SRv6Stats(fU)
			if err != nil {
				t.Fatal(err)
			}
			return s.Deliver.Packets
		}
		u := dialUDP(ctx, t, topo.Client, ff.udpAddr)
		who, cl = u.ask(t)
		ff.want("udp", who, cl, "old")
		setDontFragment(t, u.c, fam.frontend.Is4())
		if got := pathMTU(t, u.c, fam.frontend.Is4()); got != 1500 {
			t.Fatalf("the client's path MTU is %d before any too-big, want 1500", got)
		}
		d0, big0 := delivered(), dptest.Drops(t, home.d)["srv6_too_big"]
		if _, err := u.c.Write(make([]byte, fits-hdrs)); err != nil {
			t.Fatalf("send %d bytes: %v", fits, err)
		}
		if err := poll(ctx, 5*time.Second, func() error {
			if delivered() != d0+1 {
				return errors.New("not delivered")
			}
			return nil
		}); err != nil {
			t.Fatalf("a %d-byte datagram (the largest that fits): %v", fits, err)
		}
		if _, err := u.c.Write(make([]byte, fits-hdrs+1)); err != nil {
			t.Fatalf("send %d bytes: %v", fits+1, err)
		}
		if err := poll(ctx, 5*time.Second, func() error {
			if got := pathMTU(t, u.c, fam.frontend.Is4()); got != fits {
				return fmt.Errorf("the client's path MTU is %d, want %d", got, fits)
			}
			return nil
		}); err != nil {
			t.Fatalf("a %d-byte datagram: %v", fits+1, err)
		}
		if n := dptest.Drops(t, home.d)["srv6_too_big"] - big0; n != 1 {
			t.Fatalf("home counted %d srv6_too_big, want 1", n)
		}
		if n := delivered(); n != d0+1 {
			t.Fatalf("old location delivered %d datagrams since, want 1 (the one that fits)", n-d0)
		}
		// Now the client's kernel refuses what does not fit (don't fragment).
		if _, err := u.c.Write(make([]byte, fits-hdrs+1)); !errors.Is(err, syscall.EMSGSIZE) {
			t.Fatalf("a datagram over the path MTU: %v, want EMSGSIZE", err)
		}

		old.setCopy(t, dataplane.SRv6Gone, fT, fU)
	}
}

func prefixNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// setDontFragment sets path MTU discovery "do" on a UDP socket: DF set, never fragmented locally.
func setDontFragment(t *testing.T, c net.Conn, v4 bool) {
	t.Helper()
	sockopt(t, c, func(fd int) error {
		if v4 {
			return unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_MTU_DISCOVER, unix.IP_PMTUDISC_DO)
		}
		return unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_MTU_DISCOVER, unix.IPV6_PMTUDISC_DO)
	})
}

// pathMTU is the path MTU the kernel holds for a connected socket's peer.
func pathMTU(t *testing.T, c net.Conn, v4 bool) int {
	t.Helper()
	var mtu int
	sockopt(t, c, func(fd int) (err error) {
		if v4 {
			mtu, err = unix.GetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_MTU)
		} else {
			mtu, err = unix.GetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_MTU)
		}
		return err
	})
	return mtu
}

func sockopt(t *testing.T, c net.Conn, f func(fd int) error) {
	t.Helper()
	sc, ok := c.(syscall.Conn)
	if !ok {
		t.Fatalf("%T has no file descriptor", c)
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var ferr error
	if err := raw.Control(func(fd uintptr) { ferr = f(int(fd)) }); err != nil {
		t.Fatal(err)
	}
	if ferr != nil {
		t.Fatal(ferr)
	}
}

func tcpMSS(t *testing.T, c net.Conn) int {
	var mss int
	sockopt(t, c, func(fd int) (err error) {
		mss, err = unix.GetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_MAXSEG)
		return err
	})
	return mss
}

// TestSRv6MoveHome: a move back home (the home commits local after [old])
// keeps the TCP connections opened along [old] there while the old copy
// drains: their packets (no SYN, no flow pinned at the home, no socket of
// the home's) still go along the previous path, while new connections and
// UDP reach the home's own copy. For an IPv4 and an IPv6 client; the old
// copy sees the client's own address throughout.
func TestSRv6MoveHome(t *testing.T) {
	ctx := rootWithin(t, 2*time.Minute)
	bed := newSRv6Bed(t)
	topo, home, old := bed.topo, bed.home, bed.old
	// The home's copy answers from the frontends, on its lo.
	if err := netns.SRv6FrontendsOnLo(topo.Home); err != nil {
		t.Fatal(err)
	}
	startCopy(t, topo.Old, "old")
	startCopy(t, topo.Home, "home")

	for _, fam := range srv6Families {
		t.Logf("== %s", fam.name)
		ff := famFrontends(t, fam)
		fT, fU, tcpAddr, want := ff.tcp, ff.udp, ff.tcpAddr, ff.want
		old.setCopy(t, dataplane.SRv6Serving, fT, fU)
		home.commit(t, lb.SRv6(netns.SRv6SIDOld), fT, fU)
		a := dialFrontend(ctx, t, topo.Client, tcpAddr)
		who, cl := a.ask(t)
		want("[old]: connection a", who, cl, "old")

		t.Log("back home: local committed, the old copy draining")
		home.commit(t, lb.Local, fT, fU)
		old.setCopy(t, dataplane.SRv6Draining, fT, fU)
		who, cl = a.ask(t)
		want("home: connection a, opened along [old]", who, cl, "old")
		a.bulk(t, 300_000)
		b := dialFrontend(ctx, t, topo.Client, tcpAddr)
		who, cl = b.ask(t)
		want("home: a new connection", who, cl, "home")
		b.bulk(t, 100_000)
		who, cl = a.ask(t)
		want("home: connection a again", who, cl, "old")
		u := dialUDP(ctx, t, topo.Client, netip.AddrPortFrom(fam.frontend, 7000))
		who, cl = u.ask(t)
		want("home: udp", who, cl, "home")
		a.c.Close()
		old.setCopy(t, dataplane.SRv6Gone, fT, fU)
	}
	if n := dptest.Drops(t, home.d)["no_flow"]; n != 0 {
		t.Errorf("home dropped %d packets with no flow", n)
	}
}
