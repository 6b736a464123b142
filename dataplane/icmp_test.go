package dataplane_test

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/roamnet/roam/dataplane/lb"
)

// icmpErr builds an ICMP (IPv4) or ICMPv6 error frame from src to dst of
// type/code, with rest (the MTU of a too-big) and quoted as its data.
func icmpErr(t *testing.T, src, dst netip.Addr, srcMAC, dstMAC string, typ, code uint8, rest uint32, quoted []byte) []byte {
	t.Helper()
	smac, _ := net.ParseMAC(srcMAC)
	dmac, _ := net.ParseMAC(dstMAC)
	eth := &layers.Ethernet{SrcMAC: smac, DstMAC: dmac}
	var ls []gopacket.SerializableLayer
	if src.Is4() {
		eth.EthernetType = layers.EthernetTypeIPv4
		ip := &layers.IPv4{Version: 4, TTL: 64, SrcIP: src.AsSlice(), DstIP: dst.AsSlice(), Protocol: layers.IPProtocolICMPv4}
		ic := &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(typ, code), Id: uint16(rest >> 16), Seq: uint16(rest)}
		ls = []gopacket.SerializableLayer{eth, ip, ic, gopacket.Payload(quoted)}
	} else {
		eth.EthernetType = layers.EthernetTypeIPv6
		ip := &layers.IPv6{Version: 6, HopLimit: 64, SrcIP: src.AsSlice(), DstIP: dst.AsSlice(), NextHeader: layers.IPProtocolICMPv6}
		ic := &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(typ, code)}
		ic.SetNetworkLayerForChecksum(ip)
		r := binary.BigEndian.AppendUint32(nil, rest)
		ls = []gopacket.SerializableLayer{eth, ip, ic, gopacket.Payload(append(r, quoted...))}
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		t.Fatalf("serialize: %v", err)
	}
	return buf.Bytes()
}

// quote is what an error quotes of a frame: its IP packet, cut to n bytes (0: whole).
func quote(frame []byte, n int) []byte {
	q := frame[14:]
	if n > 0 && n < len(q) {
		q = q[:n]
	}
	return q
}

