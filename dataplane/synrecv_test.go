package dataplane_test

import (
	"net"
	"net/netip"
	"testing"

	"github.com/gopacket/gopacket/layers"

	"github.com/roamnet/roam/dataplane/lb"
)

// TestStaleSynRecvReset: before a redirected flow's target has sent its
// SYN-ACK, a bare ACK from the target comes from a request socket of an
// older flow on the SNAT port (a SYN flood's, evicted): the XDP program
// answers the target with the RST that clears it (from the SNAT address
// and port, sequence number the ACK's acknowledgment number, no ACK
// flag), instead of passing the ACK to the client, and counts
// syn_recv_stale. After the SYN-ACK, the target's ACKs go to the client.
func TestStaleSynRecvReset(t *testing.T) {
	tb := newRedirectTestbed(t)
	for _, c := range []struct {
		client, frontend, target netip.AddrPort
	}{
		{ap("198.51.100.7:33000"), ap("10.0.0.1:80"), ap("10.2.0.1:8080")},
		{ap("[2001:db8:c::7]:33000"), ap("[2001:db8::1]:80"), ap("[2001:db8:2::1]:8080")},
	} {
		t.Logf("case: %s", c.client)
		snatAP := tb.openFlow(t, "SYN", spec{src: c.client, dst: c.frontend, proto: lb.TCP, flags: "S", srcMAC: macPeer, dstMAC: macD0, seq: 1000}.build(t))
		before := tb.drops(t)["syn_recv_stale"]
		stale := spec{src: c.target, dst: snatAP, proto: lb.TCP, flags: "A", payload: []byte("old"), srcMAC: macGW, dstMAC: macD0, seq: 7000, ackn: 4242}.build(t)
		v, out := tb.xdp(t, stale)
		if v != xdpTX {
			t.Fatalf("stale ACK: verdict %d, want XDP_TX (an RST to the target)", v)
		}
		p := verifyChecksums(t, out)
		eth := p.Layer(layers.LayerTypeEthernet).(*layers.Ethernet)
		tcp, _ := p.Layer(layers.LayerTypeTCP).(*layers.TCP)
		var src, dst net.IP
		if ip4, ok := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4); ok {
			src, dst = ip4.SrcIP, ip4.DstIP
		} else if ip6, ok := p.Layer(layers.LayerTypeIPv6).(*layers.IPv6); ok {
			src, dst = ip6.SrcIP, ip6.DstIP
		}
		if tcp == nil || !tcp.RST || tcp.ACK || tcp.SYN || tcp.Seq != 4242 || len(tcp.Payload) != 0 ||
			uint16(tcp.SrcPort) != snatAP.Port() || uint16(tcp.DstPort) != c.target.Port() ||
			!src.Equal(snatAP.Addr().AsSlice()) || !dst.Equal(c.target.Addr().AsSlice()) ||
			eth.DstMAC.String() != macGW || eth.SrcMAC.String() != macD0 {
			t.Fatalf("answer to a stale ACK: %v", p)
		}
		if n := tb.drops(t)["syn_recv_stale"] - before; n != 1 {
			t.Fatalf("syn_recv_stale +%d, want 1", n)
		}
		// The flow's own SYN-ACK, then an ACK: to the client.
		for _, flags := range []string{"SA", "A"} {
			v, out = tb.xdp(t, spec{src: c.target, dst: snatAP, proto: lb.TCP, flags: flags, srcMAC: macGW, dstMAC: macD0, seq: 5000, ackn: 1001}.build(t))
			if v != xdpTX {
				t.Fatalf("%s: verdict %d", flags, v)
			}
			if _, dport := l4Ports(verifyChecksums(t, out)); dport != c.client.Port() {
				t.Fatalf("%s: sent to port %d, want the client's %d", flags, dport, c.client.Port())
			}
		}
		if n := tb.drops(t)["syn_recv_stale"] - before; n != 1 {
			t.Fatalf("after the SYN-ACK: syn_recv_stale +%d, want still 1", n)
		}
	}
}
