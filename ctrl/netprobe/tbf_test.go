package netprobe

import (
	"context"
	"fmt"
	"math"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
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

// tbfPair is two namespaces joined by a veth, a probe server (cfg) in
// the second, and a dialer from the first; the second end's egress is
// what tests shape.
func tbfPair(t *testing.T, cfg ServerConfig) (s *Server, dial func(ctx context.Context, network, addr string) (net.Conn, error), ns, dev string) {
	t.Helper()
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
	cfg.TCP, cfg.UDP = ln, pc
	if s, err = NewServer(cfg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, netns.Dialer(a), b, "ztb"
}

// TestBulkOnTBF measures a tbf-shaped veth between two namespaces at
// several rates: the estimate must be within 20% of the tbf rate.
func TestBulkOnTBF(t *testing.T) {
	s, dial, ns, dev := tbfPair(t, ServerConfig{})
	for _, rate := range []uint64{2e6, 10e6, 50e6} {
		if err := shapeTBF(ns, dev, rate); err != nil {
			t.Fatalf("shape: %v", err)
		}
		worst := 0.0
		for range 3 {
			bps, err := Bulk(context.Background(), dial, s.Addr().String(), 150*time.Millisecond, 2<<20)
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

// bulkTogether runs two transfers from the same server at the same
// moment, as two controllers probing the same peer do, and returns both
// estimates.
func bulkTogether(t *testing.T, dial func(ctx context.Context, network, addr string) (net.Conn, error), addr string) [2]float64 {
	t.Helper()
	var (
		out  [2]float64
		errs [2]error
		wg   sync.WaitGroup
		go1  = make(chan struct{})
	)
	for i := range 2 {
		wg.Go(func() {
			<-go1
			out[i], errs[i] = Bulk(context.Background(), dial, addr, 150*time.Millisecond, 2<<20)
		})
	}
	close(go1)
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// TestBulkTwoProbersOnTBF: two probers ask the same server for a transfer
// at the same moment over a tbf-shaped link. Sent together, they would
// share the rate and each read a part of it (the server below that sends
// two at once shows it: one of them reads less than 3/4 of the rate); the
// server sends one at a time, the other waiting for it, so both read the
// rate within 20% and no transfer overlapped another.
func TestBulkTwoProbersOnTBF(t *testing.T) {
	const rate = 10e6
	s, dial, ns, dev := tbfPair(t, ServerConfig{})
	if err := shapeTBF(ns, dev, rate); err != nil {
		t.Fatalf("shape: %v", err)
	}
	worst := 0.0
	for range 3 {
		for _, bps := range bulkTogether(t, dial, s.Addr().String()) {
			e := (bps - rate) / rate
			t.Logf("one at a time: estimate %6.2f Mbit/s (%+.1f%%)", bps/1e6, 100*e)
			worst = max(worst, math.Abs(e))
		}
		time.Sleep(100 * time.Millisecond)
	}
	if worst > 0.2 {
		t.Errorf("two probers at once, one transfer at a time: worst error %.1f%%, want within 20%%", 100*worst)
	}
	var m dto.Metric
	if err := s.overlaps.Write(&m); err != nil {
		t.Fatal(err)
	}
	if n := m.GetCounter().GetValue(); n != 0 {
		t.Errorf("%.0f transfers overlapped another with MaxBulk 1", n)
	}

	// The fault guarded against: a server that sends both at once.
	s2, dial2, ns2, dev2 := tbfPair(t, ServerConfig{MaxBulk: 2})
	if err := shapeTBF(ns2, dev2, rate); err != nil {
		t.Fatalf("shape: %v", err)
	}
	low := 0
	for range 3 {
		est := bulkTogether(t, dial2, s2.Addr().String())
		t.Logf("two at once: estimates %.2f and %.2f Mbit/s", est[0]/1e6, est[1]/1e6)
		if min(est[0], est[1]) < 0.75*rate {
			low++
		}
	}
	if low == 0 {
		t.Errorf("two transfers sent at once never read less than 3/4 of the rate: the test does not show the fault it guards against")
	}
}
