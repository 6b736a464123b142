package dataplane_test

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/roamnet/roam/dataplane"
	"github.com/roamnet/roam/dataplane/dptest"
	"github.com/roamnet/roam/dataplane/lb"
	"github.com/roamnet/roam/test/netns"
)

// XDP verdicts.
const (
	xdpDrop     = 1
	xdpPass     = 2
	xdpTX       = 3
	xdpRedirect = 4
	tcOK        = 0
	tcShot      = 2
	tcRedirect  = 7
)

var (
	macD0     = "02:00:00:00:00:01"
	macD1     = "02:00:00:00:00:02"
	macGW     = "02:00:00:00:00:fe" // next hop towards targets
	macClient = "02:00:00:00:00:fd" // next hop towards clients
	macPeer   = "02:00:00:00:00:aa" // whoever sent the input frame
)

// fwdTTL is a forwarded output's TTL or hop limit: the input's 64 (spec's
// default), less the hop the programs count.
const fwdTTL = 63

// spec describes a test packet; build turns it into a frame with correct checksums.
type spec struct {
	src, dst  netip.AddrPort
	proto     lb.Proto
	flags     string // TCP flags: any of "SAFR"
	payload   []byte
	srcMAC    string
	dstMAC    string
	zeroUDP   bool // IPv4 UDP without checksum
	hopLimit  uint8
	ipID      uint16
	seq, ackn uint32
	mss       uint16 // TCP: an MSS option (first) when set
}

func (s spec) build(t *testing.T) []byte {
	t.Helper()
	smac, _ := net.ParseMAC(s.srcMAC)
	dmac, _ := net.ParseMAC(s.dstMAC)
	eth := &layers.Ethernet{SrcMAC: smac, DstMAC: dmac}
	ttl := s.hopLimit
	if ttl == 0 {
		ttl = 64
	}
	var nl gopacket.NetworkLayer
	var ls []gopacket.SerializableLayer
	if s.src.Addr().Is4() {
		eth.EthernetType = layers.EthernetTypeIPv4
		ip := &layers.IPv4{Version: 4, TTL: ttl, Id: s.ipID, SrcIP: s.src.Addr().AsSlice(), DstIP: s.dst.Addr().AsSlice(), Protocol: layers.IPProtocol(s.proto)}
		nl, ls = ip, []gopacket.SerializableLayer{eth, ip}
	} else {
		eth.EthernetType = layers.EthernetTypeIPv6
		ip := &layers.IPv6{Version: 6, HopLimit: ttl, SrcIP: s.src.Addr().AsSlice(), DstIP: s.dst.Addr().AsSlice(), NextHeader: layers.IPProtocol(s.proto)}
		nl, ls = ip, []gopacket.SerializableLayer{eth, ip}
	}
	if s.proto == lb.TCP {
		tcp := &layers.TCP{SrcPort: layers.TCPPort(s.src.Port()), DstPort: layers.TCPPort(s.dst.Port()), Seq: s.seq, Ack: s.ackn, Window: 512}
		if s.mss != 0 {
			tcp.Options = []layers.TCPOption{{OptionType: layers.TCPOptionKindMSS, OptionLength: 4, OptionData: []byte{byte(s.mss >> 8), byte(s.mss)}}}
		}
		tcp.SYN = strings.ContainsRune(s.flags, 'S')
		tcp.ACK = strings.ContainsRune(s.flags, 'A')
		tcp.FIN = strings.ContainsRune(s.flags, 'F')
		tcp.RST = strings.ContainsRune(s.flags, 'R')
		tcp.SetNetworkLayerForChecksum(nl)
		ls = append(ls, tcp)
	} else {
		udp := &layers.UDP{SrcPort: layers.UDPPort(s.src.Port()), DstPort: layers.UDPPort(s.dst.Port())}
		udp.SetNetworkLayerForChecksum(nl)
		ls = append(ls, udp)
	}
	ls = append(ls, gopacket.Payload(s.payload))
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		t.Fatalf("serialize: %v", err)
	}
	b := buf.Bytes()
	if s.zeroUDP && s.proto == lb.UDP && s.src.Addr().Is4() {
		b[14+20+6], b[14+20+7] = 0, 0
	}
	return b
}

