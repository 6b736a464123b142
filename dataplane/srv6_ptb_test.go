package dataplane_test

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"testing"

	"github.com/gopacket/gopacket/layers"

	"github.com/roamnet/roam/dataplane/dptest"
	"github.com/roamnet/roam/dataplane/lb"
)

// underlayRouter is the underlay's router (the gateway, macGW) that
// reports packets too big.
var underlayRouter = netip.MustParseAddr("2001:db8:ff::fe")

// ptbFrame is what underlayRouter sends the home's SID (sidHome, on d0)
// when a packet the home encapsulated (encap: outer IPv6 on, no Ethernet)
// is too big for its next hop of mtu: an ICMPv6 packet too big quoting as
// much of it as fits in 1280 bytes (RFC 4443).
func ptbFrame(mtu uint32, encap []byte) []byte {
	smac, _ := net.ParseMAC(macGW)
	dmac, _ := net.ParseMAC(macD0)
	f := append(append(append([]byte{}, dmac...), smac...), 0x86, 0xdd)
	return append(f, dptest.PTB6(underlayRouter, sidHome, mtu, encap)...)
}

// newPTBTestbed is an SRv6 home (sidHome) with two SRv6 frontends:
// 10.0.0.1:80/tcp along [old], [2001:db8::1]:80/tcp along [old, new].
func newPTBTestbed(t *testing.T) (*testbed, int) {
	t.Helper()
	tb := newSRv6Testbed(t, sidHome)
	tb.stage(t, "10.0.0.1:80/tcp", "srv6:fc00:0:2::1")
	tb.stage(t, "[2001:db8::1]:80/tcp", "srv6:fc00:0:2::1,fc00:0:3::1")
	return tb, tb.d0.Attrs().Index
}

// carry sends a packet of the client's TCP flow to the frontend through
// the home, encapsulated bigger than 1280 bytes (1300 bytes of payload):
// the home notes the flow as one a packet too big may be about
// (roam_srv6_big).
func carry(t *testing.T, tb *testbed, d0 int, client, front netip.AddrPort) {
	t.Helper()
	pkt := spec{src: client, dst: front, proto: lb.TCP, flags: "A", payload: bytes.Repeat([]byte("c"), 1300), srcMAC: macPeer, dstMAC: macD0, seq: 1}.build(t)
	if v, _ := tb.run(t, pkt, d0); v != xdpTX {
		t.Fatalf("%s -> %s, 1300 bytes: verdict %d, want %d (encapsulated to the path)", client, front, v, xdpTX)
	}
}

