package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/roamnet/roam/dataplane"
	"github.com/roamnet/roam/dataplane/dptest"
	"github.com/roamnet/roam/dataplane/lb"
	"github.com/roamnet/roam/test/netns"
)

// srv6Node is one node's data plane on the SRv6 topology, XDP (native) on its links.
type srv6Node struct {
	ns string
	d  *dataplane.Dataplane
}

func openSRv6Node(t *testing.T, ns string, sid netip.Addr, with func(*dataplane.Config), devs ...string) *srv6Node {
	t.Helper()
	// A draining location keeps a UDP flow while it is not idle longer than
	// UDPDrain. The test's steps between two datagrams of one flow (dials,
	// 300 KB transfers) can take longer than the 200 ms default on a loaded
	// machine, which is not what this test is about: give them 10 s.
	cfg := dataplane.Config{
		SRv6: dataplane.SRv6Config{SID: sid,
			Locators: []netip.Prefix{netns.SRv6LocHome, netns.SRv6LocOld, netns.SRv6LocNew}},
		Timeouts: dataplane.Timeouts{UDPDrain: 10 * time.Second},
	}
	if with != nil {
		with(&cfg)
	}
	d := dptest.New(t, cfg)
	err := netns.Do(ns, func() error {
		for _, dev := range devs {
			if err := d.AttachXDP(dev, dataplane.XDPNative); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return &srv6Node{ns: ns, d: d}
}

// startCopy starts a copy of the service at a location (see
// netns.CopyServer) on both frontends, stopped at the test's end.
func startCopy(t *testing.T, ns, name string) *netns.CopyServer {
	t.Helper()
	s, err := netns.StartCopyServer(ns, name, netns.SRv6FrontendV4, netns.SRv6FrontendV6)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

// tcpClient is one connection from the client namespace.
type tcpClient struct {
	c net.Conn
	r *bufio.Reader
	n int
}

func dialFrontend(ctx context.Context, t *testing.T, ns string, fe netip.AddrPort) *tcpClient {
	t.Helper()
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	c, err := netns.Dial(dctx, ns, "tcp", fe.String())
	if err != nil {
		t.Fatalf("connect to %s: %v", fe, err)
	}
	t.Cleanup(func() { c.Close() })
	return &tcpClient{c: c, r: bufio.NewReader(c)}
}

// ask sends a request and returns who answered and the client address it saw.
func (k *tcpClient) ask(t *testing.T) (who, client string) {
	t.Helper()
	k.n++
	_ = k.c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := fmt.Fprintf(k.c, "%d\n", k.n); err != nil {
		t.Fatalf("send: %v", err)
	}
	line, err := k.r.ReadString('\n')
	if err != nil {
		t.Fatalf("answer to request %d: %v", k.n, err)
	}
	f := strings.Fields(line)
	if len(f) != 3 || f[2] != fmt.Sprint(k.n) {
		t.Fatalf("answer %q to request %d", line, k.n)
	}
	return f[0], f[1]
}

// bulk sends n bytes and reads them back: full-size segments both ways.
func (k *tcpClient) bulk(t *testing.T, n int) {
	t.Helper()
	_ = k.c.SetDeadline(time.Now().Add(10 * time.Second))
	data := bytes.Repeat([]byte("roam-srv6-"), n/10)
	if _, err := fmt.Fprintf(k.c, "bulk %d\n", len(data)); err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { _, err := k.c.Write(data); errc <- err }()
	back := make([]byte, len(data))
	if _, err := io.ReadFull(k.r, back); err != nil {
		t.Fatalf("bulk echo of %d bytes: %v", len(data), err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(back, data) {
		t.Fatal("bulk echo differs")
	}
}

// udpClient is one UDP socket in the client namespace.
type udpClient struct {
	c net.Conn
	n int
}

func dialUDP(ctx context.Context, t *testing.T, ns string, fe netip.AddrPort) *udpClient {
	t.Helper()
	c, err := netns.Dial(ctx, ns, "udp", fe.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &udpClient{c: c}
}

func (u *udpClient) ask(t *testing.T) (who, client string) {
	t.Helper()
	u.n++
	buf := make([]byte, 2048)
	for try := 0; try < 3; try++ { // the first packet may wait on neighbour resolution
		if _, err := fmt.Fprintf(u.c, "%d", u.n); err != nil {
			t.Fatal(err)
		}
		_ = u.c.SetReadDeadline(time.Now().Add(time.Second))
		for {
			n, err := u.c.Read(buf)
			if err != nil {
				break
			}
			f := strings.Fields(string(buf[:n]))
			if len(f) == 3 && f[2] == fmt.Sprint(u.n) {
				return f[0], f[1]
			}
		}
	}
	t.Fatalf("no UDP answer to %d", u.n)
	return "", ""
}

func (n *srv6Node) setCopy(t *testing.T, s dataplane.SRv6State, fs ...lb.Frontend) {
	t.Helper()
	for _, f := range fs {
		if err := n.d.SetSRv6Copy(f, s); err != nil {
			t.Fatal(err)
		}
	}
}

func (n *srv6Node) commit(t *testing.T, tg lb.Target, fs ...lb.Frontend) {
	t.Helper()
	for _, f := range fs {
		dptest.SetActive(t, n.d, f, tg)
	}
}

// srv6Family is one client family of the SRv6 suite: the frontend of
// that family, the client's address on it and the home's own (the source
// of the home's own connections).
type srv6Family struct {
	name                   string
	frontend, client, home netip.Addr
}

// srv6Families: an IPv4 client over the IPv6 underlay, and an IPv6 one.
var srv6Families = []srv6Family{
	{"ipv4 client", netns.SRv6FrontendV4, netns.SRv6ClientV4, netns.SRv6HomeV4},
	{"ipv6 client", netns.SRv6FrontendV6, netns.SRv6ClientV6, netns.SRv6HomeV6},
}

// famFE is a family's frontends, TCP and UDP on the copies' ports, and
// their addresses; want checks an answer against seen, the client address
// the copies must see (the family's client unless set otherwise).
type famFE struct {
	t                *testing.T
	fam              srv6Family
	tcp, udp         lb.Frontend
	tcpAddr, udpAddr netip.AddrPort
	seen             netip.Addr
}

func famFrontends(t *testing.T, fam srv6Family) famFE {
	return famFE{
		t: t, fam: fam, seen: fam.client,
		tcp:     lb.Frontend{Addr: fam.frontend, Port: netns.CopyTCPPort, Proto: lb.TCP},
		udp:     lb.Frontend{Addr: fam.frontend, Port: netns.CopyUDPPort, Proto: lb.UDP},
		tcpAddr: netip.AddrPortFrom(fam.frontend, netns.CopyTCPPort),
		udpAddr: netip.AddrPortFrom(fam.frontend, netns.CopyUDPPort),
	}
}

// want fails the test unless the copy wantWho answered and saw f.seen.
func (f famFE) want(step, gotWho, gotClient, wantWho string) {
	f.t.Helper()
	if gotWho != wantWho || gotClient != f.seen.String() {
		f.t.Fatalf("%s: %s: answered by %s seeing client %s, want %s seeing %s", f.fam.name, step, gotWho, gotClient, wantWho, f.seen)
	}
}

// srv6Bed is the SRv6 topology with a data plane at each node: XDP
// (native) at the home's three links and at each location's, and each
// location's return routes (the kernel's seg6 encap to the home's SID).
type srv6Bed struct {
	topo          *netns.SRv6Topology
	home, old, nw *srv6Node
}

func newSRv6Bed(t *testing.T) *srv6Bed {
	t.Helper()
	return newSRv6BedWith(t, nil)
}

// newSRv6BedWith is newSRv6Bed with the home's data plane configured by homeCfg too.
func newSRv6BedWith(t *testing.T, homeCfg func(*dataplane.Config)) *srv6Bed {
	t.Helper()
	topo, err := netns.NewSRv6Topology()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := topo.Close(); err != nil {
			t.Error(err)
		}
	})
	home := openSRv6Node(t, topo.Home, netns.SRv6SIDHome, homeCfg, "h0", "h1", "h2")
	old := openSRv6Node(t, topo.Old, netns.SRv6SIDOld, nil, "o0")
	nw := openSRv6Node(t, topo.New, netns.SRv6SIDNew, nil, "n0")
	for _, loc := range []struct {
		ns, dev string
		sid     netip.Addr
	}{{topo.Old, "o0", netns.SRv6SIDOld}, {topo.New, "n0", netns.SRv6SIDNew}} {
		err := netns.Do(loc.ns, func() error {
			if err := dataplane.SetSRv6TunnelSource(loc.sid); err != nil {
				return err
			}
			for i, fe := range []netip.Addr{netns.SRv6FrontendV4, netns.SRv6FrontendV6} {
				r := dataplane.SRv6Return{Frontend: fe, HomeSID: netns.SRv6SIDHome, Dev: loc.dev, Table: 100 + i}
				if err := r.Install(); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		for _, n := range []*srv6Node{home, old, nw} {
			drops, _ := n.d.Drops()
			fw, mss, _ := n.d.SRv6Unowned()
			nz := map[string]uint64{}
			for k, v := range drops {
				if v != 0 {
					nz[k] = v
				}
			}
			t.Logf("%s: drops %v, forwarded with no copy %d, mss clamped %d", n.ns, nz, fw, mss)
			for _, f := range []lb.Frontend{{Addr: netns.SRv6FrontendV4, Port: 80, Proto: lb.TCP}, {Addr: netns.SRv6FrontendV6, Port: 80, Proto: lb.TCP}} {
				s, _ := n.d.SRv6Stats(f)
				t.Logf("%s %s: %+v", n.ns, f, s)
			}
			out, _ := netns.Cmd(context.Background(), n.ns, "nstat", "-az", "Ip6InNoRoutes", "Ip6InDiscards", "Ip6InAddrErrors", "Ip6OutNoRoutes", "IpInAddrErrors", "Ip6InHdrErrors", "TcpExtTCPSynRetrans").CombinedOutput()
			t.Logf("%s nstat:\n%s", n.ns, out)
		}
	})
	return &srv6Bed{topo: topo, home: home, old: old, nw: nw}
}

// TestSRv6PathMode runs the SRv6 path mode on veths in namespaces, with
// the data planes' XDP programs (native) at the home and at both
// locations, an IPv6-only underlay between them, and the kernel's seg6
// encap routes for the copies' answers (back through the home, which
// decapsulates). For an IPv4 client and an IPv6 client, TCP and UDP:
// steady state [old]; a migration [old, new] with the old copy still
// serving; the old copy draining (its connections and UDP flows stay, new
// ones go on to the new copy); the old copy gone (its UDP flow goes on);
// the home committed to [new]. The service sees the client's real address
// throughout, and full-size segments cross the two-segment path both ways
// (MSS clamped at the home, nothing too big). Then forged packets to a
// location's SID are dropped and counted.
func TestSRv6PathMode(t *testing.T) { srv6Migration(t, false) }

// TestSRv6DirectReturn runs the same with direct server return: the home
// encapsulates the client's packets as ever, the location's copy answers
// the client itself from the frontend's address (the home only routes
// the answers, as the WAN router it also is here: it decapsulates
// nothing). The same steps, the same checks, but that the home
// decapsulated no answer.
func TestSRv6DirectReturn(t *testing.T) { srv6Migration(t, true) }

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

// asker is a client that asks the service and says who answered, seeing
// which client address (tcpClient, udpClient).
type asker interface {
	ask(t *testing.T) (who, client string)
}

// expect asks each of cs once: the copy who must answer each, seeing
// f.seen.
func (f famFE) expect(step, who string, cs ...asker) {
	f.t.Helper()
	for i, c := range cs {
		gotWho, gotClient := c.ask(f.t)
		name := step
		if len(cs) > 1 {
			name = fmt.Sprintf("%s (%d of %d)", step, i+1, len(cs))
		}
		f.want(name, gotWho, gotClient, who)
	}
}

// srv6Migration is TestSRv6PathMode's scenario; dsr: with direct server
// return (TestSRv6DirectReturn).
func srv6Migration(t *testing.T, dsr bool) {
	ctx := rootWithin(t, 2*time.Minute)
	bed := newSRv6Bed(t)
	topo, home, old, nw := bed.topo, bed.home, bed.old, bed.nw
	if dsr {
		directReturn(t, bed)
	}
	oldCopy := startCopy(t, topo.Old, "old")
	startCopy(t, topo.New, "new")

	for _, fam := range srv6Families {
		t.Logf("== %s (direct return %v)", fam.name, dsr)
		ff := famFrontends(t, fam)
		fT, fU, tcpAddr, udpAddr := ff.tcp, ff.udp, ff.tcpAddr, ff.udpAddr

		t.Log("steady state: [old]")
		old.setCopy(t, dataplane.SRv6Serving, fT, fU)
		home.commit(t, lb.SRv6(netns.SRv6SIDOld), fT, fU)
		a := dialFrontend(ctx, t, topo.Client, tcpAddr)
		ff.expect("steady tcp", "old", a)
		u1 := dialUDP(ctx, t, topo.Client, udpAddr)
		ff.expect("steady udp", "old", u1)
		a.bulk(t, 200_000)

		t.Log("migration, old copy serving: [old, new]")
		nw.setCopy(t, dataplane.SRv6Serving, fT, fU)
		home.commit(t, lb.SRv6(netns.SRv6SIDOld, netns.SRv6SIDNew), fT, fU)
		ff.expect("migration: open connection", "old", a)
		b := dialFrontend(ctx, t, topo.Client, tcpAddr)
		ff.expect("migration: new connection", "old", b)
		b.bulk(t, 300_000)
		ff.expect("migration: udp flow", "old", u1)

		t.Log("old copy draining")
		old.setCopy(t, dataplane.SRv6Draining, fT, fU)
		ff.expect("draining: open connections", "old", a, b)
		c := dialFrontend(ctx, t, topo.Client, tcpAddr)
		ff.expect("draining: new connection", "new", c)
		c.bulk(t, 300_000)
		ff.expect("draining: its udp flow", "old", u1)
		u2 := dialUDP(ctx, t, topo.Client, udpAddr)
		ff.expect("draining: a new udp flow", "new", u2)

		t.Log("old copy gone")
		a.c.Close()
		b.c.Close()
		old.setCopy(t, dataplane.SRv6Gone, fT, fU)
		ff.expect("gone: the old udp flow goes on", "new", u1)
		d := dialFrontend(ctx, t, topo.Client, tcpAddr)
		ff.expect("gone: new connection", "new", d)

		t.Log("home committed to [new]")
		home.commit(t, lb.SRv6(netns.SRv6SIDNew), fT, fU)
		ff.expect("after: connection opened while draining", "new", c)
		e := dialFrontend(ctx, t, topo.Client, tcpAddr)
		ff.expect("after: new connection", "new", e)
		e.bulk(t, 100_000)

		hs, err := home.d.SRv6Stats(fT)
		if err != nil || hs.Encap.Packets == 0 {
			t.Fatalf("home counters %+v, %v: want encapsulated packets", hs, err)
		}
		if dsr && hs.Decap.Packets != 0 {
			t.Fatalf("home counters %+v: direct return, want no answer decapsulated", hs)
		}
		if !dsr && hs.Decap.Packets == 0 {
			t.Fatalf("home counters %+v: want answers decapsulated", hs)
		}
		ns, err := nw.d.SRv6Stats(fT)
		if err != nil || ns.Deliver.Packets == 0 {
			t.Fatalf("new location counters %+v, %v", ns, err)
		}
		nw.setCopy(t, dataplane.SRv6Gone, fT, fU) // the next family starts from the old location again
	}
	oldCopy.Close()
	if fw, clamped, err := old.d.SRv6Unowned(); err != nil || fw == 0 {
		t.Fatalf("old location forwarded %d packets with its copy gone, %v", fw, err)
	} else if _, hc, _ := home.d.SRv6Unowned(); hc == 0 {
		t.Fatalf("home clamped no MSS (old location: %d)", clamped)
	}
	// With direct return the copy's SYN-ACK does not pass the home, whose
	// clamp of it is what keeps the client's segments within the
	// encapsulation: the client's first full-size segments are answered
	// too big (the README's risks), and the transfers above completed
	// after it.
	if n := dptest.Drops(t, home.d)["srv6_too_big"]; n != 0 && !dsr {
		t.Fatalf("home dropped %d packets as too big: the MSS clamp did not hold", n)
	}

	// Forged packets to the new location's SID, for an IPv4 and an IPv6
	// client's packet inside: a segment outside roam's locators, a source
	// outside them, a list whose active segment is another node's
	// (fc00:20:3:1::1, the new location's node 1) though the destination is
	// this node's SID; each dropped and counted, then a good one delivered.
	alien := netip.MustParseAddr("fc00:99::1")
	node1 := netip.MustParseAddr("fc00:20:3:1::1")
	for _, fam := range srv6Families {
		t.Logf("forged packets to the new location's SID, %s", fam.name)
		fU := lb.Frontend{Addr: fam.frontend, Port: 7000, Proto: lb.UDP}
		nw.setCopy(t, dataplane.SRv6Serving, fU)
		before := dptest.Drops(t, nw.d)
		delivered := func() uint64 {
			s, err := nw.d.SRv6Stats(fU)
			if err != nil {
				t.Fatal(err)
			}
			return s.Deliver.Packets
		}
		d0 := delivered()
		var inner []byte
		if fam.frontend.Is4() {
			inner = udp4(fam.client, fam.frontend, 5555, 7000, []byte("forged"))
		} else {
			inner = udp6(fam.client, fam.frontend, 5555, 7000, []byte("forged"))
		}
		otherNode := srv6Packet(netns.SRv6SIDHome, []netip.Addr{node1}, 0, inner)
		sid := netns.SRv6SIDNew.As16()
		copy(otherNode[24:40], sid[:]) // to this node's SID, the list naming node 1
		sendRaw(t, topo.Home, "h2", topo.New, "n0", srv6Packet(netns.SRv6SIDHome, []netip.Addr{netns.SRv6SIDNew, alien}, 1, inner))
		sendRaw(t, topo.Home, "h2", topo.New, "n0", srv6Packet(netip.MustParseAddr("fd20:3::1"), []netip.Addr{netns.SRv6SIDNew}, 0, inner))
		sendRaw(t, topo.Home, "h2", topo.New, "n0", otherNode)
		sendRaw(t, topo.Home, "h2", topo.New, "n0", srv6Packet(netns.SRv6SIDHome, []netip.Addr{netns.SRv6SIDNew}, 0, inner)) // a good one, last
		if err := poll(ctx, 5*time.Second, func() error {
			if delivered() != d0+1 {
				return errors.New("the good packet not delivered yet")
			}
			return nil
		}); err != nil {
			t.Fatalf("%s: %v", fam.name, err)
		}
		after := dptest.Drops(t, nw.d)
		for _, r := range []string{"srv6_foreign_sid", "srv6_foreign_src", "srv6_bad_srh"} {
			if after[r]-before[r] != 1 {
				t.Errorf("%s: %s: counted %d, want 1", fam.name, r, after[r]-before[r])
			}
		}
	}
}

// udp4 is an IPv4 UDP packet (no Ethernet), checksums filled.
func udp4(src, dst netip.Addr, sport, dport uint16, payload []byte) []byte {
	b := make([]byte, 28+len(payload))
	b[0], b[8], b[9] = 0x45, 64, 17
	binary.BigEndian.PutUint16(b[2:], uint16(len(b)))
	s, d := src.As4(), dst.As4()
	copy(b[12:], s[:])
	copy(b[16:], d[:])
	binary.BigEndian.PutUint16(b[10:], ^dptest.Sum16(b[:20], 0))
	binary.BigEndian.PutUint16(b[20:], sport)
	binary.BigEndian.PutUint16(b[22:], dport)
	binary.BigEndian.PutUint16(b[24:], uint16(8+len(payload)))
	copy(b[28:], payload)
	pseudo := append(append(append([]byte{}, s[:]...), d[:]...), 0, 17, 0, 0)
	binary.BigEndian.PutUint16(pseudo[10:], uint16(8+len(payload)))
	binary.BigEndian.PutUint16(b[26:], ^dptest.Sum16(b[20:], dptest.Sum16(pseudo, 0)))
	return b
}

// srv6Packet is outer IPv6 + SRH (sids in the order visited, sl left) around an IP packet.
func srv6Packet(src netip.Addr, sids []netip.Addr, sl int, inner []byte) []byte {
	return dptest.SRv6Packet(src, sids, sl, 64, 0, inner)
}

// sendRaw sends an IPv6 packet out of dev in ns, to the MAC of peerDev in peerNS.
func sendRaw(t *testing.T, ns, dev, peerNS, peerDev string, pkt []byte) {
	t.Helper()
	var peerMAC net.HardwareAddr
	if err := netns.Handle(peerNS, func(h *netlink.Handle) error {
		l, err := h.LinkByName(peerDev)
		if err == nil {
			peerMAC = l.Attrs().HardwareAddr
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	err := netns.Do(ns, func() error {
		l, err := netlink.LinkByName(dev)
		if err != nil {
			return err
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM, int(htons16(unix.ETH_P_IPV6)))
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		sa := &unix.SockaddrLinklayer{Protocol: htons16(unix.ETH_P_IPV6), Ifindex: l.Attrs().Index, Halen: 6}
		copy(sa.Addr[:], peerMAC)
		return unix.Sendto(fd, pkt, 0, sa)
	})
	if err != nil {
		t.Fatalf("send raw packet: %v", err)
	}
}

func htons16(v uint16) uint16 { return v<<8 | v>>8 }