// verifyChecksums parses frame with gopacket and checks every checksum in it.
func verifyChecksums(t *testing.T, frame []byte) gopacket.Packet {
	t.Helper()
	p := gopacket.NewPacket(frame, layers.LayerTypeEthernet, gopacket.Default)
	if el := p.ErrorLayer(); el != nil {
		t.Fatalf("output does not parse: %v", el.Error())
	}
	if tcp, ok := p.Layer(layers.LayerTypeTCP).(*layers.TCP); ok {
		tcp.SetNetworkLayerForChecksum(p.NetworkLayer())
	}
	if udp, ok := p.Layer(layers.LayerTypeUDP).(*layers.UDP); ok {
		udp.SetNetworkLayerForChecksum(p.NetworkLayer())
	}
	if ic, ok := p.Layer(layers.LayerTypeICMPv6).(*layers.ICMPv6); ok {
		ic.SetNetworkLayerForChecksum(p.NetworkLayer())
	}
	err, bad := p.VerifyChecksums()
	if err != nil {
		t.Fatalf("verify checksums: %v", err)
	}
	if len(bad) > 0 {
		t.Fatalf("bad checksums in output: %+v\n%s", bad, p.Dump())
	}
	if u, ok := p.Layer(layers.LayerTypeUDP).(*layers.UDP); ok && u.Checksum == 0 && p.Layer(layers.LayerTypeIPv6) != nil {
		t.Fatalf("IPv6 UDP output with zero checksum")
	}
	return p
}

// l4Ports reads the ports of a parsed frame.
func l4Ports(p gopacket.Packet) (src, dst uint16) {
	if tcp, ok := p.Layer(layers.LayerTypeTCP).(*layers.TCP); ok {
		return uint16(tcp.SrcPort), uint16(tcp.DstPort)
	}
	if udp, ok := p.Layer(layers.LayerTypeUDP).(*layers.UDP); ok {
		return uint16(udp.SrcPort), uint16(udp.DstPort)
	}
	return 0, 0
}

// testbed is a netns with routes and neighbours for bpf_fib_lookup, and a data plane.
type testbed struct {
	d      *dataplane.Dataplane
	h      *netlink.Handle // in the testbed's namespace
	d0, d1 netlink.Link
}

var (
	snat4 = netip.MustParseAddr("192.0.2.100")
	snat6 = netip.MustParseAddr("2001:db8:ff::100")
)

// snatOf is the testbed's SNAT address of a's family.
func snatOf(a netip.Addr) netip.Addr {
	if a.Is6() {
		return snat6
	}
	return snat4
}

func newTestbed(t *testing.T, cfg dataplane.Config) *testbed {
	h := netns.Enter(t)
	tb := &testbed{h: h}
	tb.d0 = addVeth(t, h, "d0", macD0, "192.0.2.1/24", "2001:db8:ff::1/64")
	tb.d1 = addVeth(t, h, "d1", macD1, "203.0.113.1/24", "2001:db8:ee::1/64")
	addNeigh(t, h, tb.d0, "192.0.2.254", macGW)
	addNeigh(t, h, tb.d0, "2001:db8:ff::fe", macGW)
	addNeigh(t, h, tb.d0, "192.0.2.253", macClient)
	addNeigh(t, h, tb.d0, "2001:db8:ff::fd", macClient)
	addRoute(t, h, tb.d0, "10.2.0.0/24", "192.0.2.254")
	addRoute(t, h, tb.d0, "2001:db8:2::/64", "2001:db8:ff::fe")
	addRoute(t, h, tb.d0, "198.51.100.0/24", "192.0.2.253")
	addRoute(t, h, tb.d0, "2001:db8:c::/64", "2001:db8:ff::fd")
	addRoute(t, h, tb.d0, "10.3.0.0/24", "192.0.2.250") // no neighbour entry
	blackhole := &netlink.Route{Dst: &net.IPNet{IP: net.IP{10, 4, 0, 0}, Mask: net.CIDRMask(24, 32)}, Type: unix.RTN_BLACKHOLE}
	if err := h.RouteAdd(blackhole); err != nil {
		t.Fatalf("add blackhole route: %v", err)
	}
	cfg.SNATv4, cfg.SNATv6 = snat4, snat6
	tb.d = openTest(t, cfg)
	return tb
}