// TestICMPErrorsTranslated: an ICMP error about a packet of a translated
// flow, sent by a router between the node and a target or a client, is
// translated back through the conntrack and sent on to the flow's other
// end, as if about the packet that end sent: outer addresses, the quoted
// addresses and ports, the quoted IPv4 header's checksum, the quoted UDP
// checksum and the ICMP checksum all as a fresh error would carry them.
// Errors about no flow of ours, and ICMP that is not an error, pass untouched.
func TestICMPErrorsTranslated(t *testing.T) {
	tb := newRedirectTestbed(t)
	router4, router6 := netip.MustParseAddr("10.9.9.9"), netip.MustParseAddr("2001:db8:9::9")

	cases := []struct {
		desc             string
		client, frontend netip.AddrPort
		target           netip.AddrPort
		proto            lb.Proto
		toTarget         bool // the error is about what the node sent the client (else: what it sent the target)
		typ, code        uint8
		rest             uint32
	}{
		{"ipv4 tcp, fragmentation needed on the way to the target: to the client", ap("198.51.100.7:33000"), ap("10.0.0.1:80"), ap("10.2.0.1:8080"), lb.TCP, false, 3, 4, 1400},
		{"ipv4 udp, port unreachable on the way to the target: to the client", ap("198.51.100.7:5000"), ap("10.0.0.1:7000"), ap("10.2.0.1:7001"), lb.UDP, false, 3, 3, 0},
		{"ipv4 tcp, fragmentation needed on the way to the client: to the target", ap("198.51.100.8:33001"), ap("10.0.0.1:80"), ap("10.2.0.1:8080"), lb.TCP, true, 3, 4, 1400},
		{"ipv4 udp, time exceeded on the way to the client: to the target", ap("198.51.100.8:5001"), ap("10.0.0.1:7000"), ap("10.2.0.1:7001"), lb.UDP, true, 11, 0, 0},
		{"ipv6 tcp, packet too big on the way to the target: to the client", ap("[2001:db8:c::7]:33000"), ap("[2001:db8::1]:80"), ap("[2001:db8:2::1]:8080"), lb.TCP, false, 2, 0, 1280},
		{"ipv6 udp, packet too big on the way to the client: to the target", ap("[2001:db8:c::8]:5000"), ap("[2001:db8::1]:7000"), ap("[2001:db8:2::1]:7001"), lb.UDP, true, 2, 0, 1280},
		{"ipv6 udp, port unreachable on the way to the target: to the client", ap("[2001:db8:c::9]:5000"), ap("[2001:db8::1]:7000"), ap("[2001:db8:2::1]:7001"), lb.UDP, false, 1, 4, 0},
	}
	for _, c := range cases {
		t.Logf("case: %s", c.desc)
		func() {
			router, snat := router4, snat4
			if c.client.Addr().Is6() {
				router, snat = router6, snat6
			}
			payload := []byte("some payload of the flow")
			in := spec{src: c.client, dst: c.frontend, proto: c.proto, flags: "S", payload: payload, srcMAC: macPeer, dstMAC: macD0, seq: 1000}.build(t)
			snatAP := tb.openFlow(t, "open the flow", in)

			// The errors quote a whole UDP packet (its checksum is then
			// checked too) and a TCP header's first 8 bytes.
			n := 0
			if c.proto == lb.TCP {
				n = len(quote(in, 0)) - len(payload) - 12
			}
			var err, want []byte
			if c.toTarget {
				// The node sent frontend -> client; the target sent target -> SNAT.
				sent := spec{src: c.frontend, dst: c.client, proto: c.proto, flags: "SA", payload: payload, seq: 5000, ackn: 1001}
				sent.srcMAC, sent.dstMAC = macD0, macClient
				orig := sent
				orig.src, orig.dst = c.target, snatAP
				err = icmpErr(t, router, c.frontend.Addr(), macPeer, macD0, c.typ, c.code, c.rest, quote(sent.build(t), n))
				want = hop(icmpErr(t, snat, c.target.Addr(), macD0, macGW, c.typ, c.code, c.rest, quote(orig.build(t), n)))
			} else {
				// The node sent SNAT -> target; the client sent client -> frontend.
				sent := spec{src: snatAP, dst: c.target, proto: c.proto, flags: "S", payload: payload, seq: 1000, hopLimit: fwdTTL, srcMAC: macD0, dstMAC: macGW}
				orig := sent
				orig.src, orig.dst = c.client, c.frontend
				err = icmpErr(t, router, snat, macPeer, macD0, c.typ, c.code, c.rest, quote(sent.build(t), n))
				want = hop(icmpErr(t, c.frontend.Addr(), c.client.Addr(), macD0, macClient, c.typ, c.code, c.rest, quote(orig.build(t), n)))
			}
			v, out := tb.xdp(t, err)
			if v != xdpTX {
				t.Fatalf("error: verdict %d, want XDP_TX", v)
			}
			verifyChecksums(t, out)
			if !bytes.Equal(out, want) {
				t.Fatalf("translated error\n got %x\nwant %x", out, want)
			}
		}()
	}

	// Not ours: passed untouched.
	q := spec{src: ap("192.0.2.1:22"), dst: ap("198.51.100.7:40000"), proto: lb.TCP, flags: "A", srcMAC: macD0, dstMAC: macClient}.build(t)
	other := spec{src: ap("192.0.2.100:40001"), dst: ap("10.2.0.1:8080"), proto: lb.TCP, flags: "A", srcMAC: macD0, dstMAC: macGW}.build(t)
	for _, c := range []struct {
		desc string
		in   []byte
	}{
		{"an error about the host's own flow", icmpErr(t, router4, netip.MustParseAddr("192.0.2.1"), macPeer, macD0, 3, 4, 1400, quote(q, 28))},
		{"an error about a SNAT port no flow holds", icmpErr(t, router4, snat4, macPeer, macD0, 3, 4, 1400, quote(other, 28))},
		{"an error to an address the quoted packet did not come from", icmpErr(t, router4, netip.MustParseAddr("192.0.2.1"), macPeer, macD0, 3, 4, 1400, quote(other, 28))},
		{"an echo request", icmpErr(t, router4, snat4, macPeer, macD0, 8, 0, 0x10001, []byte("ping"))},
		{"an ICMPv6 echo request", icmpErr(t, router6, snat6, macPeer, macD0, 128, 0, 0x10001, []byte("ping"))},
		{"a truncated error", icmpErr(t, router4, snat4, macPeer, macD0, 3, 4, 1400, quote(other, 22))},
	} {
		t.Logf("case: %s", c.desc)
		v, out := tb.xdp(t, c.in)
		if v != xdpPass || !bytes.Equal(out, c.in) {
			t.Fatalf("%s: verdict %d, rewritten %v; want passed untouched", c.desc, v, !bytes.Equal(out, c.in))
		}
	}
}

