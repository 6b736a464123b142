package dataplane_test

import (
	"bytes"
	"net/netip"
	"testing"

	"github.com/roamnet/roam/dataplane/lb"
)

// TestFlowChecksums: a pinned flow's packets get the checksum changes
// computed once when it was pinned, and a flow pinned by an older build
// (no changes kept in its entry) still gets correct checksums, computed
// per packet.
func TestFlowChecksums(t *testing.T) {
	tb := newRedirectTestbed(t)
	type flow struct {
		client, frontend, target netip.AddrPort
		proto                    lb.Proto
		zeroUDP                  bool
	}
	flows := []flow{
		{ap("198.51.100.7:33000"), ap("10.0.0.1:80"), ap("10.2.0.1:8080"), lb.TCP, false},
		{ap("198.51.100.7:5000"), ap("10.0.0.1:7000"), ap("10.2.0.1:7001"), lb.UDP, false},
		{ap("198.51.100.9:5001"), ap("10.0.0.1:7000"), ap("10.2.0.1:7001"), lb.UDP, true},
		{ap("[2001:db8:c::7]:33000"), ap("[2001:db8::1]:80"), ap("[2001:db8:2::1]:8080"), lb.TCP, false},
		{ap("[2001:db8:c::7]:5000"), ap("[2001:db8::1]:7000"), ap("[2001:db8:2::1]:7001"), lb.UDP, false},
	}
	snatSrc := map[netip.AddrPort]netip.AddrPort{}
	send := func(f flow, flags string, payload []byte) {
		t.Helper()
		in := spec{src: f.client, dst: f.frontend, proto: f.proto, flags: flags, payload: payload, srcMAC: macPeer, dstMAC: macD0, zeroUDP: f.zeroUDP, ipID: 3, seq: 77, ackn: 99}.build(t)
		v, out := tb.xdp(t, in)
		if v != xdpTX {
			t.Fatalf("%s %s: verdict %d", f.client, flags, v)
		}
		p := verifyChecksums(t, out)
		sport, _ := l4Ports(p)
		snat := snatOf(f.client.Addr())
		snatSrc[f.client] = netip.AddrPortFrom(snat, sport)
		want := spec{src: snatSrc[f.client], dst: f.target, proto: f.proto, flags: flags, payload: payload, hopLimit: fwdTTL, srcMAC: macD0, dstMAC: macGW, zeroUDP: f.zeroUDP, ipID: 3, seq: 77, ackn: 99}.build(t)
		if !bytes.Equal(out, want) {
			t.Fatalf("%s %s: output frame\n got %x\nwant %x", f.client, flags, out, want)
		}
	}
	for _, f := range flows {
		send(f, "S", []byte("open"))
		send(f, "A", []byte("pinned, changes kept in the entry"))
	}
	if err := tb.d.ForgetFlowChecksums(); err != nil {
		t.Fatal(err)
	}
	for _, f := range flows {
		before := snatSrc[f.client]
		send(f, "A", []byte("pinned by an older build"))
		if snatSrc[f.client] != before {
			t.Fatalf("%s: SNAT %s, was %s", f.client, snatSrc[f.client], before)
		}
	}
}
