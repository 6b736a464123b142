package dataplane_test

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/roamnet/roam/dataplane"
	"github.com/roamnet/roam/dataplane/dptest"
	"github.com/roamnet/roam/dataplane/lb"
)

// The SRv6 plan of these tests: three locators (home, old, new), each node
// SID the locator's node 0; routes to the old and new locators via macGW.
var (
	locHome  = netip.MustParsePrefix("fc00:0:1::/48")
	locOld   = netip.MustParsePrefix("fc00:0:2::/48")
	locNew   = netip.MustParsePrefix("fc00:0:3::/48")
	sidHome  = netip.MustParseAddr("fc00:0:1::1")
	sidOld   = netip.MustParseAddr("fc00:0:2::1")
	sidNew   = netip.MustParseAddr("fc00:0:3::1")
	sidAlien = netip.MustParseAddr("fc00:0:99::1")  // outside every locator
	sidHome1 = netip.MustParseAddr("fc00:0:1:1::1") // the home's node 1 (lb.NodeSID(locHome, 1))
	sidOld1  = netip.MustParseAddr("fc00:0:2:1::1") // the old location's node 1
)

// newSRv6Testbed is newTestbed with SRv6 on, this node's SID sid.
func newSRv6Testbed(t *testing.T, sid netip.Addr) *testbed {
	tb := newTestbed(t, dataplane.Config{SRv6: dataplane.SRv6Config{SID: sid, Locators: []netip.Prefix{locHome, locOld, locNew}}})
	for _, p := range []string{"fc00:0:1::/48", "fc00:0:2::/48", "fc00:0:3::/48", "fc00:0:99::/48"} {
		addRoute(t, tb.h, tb.d0, p, "2001:db8:ff::fe")
	}
	return tb
}

// srv6Label mirrors srv6_flowlabel in bpf/srv6.h: FNV-1a over the inner
// addresses and ports (little-endian words, as the program loads them).
func srv6Label(src, dst netip.AddrPort, proto lb.Proto) uint32 {
	var b [36]byte
	s, d := src.Addr().As16(), dst.Addr().As16()
	copy(b[0:], s[:])
	copy(b[16:], d[:])
	binary.BigEndian.PutUint16(b[32:], src.Port())
	binary.BigEndian.PutUint16(b[34:], dst.Port())
	h := uint32(2166136261) ^ uint32(proto)
	for i := 0; i < 9; i++ {
		h = (h ^ binary.LittleEndian.Uint32(b[4*i:])) * 16777619
	}
	h ^= h >> 15
	h ^= h >> 20
	return h & 0xfffff
}

// srv6Frame builds Ethernet + outer IPv6 + SRH around inner (an IP packet):
// sids in the order visited, sl segments left, the outer destination the
// active segment.
func srv6Frame(srcMAC, dstMAC string, src netip.Addr, sids []netip.Addr, sl int, hop uint8, label uint32, inner []byte) []byte {
	smac, _ := net.ParseMAC(srcMAC)
	dmac, _ := net.ParseMAC(dstMAC)
	f := append(append(append([]byte{}, dmac...), smac...), 0x86, 0xdd)
	return append(f, dptest.SRv6Packet(src, sids, sl, hop, label, inner)...)
}

// ipOf strips the Ethernet header off a frame built by spec.build.
func ipOf(frame []byte) []byte { return frame[14:] }

