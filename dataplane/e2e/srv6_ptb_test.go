package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/roamnet/roam/dataplane"
	"github.com/roamnet/roam/dataplane/dptest"
	"github.com/roamnet/roam/dataplane/lb"
	"github.com/roamnet/roam/test/netns"
)

// udp6 is an IPv6 UDP packet (no Ethernet), checksum filled.
func udp6(src, dst netip.Addr, sport, dport uint16, payload []byte) []byte {
	b := make([]byte, 48+len(payload))
	binary.BigEndian.PutUint32(b, 6<<28)
	binary.BigEndian.PutUint16(b[4:], uint16(8+len(payload)))
	b[6], b[7] = 17, 64
	s, d := src.As16(), dst.As16()
	copy(b[8:], s[:])
	copy(b[24:], d[:])
	binary.BigEndian.PutUint16(b[40:], sport)
	binary.BigEndian.PutUint16(b[42:], dport)
	binary.BigEndian.PutUint16(b[44:], uint16(8+len(payload)))
	copy(b[48:], payload)
	pseudo := append(append([]byte{}, b[8:40]...), 0, 0, 0, 0, 0, 0, 0, 17)
	binary.BigEndian.PutUint32(pseudo[32:], uint32(8+len(payload)))
	binary.BigEndian.PutUint16(b[46:], ^dptest.Sum16(b[40:], dptest.Sum16(pseudo, 0)))
	return b
}

// socketMTU is the path MTU the kernel holds for a connected socket (IP_MTU, IPV6_MTU).
func socketMTU(t *testing.T, c net.Conn, v4 bool) int {
	t.Helper()
	rc, err := c.(*net.UDPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var mtu int
	var gerr error
	if err := rc.Control(func(fd uintptr) {
		if v4 {
			mtu, gerr = unix.GetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_MTU)
		} else {
			mtu, gerr = unix.GetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_MTU)
		}
	}); err != nil {
		t.Fatal(err)
	}
	if gerr != nil {
		t.Fatal(gerr)
	}
	return mtu
}

// TestSRv6RelayPTB: a router of the underlay (the new location's side of
// the home's link to it) answers a packet the home encapsulated along
// [new] with an ICMPv6 packet too big of 1400 to the home's SID. The
// home's XDP relays it to the client as its own family's too-big about
// its packet, from the frontend, less the encapsulation (1400 - 64 =
// 1336): the client's kernel takes it in, and its connected UDP socket's
// path MTU to the frontend becomes 1336, for an IPv4 and an IPv6 client.
// The client first sends a datagram that the home encapsulates bigger
// than 1280 bytes (a too-big is relayed only about such a flow), and it
// is answered (the home carried it).
func TestSRv6RelayPTB(t *testing.T) {
	ctx := rootWithin(t, time.Minute)
	bed := newSRv6Bed(t)
	startCopy(t, bed.topo.New, "new")
	for _, fam := range srv6Families {
		relayPTB(ctx, t, bed, bed.topo.Client, fam, fam.client)
	}
}

// TestSRv6RelayPTBHomeSender: TestSRv6RelayPTB with the sender on the
// home node itself (a host socket, its datagrams encapsulated by roam's
// tc program at the home's egress, srv6_encap_skb): the tc path notes the
// flow it carried bigger than 1280 bytes too, so the router's too-big
// about it is relayed (srv6_ptb_relayed) and the home socket's path MTU
// to the frontend becomes 1336, for an IPv4 and an IPv6 frontend.
func TestSRv6RelayPTBHomeSender(t *testing.T) {
	ctx := rootWithin(t, time.Minute)
	bed := newSRv6Bed(t)
	homeSendsByTC(t, bed)
	startCopy(t, bed.topo.New, "new")
	for _, fam := range srv6Families {
		relayPTB(ctx, t, bed, bed.topo.Home, fam, fam.home)
	}
}