// TestTooBig: a packet of a translated flow too big for its egress
// interface is answered, in place of the packet, with an ICMP
// "fragmentation needed" / ICMPv6 "packet too big" carrying the egress MTU,
// from the address the packet was sent to, back to the hop it came from,
// quoting its start; counted as too_big. One that fits goes out.
func TestTooBig(t *testing.T) {
	tb := newRedirectTestbed(t)
	big := bytes.Repeat([]byte("x"), 1500)
	for _, c := range []struct {
		desc             string
		client, frontend netip.AddrPort
		target           netip.AddrPort
		proto            lb.Proto
		reply            bool // the target's packet is too big (else the client's)
		quoted           int
	}{
		{"ipv4 tcp from the client", ap("198.51.100.7:33000"), ap("10.0.0.1:80"), ap("10.2.0.1:8080"), lb.TCP, false, 84},
		{"ipv4 udp from the target", ap("198.51.100.7:5000"), ap("10.0.0.1:7000"), ap("10.2.0.1:7001"), lb.UDP, true, 84},
		{"ipv6 tcp from the client", ap("[2001:db8:c::7]:33000"), ap("[2001:db8::1]:80"), ap("[2001:db8:2::1]:8080"), lb.TCP, false, 256},
		{"ipv6 tcp from the target", ap("[2001:db8:c::8]:33000"), ap("[2001:db8::1]:80"), ap("[2001:db8:2::1]:8080"), lb.TCP, true, 256},
	} {
		t.Logf("case: %s", c.desc)
		func() {
			in := spec{src: c.client, dst: c.frontend, proto: c.proto, flags: "S", payload: []byte("small"), srcMAC: macPeer, dstMAC: macD0, seq: 1000}.build(t)
			snatAP := tb.openFlow(t, "open the flow", in)
			if c.proto == lb.TCP {
				// The target's SYN-ACK first, as on the wire (before it, a bare ACK from the target is a stale request socket's: synrecv.h).
				sa := spec{src: c.target, dst: snatAP, proto: c.proto, flags: "SA", srcMAC: macGW, dstMAC: macD0, seq: 5000, ackn: 1001}.build(t)
				if v, _ := tb.xdp(t, sa); v != xdpTX {
					t.Fatalf("SYN-ACK: verdict %d", v)
				}
			}
			sent := spec{src: c.client, dst: c.frontend, proto: c.proto, flags: "A", payload: big, srcMAC: macClient, dstMAC: macD0, seq: 1001, ackn: 5001}
			from := macClient
			if c.reply {
				sent = spec{src: c.target, dst: snatAP, proto: c.proto, flags: "A", payload: big, srcMAC: macGW, dstMAC: macD0, seq: 5001, ackn: 1001}
				from = macGW
			}
			in = sent.build(t)
			before := tb.drops(t)
			v, out := tb.xdp(t, in)
			if v != xdpTX {
				t.Fatalf("too big: verdict %d, want XDP_TX", v)
			}
			verifyChecksums(t, out)
			typ, code, mtu := uint8(3), uint8(4), uint32(1500)
			if c.client.Addr().Is6() {
				typ, code = 2, 0
			}
			want := icmpErr(t, sent.dst.Addr(), sent.src.Addr(), macD0, from, typ, code, mtu, quote(in, c.quoted))
			if !bytes.Equal(out, want) {
				t.Fatalf("too big answer\n got %x\nwant %x", out, want)
			}
			if n := tb.dropsSince(t, before)["too_big"]; n != 1 {
				t.Fatalf("too_big counted %d, want 1", n)
			}
			// One that fits still goes out.
			sent.payload = big[:1400]
			if v, _ := tb.xdp(t, sent.build(t)); v != xdpTX {
				t.Fatalf("a packet that fits: verdict %d", v)
			}
		}()
	}
}