// TestSRv6Encap: the home encapsulates a new packet of an SRv6 frontend,
// unchanged, in outer IPv6 + SRH along the active path, for both inner
// families and paths of 1 and 2 segments, and sends it to the first
// segment's next hop; every outer field checked byte for byte (flow label
// from the 5-tuple hash), no conntrack or NAT entry made.
func TestSRv6Encap(t *testing.T) {
	tb := newSRv6Testbed(t, sidHome)
	d0, d1 := tb.d0.Attrs().Index, tb.d1.Attrs().Index
	tb.stage(t, "10.0.0.1:80/tcp", "srv6:fc00:0:2::1")
	tb.stage(t, "10.0.0.1:7000/udp", "srv6:fc00:0:2::1,fc00:0:3::1")
	tb.stage(t, "[2001:db8::1]:80/tcp", "srv6:fc00:0:2::1,fc00:0:3::1")
	tb.stage(t, "[2001:db8::1]:7000/udp", "srv6:fc00:0:3::1")

	cases := []struct {
		desc     string
		client   netip.AddrPort
		frontend netip.AddrPort
		proto    lb.Proto
		flags    string
		sids     []netip.Addr
		ingress  int
		verdict  uint32
	}{
		{"ipv4 tcp syn, 1 segment", ap("198.51.100.7:33000"), ap("10.0.0.1:80"), lb.TCP, "S", []netip.Addr{sidOld}, d0, xdpTX},
		{"ipv4 tcp ack (no state needed), 1 segment, other interface", ap("198.51.100.7:33001"), ap("10.0.0.1:80"), lb.TCP, "A", []netip.Addr{sidOld}, d1, xdpRedirect},
		{"ipv4 udp, 2 segments", ap("198.51.100.7:5000"), ap("10.0.0.1:7000"), lb.UDP, "", []netip.Addr{sidOld, sidNew}, d0, xdpTX},
		{"ipv6 tcp syn, 2 segments", ap("[2001:db8:c::7]:33000"), ap("[2001:db8::1]:80"), lb.TCP, "S", []netip.Addr{sidOld, sidNew}, d0, xdpTX},
		{"ipv6 udp, 1 segment", ap("[2001:db8:c::7]:5000"), ap("[2001:db8::1]:7000"), lb.UDP, "", []netip.Addr{sidNew}, d0, xdpTX},
	}
	for _, c := range cases {
		t.Logf("case: %s", c.desc)
		in := spec{src: c.client, dst: c.frontend, proto: c.proto, flags: c.flags, payload: []byte("hello srv6 " + c.desc), srcMAC: macPeer, dstMAC: macD0, ipID: 7, seq: 1000}.build(t)
		v, out := tb.run(t, in, c.ingress)
		if v != c.verdict {
			t.Fatalf("verdict %d, want %d", v, c.verdict)
		}
		want := srv6Frame(macD0, macGW, sidHome, c.sids, len(c.sids)-1, 64, srv6Label(c.client, c.frontend, c.proto), ipOf(in))
		if !bytes.Equal(out, want) {
			t.Fatalf("output frame\n got %x\nwant %x", out, want)
		}
		p := gopacket.NewPacket(out, layers.LayerTypeEthernet, gopacket.Default)
		if ip, ok := p.Layer(layers.LayerTypeIPv6).(*layers.IPv6); !ok || ip.NextHeader != 43 {
			t.Fatalf("output is not IPv6 with a routing header:\n%s", p.Dump())
		}
	}
	if n, err := tb.d.ConntrackEntries(); err != nil || n != 0 {
		t.Fatalf("conntrack entries %d, %v; SRv6 keeps no state at the home", n, err)
	}
	if n, err := tb.d.NATEntries(); err != nil || n != 0 {
		t.Fatalf("NAT entries %d, %v", n, err)
	}
	s, err := tb.d.SRv6Stats(mustFrontend(t, "10.0.0.1:80/tcp"))
	if err != nil || s.Encap.Packets != 2 {
		t.Fatalf("encap counter %+v, %v; want 2 packets", s, err)
	}
	c, err := tb.d.Counters(mustFrontend(t, "10.0.0.1:80/tcp"), dataplane.ActionRedirect)
	if err != nil || c.Packets != 2 {
		t.Fatalf("redirect counter %v, %v; want 2", c, err)
	}
	if err := tb.d.SetSRv6Copy(mustFrontend(t, "10.9.9.9:80/tcp"), dataplane.SRv6Draining); err != nil {
		t.Fatal(err)
	}
	wantMetrics(t, gather(t, tb.d.Collector()), map[string]float64{
		"roam_dataplane_srv6_packets_total{frontend=10.0.0.1:80/tcp,step=encap}":                             1 + 1,
		"roam_dataplane_srv6_packets_total{frontend=10.0.0.1:7000/udp,step=encap}":                           1,
		"roam_dataplane_srv6_path{frontend=10.0.0.1:7000/udp,path=srv6:fc00:0:2::1,fc00:0:3::1,slot=active}": 1,
		"roam_dataplane_srv6_path{frontend=[2001:db8::1]:7000/udp,path=srv6:fc00:0:3::1,slot=active}":        1,
		"roam_dataplane_srv6_copy{frontend=10.9.9.9:80/tcp,state=draining}":                                  1,
		"roam_dataplane_srv6_packets_total{frontend=10.9.9.9:80/tcp,step=deliver}":                           0,
	})
}

