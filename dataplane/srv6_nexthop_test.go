package dataplane_test

import (
	"bytes"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/roamnet/roam/dataplane"
	"github.com/roamnet/roam/dataplane/lb"
)

// TestSRv6NextHopCacheTwoPaths: two SRv6 paths at the home, their packets
// interleaved, each keep their own next-hop cache entry. The SIDs of one
// plan differ only in their first 8 bytes (lb.NodeSID's all end in ::1):
// a slot hashing only the last 8 bytes put both in one slot, each packet
// evicting the other's entry (a fresh lookup, the new MAC at once).
func TestSRv6NextHopCacheTwoPaths(t *testing.T) {
	tb := newSRv6Testbed(t, sidHome)
	pinCPU(t)
	d0 := tb.d0.Attrs().Index
	tb.stage(t, "10.0.0.1:7000/udp", "srv6:fc00:0:2::1")
	tb.stage(t, "10.0.0.1:7001/udp", "srv6:fc00:0:3::1")
	gw, _ := net.ParseMAC(macGW)
	t.Cleanup(func() { setNeigh(t, tb.h, tb.d0, "2001:db8:ff::fe", gw) })
	pkt := func(front string) []byte {
		return spec{src: ap("198.51.100.7:5000"), dst: ap(front), proto: lb.UDP, payload: make([]byte, 100), srcMAC: macPeer, dstMAC: macD0}.build(t)
	}
	first := time.Now()
	for _, front := range []string{"10.0.0.1:7000", "10.0.0.1:7001"} {
		if v, out := tb.run(t, pkt(front), d0); v != xdpTX || !bytes.Equal(out[0:6], gw) {
			t.Fatalf("%s: verdict %d, dst MAC %s; want XDP_TX to %s", front, v, net.HardwareAddr(out[0:6]), gw)
		}
	}
	setNeigh(t, tb.h, tb.d0, "2001:db8:ff::fe", macMoved)
	v, out := tb.run(t, pkt("10.0.0.1:7000"), d0)
	if time.Since(first) < 500*time.Millisecond && (v != xdpTX || !bytes.Equal(out[0:6], gw)) {
		t.Fatalf("first path again within the cache's second: verdict %d, dst MAC %s; want the cached %s (its entry was evicted by the other path's)", v, net.HardwareAddr(out[0:6]), gw)
	}
}

// TestSRv6NextHopCacheFollows: the next hop of an SRv6 encapsulation (at
// the home) and of End forwarding (at a location whose copy is gone) is
// cached for at most the cache's second: a neighbour's new MAC address is
// used within it, not at once, and after it.
func TestSRv6NextHopCacheFollows(t *testing.T) {
	gw, _ := net.ParseMAC(macGW)
	const gwIP = "2001:db8:ff::fe"
	for _, c := range []struct {
		desc  string
		sid   netip.Addr
		setup func(t *testing.T, tb *testbed)
		in    func(t *testing.T) []byte
	}{
		{"encap at the home", sidHome,
			func(t *testing.T, tb *testbed) { tb.stage(t, "10.0.0.1:7000/udp", "srv6:fc00:0:2::1") },
			func(t *testing.T) []byte {
				return spec{src: ap("198.51.100.7:5000"), dst: ap("10.0.0.1:7000"), proto: lb.UDP, payload: make([]byte, 100), srcMAC: macPeer, dstMAC: macD0}.build(t)
			}},
		{"End forwarding at a location", sidOld,
			func(t *testing.T, tb *testbed) {
				if err := tb.d.SetSRv6Copy(mustFrontend(t, "10.0.0.1:80/tcp"), dataplane.SRv6Gone); err != nil {
					t.Fatal(err)
				}
			},
			func(t *testing.T) []byte {
				inner := ipOf(spec{src: ap("198.51.100.7:33000"), dst: ap("10.0.0.1:80"), proto: lb.TCP, flags: "A", payload: []byte("data"), seq: 1, ackn: 1, srcMAC: macPeer, dstMAC: macD0}.build(t))
				return srv6Frame(macPeer, macD0, sidHome, []netip.Addr{sidOld, sidNew}, 1, 64, 0x12345, inner)
			}},
	} {
		t.Run(c.desc, func(t *testing.T) {
			tb := newSRv6Testbed(t, c.sid)
			pinCPU(t)
			d0 := tb.d0.Attrs().Index
			c.setup(t, tb)
			t.Cleanup(func() { setNeigh(t, tb.h, tb.d0, gwIP, gw) })
			first := time.Now()
			if v, out := tb.run(t, c.in(t), d0); v != xdpTX || !bytes.Equal(out[0:6], gw) {
				t.Fatalf("first packet: verdict %d, dst MAC %s; want XDP_TX to %s", v, net.HardwareAddr(out[0:6]), gw)
			}
			setNeigh(t, tb.h, tb.d0, gwIP, macMoved)
			v, out := tb.run(t, c.in(t), d0)
			if time.Since(first) < 500*time.Millisecond && (v != xdpTX || !bytes.Equal(out[0:6], gw)) {
				t.Fatalf("within the cache's second: verdict %d, dst MAC %s; want the cached %s", v, net.HardwareAddr(out[0:6]), gw)
			}
			time.Sleep(1100 * time.Millisecond)
			v, out = tb.run(t, c.in(t), d0)
			if v != xdpTX || !bytes.Equal(out[0:6], macMoved) {
				t.Fatalf("after the cache's second: verdict %d, dst MAC %s; want the new %s", v, net.HardwareAddr(out[0:6]), macMoved)
			}
		})
	}
}
