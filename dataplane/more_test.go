package dataplane_test

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gopacket/gopacket/layers"
	"github.com/vishvananda/netlink"

	"github.com/roamnet/roam/dataplane"
	"github.com/roamnet/roam/dataplane/dptest"
	"github.com/roamnet/roam/dataplane/lb"
	"github.com/roamnet/roam/test/netns"
)

// TestCommitConcurrency: while one goroutine commits between X and Y and
// stages (then aborts) Z, new flows run through the program; none may ever
// be sent to Z, and both X and Y must be seen.
func TestCommitConcurrency(t *testing.T) {
	tb := newTestbed(t, dataplane.Config{})
	f := tb.stage(t, "10.0.0.1:80/tcp", "redirect:10.2.0.1:8080")
	x, y := mustTarget(t, "redirect:10.2.0.1:8080"), mustTarget(t, "redirect:10.2.0.2:8080")
	z := mustTarget(t, "redirect:10.2.0.66:6666")

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var loopErr error
	var commits atomic.Int64
	wg.Add(1)
	// A t.Fatal below stops the loop before the cleanup closes the data plane.
	defer func() { cancel(); wg.Wait() }()
	exited := make(chan struct{})
	go func() {
		defer wg.Done()
		defer close(exited)
		next := y
		for ctx.Err() == nil {
			gen, err := tb.d.Stage(f, next)
			if err == nil {
				err = tb.d.Commit(f, gen)
			}
			var zgen uint64
			if err == nil {
				zgen, err = tb.d.Stage(f, z)
			}
			if err == nil {
				err = tb.d.Abort(f, zgen)
			}
			if err != nil {
				loopErr = err
				return
			}
			commits.Add(1)
			if next == y {
				next = x
			} else {
				next = y
			}
		}
	}()
	seen := map[string]int{}
	// At least 3000 new flows, and on until the loop has committed 10
	// times; the flows wait for a commit whenever they are 300 ahead of
	// the commits, so the two interleave however the scheduler of a
	// loaded machine favours one goroutine (it once starved the commits:
	// 8 in 20000 flows).
	const flowsPerCommit = 300
	deadline := time.Now().Add(60 * time.Second)
	for i := 0; i < 3000 || commits.Load() < 10; i++ {
		for int64(i) >= flowsPerCommit*(commits.Load()+1) && time.Now().Before(deadline) {
			select {
			case <-exited:
				wg.Wait()
				t.Fatalf("stage/commit loop: %v", loopErr)
			case <-time.After(time.Millisecond):
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d commits during %d flows in 60 s", commits.Load(), i)
		}
		client := netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}), 33000)
		in := spec{src: client, dst: ap("10.0.0.1:80"), proto: lb.TCP, flags: "S", srcMAC: macPeer, dstMAC: macD0}.build(t)
		v, out := tb.xdp(t, in)
		if v != xdpTX {
			t.Fatalf("flow %d: verdict %d", i, v)
		}
		p := verifyChecksums(t, out)
		ip := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
		_, dport := l4Ports(p)
		got := fmt.Sprintf("redirect:%s:%d", ip.DstIP, dport)
		if got == z.String() {
			t.Fatalf("flow %d sent to the staged, uncommitted target %s", i, z)
		}
		if got != x.String() && got != y.String() {
			t.Fatalf("flow %d sent to %s", i, got)
		}
		seen[got]++
	}
	cancel()
	wg.Wait()
	if loopErr != nil {
		t.Fatalf("stage/commit loop: %v", loopErr)
	}
	t.Logf("%d commits; flows per target: %v", commits.Load(), seen)
	// The commits alternate X and Y: a Commit that never took effect
	// would leave every flow on X.
	if seen[x.String()] == 0 || seen[y.String()] == 0 {
		t.Fatalf("after %d commits alternating %s and %s, flows per target %v; want both seen", commits.Load(), x, y, seen)
	}
}