// synWithOpts builds a TCP SYN with options (MSS and maybe NOPs before it).
func synWithOpts(t *testing.T, src, dst netip.AddrPort, opts []layers.TCPOption) []byte {
	t.Helper()
	smac, _ := net.ParseMAC(macPeer)
	dmac, _ := net.ParseMAC(macD0)
	eth := &layers.Ethernet{SrcMAC: smac, DstMAC: dmac}
	var nl gopacket.NetworkLayer
	var ls []gopacket.SerializableLayer
	if src.Addr().Is4() {
		eth.EthernetType = layers.EthernetTypeIPv4
		ip := &layers.IPv4{Version: 4, TTL: 64, SrcIP: src.Addr().AsSlice(), DstIP: dst.Addr().AsSlice(), Protocol: layers.IPProtocolTCP}
		nl, ls = ip, []gopacket.SerializableLayer{eth, ip}
	} else {
		eth.EthernetType = layers.EthernetTypeIPv6
		ip := &layers.IPv6{Version: 6, HopLimit: 64, SrcIP: src.Addr().AsSlice(), DstIP: dst.Addr().AsSlice(), NextHeader: layers.IPProtocolTCP}
		nl, ls = ip, []gopacket.SerializableLayer{eth, ip}
	}
	tcp := &layers.TCP{SrcPort: layers.TCPPort(src.Port()), DstPort: layers.TCPPort(dst.Port()), Seq: 1, SYN: true, Window: 512, Options: opts}
	tcp.SetNetworkLayerForChecksum(nl)
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, append(ls, tcp)...); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func mssOpt(v uint16) layers.TCPOption {
	return layers.TCPOption{OptionType: layers.TCPOptionKindMSS, OptionLength: 4, OptionData: []byte{byte(v >> 8), byte(v)}}
}

var nop = layers.TCPOption{OptionType: layers.TCPOptionKindNop, OptionLength: 1}

// TestSRv6MSSClamp: a SYN encapsulated has its MSS lowered so the largest
// encapsulation fits the underlay MTU (1500 - 80 - inner headers), with the
// inner checksum still right, at an even and at an odd option offset; an
// MSS already below is left alone.
func TestSRv6MSSClamp(t *testing.T) {
	tb := newSRv6Testbed(t, sidHome)
	d0 := tb.d0.Attrs().Index
	tb.stage(t, "10.0.0.1:80/tcp", "srv6:fc00:0:2::1")
	tb.stage(t, "[2001:db8::1]:80/tcp", "srv6:fc00:0:2::1")
	cases := []struct {
		desc     string
		src, dst netip.AddrPort
		opts     []layers.TCPOption
		want     uint16
	}{
		{"ipv4 mss first", ap("198.51.100.7:1000"), ap("10.0.0.1:80"), []layers.TCPOption{mssOpt(1460)}, 1500 - 80 - 40},
		{"ipv4 mss after a nop (odd offset)", ap("198.51.100.7:1001"), ap("10.0.0.1:80"), []layers.TCPOption{nop, mssOpt(1460), nop, nop, nop}, 1500 - 80 - 40},
		{"ipv6 mss first", ap("[2001:db8:c::7]:1000"), ap("[2001:db8::1]:80"), []layers.TCPOption{mssOpt(1440)}, 1500 - 80 - 60},
		{"ipv4 mss already small", ap("198.51.100.7:1002"), ap("10.0.0.1:80"), []layers.TCPOption{mssOpt(1200)}, 1200},
	}
	for _, c := range cases {
		t.Logf("case: %s", c.desc)
		in := synWithOpts(t, c.src, c.dst, c.opts)
		v, out := tb.run(t, in, d0)
		if v != xdpTX {
			t.Fatalf("verdict %d", v)
		}
		off := 14 + 40 + 8 + 16
		inner := out[off:]
		first := layers.LayerTypeIPv4
		if c.src.Addr().Is6() {
			first = layers.LayerTypeIPv6
		}
		p := gopacket.NewPacket(inner, first, gopacket.Default)
		tcp, ok := p.Layer(layers.LayerTypeTCP).(*layers.TCP)
		if !ok {
			t.Fatalf("inner has no TCP:\n%s", p.Dump())
		}
		tcp.SetNetworkLayerForChecksum(p.NetworkLayer())
		if err, bad := p.VerifyChecksums(); err != nil || len(bad) > 0 {
			t.Fatalf("inner checksums: %v %+v", err, bad)
		}
		var got uint16
		for _, o := range tcp.Options {
			if o.OptionType == layers.TCPOptionKindMSS {
				got = binary.BigEndian.Uint16(o.OptionData)
			}
		}
		if got != c.want {
			t.Fatalf("MSS %d, want %d", got, c.want)
		}
	}
	if _, clamped, err := tb.d.SRv6Unowned(); err != nil || clamped != 3 {
		t.Fatalf("clamped %d, %v; want 3", clamped, err)
	}
}