// TestSRv6RelayPTB: an underlay router's ICMPv6 packet too big to the
// home's SID about a packet the home encapsulated is relayed to the client
// as its own family's too-big about its packet, from the frontend, with
// the router's MTU less the encapsulation (40 + 8 + 16n), routed to the
// client, checksums right, and counted (srv6_ptb_relayed), once the home
// carried a packet of the flow bigger than 1280 (carry): an IPv4 client
// along one segment (fragmentation needed, 1400 - 64 = 1336, quoting 84
// bytes of its packet), an IPv6 client along two (packet too big, 1400 -
// 80 = 1320, quoting 256 bytes), and 1300 along two (1220: raised to
// IPv6's 1280). The relayed MTU is the underlay's less the encapsulation,
// within the inner family's range and never wrapped: a forged huge MTU
// gives 65535 (IPv4's field is 16 bits: 65700 - 64 is not cut to 100),
// IPv6's 2^32-1 too (no jumbograms); 1280, the least accepted, gives IPv4
// 1216 and IPv6 1280 (its minimum, not 1200); IPv4's unused half is 0. A
// packet too big about a packet from another source, or about no
// frontend of ours, is not relayed: the kernel's (XDP_PASS, unchanged).
func TestSRv6RelayPTB(t *testing.T) {
	tb, d0 := newPTBTestbed(t)
	big := bytes.Repeat([]byte("x"), 1400)
	for _, c := range []struct {
		desc          string
		client, front string
		sids          []netip.Addr
		ptb, want     uint32
		quote         int
	}{
		{"ipv4, one segment", "198.51.100.7:33000", "10.0.0.1:80", []netip.Addr{sidOld}, 1400, 1336, 84},
		{"ipv6, two segments", "[2001:db8:c::7]:33000", "[2001:db8::1]:80", []netip.Addr{sidOld, sidNew}, 1400, 1320, 256},
		{"ipv6, two segments, below 1280", "[2001:db8:c::7]:33000", "[2001:db8::1]:80", []netip.Addr{sidOld, sidNew}, 1300, 1280, 256},
		{"ipv4, huge", "198.51.100.7:33000", "10.0.0.1:80", []netip.Addr{sidOld}, 65700, 65535, 84},
		{"ipv4, 2^32-1", "198.51.100.7:33000", "10.0.0.1:80", []netip.Addr{sidOld}, 0xffffffff, 65535, 84},
		{"ipv4, 1280", "198.51.100.7:33000", "10.0.0.1:80", []netip.Addr{sidOld}, 1280, 1216, 84},
		{"ipv6, 2^32-1", "[2001:db8:c::7]:33000", "[2001:db8::1]:80", []netip.Addr{sidOld, sidNew}, 0xffffffff, 65535, 256},
		{"ipv6, 1280", "[2001:db8:c::7]:33000", "[2001:db8::1]:80", []netip.Addr{sidOld, sidNew}, 1280, 1280, 256},
	} {
		client, fa := ap(c.client), ap(c.front)
		carry(t, tb, d0, client, fa)
		pkt := spec{src: client, dst: fa, proto: lb.TCP, flags: "A", payload: big, srcMAC: macPeer, dstMAC: macD0, ipID: 7, seq: 1000}.build(t)
		inner := ipOf(pkt)
		encap := ipOf(srv6Frame(macD0, macGW, sidHome, c.sids, len(c.sids)-1, 64, srv6Label(client, fa, lb.TCP), inner))
		before := tb.drops(t)["srv6_ptb_relayed"]
		v, out := tb.run(t, ptbFrame(c.ptb, encap), d0)
		if v != xdpTX {
			t.Fatalf("%s: verdict %d, want %d (to the client, out of the interface the packet too big came in by)", c.desc, v, xdpTX)
		}
		if n := tb.drops(t)["srv6_ptb_relayed"] - before; n != 1 {
			t.Fatalf("%s: srv6_ptb_relayed counted %d", c.desc, n)
		}
		p := verifyChecksums(t, out)
		eth := p.Layer(layers.LayerTypeEthernet).(*layers.Ethernet)
		if eth.DstMAC.String() != macClient || eth.SrcMAC.String() != macD0 {
			t.Fatalf("%s: MACs %s -> %s, want %s -> %s (the route to the client)", c.desc, eth.SrcMAC, eth.DstMAC, macD0, macClient)
		}
		var src, dst net.IP
		var mtu uint32
		var quote []byte
		if fa.Addr().Is4() {
			ip := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
			ic, ok := p.Layer(layers.LayerTypeICMPv4).(*layers.ICMPv4)
			if !ok || ic.TypeCode != layers.CreateICMPv4TypeCode(3, 4) || ic.Id != 0 {
				t.Fatalf("%s: not an ICMP fragmentation needed with its unused half 0:\n%s", c.desc, p.Dump())
			}
			src, dst, mtu, quote = ip.SrcIP, ip.DstIP, uint32(ic.Seq), ic.Payload
		} else {
			ip := p.Layer(layers.LayerTypeIPv6).(*layers.IPv6)
			ic, ok := p.Layer(layers.LayerTypeICMPv6).(*layers.ICMPv6)
			if !ok || ic.TypeCode != layers.CreateICMPv6TypeCode(2, 0) || len(ic.Payload) < 4 {
				t.Fatalf("%s: not an ICMPv6 packet too big:\n%s", c.desc, p.Dump())
			}
			src, dst, mtu, quote = ip.SrcIP, ip.DstIP, binary.BigEndian.Uint32(ic.Payload), ic.Payload[4:]
		}
		if !src.Equal(fa.Addr().AsSlice()) || !dst.Equal(client.Addr().AsSlice()) {
			t.Fatalf("%s: %s -> %s, want from the frontend %s to the client %s", c.desc, src, dst, fa.Addr(), client.Addr())
		}
		if mtu != c.want {
			t.Fatalf("%s: MTU %d, want %d (the underlay's %d less the encapsulation)", c.desc, mtu, c.want, c.ptb)
		}
		if !bytes.Equal(quote, inner[:c.quote]) {
			t.Fatalf("%s: quote\n got %x\nwant %x", c.desc, quote, inner[:c.quote])
		}
	}

	before := tb.drops(t)["srv6_ptb_relayed"]
	client, fa := ap("198.51.100.7:33000"), ap("10.0.0.1:80")
	inner := ipOf(spec{src: client, dst: fa, proto: lb.TCP, flags: "A", payload: big, srcMAC: macPeer, dstMAC: macD0}.build(t))
	other := ipOf(spec{src: client, dst: ap("10.0.0.9:80"), proto: lb.TCP, flags: "A", payload: big, srcMAC: macPeer, dstMAC: macD0}.build(t))
	for _, c := range []struct {
		desc  string
		encap []byte
	}{
		{"from another source", ipOf(srv6Frame(macD0, macGW, sidNew, []netip.Addr{sidOld}, 0, 64, 0, inner))},
		{"about no frontend of ours", ipOf(srv6Frame(macD0, macGW, sidHome, []netip.Addr{sidOld}, 0, 64, 0, other))},
	} {
		in := ptbFrame(1400, c.encap)
		v, out := tb.run(t, in, d0)
		if v != xdpPass || !bytes.Equal(out, in) {
			t.Fatalf("%s: verdict %d, want %d and the packet unchanged", c.desc, v, xdpPass)
		}
	}
	if n := tb.drops(t)["srv6_ptb_relayed"] - before; n != 0 {
		t.Fatalf("srv6_ptb_relayed counted %d for packets too big not ours", n)
	}
}

