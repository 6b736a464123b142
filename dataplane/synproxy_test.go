package dataplane_test

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/roamnet/roam/dataplane"
	"github.com/roamnet/roam/dataplane/lb"
)

// tcpOut is what a test reads of an output frame: its ends, TCP header and payload.
type tcpOut struct {
	src, dst       netip.AddrPort
	srcMAC, dstMAC string
	tcp            *layers.TCP
	mss            uint16 // its MSS option, 0 if none
	otherOptions   int    // options other than MSS (and padding)
	payload        []byte
	ttl            uint8
	frame          gopacket.Packet
}

func readTCP(t *testing.T, frame []byte) tcpOut {
	t.Helper()
	p := verifyChecksums(t, frame)
	var o tcpOut
	o.frame = p
	eth := p.Layer(layers.LayerTypeEthernet).(*layers.Ethernet)
	o.srcMAC, o.dstMAC = eth.SrcMAC.String(), eth.DstMAC.String()
	tcp, ok := p.Layer(layers.LayerTypeTCP).(*layers.TCP)
	if !ok {
		t.Fatalf("output is not TCP: %v", p)
	}
	o.tcp = tcp
	var src, dst net.IP
	if ip4, ok := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4); ok {
		src, dst, o.ttl = ip4.SrcIP, ip4.DstIP, ip4.TTL
	} else if ip6, ok := p.Layer(layers.LayerTypeIPv6).(*layers.IPv6); ok {
		src, dst, o.ttl = ip6.SrcIP, ip6.DstIP, ip6.HopLimit
	}
	sa, _ := netip.AddrFromSlice(src)
	da, _ := netip.AddrFromSlice(dst)
	o.src = netip.AddrPortFrom(sa.Unmap(), uint16(tcp.SrcPort))
	o.dst = netip.AddrPortFrom(da.Unmap(), uint16(tcp.DstPort))
	for _, opt := range tcp.Options {
		switch opt.OptionType {
		case layers.TCPOptionKindMSS:
			o.mss = uint16(opt.OptionData[0])<<8 | uint16(opt.OptionData[1])
		case layers.TCPOptionKindEndList, layers.TCPOptionKindNop:
		default:
			o.otherOptions++
		}
	}
	o.payload = tcp.Payload
	return o
}

func flagsOf(tcp *layers.TCP) string {
	s := ""
	for _, f := range []struct {
		on bool
		c  string
	}{{tcp.SYN, "S"}, {tcp.ACK, "A"}, {tcp.FIN, "F"}, {tcp.RST, "R"}} {
		if f.on {
			s += f.c
		}
	}
	return s
}