// TestSRv6AtLocation: a packet to this node's SID, per the state of the
// copy here: serving delivers (decapsulated, XDP_PASS to the kernel);
// draining delivers the flows it has and sends new ones to the next
// segment; gone forwards; the last segment with no copy is dropped; the
// checks of RFC 8986's security section drop forged lists and foreign
// sources; a packet to another SID is not ours.
func TestSRv6AtLocation(t *testing.T) {
	tb := newSRv6Testbed(t, sidOld)
	d0 := tb.d0.Attrs().Index
	f4 := mustFrontend(t, "10.0.0.1:80/tcp")
	f6 := mustFrontend(t, "[2001:db8::1]:7000/udp")
	client4, front4 := ap("198.51.100.7:33000"), ap("10.0.0.1:80")
	client6, front6 := ap("[2001:db8:c::7]:5000"), ap("[2001:db8::1]:7000")
	pkt := func(src, dst netip.AddrPort, proto lb.Proto, flags string) []byte {
		return spec{src: src, dst: dst, proto: proto, flags: flags, payload: []byte("data"), seq: 1, ackn: 1, srcMAC: macPeer, dstMAC: macD0}.build(t)
	}
	path := []netip.Addr{sidOld, sidNew}
	at := func(inner []byte, outerSrc netip.Addr, sids []netip.Addr, sl int) []byte {
		return srv6Frame(macPeer, macD0, outerSrc, sids, sl, 64, 0x12345, inner)
	}
	delivered := func(inner []byte) []byte {
		smac, _ := net.ParseMAC(macPeer)
		dmac, _ := net.ParseMAC(macD0)
		b := append(append(append([]byte{}, dmac...), smac...), 0x08, 0x00)
		if inner[0]>>4 == 6 {
			b[12], b[13] = 0x86, 0xdd
		}
		return append(b, inner...)
	}
	forwarded := func(inner []byte) []byte {
		return srv6Frame(macD0, macGW, sidHome, path, 0, 63, 0x12345, inner)
	}
	type step struct {
		desc    string
		state   map[lb.Frontend]dataplane.SRv6State
		in      []byte
		verdict uint32
		want    []byte
		reason  string
	}
	syn4 := ipOf(pkt(client4, front4, lb.TCP, "S"))
	ack4 := ipOf(pkt(client4, front4, lb.TCP, "A"))
	newSyn4 := ipOf(pkt(ap("198.51.100.7:33999"), front4, lb.TCP, "S"))
	newAck4 := ipOf(pkt(ap("198.51.100.7:33998"), front4, lb.TCP, "A"))
	udp6 := ipOf(pkt(client6, front6, lb.UDP, ""))
	newUDP6 := ipOf(pkt(ap("[2001:db8:c::8]:5000"), front6, lb.UDP, ""))
	serving := map[lb.Frontend]dataplane.SRv6State{f4: dataplane.SRv6Serving, f6: dataplane.SRv6Serving}
	draining := map[lb.Frontend]dataplane.SRv6State{f4: dataplane.SRv6Draining, f6: dataplane.SRv6Draining}
	gone := map[lb.Frontend]dataplane.SRv6State{f4: dataplane.SRv6Gone, f6: dataplane.SRv6Gone}
	steps := []step{
		{"serving: ipv4 syn delivered", serving, at(syn4, sidHome, path, 1), xdpPass, delivered(syn4), ""},
		{"serving: ipv6 udp delivered", serving, at(udp6, sidHome, path, 1), xdpPass, delivered(udp6), ""},
		{"serving: last segment here too", serving, at(ack4, sidHome, []netip.Addr{sidOld}, 0), xdpPass, delivered(ack4), ""},
		{"draining: its tcp flow delivered", draining, at(ack4, sidHome, path, 1), xdpPass, delivered(ack4), ""},
		{"draining: its udp flow delivered", draining, at(udp6, sidHome, path, 1), xdpPass, delivered(udp6), ""},
		{"draining: a new syn sent on", draining, at(newSyn4, sidHome, path, 1), xdpTX, forwarded(newSyn4), ""},
		{"draining: a syn again on a known tuple is a new connection: sent on", draining, at(syn4, sidHome, path, 1), xdpTX, forwarded(syn4), ""},
		{"draining: an ack of no flow here sent on", draining, at(newAck4, sidHome, path, 1), xdpTX, forwarded(newAck4), ""},
		{"draining: a new udp flow sent on", draining, at(newUDP6, sidHome, path, 1), xdpTX, forwarded(newUDP6), ""},
		{"gone: its old flow sent on", gone, at(ack4, sidHome, path, 1), xdpTX, forwarded(ack4), ""},
		{"gone: ipv6 sent on", gone, at(udp6, sidHome, path, 1), xdpTX, forwarded(udp6), ""},
		{"gone, last segment: dropped", gone, at(ack4, sidHome, []netip.Addr{sidOld}, 0), xdpDrop, nil, "srv6_no_copy"},
		{"forged: a segment outside roam's locators", serving, at(ack4, sidHome, []netip.Addr{sidOld, sidAlien}, 1), xdpDrop, nil, "srv6_foreign_sid"},
		{"forged: from outside roam's locators", serving, at(ack4, netip.MustParseAddr("2001:db8:ee::9"), path, 1), xdpDrop, nil, "srv6_foreign_src"},
		{"three segments", serving, at(ack4, sidHome, []netip.Addr{sidOld, sidNew, sidHome}, 2), xdpDrop, nil, "srv6_bad_srh"},
		{"forged: the active segment another node's (last segment)", serving, withOuterDst(at(ack4, sidHome, []netip.Addr{sidOld1}, 0), sidOld), xdpDrop, nil, "srv6_bad_srh"},
		{"forged: the active segment another node's (first of two)", gone, withOuterDst(at(ack4, sidHome, []netip.Addr{sidOld1, sidNew}, 1), sidOld), xdpDrop, nil, "srv6_bad_srh"},
		{"not our SID: not ours to judge", serving, at(ack4, sidHome, []netip.Addr{sidNew}, 0), xdpPass, nil, "ipv6_ext"},
	}
	for _, s := range steps {
		t.Logf("step: %s", s.desc)
		for f, st := range s.state {
			if err := tb.d.SetSRv6Copy(f, st); err != nil {
				t.Fatal(err)
			}
		}
		before := tb.drops(t)
		v, out := tb.run(t, s.in, d0)
		if v != s.verdict {
			t.Fatalf("verdict %d, want %d", v, s.verdict)
		}
		if s.want != nil && !bytes.Equal(out, s.want) {
			t.Fatalf("output\n got %x\nwant %x", out, s.want)
		}
		after := tb.drops(t)
		for name, n := range after {
			delta := n - before[name]
			switch {
			case name == s.reason && delta != 1:
				t.Fatalf("reason %s counted %d times, want 1", name, delta)
			case name != s.reason && delta != 0 && name != "no_neigh":
				t.Fatalf("reason %s counted %d times, want 0", name, delta)
			}
		}
		if s.want == nil && s.reason != "ipv6_ext" && !bytes.Equal(out, s.in) {
			t.Fatalf("dropped packet rewritten")
		}
		if s.desc == "draining: a new udp flow sent on" {
			// Per path: delivered here and sent on, per frontend.
			for f, want := range map[lb.Frontend][2]uint64{f4: {3, 3}, f6: {2, 1}} {
				st, err := tb.d.SRv6Stats(f)
				if err != nil || st.Deliver.Packets != want[0] || st.Forward.Packets != want[1] {
					t.Fatalf("%s: stats %+v, %v; want delivered %d, sent on %d", f, st, err, want[0], want[1])
				}
			}
		}
	}
	// Serving again since "forged": its counters started from zero then, and the drops did not count.
	st, err := tb.d.SRv6Stats(f4)
	if err != nil || st.Deliver.Packets != 0 || st.Forward.Packets != 0 {
		t.Fatalf("a copy set serving again after gone starts from zero: %+v, %v", st, err)
	}
	if err := tb.d.SetSRv6Copy(f6, dataplane.SRv6Gone); err != nil {
		t.Fatal(err)
	}
	copies, err := tb.d.SRv6Copies()
	if err != nil || len(copies) != 1 || copies[f4] != dataplane.SRv6Serving {
		t.Fatalf("copies %v, %v", copies, err)
	}
	fw, _, err := tb.d.SRv6Unowned()
	if err != nil || fw != 2 {
		t.Fatalf("forwarded with no copy entry: %d, %v; want 2", fw, err)
	}
}