// TestSRv6RelayPTBRefused: anyone can send the home's SID a packet too big
// and forge its quote; one whose quote is not a packet the home would send
// along a path of the frontend's (its target NAT, other segments, another
// outer destination) or that reports an MTU under IPv6's minimum (RFC 8201
// section 4: discarded), or whose quoted flow is not one the home carried
// a packet bigger than 1280 of (none, or only small ones: the home keeps
// no other flow state in SRv6 mode), is dropped without an answer and
// counted srv6_ptb_refused. A router after the first segment (the outer
// destination rewritten to the second, segments_left 0) is relayed.
func TestSRv6RelayPTBRefused(t *testing.T) {
	tb, d0 := newPTBTestbed(t)
	big := bytes.Repeat([]byte("x"), 1400)
	tb.stage(t, "10.0.0.2:80/tcp", "redirect:10.2.0.1:8080")
	client4, client6 := ap("198.51.100.7:33000"), ap("[2001:db8:c::7]:33000")
	inner := func(client, fa netip.AddrPort) []byte {
		return ipOf(spec{src: client, dst: fa, proto: lb.TCP, flags: "A", payload: big, srcMAC: macPeer, dstMAC: macD0}.build(t))
	}
	in4, nat4, in6 := inner(client4, ap("10.0.0.1:80")), inner(client4, ap("10.0.0.2:80")), inner(client6, ap("[2001:db8::1]:80"))
	carry(t, tb, d0, client4, ap("10.0.0.1:80"))
	carry(t, tb, d0, client6, ap("[2001:db8::1]:80"))
	// Flows of the frontends the home did not carry big packets of.
	unknown4, unknown6 := inner(ap("198.51.100.7:33001"), ap("10.0.0.1:80")), inner(ap("[2001:db8:c::7]:33001"), ap("[2001:db8::1]:80"))
	small := spec{src: ap("198.51.100.7:33002"), dst: ap("10.0.0.1:80"), proto: lb.TCP, flags: "A", payload: []byte("small"), srcMAC: macPeer, dstMAC: macD0}.build(t)
	if v, _ := tb.run(t, small, d0); v != xdpTX {
		t.Fatalf("a small packet: verdict %d, want %d", v, xdpTX)
	}
	smallFlow := inner(ap("198.51.100.7:33002"), ap("10.0.0.1:80"))
	two := []netip.Addr{sidOld, sidNew}
	withDst := func(encap []byte, dst netip.Addr) []byte {
		e := append([]byte{}, encap...)
		a := dst.As16()
		copy(e[24:40], a[:])
		return e
	}
	for _, c := range []struct {
		desc  string
		encap []byte
		mtu   uint32
	}{
		{"a frontend with a NAT target", ipOf(srv6Frame(macD0, macGW, sidHome, []netip.Addr{sidOld}, 0, 64, 0, nat4)), 1400},
		{"another segment list", ipOf(srv6Frame(macD0, macGW, sidHome, []netip.Addr{sidNew}, 0, 64, 0, in4)), 1400},
		{"the segments reversed", ipOf(srv6Frame(macD0, macGW, sidHome, []netip.Addr{sidNew, sidOld}, 1, 64, 0, in6)), 1400},
		{"one segment of two", ipOf(srv6Frame(macD0, macGW, sidHome, []netip.Addr{sidOld}, 0, 64, 0, in6)), 1400},
		{"another outer destination", withDst(ipOf(srv6Frame(macD0, macGW, sidHome, []netip.Addr{sidOld}, 0, 64, 0, in4)), underlayRouter), 1400},
		{"an MTU under 1280, ipv4", ipOf(srv6Frame(macD0, macGW, sidHome, []netip.Addr{sidOld}, 0, 64, 0, in4)), 1279},
		{"an MTU of 0, ipv4", ipOf(srv6Frame(macD0, macGW, sidHome, []netip.Addr{sidOld}, 0, 64, 0, in4)), 0},
		{"an MTU under 1280, ipv6", ipOf(srv6Frame(macD0, macGW, sidHome, two, 1, 64, 0, in6)), 1000},
		{"a flow not carried, ipv4", ipOf(srv6Frame(macD0, macGW, sidHome, []netip.Addr{sidOld}, 0, 64, 0, unknown4)), 1400},
		{"a flow not carried, ipv6", ipOf(srv6Frame(macD0, macGW, sidHome, two, 1, 64, 0, unknown6)), 1400},
		{"a flow carried small packets only", ipOf(srv6Frame(macD0, macGW, sidHome, []netip.Addr{sidOld}, 0, 64, 0, smallFlow)), 1400},
	} {
		before := tb.drops(t)
		v, _ := tb.run(t, ptbFrame(c.mtu, c.encap), d0)
		after := tb.drops(t)
		if v != xdpDrop {
			t.Errorf("%s: verdict %d, want %d (a forged packet too big is not relayed)", c.desc, v, xdpDrop)
		}
		if n, r := after["srv6_ptb_refused"]-before["srv6_ptb_refused"], after["srv6_ptb_relayed"]-before["srv6_ptb_relayed"]; n != 1 || r != 0 {
			t.Errorf("%s: srv6_ptb_refused %d, srv6_ptb_relayed %d; want 1, 0", c.desc, n, r)
		}
	}

	// Past the first segment: the outer destination is the second, segments_left 0.
	before := tb.drops(t)["srv6_ptb_relayed"]
	encap := ipOf(srv6Frame(macD0, macGW, sidHome, two, 0, 64, 0, in6))
	if v, _ := tb.run(t, ptbFrame(1400, encap), d0); v != xdpTX {
		t.Fatalf("after the first segment: verdict %d, want %d", v, xdpTX)
	}
	if n := tb.drops(t)["srv6_ptb_relayed"] - before; n != 1 {
		t.Fatalf("after the first segment: srv6_ptb_relayed counted %d", n)
	}
}

