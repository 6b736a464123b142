package dataplane_test

import (
	"bytes"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/roamnet/roam/dataplane/lb"
)

// pinCPU keeps the calling thread (locked to it by the testbed) on one
// CPU for the test: the XDP program's next-hop cache is per CPU.
func pinCPU(t *testing.T) {
	t.Helper()
	var old, one unix.CPUSet
	if err := unix.SchedGetaffinity(0, &old); err != nil {
		t.Fatal(err)
	}
	cpu := 0
	for cpu < 1024 && !old.IsSet(cpu) {
		cpu++
	}
	one.Set(cpu)
	if err := unix.SchedSetaffinity(0, &one); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.SchedSetaffinity(0, &old) })
}

// TestNextHopCache: the XDP program reuses a next hop it looked up (a
// neighbour's new MAC address is seen within the cache's second, not at
// once), never for a packet longer than the route's MTU was checked for,
// and looks it up again once the second is over.
func TestNextHopCache(t *testing.T) {
	tb := newRedirectTestbed(t)
	pinCPU(t)
	gw, _ := net.ParseMAC(macGW)

	for _, c := range []struct {
		client, front string
		gwIP          string
		target        netip.Addr
	}{
		{"198.51.100.7:5000", "10.0.0.1:7000", "192.0.2.254", netip.MustParseAddr("10.2.0.1")},
		{"[2001:db8:c::7]:5000", "[2001:db8::1]:7000", "2001:db8:ff::fe", netip.MustParseAddr("2001:db8:2::1")},
	} {
		t.Logf("case: %s -> %s", c.client, c.front)
		pkt := func(n int) []byte {
			return spec{src: ap(c.client), dst: ap(c.front), proto: lb.UDP, payload: make([]byte, n), srcMAC: macPeer, dstMAC: macD0}.build(t)
		}
		first := time.Now()
		v, out := tb.xdp(t, pkt(100))
		if v != xdpTX || !bytes.Equal(out[0:6], gw) {
			t.Fatalf("first packet: verdict %d, dst MAC %s; want XDP_TX to %s", v, net.HardwareAddr(out[0:6]), gw)
		}
		setNeigh(t, tb.h, tb.d0, c.gwIP, macMoved)
		v, out = tb.xdp(t, pkt(100))
		if time.Since(first) < 500*time.Millisecond && (v != xdpTX || !bytes.Equal(out[0:6], gw)) {
			t.Fatalf("within the cache's second: verdict %d, dst MAC %s; want the cached %s", v, net.HardwareAddr(out[0:6]), gw)
		}
		// Longer than any packet looked up so far: looked up again, with the new MAC.
		v, out = tb.xdp(t, pkt(600))
		if v != xdpTX || !bytes.Equal(out[0:6], macMoved) {
			t.Fatalf("longer packet: verdict %d, dst MAC %s; want a fresh lookup to %s", v, net.HardwareAddr(out[0:6]), macMoved)
		}
		setNeigh(t, tb.h, tb.d0, c.gwIP, gw)
		time.Sleep(1100 * time.Millisecond)
		v, out = tb.xdp(t, pkt(100))
		if v != xdpTX || !bytes.Equal(out[0:6], gw) {
			t.Fatalf("after the cache's second: verdict %d, dst MAC %s; want %s again", v, net.HardwareAddr(out[0:6]), gw)
		}
	}

	// A route MTU below a packet's length is checked even right after a
	// shorter packet of the same route was cached: the long one is not
	// forwarded to the target.
	if err := tb.h.LinkSetMTU(tb.d0, 1000); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ client, front, target string }{
		{"198.51.100.8:5000", "10.0.0.1:7000", "10.2.0.1"},
		{"[2001:db8:c::8]:5000", "[2001:db8::1]:7000", "2001:db8:2::1"},
	} {
		short := spec{src: ap(c.client), dst: ap(c.front), proto: lb.UDP, payload: make([]byte, 100), srcMAC: macPeer, dstMAC: macD0}.build(t)
		long := spec{src: ap(c.client), dst: ap(c.front), proto: lb.UDP, payload: make([]byte, 1200), srcMAC: macPeer, dstMAC: macD0}.build(t)
		if v, _ := tb.xdp(t, short); v != xdpTX {
			t.Fatalf("%s short packet: verdict %d", c.client, v)
		}
		v, out := tb.xdp(t, long)
		if (v == xdpTX || v == xdpRedirect) && forwardedTo(out, netip.MustParseAddr(c.target)) {
			t.Fatalf("%s: a packet longer than the MTU was forwarded to the target (verdict %d)", c.client, v)
		}
	}
}

// macMoved: the gateway's MAC address after setNeigh moved it.
var macMoved = net.HardwareAddr{2, 0, 0, 0, 0, 0xee}

// forwardedTo: the frame's IP destination is target.
func forwardedTo(frame []byte, target netip.Addr) bool {
	if target.Is4() {
		return len(frame) >= 34 && bytes.Equal(frame[30:34], target.AsSlice())
	}
	return len(frame) >= 54 && bytes.Equal(frame[38:54], target.AsSlice())
}

func setNeigh(t *testing.T, h *netlink.Handle, link netlink.Link, ip string, mac net.HardwareAddr) {
	t.Helper()
	if err := h.NeighSet(permanentNeigh(link, ip, mac)); err != nil {
		t.Fatalf("set neighbour %s: %v", ip, err)
	}
}