// TestSRv6ReplyAtHome: a reply the abroad copy encapsulated back to the
// home's SID is decapsulated and sent to the client (from the frontend's
// address, as the copy answered); one from a frontend the home does not
// hold is dropped, and so is one to this node's SID whose segment list
// names another node of the home (its SID at segments_left is not this
// node's: srv6_bad_srh).
func TestSRv6ReplyAtHome(t *testing.T) {
	tb := newSRv6Testbed(t, sidHome)
	d0 := tb.d0.Attrs().Index
	tb.stage(t, "10.0.0.1:80/tcp", "srv6:fc00:0:2::1")
	tb.stage(t, "[2001:db8::1]:7000/udp", "srv6:fc00:0:2::1")
	for _, c := range []struct {
		desc          string
		front, client netip.AddrPort
		proto         lb.Proto
		seg           netip.Addr // the SRH's segment (the outer destination is sidHome)
		verdict       uint32
		reason        string
	}{
		{"ipv4 tcp", ap("10.0.0.1:80"), ap("198.51.100.7:33000"), lb.TCP, sidHome, xdpTX, ""},
		{"ipv6 udp", ap("[2001:db8::1]:7000"), ap("[2001:db8:c::7]:5000"), lb.UDP, sidHome, xdpTX, ""},
		{"not our frontend", ap("10.0.0.9:80"), ap("198.51.100.7:33000"), lb.TCP, sidHome, xdpDrop, "srv6_no_copy"},
		{"ipv4 tcp, the list names the home's node 1", ap("10.0.0.1:80"), ap("198.51.100.7:33000"), lb.TCP, sidHome1, xdpDrop, "srv6_bad_srh"},
		{"ipv6 udp, the list names the home's node 1", ap("[2001:db8::1]:7000"), ap("[2001:db8:c::7]:5000"), lb.UDP, sidHome1, xdpDrop, "srv6_bad_srh"},
	} {
		t.Logf("case: %s", c.desc)
		reply := spec{src: c.front, dst: c.client, proto: c.proto, flags: "SA", payload: []byte("reply"), srcMAC: macD0, dstMAC: macClient, seq: 9, ackn: 2}.build(t)
		in := withOuterDst(srv6Frame(macGW, macD0, sidOld, []netip.Addr{c.seg}, 0, 63, 7, ipOf(reply)), sidHome)
		reply = hop(reply) // forwarded from here
		before := tb.drops(t)
		v, out := tb.run(t, in, d0)
		if v != c.verdict {
			t.Fatalf("verdict %d, want %d", v, c.verdict)
		}
		if c.reason != "" {
			if n := tb.drops(t)[c.reason] - before[c.reason]; n != 1 {
				t.Fatalf("reason %s counted %d", c.reason, n)
			}
			continue
		}
		if !bytes.Equal(out, reply) {
			t.Fatalf("output\n got %x\nwant %x", out, reply)
		}
		verifyChecksums(t, out)
	}
	s, err := tb.d.SRv6Stats(mustFrontend(t, "10.0.0.1:80/tcp"))
	if err != nil || s.Decap.Packets != 1 {
		t.Fatalf("decap counter %+v, %v", s, err)
	}
}