// TestMSSClamp: a SYN (the client's, or the target's SYN-ACK) leaving
// through an interface of MTU 1400 has its MSS lowered to what that
// interface carries (1360 for IPv4, 1340 for IPv6), checksums fixed; a
// smaller MSS, and a packet without SYN, are left alone.
func TestMSSClamp(t *testing.T) {
	tb := newRedirectTestbed(t)
	if err := tb.h.LinkSetMTU(tb.d0, 1400); err != nil {
		t.Fatal(err)
	}
	mssOf := func(frame []byte) uint16 {
		t.Helper()
		p := verifyChecksums(t, frame)
		tcp := p.Layer(layers.LayerTypeTCP).(*layers.TCP)
		for _, o := range tcp.Options {
			if o.OptionType == layers.TCPOptionKindMSS {
				return binary.BigEndian.Uint16(o.OptionData)
			}
		}
		return 0
	}
	for _, c := range []struct {
		client, frontend, target netip.AddrPort
		max                      uint16
	}{
		{ap("198.51.100.7:33000"), ap("10.0.0.1:80"), ap("10.2.0.1:8080"), 1360},
		{ap("[2001:db8:c::7]:33000"), ap("[2001:db8::1]:80"), ap("[2001:db8:2::1]:8080"), 1340},
	} {
		for _, mss := range []uint16{1460, 1200} {
			client := netip.AddrPortFrom(c.client.Addr(), c.client.Port()+mss)
			want := min(mss, c.max)
			v, out := tb.xdp(t, spec{src: client, dst: c.frontend, proto: lb.TCP, flags: "S", mss: mss, srcMAC: macPeer, dstMAC: macD0}.build(t))
			if v != xdpTX {
				t.Fatalf("SYN: verdict %d", v)
			}
			if got := mssOf(out); got != want {
				t.Fatalf("%s SYN with MSS %d: left with %d, want %d", client, mss, got, want)
			}
			sport, _ := l4Ports(verifyChecksums(t, out))
			snat := snatOf(client.Addr())
			v, out = tb.xdp(t, spec{src: c.target, dst: netip.AddrPortFrom(snat, sport), proto: lb.TCP, flags: "SA", mss: mss, ackn: 1, srcMAC: macGW, dstMAC: macD0}.build(t))
			if v != xdpTX {
				t.Fatalf("SYN-ACK: verdict %d", v)
			}
			if got := mssOf(out); got != want {
				t.Fatalf("%s SYN-ACK with MSS %d: left with %d, want %d", client, mss, got, want)
			}
		}
	}
	// Without SYN, an MSS-looking option is not touched.
	in := spec{src: ap("198.51.100.7:34460"), dst: ap("10.0.0.1:80"), proto: lb.TCP, flags: "A", mss: 1460, ackn: 1, srcMAC: macPeer, dstMAC: macD0}.build(t)
	if v, out := tb.xdp(t, in); v != xdpTX || mssOf(out) != 1460 {
		t.Fatalf("ACK: verdict %d, MSS %d; want XDP_TX with 1460", v, mssOf(out))
	}
}

// TestTooBigTC: the tc program answers a packet too big for its egress as
// XDP does, with an ICMP "fragmentation needed" / ICMPv6 "packet too big"
// from the address it was sent to, quoting its start: from an ingress hook
// (a pod's veth, or XDP's pass) back out of the interface it came in by,
// from a local sender (egress) into the host's own stack. Counted as
// too_big; before, tc dropped it without a word.
func TestTooBigTC(t *testing.T) {
	tb := newRedirectTestbed(t)
	d0 := tb.d0.Attrs().Index
	big := bytes.Repeat([]byte("x"), 1500)
	for _, c := range []struct {
		desc             string
		client, frontend netip.AddrPort
		ingress          int
		quoted           int
	}{
		{"ipv4 udp at ingress", ap("198.51.100.7:5000"), ap("10.0.0.1:7000"), d0, 84},
		{"ipv6 udp at ingress", ap("[2001:db8:c::7]:5000"), ap("[2001:db8::1]:7000"), d0, 256},
		{"ipv4 udp from this host", ap("198.51.100.7:5001"), ap("10.0.0.1:7000"), 0, 84},
		{"ipv6 udp from this host", ap("[2001:db8:c::7]:5001"), ap("[2001:db8::1]:7000"), 0, 256},
	} {
		t.Logf("case: %s", c.desc)
		in := spec{src: c.client, dst: c.frontend, proto: lb.UDP, payload: big, srcMAC: macPeer, dstMAC: macD0}.build(t)
		before := tb.drops(t)
		var v uint32
		var out []byte
		var err error
		if c.ingress != 0 {
			v, out, err = tb.d.RunTCIngress(in, c.ingress)
		} else {
			v, out, err = tb.d.RunTC(in)
		}
		if err != nil {
			t.Fatal(err)
		}
		if v != tcRedirect {
			t.Fatalf("verdict %d, want TC_ACT_REDIRECT (the answer)", v)
		}
		verifyChecksums(t, out)
		typ, code := uint8(3), uint8(4)
		if c.client.Addr().Is6() {
			typ, code = 2, 0
		}
		want := icmpErr(t, c.frontend.Addr(), c.client.Addr(), macD0, macPeer, typ, code, 1500, quote(in, c.quoted))
		if !bytes.Equal(out, want) {
			t.Fatalf("too big answer\n got %x\nwant %x", out, want)
		}
		if n := tb.dropsSince(t, before)["too_big"]; n != 1 {
			t.Fatalf("too_big counted %d, want 1", n)
		}
	}
}