// newRedirectTestbed is a testbed whose data plane SNATs from ports
// 40000-40999 and redirects one frontend of each family and protocol:
// 10.0.0.1:80/tcp to 10.2.0.1:8080, 10.0.0.1:7000/udp to 10.2.0.1:7001, and
// the same on [2001:db8::1] to [2001:db8:2::1].
func newRedirectTestbed(t *testing.T) *testbed {
	t.Helper()
	tb := newTestbed(t, dataplane.Config{PortMin: 40000, PortMax: 40999})
	tb.stage(t, "10.0.0.1:80/tcp", "redirect:10.2.0.1:8080")
	tb.stage(t, "10.0.0.1:7000/udp", "redirect:10.2.0.1:7001")
	tb.stage(t, "[2001:db8::1]:80/tcp", "redirect:[2001:db8:2::1]:8080")
	tb.stage(t, "[2001:db8::1]:7000/udp", "redirect:[2001:db8:2::1]:7001")
	return tb
}

func (tb *testbed) stage(t *testing.T, f, target string) lb.Frontend {
	t.Helper()
	fr := mustFrontend(t, f)
	dptest.SetActive(t, tb.d, fr, mustTarget(t, target))
	return fr
}

func (tb *testbed) run(t *testing.T, in []byte, ifindex int) (uint32, []byte) {
	t.Helper()
	v, out, err := tb.d.RunXDP(in, ifindex)
	if err != nil {
		t.Fatal(err)
	}
	return v, out
}

// xdp runs in through the XDP program as a frame arriving on d0, where
// this testbed's clients, gateway and targets all are, and returns the
// verdict and the frame it leaves with.
func (tb *testbed) xdp(t *testing.T, in []byte) (uint32, []byte) {
	t.Helper()
	return tb.run(t, in, tb.d0.Attrs().Index)
}

// openFlow runs in, a client's first packet of a redirected flow, through
// XDP on d0, which must send it on (XDP_TX) with valid checksums, and
// returns the flow's SNAT source: the port the program took, on the
// testbed's SNAT address of the flow's family (the constant, not the
// packet's: what is then sent to it checks the address too).
func (tb *testbed) openFlow(t *testing.T, what string, in []byte) netip.AddrPort {
	t.Helper()
	v, out := tb.xdp(t, in)
	if v != xdpTX {
		t.Fatalf("%s: verdict %d", what, v)
	}
	p := verifyChecksums(t, out)
	sport, _ := l4Ports(p)
	src, _ := netip.AddrFromSlice(p.NetworkLayer().NetworkFlow().Src().Raw())
	return netip.AddrPortFrom(snatOf(src.Unmap()), sport)
}

// drops reads the data plane's drop counters by reason.
func (tb *testbed) drops(t *testing.T) map[string]uint64 {
	t.Helper()
	return dptest.Drops(t, tb.d)
}

// dropsSince is how much each drop counter grew since before (a drops
// reading); a reason that did not move is left out.
func (tb *testbed) dropsSince(t *testing.T, before map[string]uint64) map[string]uint64 {
	t.Helper()
	return dptest.DropsSince(t, tb.d, before)
}

// runTCRedirect runs in through the tc program, which must redirect it
// (TC_ACT_REDIRECT), and returns the frame it sends.
func (tb *testbed) runTCRedirect(t *testing.T, what string, in []byte) []byte {
	t.Helper()
	v, out, err := tb.d.RunTC(in)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	if v != tcRedirect {
		t.Fatalf("%s: verdict %d, want TC_ACT_REDIRECT", what, v)
	}
	return out
}