// withOuterDst sets a frame's outer IPv6 destination to dst (srv6Frame
// sets it to the active segment).
func withOuterDst(frame []byte, dst netip.Addr) []byte {
	a := dst.As16()
	copy(frame[14+24:14+40], a[:])
	return frame
}

// TestSRv6Config: what Open, Stage and SetLocators refuse.
func TestSRv6Config(t *testing.T) {
	tb := newSRv6Testbed(t, sidHome)
	f := mustFrontend(t, "10.0.0.1:80/tcp")
	if _, err := tb.d.Stage(f, lb.SRv6(sidOld, sidAlien)); err == nil || !strings.Contains(err.Error(), "outside roam's locators") {
		t.Fatalf("stage with a foreign SID: %v", err)
	}
	if err := tb.d.SetLocators([]netip.Prefix{locOld}); err == nil {
		t.Fatal("locators without the node's own: accepted")
	}
	if err := tb.d.SetLocators([]netip.Prefix{locHome, locOld}); err != nil {
		t.Fatal(err)
	}
	if _, err := tb.d.Stage(f, lb.SRv6(sidOld, sidNew)); err == nil {
		t.Fatal("stage with a SID of a locator withdrawn: accepted")
	}
	// The withdrawn locator is gone from the map too: its SID is now foreign at ours.
	in := srv6Frame(macPeer, macD0, sidNew, []netip.Addr{sidHome}, 0, 64, 0, ipOf(spec{src: ap("198.51.100.7:1"), dst: ap("10.0.0.1:80"), proto: lb.TCP, flags: "A", srcMAC: macPeer, dstMAC: macD0}.build(t)))
	before := tb.drops(t)["srv6_foreign_src"]
	if v, _ := tb.run(t, in, tb.d0.Attrs().Index); v != xdpDrop || tb.drops(t)["srv6_foreign_src"] != before+1 {
		t.Fatalf("from a withdrawn locator: verdict %d", v)
	}
	gen, err := tb.d.Stage(f, lb.SRv6(sidOld))
	if err != nil {
		t.Fatal(err)
	}
	if err := tb.d.Commit(f, gen); err != nil {
		t.Fatal(err)
	}
	svc, err := tb.d.Get(f)
	if err != nil || svc.Active != lb.SRv6(sidOld) {
		t.Fatalf("active %v, %v", svc.Active, err)
	}

	plain := openTest(t, dataplane.Config{})
	if _, err := plain.Stage(f, lb.SRv6(sidOld)); err == nil || !strings.Contains(err.Error(), "SRv6 is off") {
		t.Fatalf("stage srv6 on a node without a SID: %v", err)
	}
}

