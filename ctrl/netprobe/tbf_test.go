package netprobe

import (
	"context"
	"errors"
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
	return s, probeDialer(a), b, "ztb"
}

// probeDialer is a bulk probe's dial from namespace ns: it applies
// DialControl, as the prober's default dial does.
func probeDialer(ns string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		return netns.In(ns, func() (net.Conn, error) {
			return (&net.Dialer{Control: DialControl(ctx)}).DialContext(ctx, network, addr)
		})
	}
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
			bps, err := bulkRetry(t, func() (float64, error) {
				return Bulk(context.Background(), dial, s.Addr().String(), 150*time.Millisecond, 2<<20)
			})
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

// bulkRetry runs one transfer, again (up to 5 tries) when it is refused
// as sender-limited, as the prober does: a busy machine may stall the
// probe server for 200 ms and more, and that transfer's rate is not the
// path's (TestEstimateRefusesSenderStall).
func bulkRetry(t *testing.T, f func() (float64, error)) (float64, error) {
	t.Helper()
	for try := 1; ; try++ {
		bps, err := f()
		if !errors.Is(err, ErrSenderLimited) || try == 5 {
			return bps, err
		}
		t.Logf("try %d refused: %v", try, err)
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
		go1  chan struct{}
	)
	for try := 1; ; try++ {
		go1 = make(chan struct{})
		for i := range 2 {
			wg.Go(func() {
				<-go1
				out[i], errs[i] = Bulk(context.Background(), dial, addr, 150*time.Millisecond, 2<<20)
			})
		}
		close(go1)
		wg.Wait()
		// Both again when one was refused as sender-limited (see bulkRetry).
		if try == 5 || !errors.Is(errs[0], ErrSenderLimited) && !errors.Is(errs[1], ErrSenderLimited) {
			break
		}
		t.Logf("try %d refused: %v", try, errors.Join(errs[:]...))
	}
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

// tbfDrops is how many packets the tbf on dev in ns has dropped so far.
func tbfDrops(t *testing.T, ns, dev string) uint32 {
	t.Helper()
	var drops uint32
	err := netns.Handle(ns, func(h *netlink.Handle) error {
		l, err := h.LinkByName(dev)
		if err != nil {
			return err
		}
		qs, err := h.QdiscList(l)
		if err != nil {
			return err
		}
		for _, q := range qs {
			if q.Type() == "tbf" && q.Attrs().Statistics != nil {
				drops += q.Attrs().Statistics.Queue.Drops
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return drops
}

// TestBulkWindowOnTBF: on a 2 Mbit/s tbf with the testbed's ~150 ms
// drop-tail queue, an uncapped transfer (loss-based congestion control)
// fills the queue until it drops packets, which drops a user's SYN or
// answer sharing the link as well (the fault); a transfer whose window
// holds at most ~50 ms of the queue (BulkOptions.QueueBudget), as the
// prober's do, drops none and still reads the rate within 20%, at 2, 10
// and 50 Mbit/s; unshaped, it reads more than 100 Mbit/s.
// None knows the rate beforehand, as the first probe after a path
// degraded does not.
func TestBulkWindowOnTBF(t *testing.T) {
	s, dial, ns, dev := tbfPair(t, ServerConfig{})
	run := func(rate float64, budget time.Duration) (worst float64, drops uint32) {
		before := tbfDrops(t, ns, dev)
		for range 3 {
			// The previous transfer's tail, still queued, drains first.
			time.Sleep(300 * time.Millisecond)
			d0 := tbfDrops(t, ns, dev)
			bps, err := bulkRetry(t, func() (float64, error) {
				return BulkWith(context.Background(), dial, s.Addr().String(), 150*time.Millisecond, 2<<20, BulkOptions{QueueBudget: budget})
			})
			if err != nil {
				t.Fatal(err)
			}
			e := (bps - rate) / rate
			t.Logf("tbf %4.0f Mbit/s, queue budget %s: estimate %8.2f Mbit/s (%+.1f%%), %d dropped", rate/1e6, budget, bps/1e6, 100*e, tbfDrops(t, ns, dev)-d0)
			worst = max(worst, math.Abs(e))
		}
		return worst, tbfDrops(t, ns, dev) - before
	}
	if err := shapeTBF(ns, dev, 2e6); err != nil {
		t.Fatalf("shape: %v", err)
	}
	_, uncapped := run(2e6, 0)
	t.Logf("uncapped: %d packets dropped by the tbf", uncapped)
	if uncapped == 0 {
		t.Errorf("uncapped transfers dropped nothing: the test does not show the fault it guards against")
	}
	for _, rate := range []uint64{2e6, 10e6, 50e6} {
		if err := shapeTBF(ns, dev, rate); err != nil {
			t.Fatalf("shape: %v", err)
		}
		worst, capped := run(float64(rate), 50*time.Millisecond)
		t.Logf("tbf %.0f Mbit/s, capped: %d packets dropped by the tbf", float64(rate)/1e6, capped)
		if capped != 0 {
			t.Errorf("tbf %.0f Mbit/s: transfers holding at most 50 ms of the queue: %d packets dropped, want 0", float64(rate)/1e6, capped)
		}
		if worst > 0.2 {
			t.Errorf("tbf %.0f Mbit/s, capped: worst error %.1f%%, want within 20%%", float64(rate)/1e6, 100*worst)
		}
	}
	if err := netns.Handle(ns, func(h *netlink.Handle) error {
		l, err := h.LinkByName(dev)
		if err != nil {
			return err
		}
		return h.QdiscDel(&netlink.Tbf{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: l.Attrs().Index, Handle: netlink.MakeHandle(1, 0), Parent: netlink.HANDLE_ROOT}})
	}); err != nil {
		t.Fatalf("unshape: %v", err)
	}
	bps, err := bulkRetry(t, func() (float64, error) {
		return BulkWith(context.Background(), dial, s.Addr().String(), 150*time.Millisecond, 2<<20, BulkOptions{QueueBudget: 50 * time.Millisecond})
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("unshaped, capped: estimate %.0f Mbit/s", bps/1e6)
	if bps < 100e6 {
		t.Errorf("unshaped veth, capped transfer: %.0f Mbit/s, want more than 100 Mbit/s, twice the fastest shaped rate (the window must not hold a fast path back)", bps/1e6)
	}
}