// waitNoFlows polls, for up to 20 s, until f has no flow to target left;
// past that, the test fails with msg.
func (tb *testbed) waitNoFlows(t *testing.T, f lb.Frontend, target lb.Target, msg string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		n, err := tb.d.Flows(f, target)
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal(msg)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

// TestRedirectAndReverse: new flows of every family and protocol are NATed to
// the target and leave through the fib's next hop; the target's replies are
// translated back to the client; all output checksums verified.
func TestRedirectAndReverse(t *testing.T) {
	tb := newRedirectTestbed(t)
	d0, d1 := tb.d0.Attrs().Index, tb.d1.Attrs().Index

	cases := []struct {
		desc        string
		client      netip.AddrPort
		frontend    netip.AddrPort
		target      netip.AddrPort
		proto       lb.Proto
		zeroUDP     bool
		ingress     int
		wantVerdict uint32
	}{
		{"ipv4 tcp, same interface: XDP_TX", ap("198.51.100.7:33000"), ap("10.0.0.1:80"), ap("10.2.0.1:8080"), lb.TCP, false, d0, xdpTX},
		{"ipv4 tcp, other interface: redirect", ap("198.51.100.8:33001"), ap("10.0.0.1:80"), ap("10.2.0.1:8080"), lb.TCP, false, d1, xdpRedirect},
		{"ipv4 udp", ap("198.51.100.7:5000"), ap("10.0.0.1:7000"), ap("10.2.0.1:7001"), lb.UDP, false, d0, xdpTX},
		{"ipv4 udp zero checksum kept zero", ap("198.51.100.9:5001"), ap("10.0.0.1:7000"), ap("10.2.0.1:7001"), lb.UDP, true, d0, xdpTX},
		{"ipv6 tcp", ap("[2001:db8:c::7]:33000"), ap("[2001:db8::1]:80"), ap("[2001:db8:2::1]:8080"), lb.TCP, false, d0, xdpTX},
		{"ipv6 udp, other interface", ap("[2001:db8:c::7]:5000"), ap("[2001:db8::1]:7000"), ap("[2001:db8:2::1]:7001"), lb.UDP, false, d1, xdpRedirect},
	}
	for _, c := range cases {
		// Not t.Run: a subtest runs on another goroutine, outside this
		// thread's network namespace.
		t.Logf("case: %s", c.desc)
		func() {
			snat := snatOf(c.client.Addr())
			payload := []byte("hello roam " + c.desc)
			in := spec{src: c.client, dst: c.frontend, proto: c.proto, flags: "S", payload: payload, srcMAC: macPeer, dstMAC: macD0, zeroUDP: c.zeroUDP, ipID: 7, seq: 1000}.build(t)
			v, out := tb.run(t, in, c.ingress)
			if v != c.wantVerdict {
				t.Fatalf("verdict %d, want %d", v, c.wantVerdict)
			}
			p := verifyChecksums(t, out)
			sport, _ := l4Ports(p)
			if sport < 40000 || sport > 40999 {
				t.Fatalf("SNAT port %d outside 40000-40999", sport)
			}
			snatAP := netip.AddrPortFrom(snat, sport)
			want := spec{src: snatAP, dst: c.target, proto: c.proto, flags: "S", payload: payload, hopLimit: fwdTTL, srcMAC: macD0, dstMAC: macGW, zeroUDP: c.zeroUDP, ipID: 7, seq: 1000}.build(t)
			if !bytes.Equal(out, want) {
				t.Fatalf("output frame\n got %x\nwant %x", out, want)
			}

			// The target answers the SNAT address; the client must see the frontend.
			reply := spec{src: c.target, dst: snatAP, proto: c.proto, flags: "SA", payload: []byte("reply"), srcMAC: macGW, dstMAC: macD0, zeroUDP: c.zeroUDP, ipID: 9, seq: 5000, ackn: 1001}.build(t)
			v, out = tb.xdp(t, reply)
			if v != xdpTX {
				t.Fatalf("reply verdict %d, want XDP_TX", v)
			}
			verifyChecksums(t, out)
			want = spec{src: c.frontend, dst: c.client, proto: c.proto, flags: "SA", payload: []byte("reply"), hopLimit: fwdTTL, srcMAC: macD0, dstMAC: macClient, zeroUDP: c.zeroUDP, ipID: 9, seq: 5000, ackn: 1001}.build(t)
			if !bytes.Equal(out, want) {
				t.Fatalf("reverse output frame\n got %x\nwant %x", out, want)
			}

			// The same flow again keeps its SNAT port.
			v, out = tb.run(t, in, c.ingress)
			if v != c.wantVerdict {
				t.Fatalf("second packet verdict %d", v)
			}
			if s2, _ := l4Ports(verifyChecksums(t, out)); s2 != sport {
				t.Fatalf("second packet SNAT port %d, first %d", s2, sport)
			}
		}()
	}

	f := mustFrontend(t, "10.0.0.1:80/tcp")
	n, err := tb.d.Flows(f, mustTarget(t, "redirect:10.2.0.1:8080"))
	if err != nil || n != 2 {
		t.Fatalf("flows of %s: %d, %v; want 2", f, n, err)
	}
	c, err := tb.d.Counters(f, dataplane.ActionRedirect)
	if err != nil || c.Packets != 4 {
		t.Fatalf("redirect counter %v, %v; want 4 packets", c, err)
	}
	c, err = tb.d.Counters(f, dataplane.ActionReverse)
	if err != nil || c.Packets != 2 {
		t.Fatalf("reverse counter %v, %v; want 2 packets", c, err)
	}
	fl, err := tb.d.FlowList(f)
	if err != nil || len(fl) != 2 {
		t.Fatalf("flow list %v, %v", fl, err)
	}
}

// TestUntouched: packets the programs must pass or drop without rewriting
// (a fragment, IPv4 options or IPv6 extension headers of a flow sent away
// from this host: dropped, TestUnrewritableNotHandedToHost).
func TestUntouched(t *testing.T) {
	tb := newTestbed(t, dataplane.Config{})
	tb.stage(t, "10.0.0.1:80/tcp", "redirect:10.2.0.1:8080")
	tb.stage(t, "10.0.0.2:80/tcp", "local")
	tb.stage(t, "[2001:db8::2]:7000/udp", "local")
	tb.stage(t, "10.0.0.3:80/tcp", "redirect:10.3.0.1:80")
	tb.stage(t, "10.0.0.4:80/tcp", "redirect:10.4.0.1:80")
	tb.stage(t, "[2001:db8::1]:80/tcp", "redirect:[2001:db8:2::1]:8080")

	good4 := spec{src: ap("198.51.100.7:33000"), dst: ap("10.0.0.1:80"), proto: lb.TCP, flags: "S", payload: []byte("x"), srcMAC: macPeer, dstMAC: macD0}.build(t)
	good6 := spec{src: ap("[2001:db8:c::7]:33000"), dst: ap("[2001:db8::1]:80"), proto: lb.TCP, flags: "S", payload: []byte("x"), srcMAC: macPeer, dstMAC: macD0}.build(t)
	mod := func(b []byte, f func([]byte) []byte) []byte { return f(append([]byte(nil), b...)) }
	put16 := func(b []byte, off int, v uint16) { binary.BigEndian.PutUint16(b[off:], v) }

	cases := []struct {
		desc    string
		in      []byte
		verdict uint32
		reason  string // drop reason counted, "" for none
		same    bool   // output must equal input
	}{
		{"local ipv4 tcp passes", spec{src: ap("198.51.100.7:33000"), dst: ap("10.0.0.2:80"), proto: lb.TCP, flags: "S", srcMAC: macPeer, dstMAC: macD0}.build(t), xdpPass, "", true},
		{"local ipv6 udp passes", spec{src: ap("[2001:db8:c::7]:5000"), dst: ap("[2001:db8::2]:7000"), proto: lb.UDP, payload: []byte("q"), srcMAC: macPeer, dstMAC: macD0}.build(t), xdpPass, "", true},
		{"no frontend (other port) passes", spec{src: ap("198.51.100.7:33000"), dst: ap("10.0.0.1:81"), proto: lb.TCP, flags: "S", srcMAC: macPeer, dstMAC: macD0}.build(t), xdpPass, "", true},
		{"no frontend (other protocol) passes", spec{src: ap("198.51.100.7:33000"), dst: ap("10.0.0.1:80"), proto: lb.UDP, srcMAC: macPeer, dstMAC: macD0}.build(t), xdpPass, "", true},
		{"truncated ipv4 header", good4[:14+12], xdpPass, "malformed", true},
		{"ipv4 total length beyond frame", mod(good4, func(b []byte) []byte { put16(b, 16, 200); return b }), xdpPass, "malformed", true},
		{"truncated tcp header", mod(good4, func(b []byte) []byte { put16(b, 16, 20+10); return b[:14+30] }), xdpPass, "malformed", true},
		{"tcp data offset below 5", mod(good4, func(b []byte) []byte { b[14+20+12] = 4 << 4; return b }), xdpPass, "malformed", true},
		{"ipv4 first fragment to a redirected frontend: dropped", mod(good4, func(b []byte) []byte { put16(b, 14+6, 0x2000); return b }), xdpDrop, "fragment", true},
		{"ipv4 later fragment (no ports): passed", mod(good4, func(b []byte) []byte { put16(b, 14+6, 0x0010); return b }), xdpPass, "fragment", true},
		{"ipv4 with options to a redirected frontend: dropped", ipv4WithOptions(t, good4), xdpDrop, "ip_options", true},
		{"truncated ipv6 header", good6[:14+30], xdpPass, "malformed", true},
		{"ipv6 payload length beyond frame", mod(good6, func(b []byte) []byte { put16(b, 14+4, 500); return b }), xdpPass, "malformed", true},
		{"ipv6 hop-by-hop header to a redirected frontend: dropped", ipv6WithHopByHop(t, good6), xdpDrop, "ipv6_ext", true},
		{"ipv6 first fragment to a redirected frontend: dropped", ipv6WithExt(good6, 44, []byte{6, 0, 0, 1, 0, 0, 0, 7}), xdpDrop, "fragment", true},
		{"ipv6 hop-by-hop to no frontend: passed to the kernel", ipv6WithExt(spec{src: ap("[2001:db8:c::7]:5000"), dst: ap("[2001:db8:9::9]:5353"), proto: lb.UDP, payload: []byte("q"), srcMAC: macPeer, dstMAC: macD0}.build(t), 0, []byte{17, 0, 1, 4, 0, 0, 0, 0}), xdpPass, "ipv6_ext", true},
		{"ipv6 hop-by-hop then ICMPv6 (MLD): not counted", ipv6WithExt(good6, 0, []byte{58, 0, 5, 2, 0, 0, 1, 0}), xdpPass, "", true},
		{"udp length beyond payload", spec{src: ap("198.51.100.7:5000"), dst: ap("10.0.0.1:80"), proto: lb.UDP, srcMAC: macPeer, dstMAC: macD0}.build(t), xdpPass, "", true},
		{"blackholed target: dropped", spec{src: ap("198.51.100.7:33000"), dst: ap("10.0.0.4:80"), proto: lb.TCP, flags: "S", srcMAC: macPeer, dstMAC: macD0}.build(t), xdpDrop, "no_route", false},
	}
	for _, c := range cases {
		// Not t.Run: a subtest runs on another goroutine, outside this
		// thread's network namespace.
		t.Logf("case: %s", c.desc)
		func() {
			before, err := tb.d.Drops()
			if err != nil {
				t.Fatal(err)
			}
			v, out := tb.xdp(t, c.in)
			if v != c.verdict {
				t.Fatalf("verdict %d, want %d", v, c.verdict)
			}
			if c.same && !bytes.Equal(out, c.in) {
				t.Fatalf("packet rewritten\n got %x\nwant %x", out, c.in)
			}
			after, err := tb.d.Drops()
			if err != nil {
				t.Fatal(err)
			}
			for r := range after {
				want := before[r]
				if r == c.reason {
					want++
				}
				if after[r] != want {
					t.Fatalf("drop counter %s: %d -> %d", r, before[r], after[r])
				}
			}
		}()
	}

	// No neighbour for the next hop: XDP passes the packet as it came (the
	// kernel would drop it rewritten: its source is this host's); the tc
	// program on the same interface translates it and sends it by
	// bpf_redirect_neigh, which resolves the neighbour.
	t.Logf("case: no neighbour: passed untouched by XDP, redirected by tc")
	func() {
		in := spec{src: ap("198.51.100.7:33000"), dst: ap("10.0.0.3:80"), proto: lb.TCP, flags: "S", srcMAC: macPeer, dstMAC: macD0}.build(t)
		v, out := tb.xdp(t, in)
		if v != xdpPass || !bytes.Equal(out, in) {
			t.Fatalf("XDP: verdict %d, rewritten %v; want XDP_PASS untouched", v, !bytes.Equal(out, in))
		}
		p := verifyChecksums(t, tb.runTCRedirect(t, "tc", in))
		ip := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
		if !ip.DstIP.Equal(net.ParseIP("10.3.0.1")) || !ip.SrcIP.Equal(snat4.AsSlice()) {
			t.Fatalf("tc: not rewritten: %v -> %v", ip.SrcIP, ip.DstIP)
		}
		dr := tb.drops(t)
		if dr["no_neigh"] != 2 {
			t.Fatalf("no_neigh counted %d, want 2 (XDP, then tc)", dr["no_neigh"])
		}
	}()
}

// ipv4WithOptions inserts a 4-byte NOP option block (IHL 6).
func ipv4WithOptions(t *testing.T, frame []byte) []byte {
	ip := gopacket.NewPacket(frame, layers.LayerTypeEthernet, gopacket.Default)
	l4 := ip.Layer(layers.LayerTypeTCP).(*layers.TCP)
	out := append([]byte(nil), frame[:14+20]...)
	out = append(out, 1, 1, 1, 0) // NOP NOP NOP EOL
	out = append(out, l4.Contents...)
	out = append(out, l4.Payload...)
	out[14] = 0x46
	binary.BigEndian.PutUint16(out[16:], uint16(len(out)-14))
	out[24], out[25] = 0, 0
	binary.BigEndian.PutUint16(out[24:], ipChecksum(out[14:38]))
	return out
}

// ipv6WithHopByHop inserts an empty hop-by-hop options header.
func ipv6WithHopByHop(t *testing.T, frame []byte) []byte {
	return ipv6WithExt(frame, 0, []byte{6, 0, 1, 4, 0, 0, 0, 0}) // next TCP, len 0, PadN(4)
}

// ipv6WithExt inserts extension header ext of type typ after the IPv6 header.
func ipv6WithExt(frame []byte, typ byte, ext []byte) []byte {
	out := append([]byte(nil), frame[:14+40]...)
	out = append(out, ext...)
	out = append(out, frame[14+40:]...)
	out[14+6] = typ
	binary.BigEndian.PutUint16(out[14+4:], uint16(len(out)-14-40))
	return out
}

func ipChecksum(h []byte) uint16 { return ^dptest.Sum16(h, 0) }

// TestFlowPinning: a commit moves new flows only; a flow keeps its target
// (local ones too) until FIN/RST, after which a new SYN takes the new target.
func TestFlowPinning(t *testing.T) {
	tb := newTestbed(t, dataplane.Config{})
	f := tb.stage(t, "10.0.0.1:80/tcp", "local")
	x, y := lb.Local, mustTarget(t, "redirect:10.2.0.1:8080")
	pkt := func(client, flags string) []byte {
		return spec{src: ap(client), dst: ap("10.0.0.1:80"), proto: lb.TCP, flags: flags, srcMAC: macPeer, dstMAC: macD0}.build(t)
	}
	expect := func(in []byte, verdict uint32, target string) {
		t.Helper()
		v, out := tb.xdp(t, in)
		if v != verdict {
			t.Fatalf("verdict %d, want %d", v, verdict)
		}
		if target != "" {
			p := verifyChecksums(t, out)
			ip := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
			_, dport := l4Ports(p)
			if got := fmt.Sprintf("%s:%d", ip.DstIP, dport); got != target {
				t.Fatalf("sent to %s, want %s", got, target)
			}
		}
	}
	expect(pkt("198.51.100.7:1000", "S"), xdpPass, "")
	if n, _ := tb.d.Flows(f, x); n != 1 {
		t.Fatalf("local flows %d, want 1", n)
	}
	gen, err := tb.d.Stage(f, y)
	if err != nil {
		t.Fatal(err)
	}
	expect(pkt("198.51.100.7:1001", "S"), xdpPass, "") // staged is invisible
	if err := tb.d.Commit(f, gen); err != nil {
		t.Fatal(err)
	}
	expect(pkt("198.51.100.7:1000", "A"), xdpPass, "")            // pinned to local
	expect(pkt("198.51.100.7:1002", "S"), xdpTX, "10.2.0.1:8080") // new flow moves
	if n, _ := tb.d.Flows(f, y); n != 1 {
		t.Fatalf("redirect flows %d, want 1", n)
	}
	if n, _ := tb.d.Flows(f, x); n != 2 {
		t.Fatalf("local flows %d, want 2", n)
	}
	expect(pkt("198.51.100.7:1000", "FA"), xdpPass, "") // the client's FIN: still local, and done (replies bypass XDP)
	fl, _ := tb.d.FlowList(f)
	done := 0
	for _, x := range fl {
		if x.Done {
			done++
		}
	}
	if done != 1 {
		t.Fatalf("done flows %d, want 1: %v", done, fl)
	}
	if n, _ := tb.d.Flows(f, x); n != 1 {
		t.Fatalf("local flows %d, want 1 (the other is done)", n)
	}
	expect(pkt("198.51.100.7:1000", "S"), xdpTX, "10.2.0.1:8080") // reused tuple: new flow
	if err := tb.d.Remove(f); err != nil {
		t.Fatal(err)
	}
	expect(pkt("198.51.100.7:1002", "A"), xdpPass, "")
	if n, _ := tb.d.ConntrackEntries(); n != 0 {
		t.Fatalf("%d conntrack entries left after remove", n)
	}
	if n, _ := tb.d.NATEntries(); n != 0 {
		t.Fatalf("%d NAT entries left after remove", n)
	}
}

// TestIdleTimeout: on the programs' real clock, an embryonic flow times out,
// stops counting, and its SYN sent again takes the active target.
func TestIdleTimeout(t *testing.T) {
	tb := newTestbed(t, dataplane.Config{Timeouts: dataplane.Timeouts{SYN: 300 * time.Millisecond}})
	f := tb.stage(t, "10.0.0.1:80/tcp", "local")
	in := spec{src: ap("198.51.100.7:1000"), dst: ap("10.0.0.1:80"), proto: lb.TCP, flags: "S", srcMAC: macPeer, dstMAC: macD0}.build(t)
	if v, _ := tb.xdp(t, in); v != xdpPass {
		t.Fatalf("verdict %d", v)
	}
	tb.stage(t, "10.0.0.1:80/tcp", "redirect:10.2.0.1:8080")
	tb.waitNoFlows(t, f, lb.Local, "embryonic local flow never expired")
	if v, _ := tb.xdp(t, in); v != xdpTX {
		t.Fatalf("expired flow: verdict %d, want XDP_TX to the new target", v)
	}
}

// TestPortExhaustion: with one SNAT port, a second concurrent flow to the same target is dropped and counted.
func TestPortExhaustion(t *testing.T) {
	tb := newTestbed(t, dataplane.Config{PortMin: 40000, PortMax: 40000})
	tb.stage(t, "10.0.0.1:80/tcp", "redirect:10.2.0.1:8080")
	a := spec{src: ap("198.51.100.7:1000"), dst: ap("10.0.0.1:80"), proto: lb.TCP, flags: "S", srcMAC: macPeer, dstMAC: macD0}.build(t)
	b := spec{src: ap("198.51.100.8:1000"), dst: ap("10.0.0.1:80"), proto: lb.TCP, flags: "S", srcMAC: macPeer, dstMAC: macD0}.build(t)
	if v, _ := tb.xdp(t, a); v != xdpTX {
		t.Fatalf("first flow verdict %d", v)
	}
	if v, _ := tb.xdp(t, b); v != xdpDrop {
		t.Fatalf("second flow verdict %d, want drop", v)
	}
	dr := tb.drops(t)
	if dr["port_exhausted"] != 1 {
		t.Fatalf("port_exhausted %d", dr["port_exhausted"])
	}
}
