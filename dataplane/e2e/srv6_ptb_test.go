package e2e

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"strings"
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