// TestSYNProxy, through BPF_PROG_TEST_RUN, for both families: with the SYN
// proxy on, a client's SYN is answered by XDP with a SYN-ACK carrying a
// cookie and leaves no state; an ACK with a bad cookie is dropped and
// counted; the ACK with the cookie becomes the SYN to the target (the
// client's ISN, its MSS as the cookie holds it, no other option); a client
// packet before the target's answer becomes that SYN again; the target's
// SYN-ACK (and its retransmission) becomes the ACK back to it; then every
// packet is translated both ways: the target's sequence numbers into the
// cookie's space, the client's acknowledgments into the target's, data,
// FIN and RST included, checksums right.
func TestSYNProxy(t *testing.T) {
	tb := newTestbed(t, dataplane.Config{PortMin: 40000, PortMax: 40999, SYNProxy: dataplane.SYNProxyAlways})
	tb.stage(t, "10.0.0.1:80/tcp", "redirect:10.2.0.1:8080")
	tb.stage(t, "[2001:db8::1]:80/tcp", "redirect:[2001:db8:2::1]:8080")
	for _, c := range []struct {
		client, frontend, target netip.AddrPort
		snat                     netip.Addr
		clientMSS, wantMSS       uint16 // the SYN's; what the SYN to the target says (the kernel's cookie table: the largest not above)
		ourMSS                   uint16
	}{
		{ap("198.51.100.7:33000"), ap("10.0.0.1:80"), ap("10.2.0.1:8080"), snat4, 1400, 1300, 1460},
		{ap("198.51.100.8:33001"), ap("10.0.0.1:80"), ap("10.2.0.1:8080"), snat4, 1460, 1460, 1460},
		{ap("[2001:db8:c::7]:33000"), ap("[2001:db8::1]:80"), ap("[2001:db8:2::1]:8080"), snat6, 1430, 1420, 1440},
	} {
		t.Logf("case: %s MSS %d", c.client, c.clientMSS)
		const isn = 1000
		var tisn uint32 = 0xfffffff0 // the target's ISN: wraps during the test
		before := tb.drops(t)
		delta := func(name string) uint64 { return tb.drops(t)[name] - before[name] }
		cl := func(flags string, seq, ack uint32, payload string) []byte {
			return spec{src: c.client, dst: c.frontend, proto: lb.TCP, flags: flags, srcMAC: macPeer, dstMAC: macD0, seq: seq, ackn: ack, payload: []byte(payload)}.build(t)
		}
		// The SYN: answered with a cookie, nothing kept.
		syn := spec{src: c.client, dst: c.frontend, proto: lb.TCP, flags: "S", srcMAC: macPeer, dstMAC: macD0, seq: isn, mss: c.clientMSS}.build(t)
		v, out := tb.xdp(t, syn)
		if v != xdpTX {
			t.Fatalf("SYN: verdict %d, want XDP_TX (a SYN-ACK)", v)
		}
		sa := readTCP(t, out)
		if flagsOf(sa.tcp) != "SA" || sa.src != c.frontend || sa.dst != c.client || sa.tcp.Ack != isn+1 || sa.mss != c.ourMSS ||
			sa.otherOptions != 0 || len(sa.payload) != 0 || sa.srcMAC != macD0 || sa.dstMAC != macPeer {
			t.Fatalf("SYN-ACK: %v", sa.frame)
		}
		cookie := sa.tcp.Seq
		if n := delta("synproxy_cookie_sent"); n != 1 {
			t.Fatalf("synproxy_cookie_sent +%d, want 1", n)
		}
		ct, nat, err := tb.d.FlowClients()
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range append(ct, nat...) {
			if e == c.client {
				t.Fatalf("the SYN left a conntrack or NAT entry for %s", c.client)
			}
		}
		// A bad cookie (off in its hash bits: the low ones carry the MSS index, and a neighbour index is a valid cookie): dropped, counted, no flow.
		if v, _ := tb.xdp(t, cl("A", isn+1, cookie+1+0x10000, "")); v != xdpDrop {
			t.Fatalf("ACK with a bad cookie: verdict %d, want XDP_DROP", v)
		}
		if n := delta("synproxy_cookie_bad"); n != 1 {
			t.Fatalf("synproxy_cookie_bad +%d, want 1", n)
		}
		// The right one: the SYN to the target.
		v, out = tb.xdp(t, cl("A", isn+1, cookie+1, ""))
		if v != xdpTX {
			t.Fatalf("ACK with the cookie: verdict %d, want XDP_TX (the SYN to the target)", v)
		}
		s := readTCP(t, out)
		if flagsOf(s.tcp) != "S" || s.src.Addr() != c.snat || s.dst != c.target || s.tcp.Seq != isn || s.mss != c.wantMSS || s.otherOptions != 0 ||
			s.ttl != fwdTTL || s.dstMAC != macGW {
			t.Fatalf("SYN to the target (want MSS %d): %v", c.wantMSS, s.frame)
		}
		snatAP := s.src
		if n := delta("synproxy_cookie_ok"); n != 1 {
			t.Fatalf("synproxy_cookie_ok +%d, want 1", n)
		}
		// The client's request before the target answered: the SYN again, its data dropped.
		v, out = tb.xdp(t, cl("A", isn+1, cookie+1, "GET /"))
		if v != xdpTX {
			t.Fatalf("early data: verdict %d", v)
		}
		if s2 := readTCP(t, out); flagsOf(s2.tcp) != "S" || s2.tcp.Seq != isn || len(s2.payload) != 0 || s2.dst != c.target || s2.src != snatAP || s2.mss != c.wantMSS {
			t.Fatalf("early data, want the SYN again: %v", s2.frame)
		}
		if n := delta("synproxy_early"); n != 1 {
			t.Fatalf("synproxy_early +%d, want 1", n)
		}
		tg := func(flags string, seq, ack uint32, payload string) []byte {
			return spec{src: c.target, dst: snatAP, proto: lb.TCP, flags: flags, srcMAC: macGW, dstMAC: macD0, seq: seq, ackn: ack, payload: []byte(payload), mss: 1460}.build(t)
		}
		// The target's SYN-ACK, twice: the ACK back to it, each time; one proxied flow.
		for i := 0; i < 2; i++ {
			v, out = tb.xdp(t, tg("SA", tisn, isn+1, ""))
			if v != xdpTX {
				t.Fatalf("target SYN-ACK: verdict %d", v)
			}
			a := readTCP(t, out)
			if flagsOf(a.tcp) != "A" || a.src != snatAP || a.dst != c.target || a.tcp.Seq != isn+1 || a.tcp.Ack != tisn+1 ||
				a.tcp.Window != 512 || len(a.payload) != 0 || a.dstMAC != macGW {
				t.Fatalf("ACK to the target: %v", a.frame)
			}
		}
		if n := delta("synproxy_flows"); n != 1 {
			t.Fatalf("synproxy_flows +%d, want 1", n)
		}
		// Both ways, translated.
		off := tisn - cookie // target's numbers - client's view of them
		for _, st := range []struct {
			fromTarget     bool
			flags          string
			seq, ack       uint32
			payload        string
			wantSeq, wantA uint32
		}{
			{false, "A", isn + 1, cookie + 1, "GET / HTTP/1.1\r\n\r\n", isn + 1, tisn + 1},
			{true, "A", tisn + 1, isn + 19, "HTTP/1.1 200 OK\r\n", cookie + 1, isn + 19},
			{true, "A", tisn + 18, isn + 19, "more", cookie + 18, isn + 19}, // past the wrap
			{false, "A", isn + 19, cookie + 22, "", isn + 19, tisn + 22},
			{true, "AF", tisn + 22, isn + 19, "", cookie + 22, isn + 19},
			{false, "AF", isn + 19, cookie + 23, "", isn + 19, tisn + 23},
			{false, "AR", isn + 20, cookie + 23, "", isn + 20, tisn + 23},
			{true, "R", tisn + 23, 0, "", cookie + 23, 0},
		} {
			in, wantSrc, wantDst := cl(st.flags, st.seq, st.ack, st.payload), snatAP, c.target
			if st.fromTarget {
				in, wantSrc, wantDst = tg(st.flags, st.seq, st.ack, st.payload), c.frontend, c.client
			}
			v, out = tb.xdp(t, in)
			if v != xdpTX {
				t.Fatalf("%v: verdict %d", st, v)
			}
			o := readTCP(t, out)
			if flagsOf(o.tcp) != st.flags || o.src.Port() != wantSrc.Port() || o.src.Addr() != wantSrc.Addr() || o.dst != wantDst ||
				o.tcp.Seq != st.wantSeq || o.tcp.Ack != st.wantA || !bytes.Equal(o.payload, []byte(st.payload)) {
				t.Fatalf("from target %v %s seq %d ack %d: got %s seq %d ack %d (offset %d): %v", st.fromTarget, st.flags, st.seq, st.ack,
					flagsOf(o.tcp), o.tcp.Seq, o.tcp.Ack, off, o.frame)
			}
		}
		// The flow is over (RSTs); the client opens a new connection on the same port: its ACK starts a new flow, not the old one's.
		v, out = tb.xdp(t, spec{src: c.client, dst: c.frontend, proto: lb.TCP, flags: "S", srcMAC: macPeer, dstMAC: macD0, seq: 9000, mss: c.clientMSS}.build(t))
		if v != xdpTX {
			t.Fatalf("SYN on the finished flow's tuple: verdict %d", v)
		}
		cookie2 := readTCP(t, out).tcp.Seq
		v, out = tb.xdp(t, cl("A", 9001, cookie2+1, ""))
		if s2 := readTCP(t, out); v != xdpTX || flagsOf(s2.tcp) != "S" || s2.tcp.Seq != 9000 || s2.dst != c.target {
			t.Fatalf("cookie ACK on the finished flow's tuple: verdict %d, want the SYN of a new flow to the target: %v", v, s2.frame)
		}
	}
}