// TestTCProgram: the tc program NATs host traffic and translates replies, with valid checksums.
func TestTCProgram(t *testing.T) {
	tb := newTestbed(t, dataplane.Config{PortMin: 50000, PortMax: 50999})
	tb.stage(t, "10.0.0.1:80/tcp", "redirect:10.2.0.1:8080")
	tb.stage(t, "[2001:db8::1]:7000/udp", "redirect:[2001:db8:2::1]:7001")
	for _, c := range []struct {
		client, frontend, target netip.AddrPort
		proto                    lb.Proto
	}{
		{ap("198.51.100.7:33000"), ap("10.0.0.1:80"), ap("10.2.0.1:8080"), lb.TCP},
		{ap("[2001:db8:c::7]:5000"), ap("[2001:db8::1]:7000"), ap("[2001:db8:2::1]:7001"), lb.UDP},
	} {
		t.Logf("case: %s %s", c.frontend, c.proto)
		in := spec{src: c.client, dst: c.frontend, proto: c.proto, flags: "S", payload: []byte("from the host"), srcMAC: macPeer, dstMAC: macD0}.build(t)
		out := tb.runTCRedirect(t, "first packet", in)
		p := verifyChecksums(t, out)
		sport, _ := l4Ports(p)
		if sport < 50000 || sport > 50999 {
			t.Fatalf("SNAT port %d", sport)
		}
		snat := snatOf(c.client.Addr())
		want := spec{src: netip.AddrPortFrom(snat, sport), dst: c.target, proto: c.proto, flags: "S", payload: []byte("from the host"), srcMAC: macD0, dstMAC: macGW}.build(t)
		if !bytes.Equal(out, want) {
			t.Fatalf("output\n got %x\nwant %x", out, want)
		}
		reply := spec{src: c.target, dst: netip.AddrPortFrom(snat, sport), proto: c.proto, flags: "SA", payload: []byte("back"), srcMAC: macGW, dstMAC: macD0}.build(t)
		out = tb.runTCRedirect(t, "reply", reply)
		verifyChecksums(t, out)
		want = spec{src: c.frontend, dst: c.client, proto: c.proto, flags: "SA", payload: []byte("back"), srcMAC: macD0, dstMAC: macClient}.build(t)
		if !bytes.Equal(out, want) {
			t.Fatalf("reply output\n got %x\nwant %x", out, want)
		}
	}
}

// TestCollector: the Prometheus collector reports what the programs counted.
func TestCollector(t *testing.T) {
	tb := newTestbed(t, dataplane.Config{})
	tb.stage(t, "10.0.0.1:80/tcp", "redirect:10.2.0.1:8080")
	in := spec{src: ap("198.51.100.7:33000"), dst: ap("10.0.0.1:80"), proto: lb.TCP, flags: "S", srcMAC: macPeer, dstMAC: macD0}.build(t)
	for i := 0; i < 3; i++ {
		if v, _ := tb.xdp(t, in); v != xdpTX {
			t.Fatalf("verdict %d", v)
		}
	}
	tb.xdp(t, in[:20]) // malformed
	got := gather(t, tb.d.Collector())
	for k, want := range map[string]float64{
		"roam_dataplane_packets_total{action=redirect,frontend=10.0.0.1:80/tcp}": 3,
		"roam_dataplane_bytes_total{action=redirect,frontend=10.0.0.1:80/tcp}":   float64(3 * len(in)),
		"roam_dataplane_packets_total{action=drop,frontend=10.0.0.1:80/tcp}":     0,
		"roam_dataplane_drops_total{reason=malformed}":                           1,
		"roam_dataplane_drops_total{reason=no_route}":                            0,
		"roam_dataplane_conntrack_entries{map=conntrack}":                        1,
		"roam_dataplane_conntrack_entries{map=nat}":                              1,
	} {
		if v, ok := got[k]; !ok || v != want {
			t.Errorf("%s = %v (present %v), want %v", k, v, ok, want)
		}
	}
}