// TestSRv6ConfigValidate: bad SRv6 configurations are refused with a reason.
func TestSRv6ConfigValidate(t *testing.T) {
	for _, c := range []struct {
		desc string
		cfg  dataplane.SRv6Config
		want string
	}{
		{"locators without a SID", dataplane.SRv6Config{Locators: []netip.Prefix{locHome}}, "without the node's SID"},
		{"SID outside", dataplane.SRv6Config{SID: sidAlien, Locators: []netip.Prefix{locHome}}, "inside none"},
		{"IPv4 SID", dataplane.SRv6Config{SID: netip.MustParseAddr("10.0.0.1"), Locators: []netip.Prefix{locHome}}, "not IPv6"},
		{"host bits", dataplane.SRv6Config{SID: sidHome, Locators: []netip.Prefix{netip.MustParsePrefix("fc00:0:1::1/48")}}, "host bits"},
		{"small MTU", dataplane.SRv6Config{SID: sidHome, Locators: []netip.Prefix{locHome}, MTU: 1000}, "MTU"},
		{"negative hold", dataplane.SRv6Config{SID: sidHome, Locators: []netip.Prefix{locHome}, PreviousHold: -time.Second}, "negative previous-path hold"},
	} {
		err := c.cfg.Validate()
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", c.desc, err, c.want)
		}
	}
	if err := (dataplane.SRv6Config{}).Validate(); err != nil {
		t.Errorf("off: %v", err)
	}
}

// TestSRv6MoveHomeHeldAtSwitch: a commit from an SRv6 path to local (a
// move back home) has the previous path held from its switch on. A packet
// of an open connection along that path (TCP ACK, no flow, no socket here)
// run the moment the active slot switched, inside Commit, is encapsulated
// along the path (XDP_TX), for both families; so it is after the commit.
// A later commit (local -> local) ends the hold: the same packet then
// passes to the stack.
func TestSRv6MoveHomeHeldAtSwitch(t *testing.T) {
	tb := newSRv6Testbed(t, sidHome)
	d0 := tb.d0.Attrs().Index
	t.Cleanup(func() { dataplane.OnCommitSwitched(nil) })
	for _, c := range []struct{ frontend, client string }{
		{"10.0.0.1:80", "198.51.100.7:33000"},
		{"[2001:db8::1]:80", "[2001:db8:c::7]:33000"},
	} {
		client, fa := ap(c.client), ap(c.frontend)
		f := tb.stage(t, c.frontend+"/tcp", "srv6:fc00:0:2::1")
		ack := spec{src: client, dst: fa, proto: lb.TCP, flags: "A", payload: []byte("along the path"), srcMAC: macPeer, dstMAC: macD0, ipID: 7, seq: 1000}.build(t)
		want := srv6Frame(macD0, macGW, sidHome, []netip.Addr{sidOld}, 0, 64, srv6Label(client, fa, lb.TCP), ipOf(ack))
		check := func(when string) {
			t.Helper()
			v, out, err := tb.d.RunXDP(ack, d0)
			if err != nil {
				t.Fatalf("%s %s: %v", c.frontend, when, err)
			}
			if v != xdpTX || !bytes.Equal(out, want) {
				t.Fatalf("%s %s: verdict %d (want %d, along the previous path), frame\n got %x\nwant %x", c.frontend, when, v, xdpTX, out, want)
			}
		}
		gen, err := tb.d.Stage(f, mustTarget(t, "local"))
		if err != nil {
			t.Fatal(err)
		}
		ran := false
		dataplane.OnCommitSwitched(func() { ran = true; check("at the switch") })
		if err := tb.d.Commit(f, gen); err != nil {
			t.Fatal(err)
		}
		dataplane.OnCommitSwitched(nil)
		if !ran {
			t.Fatal("Commit did not run the switch hook")
		}
		check("after the commit")

		gen, err = tb.d.Stage(f, mustTarget(t, "local"))
		if err != nil {
			t.Fatal(err)
		}
		if err := tb.d.Commit(f, gen); err != nil {
			t.Fatal(err)
		}
		if v, _ := tb.run(t, ack, d0); v != xdpPass {
			t.Fatalf("%s after a later commit: verdict %d, want %d (the hold ended)", c.frontend, v, xdpPass)
		}
	}
}