// TestSRv6RelayPTBBudget: relays take the ICMP budget's tokens (bpf/consts.h
// ICMP_RATE a second, bursts of ICMP_BURST, per CPU): a burst of valid
// packets too big on one CPU gets the burst relayed, plus what the budget
// refilled meanwhile; the rest are dropped without an answer and counted
// icmp_limited (not srv6_ptb_relayed).
func TestSRv6RelayPTBBudget(t *testing.T) {
	tb := newSRv6Testbed(t, sidHome)
	d0 := tb.d0.Attrs().Index
	tb.stage(t, "10.0.0.1:80/tcp", "srv6:fc00:0:2::1")
	carry(t, tb, d0, ap("198.51.100.7:33000"), ap("10.0.0.1:80"))
	inner := ipOf(spec{src: ap("198.51.100.7:33000"), dst: ap("10.0.0.1:80"), proto: lb.TCP, flags: "A", payload: bytes.Repeat([]byte("x"), 1400), srcMAC: macPeer, dstMAC: macD0}.build(t))
	in := ptbFrame(1400, ipOf(srv6Frame(macD0, macGW, sidHome, []netip.Addr{sidOld}, 0, 64, 0, inner)))
	answered, delta := tb.runICMPBudget(t, "packets too big", d0, func(int) []byte { return in })
	relayed, limited := delta["srv6_ptb_relayed"], delta["icmp_limited"]
	if relayed != uint64(answered) || limited != uint64(icmpSent-answered) {
		t.Fatalf("srv6_ptb_relayed %d, icmp_limited %d; want %d, %d", relayed, limited, answered, icmpSent-answered)
	}
}

