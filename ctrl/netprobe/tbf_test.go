package netprobe

import (
	"context"
	"fmt"
	"math"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/roamnet/roam/test/netns"
)

// shapeTBF puts a tbf on dev in ns as the testbed's Shape does: burst
// max(rate/100, 16 frames), about 50 ms of queue.
func shapeTBF(ns, dev string, bps uint64) error {
	return netns.Handle(ns, func(h *netlink.Handle) error {
		l, err := h.LinkByName(dev)
		if err != nil {
			return err
		}
		rate := bps / 8
		burst := uint32(max(rate/100, 16*1514))
		q := &netlink.Tbf{
			QdiscAttrs: netlink.QdiscAttrs{LinkIndex: l.Attrs().Index, Handle: netlink.MakeHandle(1, 0), Parent: netlink.HANDLE_ROOT},
			Rate:       rate, Limit: uint32(rate/20) + burst, Buffer: netlink.Xmittime(rate, burst),
		}
		return h.QdiscReplace(q)
	})
}

// TestBulkOnTBF measures a tbf-shaped veth between two namespaces at
// several rates: the estimate must be within 20% of the tbf rate.
func TestBulkOnTBF(t *testing.T) {
	netns.SkipUnlessRoot(t)
	sfx := netns.RandSuffix(3)
	a, b := "zt-np-a-"+sfx, "zt-np-b-"+sfx
	for _, n := range []string{a, b} {
		if err := netns.Create(n); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { netns.Delete(n) })
	}
	if err := netns.Veth(
		netns.End{NS: a, Name: "zta", Addrs: []netip.Prefix{netip.MustParsePrefix("10.99.0.1/24")}},
		netns.End{NS: b, Name: "ztb", Addrs: []netip.Prefix{netip.MustParsePrefix("10.99.0.2/24")}}); err != nil {
		t.Fatal(err)
	}
	ln, err := netns.Listen(b, "tcp", "10.99.0.2:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	pc, err := netns.ListenPacket(b, "udp", fmt.Sprintf("10.99.0.2:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	s, err := NewServer(ServerConfig{TCP: ln, UDP: pc})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	dial := netns.Dialer(a)
	for _, rate := range []uint64{2e6, 10e6, 50e6} {
		if err := shapeTBF(b, "ztb", rate); err != nil {
			t.Fatalf("shape: %v", err)
		}
		worst := 0.0
		for range 3 {
			bps, err := Bulk(context.Background(), dial, ln.Addr().String(), 150*time.Millisecond, 2<<20)
			if err != nil {
				t.Fatal(err)
			}
			e := (bps - float64(rate)) / float64(rate)
			t.Logf("tbf %4.0f Mbit/s: estimate %6.2f Mbit/s (%+.1f%%)", float64(rate)/1e6, bps/1e6, 100*e)
			worst = max(worst, math.Abs(e))
			time.Sleep(100 * time.Millisecond)
		}
		if worst > 0.2 {
			t.Errorf("tbf %.0f Mbit/s: worst error %.1f%%, want within 20%%", float64(rate)/1e6, 100*worst)
		}
	}
}