// TestSRv6HoldWriteFails injects a failure of the hold's write (the kernel
// refuses it: roam_srv6_prev open read-only) into both commits that write
// it. A move back home (SRv6 path -> local) writes the hold before its
// switch: it fails with nothing switched (the SRv6 path stays active,
// packets still go along it, the staged generation is still the one to
// commit), and once the write works again the same generation commits
// with the hold in place. Any other commit ends the hold after its
// switch: a failure there says it committed, and it did.
func TestSRv6HoldWriteFails(t *testing.T) {
	tb := newSRv6Testbed(t, sidHome)
	d0 := tb.d0.Attrs().Index
	client, fa := ap("198.51.100.7:33000"), ap("10.0.0.1:80")
	path := lb.SRv6(sidOld)
	f := tb.stage(t, "10.0.0.1:80/tcp", path.String())
	ack := spec{src: client, dst: fa, proto: lb.TCP, flags: "A", payload: []byte("along the path"), srcMAC: macPeer, dstMAC: macD0, ipID: 7, seq: 1000}.build(t)
	along := srv6Frame(macD0, macGW, sidHome, []netip.Addr{sidOld}, 0, 64, srv6Label(client, fa, lb.TCP), ipOf(ack))
	alongPath := func(when string) {
		t.Helper()
		if v, out := tb.run(t, ack, d0); v != xdpTX || !bytes.Equal(out, along) {
			t.Fatalf("%s: verdict %d (want %d, along the SRv6 path), frame\n got %x\nwant %x", when, v, xdpTX, out, along)
		}
	}

	gen, err := tb.d.Stage(f, mustTarget(t, "local"))
	if err != nil {
		t.Fatal(err)
	}
	restore, err := tb.d.ReadOnlySRv6Hold()
	if err != nil {
		t.Fatal(err)
	}
	err = tb.d.Commit(f, gen)
	restore()
	if err == nil || !strings.Contains(err.Error(), "write previous srv6 path's hold") {
		t.Fatalf("commit home with the hold's write refused: %v, want the hold's error", err)
	}
	svc, err := tb.d.Get(f)
	if err != nil {
		t.Fatal(err)
	}
	if svc.Active != path || svc.Staged != mustTarget(t, "local") {
		t.Fatalf("after the failed commit: active %s staged %s, want %s still active and local staged", svc.Active, svc.Staged, path)
	}
	alongPath("after the failed commit (nothing switched)")
	syn := spec{src: ap("198.51.100.7:33001"), dst: fa, proto: lb.TCP, flags: "S", srcMAC: macPeer, dstMAC: macD0, seq: 1}.build(t)
	if v, _ := tb.run(t, syn, d0); v != xdpTX {
		t.Fatalf("a new connection after the failed commit: verdict %d, want %d (encapsulated along the path still active)", v, xdpTX)
	}

	if err := tb.d.Commit(f, gen); err != nil {
		t.Fatalf("the same generation once the hold can be written: %v", err)
	}
	if svc, err := tb.d.Get(f); err != nil || svc.Active != mustTarget(t, "local") {
		t.Fatalf("after the retried commit: active %v, %v", svc.Active, err)
	}
	alongPath("after the retried commit (held)")

	// local -> local: the hold's end is written after the switch.
	gen, err = tb.d.Stage(f, mustTarget(t, "local"))
	if err != nil {
		t.Fatal(err)
	}
	if restore, err = tb.d.ReadOnlySRv6Hold(); err != nil {
		t.Fatal(err)
	}
	err = tb.d.Commit(f, gen)
	restore()
	if err == nil || !strings.Contains(err.Error(), "committed, but") || !strings.Contains(err.Error(), "end previous srv6 path's hold") {
		t.Fatalf("commit local -> local with the hold's end refused: %v, want \"committed, but\" the hold's error", err)
	}
	if svc, err := tb.d.Get(f); err != nil || svc.Active != mustTarget(t, "local") || svc.Staged.Kind != lb.TargetNone {
		t.Fatalf("after the commit whose hold's end failed: active %v staged %v, %v (want committed)", svc.Active, svc.Staged, err)
	}
	if err := tb.d.Commit(f, gen); err != nil {
		t.Fatalf("committing it again: %v, want a no-op", err)
	}
}