// TestSRv6RelayPTBFlood: the home's note of the flows it carried big
// packets of (roam_srv6_big) cannot be flooded out. After a client's flow
// carried a big packet, 70,000 big non-SYN packets from distinct forged
// sources to the same frontend (more than the 65,536 flows the LRU hash it
// replaces held, which evicted the client's flow: its too-bigs were then
// refused, a path MTU black hole) leave the client's flow noted: a router's
// too-big about it is relayed.
func TestSRv6RelayPTBFlood(t *testing.T) {
	tb, d0 := newPTBTestbed(t)
	client, fa := ap("198.51.100.7:33000"), ap("10.0.0.1:80")
	carry(t, tb, d0, client, fa)
	payload := bytes.Repeat([]byte("f"), 1300)
	const flood = 70000
	for i := range flood {
		a := netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)})
		if i >= 1<<16 {
			a = netip.AddrFrom4([4]byte{198, 19, byte(i >> 8), byte(i)})
		}
		pkt := spec{src: netip.AddrPortFrom(a, uint16(1024+i%60000)), dst: fa, proto: lb.TCP, flags: "A", payload: payload, srcMAC: macPeer, dstMAC: macD0, seq: 1}.build(t)
		if v, _ := tb.run(t, pkt, d0); v != xdpTX {
			t.Fatalf("flood packet %d from %s: verdict %d, want %d (encapsulated)", i, a, v, xdpTX)
		}
	}
	inner := ipOf(spec{src: client, dst: fa, proto: lb.TCP, flags: "A", payload: bytes.Repeat([]byte("x"), 1400), srcMAC: macPeer, dstMAC: macD0}.build(t))
	before := tb.drops(t)
	v, _ := tb.run(t, ptbFrame(1400, ipOf(srv6Frame(macD0, macGW, sidHome, []netip.Addr{sidOld}, 0, 64, 0, inner))), d0)
	after := tb.drops(t)
	if r, n := after["srv6_ptb_relayed"]-before["srv6_ptb_relayed"], after["srv6_ptb_refused"]-before["srv6_ptb_refused"]; v != xdpTX || r != 1 || n != 0 {
		t.Fatalf("after %d big packets from other sources, a too-big about the client's flow: verdict %d, srv6_ptb_relayed %d, srv6_ptb_refused %d; want %d, 1, 0", flood, v, r, n, xdpTX)
	}
}