// TestAttachReopen: XDP and tcx links are pinned; a second Open updates
// them in place to its program (same link, no gap); Detach removes them.
func TestAttachReopen(t *testing.T) {
	h := netns.Enter(t)
	l := addVeth(t, h, "rx0", "02:00:00:00:10:01", "192.0.2.1/24")
	p := dptest.PinPath(t)
	d1 := openTest(t, dataplane.Config{PinPath: p})
	if err := d1.AttachXDP("rx0", dataplane.XDPNative); err != nil {
		t.Fatal(err)
	}
	if err := d1.AttachTC("rx0"); err != nil {
		t.Fatal(err)
	}
	xdpProg := func() uint32 {
		t.Helper()
		nl, err := h.LinkByIndex(l.Attrs().Index)
		if err != nil {
			t.Fatal(err)
		}
		if nl.Attrs().Xdp == nil || !nl.Attrs().Xdp.Attached {
			return 0
		}
		return nl.Attrs().Xdp.ProgId
	}
	id1 := xdpProg()
	if id1 == 0 {
		t.Fatal("no XDP program attached")
	}
	d1.Close()
	if xdpProg() != id1 {
		t.Fatal("closing the data plane detached XDP")
	}
	d2 := openTest(t, dataplane.Config{PinPath: p})
	if err := d2.AttachXDP("rx0", dataplane.XDPNative); err != nil {
		t.Fatal(err)
	}
	if err := d2.AttachTC("rx0"); err != nil {
		t.Fatal(err)
	}
	id2, _ := d2.XDPProgramID()
	if got := xdpProg(); got != uint32(id2) || got == id1 {
		t.Fatalf("XDP program after re-attach: %d, want the new one %d (old %d)", got, id2, id1)
	}
	if err := d2.Detach("rx0"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for xdpProg() != 0 {
		if time.Now().After(deadline) {
			t.Fatal("XDP still attached after Detach")
		}
		time.Sleep(20 * time.Millisecond)
	}
	var _ netlink.Link = l
}

// TestBenchXDP: the benchmark helper measures the established-flow path
// (the verdict proves the NAT and fib lookup ran) without touching the
// data plane's own maps.
func TestBenchXDP(t *testing.T) {
	tb := newTestbed(t, dataplane.Config{})
	in := spec{src: ap("198.51.100.7:33000"), dst: ap("10.2.0.1:8080"), proto: lb.TCP, flags: "A", payload: make([]byte, 18), srcMAC: macPeer, dstMAC: macD0}.build(t)
	r, err := dataplane.BenchXDPDetail(in, 20000)
	if err != nil {
		t.Fatal(err)
	}
	if r.Verdict != xdpRedirect || r.PerPacket <= 0 {
		t.Fatalf("bench result %+v", r)
	}
	t.Logf("%+v", r)
	if _, err := tb.d.BenchXDP(in[:10], 1); err == nil {
		t.Fatal("benchmarked a 10-byte frame")
	}
	if n, _ := tb.d.ConntrackEntries(); n != 0 {
		t.Fatalf("benchmark wrote %d entries into the data plane's conntrack", n)
	}
}

// TestBenchXDPHeld: a benchmark held on two idle interfaces measures the
// same path (the verdict), and leaves them without XDP once it is done.
func TestBenchXDPHeld(t *testing.T) {
	tb := newTestbed(t, dataplane.Config{})
	k0 := addVeth(t, tb.h, "k0", "02:00:00:00:00:30")
	k1 := addVeth(t, tb.h, "k1", "02:00:00:00:00:31")
	in := spec{src: ap("198.51.100.7:33000"), dst: ap("10.2.0.1:8080"), proto: lb.TCP, flags: "A", payload: make([]byte, 18), srcMAC: macPeer, dstMAC: macD0}.build(t)
	s, err := dataplane.RoamSpec()
	if err != nil {
		t.Fatal(err)
	}
	b, err := dataplane.NewXDPBench(s, in)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	b.HoldOn(k0.Attrs().Index, k1.Attrs().Index)
	r, err := b.Run(20000)
	if err != nil {
		t.Fatal(err)
	}
	if r.Verdict != xdpRedirect || r.PerPacket <= 0 || r.Baseline <= 0 {
		t.Fatalf("bench result %+v", r)
	}
	for _, name := range []string{"k0", "k1"} {
		l, err := tb.h.LinkByName(name)
		if err != nil {
			t.Fatal(err)
		}
		if x := l.Attrs().Xdp; x != nil && x.Attached {
			t.Fatalf("%s still has XDP program %d after the run", name, x.ProgId)
		}
	}
}

// TestExpiredPortTakeover: a new flow may take over the SNAT port of an
// idle-expired one; when the old client comes back, the new flow's reverse
// entry must survive (its replies still translated).
func TestExpiredPortTakeover(t *testing.T) {
	tb := newTestbed(t, dataplane.Config{PortMin: 40000, PortMax: 40000, IdleTimeout: 300 * time.Millisecond})
	f := tb.stage(t, "10.0.0.1:7000/udp", "redirect:10.2.0.1:7001")
	target := mustTarget(t, "redirect:10.2.0.1:7001")
	a := spec{src: ap("198.51.100.7:34000"), dst: ap("10.0.0.1:7000"), proto: lb.UDP, payload: []byte("a"), srcMAC: macPeer, dstMAC: macD0}.build(t)
	b := spec{src: ap("198.51.100.8:34000"), dst: ap("10.0.0.1:7000"), proto: lb.UDP, payload: []byte("b"), srcMAC: macPeer, dstMAC: macD0}.build(t)
	if v, _ := tb.xdp(t, a); v != xdpTX {
		t.Fatalf("flow a: verdict %d", v)
	}
	tb.waitNoFlows(t, f, target, "flow a never expired")
	if v, _ := tb.xdp(t, b); v != xdpTX {
		t.Fatalf("flow b (taking over the port): verdict %d", v)
	}
	if v, _ := tb.xdp(t, a); v != xdpDrop {
		t.Fatalf("flow a back while b holds the only port: verdict %d, want drop", v)
	}
	reply := spec{src: ap("10.2.0.1:7001"), dst: netip.AddrPortFrom(snat4, 40000), proto: lb.UDP, payload: []byte("r"), srcMAC: macGW, dstMAC: macD0}.build(t)
	v, out := tb.xdp(t, reply)
	if v != xdpTX {
		t.Fatalf("reply to b: verdict %d", v)
	}
	p := verifyChecksums(t, out)
	if ip := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4); !ip.DstIP.Equal(netip.MustParseAddr("198.51.100.8").AsSlice()) {
		t.Fatalf("reply went to %v, want flow b's client", ip.DstIP)
	}
}