// relayPTB is one family's TestSRv6RelayPTB with the sender in namespace
// ns at address src.
func relayPTB(ctx context.Context, t *testing.T, bed *srv6Bed, ns string, fam srv6Family, src netip.Addr) {
	t.Helper()
	topo, home, nw := bed.topo, bed.home, bed.nw
	router := netip.MustParseAddr("fd20:3::2")
	v4 := fam.frontend.Is4()
	ff := famFrontends(t, fam)
	ff.seen = src
	f := ff.udp
	nw.setCopy(t, dataplane.SRv6Serving, f)
	home.commit(t, lb.SRv6(netns.SRv6SIDNew), f)
	u := dialUDP(ctx, t, ns, ff.udpAddr)
	who, cl := u.ask(t)
	ff.want("udp", who, cl, "new")
	// A datagram of the flow that the home encapsulates bigger than 1280
	// (1300 bytes of payload, 1384 or 1404 encapsulated: within 1500),
	// answered by the copy.
	big := "big" + string(bytes.Repeat([]byte("b"), 1297))
	if _, err := fmt.Fprint(u.c, big); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	for answered := false; !answered; {
		_ = u.c.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, err := u.c.Read(buf)
		if err != nil {
			t.Fatalf("%s: no answer to a datagram of 1300 bytes: %v", fam.name, err)
		}
		answered = strings.HasSuffix(string(buf[:n]), " "+big)
	}
	if m := socketMTU(t, u.c, v4); m != 1500 {
		t.Fatalf("%s: the socket's path MTU is %d before the packet too big, want 1500", fam.name, m)
	}
	// What the home sent along [new]: the sender's datagram, encapsulated.
	sport := uint16(u.c.LocalAddr().(*net.UDPAddr).Port)
	payload := bytes.Repeat([]byte("p"), 1400)
	inner := udp6(src, fam.frontend, sport, netns.CopyUDPPort, payload)
	if v4 {
		inner = udp4(src, fam.frontend, sport, netns.CopyUDPPort, payload)
		inner[6] |= 0x40 // DF, as the sender's stack sends it
		binary.BigEndian.PutUint16(inner[10:], 0)
		binary.BigEndian.PutUint16(inner[10:], ^dptest.Sum16(inner[:20], 0))
	}
	encap := srv6Packet(netns.SRv6SIDHome, []netip.Addr{netns.SRv6SIDNew}, 0, inner)
	before := dptest.Drops(t, home.d)
	sendRaw(t, topo.New, "n0", topo.Home, "h2", dptest.PTB6(router, netns.SRv6SIDHome, 1400, encap))
	if err := poll(ctx, 5*time.Second, func() error {
		if m := socketMTU(t, u.c, v4); m != 1336 {
			return fmt.Errorf("%s: the socket's path MTU is %d, want 1336 (1400 less 64)", fam.name, m)
		}
		return nil
	}); err != nil {
		after := dptest.Drops(t, home.d)
		t.Fatalf("%v (srv6_ptb_relayed +%d, srv6_ptb_refused +%d)", err, after["srv6_ptb_relayed"]-before["srv6_ptb_relayed"], after["srv6_ptb_refused"]-before["srv6_ptb_refused"])
	}
	if n := dptest.Drops(t, home.d)["srv6_ptb_relayed"] - before["srv6_ptb_relayed"]; n != 1 {
		t.Fatalf("%s: srv6_ptb_relayed counted %d at the home", fam.name, n)
	}
	nw.setCopy(t, dataplane.SRv6Gone, f)
}