// TestSYNProxyFloodMode: with SYNProxyFlood, SYNs go on to the target (all
// their options kept) until SNAT ports come under pressure; a SYN that
// finds no free port turns the proxy on, and the next SYN is answered with
// a cookie. The proxy stays on past its hold (1 s here) while its cookies
// go unanswered (a flood's), and turns off a hold after they stop.
func TestSYNProxyFloodMode(t *testing.T) {
	const hold = time.Second
	tb := newTestbed(t, dataplane.Config{PortMin: 40000, PortMax: 40000, SYNProxy: dataplane.SYNProxyFlood, Timeouts: dataplane.Timeouts{SYNProxyHold: hold}})
	tb.stage(t, "10.0.0.1:80/tcp", "redirect:10.2.0.1:8080")
	syn := func(client string) (uint32, tcpOut) {
		v, out := tb.xdp(t, spec{src: ap(client), dst: ap("10.0.0.1:80"), proto: lb.TCP, flags: "S", srcMAC: macPeer, dstMAC: macD0, seq: 77, mss: 1460}.build(t))
		if v != xdpTX && v != xdpDrop {
			t.Fatalf("SYN from %s: verdict %d", client, v)
		}
		if v == xdpDrop {
			return v, tcpOut{}
		}
		return v, readTCP(t, out)
	}
	if v, o := syn("198.51.100.1:1000"); v != xdpTX || flagsOf(o.tcp) != "S" || o.dst != ap("10.2.0.1:8080") {
		t.Fatalf("first SYN, no pressure: want it sent to the target: %v", o.frame)
	}
	before := tb.drops(t)
	t0 := time.Now()
	if v, _ := syn("198.51.100.2:1000"); v != xdpDrop {
		t.Fatalf("second SYN, the only port held: verdict %d, want XDP_DROP", v)
	}
	if n := tb.drops(t)["port_exhausted"] - before["port_exhausted"]; n != 1 {
		t.Fatalf("port_exhausted +%d, want 1", n)
	}
	if v, o := syn("198.51.100.3:1000"); v != xdpTX || flagsOf(o.tcp) != "SA" || o.src != ap("10.0.0.1:80") {
		t.Fatalf("third SYN, under pressure: want a SYN-ACK with a cookie: %v", o.frame)
	}
	if n := tb.drops(t)["synproxy_cookie_sent"] - before["synproxy_cookie_sent"]; n != 1 {
		t.Fatalf("synproxy_cookie_sent +%d, want 1", n)
	}
	// A flood: 100 SYNs now and 100 past half the hold, none answered. An
	// unanswered cookie extends the hold only once less than half of it is
	// left (synproxy_answered); the program's hold started a moment after
	// t0, so the second burst waits a tenth of the hold more than half.
	flood := func(from int) {
		for i := range 100 {
			if v, o := syn(fmt.Sprintf("100.64.0.%d:%d", 1+i, 2000+from)); v != xdpTX || flagsOf(o.tcp) != "SA" {
				t.Fatalf("flood SYN %d: want a SYN-ACK", i)
			}
		}
	}
	flood(0)
	time.Sleep(time.Until(t0.Add(hold/2 + hold/10)))
	flood(1)
	time.Sleep(time.Until(t0.Add(hold + hold/5)))
	if v, o := syn("198.51.100.4:1000"); v != xdpTX || flagsOf(o.tcp) != "SA" {
		t.Fatalf("past the hold, cookies unanswered: verdict %d, want the proxy still on (a SYN-ACK)", v)
	}
	time.Sleep(hold + hold/2)
	// Off: the SYN goes on to the target, on the port of the first flow (embryonic and silent: evicted).
	if v, o := syn("198.51.100.5:1000"); v != xdpTX || flagsOf(o.tcp) != "S" || o.dst != ap("10.2.0.1:8080") {
		t.Fatalf("a hold after the flood stopped: verdict %d, want the proxy off (the SYN sent on to the target): %v", v, o.frame)
	}
}

// TestSYNProxyOff: off (the default), an ACK of no flow is no_flow, never
// checked for a cookie.
func TestSYNProxyOff(t *testing.T) {
	off := newRedirectTestbed(t)
	before := off.drops(t)
	v, _ := off.xdp(t, spec{src: ap("198.51.100.9:1000"), dst: ap("10.0.0.1:80"), proto: lb.TCP, flags: "A", srcMAC: macPeer, dstMAC: macD0, seq: 5, ackn: 6}.build(t))
	after := off.drops(t)
	if v != xdpDrop || after["no_flow"]-before["no_flow"] != 1 || after["synproxy_cookie_bad"] != before["synproxy_cookie_bad"] {
		t.Fatalf("proxy off, an ACK of no flow: verdict %d, no_flow +%d, synproxy_cookie_bad +%d; want XDP_DROP counted as no_flow",
			v, after["no_flow"]-before["no_flow"], after["synproxy_cookie_bad"]-before["synproxy_cookie_bad"])
	}
}