// TestSRv6RelayPTBHomeSenderGSO: the tc path notes a flow from its GSO
// packets too (srv6_encap_skb: a GSO skb counts as bigger than 1280 before
// it is segmented). A TCP connection from the home node itself with an MSS
// of 1000 (every segment encapsulated within 1280 bytes: only its GSO skbs
// are big): after a small request and answer, a router's too-big about
// the flow is refused (nothing of it was big); after 300 KB each way (the
// socket's GSO packets) it is relayed (srv6_ptb_relayed). The kernel
// ignores the relayed error (its quoted sequence number is not one the
// socket has in flight), so the socket's path MTU is not checked here;
// TestSRv6RelayPTBHomeSender checks it for UDP.
func TestSRv6RelayPTBHomeSenderGSO(t *testing.T) {
	ctx := rootWithin(t, time.Minute)
	bed := newSRv6Bed(t)
	topo, home, nw := bed.topo, bed.home, bed.nw
	homeSendsByTC(t, bed)
	startCopy(t, topo.New, "new")
	router := netip.MustParseAddr("fd20:3::2")
	for _, fam := range srv6Families {
		ff := famFrontends(t, fam)
		ff.seen = fam.home
		f := ff.tcp
		nw.setCopy(t, dataplane.SRv6Serving, f)
		home.commit(t, lb.SRv6(netns.SRv6SIDNew), f)
		c, err := netns.In(topo.Home, func() (net.Conn, error) {
			d := net.Dialer{Timeout: 5 * time.Second, Control: func(_, _ string, rc syscall.RawConn) error {
				var serr error
				if err := rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_MAXSEG, 1000) }); err != nil {
					return err
				}
				return serr
			}}
			return d.DialContext(ctx, "tcp", ff.tcpAddr.String())
		})
		if err != nil {
			t.Fatalf("%s: connect: %v", fam.name, err)
		}
		t.Cleanup(func() { c.Close() })
		k := &tcpClient{c: c, r: bufio.NewReader(c)}
		who, cl := k.ask(t)
		ff.want("tcp", who, cl, "new")
		// The too-big quotes a segment of the flow (1000 bytes, ACK).
		sport := uint16(c.LocalAddr().(*net.TCPAddr).Port)
		payload := bytes.Repeat([]byte("p"), 1000)
		payload[4], payload[5] = 0x50, 0x10 // the TCP header's data offset (20 bytes) and ACK, over UDP's
		inner := udp6(fam.home, fam.frontend, sport, netns.CopyTCPPort, payload)
		inner[6] = 6
		if fam.frontend.Is4() {
			inner = udp4(fam.home, fam.frontend, sport, netns.CopyTCPPort, payload)
			inner[6] |= 0x40
			inner[9] = 6
			binary.BigEndian.PutUint16(inner[10:], 0)
			binary.BigEndian.PutUint16(inner[10:], ^dptest.Sum16(inner[:20], 0))
		}
		ptb := dptest.PTB6(router, netns.SRv6SIDHome, 1400, srv6Packet(netns.SRv6SIDHome, []netip.Addr{netns.SRv6SIDNew}, 0, inner))
		counts := func() (relayed, refused uint64) {
			d := dptest.Drops(t, home.d)
			return d["srv6_ptb_relayed"], d["srv6_ptb_refused"]
		}
		rel0, ref0 := counts()
		sendRaw(t, topo.New, "n0", topo.Home, "h2", ptb)
		if err := poll(ctx, 5*time.Second, func() error {
			if rel, ref := counts(); rel != rel0 || ref != ref0+1 {
				return fmt.Errorf("%s: small segments only: srv6_ptb_relayed +%d, srv6_ptb_refused +%d; want 0, 1", fam.name, rel-rel0, ref-ref0)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		k.bulk(t, 300_000)
		rel0, ref0 = counts()
		sendRaw(t, topo.New, "n0", topo.Home, "h2", ptb)
		if err := poll(ctx, 5*time.Second, func() error {
			if rel, ref := counts(); rel != rel0+1 || ref != ref0 {
				return fmt.Errorf("%s: after GSO packets: srv6_ptb_relayed +%d, srv6_ptb_refused +%d; want 1, 0", fam.name, rel-rel0, ref-ref0)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		nw.setCopy(t, dataplane.SRv6Gone, f)
	}
}
