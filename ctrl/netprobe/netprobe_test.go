package netprobe

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/roamnet/roam/internal/tick"
	"github.com/roamnet/roam/test/netns"
	"github.com/roamnet/roam/test/testport"
)

// The estimate leaves out a shaper's burst: 24 KB at line rate, then
// 2 Mbit/s on the wire.
func TestEstimateSkipsBurst(t *testing.T) {
	const rate = 2e6 / 8 / wireFactor // payload bytes per second
	var a []arrival
	total := int64(0)
	for i := range 16 { // the burst: 16 segments within 200 µs
		total += 1448
		a = append(a, arrival{time.Duration(i) * 12 * time.Microsecond, total})
	}
	for t0 := time.Duration(0); t0 < 150*time.Millisecond; {
		t0 += time.Duration(1448 / rate * float64(time.Second))
		total += 1448
		a = append(a, arrival{t0, total})
	}
	bps, ok := estimate(a)
	if !ok {
		t.Fatal("no estimate")
	}
	if e := (bps - 2e6) / 2e6; e > 0.02 || e < -0.02 {
		t.Fatalf("estimate %.0f bit/s, want 2 Mbit/s within 2%%", bps)
	}
	// Everything in the first half (the burst) is left out: with the
	// whole transfer the burst would inflate it.
	all := float64(a[len(a)-1].bytes) * 8 * wireFactor / a[len(a)-1].t.Seconds()
	if all < 1.1*bps {
		t.Fatalf("naive %.0f vs estimate %.0f: the test burst did not matter", all, bps)
	}
}

func TestEstimateTooLittle(t *testing.T) {
	for _, a := range [][]arrival{nil, {{0, 100}}, {{0, 100}, {0, 200}}} {
		if _, ok := estimate(a); ok {
			t.Errorf("estimate(%v) ok", a)
		}
	}
}

func newServer(t *testing.T, cfg ServerConfig) (*Server, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	if cfg.Addr == "" {
		cfg.Addr = "127.0.0.1:0"
	}
	cfg.Registerer = reg
	s, err := NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, reg
}

func counter(t *testing.T, s *Server, kind, result string) float64 {
	t.Helper()
	var m dto.Metric
	if err := s.reqs.WithLabelValues(kind, result).Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

func TestBulkLoopback(t *testing.T) {
	s, _ := newServer(t, ServerConfig{})
	bps, err := Bulk(context.Background(), nil, s.Addr().String(), 50*time.Millisecond, 4<<20)
	if err != nil {
		t.Fatal(err)
	}
	if bps < 100e6 {
		t.Fatalf("loopback estimate %.0f bit/s, want > 100 Mbit/s", bps)
	}
	waitFor(t, "bulk counted", func() bool { return counter(t, s, "bulk", "served") == 1 })
}

func TestServerRefusesBadAndTooMany(t *testing.T) {
	s, _ := newServer(t, ServerConfig{MaxBulk: 1, QueueWait: 100 * time.Millisecond, EchoRate: 1})
	addr := s.Addr().String()
	// A bad bulk request: closed and counted.
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("GET / HTTP/1.1\r\n"))
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	if n, err := c.Read(make([]byte, 10)); n != 0 || err == nil {
		t.Fatalf("bad request answered: %d %v", n, err)
	}
	c.Close()
	waitFor(t, "bad bulk counted", func() bool { return counter(t, s, "bulk", "bad") == 1 })

	// One slow transfer holds the only slot for 800 ms: the next request
	// waits 100 ms for it, then is refused.
	hold, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer hold.Close()
	var req [bulkReqLen]byte
	copy(req[:], bulkMagic[:])
	binary.BigEndian.PutUint32(req[4:8], 800)
	binary.BigEndian.PutUint32(req[8:12], MaxBulkBytes)
	hold.Write(req[:])
	hold.Read(make([]byte, 1)) // the transfer runs
	if _, err := Bulk(context.Background(), nil, addr, 20*time.Millisecond, 1<<20); err == nil {
		t.Fatal("second transfer served beyond MaxBulk and QueueWait")
	}
	waitFor(t, "refusal counted", func() bool { return counter(t, s, "bulk", "refused") >= 1 })

	// UDP: garbage is counted bad; echoes beyond the rate are refused.
	u, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	u.Write([]byte("hello"))
	waitFor(t, "bad echo counted", func() bool { return counter(t, s, "echo", "bad") == 1 })
	var e [echoLen]byte
	copy(e[:], echoMagic[:])
	for range 5 {
		u.Write(e[:])
	}
	waitFor(t, "echoes refused over the rate", func() bool {
		return counter(t, s, "echo", "served") >= 1 && counter(t, s, "echo", "refused") >= 1
	})
}

// lossyRelay forwards UDP to dst, dropping every other datagram toward it.
func lossyRelay(t *testing.T, dst string) string {
	t.Helper()
	pc := testport.ListenPacket(t)
	ua, _ := net.ResolveUDPAddr("udp", dst)
	var client atomic.Pointer[net.UDPAddr]
	go func() {
		buf := make([]byte, 512)
		n := 0
		for {
			k, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			fa := from.(*net.UDPAddr)
			if fa.Port == ua.Port {
				if c := client.Load(); c != nil {
					pc.WriteTo(buf[:k], c)
				}
				continue
			}
			client.Store(fa)
			n++
			if n%2 == 0 {
				continue
			}
			pc.WriteTo(buf[:k], ua)
		}
	}()
	return pc.LocalAddr().String()
}

func TestProberRTTLossUpDown(t *testing.T) {
	s, _ := newServer(t, ServerConfig{})
	// "gone" names a socket that never answers. It stays open for the
	// test: closed, its port could be handed to the relay below.
	dead := testport.ListenPacket(t)
	deadAddr := dead.LocalAddr().String()
	relay := lossyRelay(t, s.Addr().String())
	var mu sync.Mutex
	changes := map[string]int{}
	reg := prometheus.NewRegistry()
	targets := []Target{{Peer: "good", Addr: s.Addr().String(), Hot: true}, {Peer: "lossy", Addr: relay, Hot: true}, {Peer: "gone", Addr: deadAddr, Hot: true}}
	var tmu sync.Mutex
	p, err := New(Config{Targets: func() []Target { tmu.Lock(); defer tmu.Unlock(); return targets }, EchoInterval: 20 * time.Millisecond, EchoTimeout: 200 * time.Millisecond,
		BulkInterval: 300 * time.Millisecond, BulkDuration: 20 * time.Millisecond, BulkBytes: 1 << 20, LossWindow: 40, Registerer: reg,
		OnChange: func(peer string) { mu.Lock(); changes[peer]++; mu.Unlock() }})
	if err != nil {
		t.Fatal(err)
	}
	defer runProber(p)()

	waitFor(t, "links measured", func() bool {
		g, ok1 := p.LinkTo("good")
		l, ok2 := p.LinkTo("lossy")
		d, ok3 := p.LinkTo("gone")
		p.mu.Lock()
		n := 0
		if lp := p.peers["lossy"]; lp != nil {
			n = len(lp.outcomes)
		}
		p.mu.Unlock()
		return ok1 && ok2 && ok3 && g.Up && g.BandwidthN > 0 && g.RTT > 0 && n >= 40 && l.Up && !d.Up
	})
	g, _ := p.LinkTo("good")
	l, _ := p.LinkTo("lossy")
	if g.Loss != 0 || g.RTT > 50*time.Millisecond || g.BandwidthBps < 100e6 {
		t.Errorf("good link %+v", g)
	}
	if l.Loss < 0.3 || l.Loss > 0.7 {
		t.Errorf("lossy link loss %.2f, want about 0.5", l.Loss)
	}
	if m := g.Meta(); !m.Up || m.BandwidthMbps < 100 || m.Validate() != nil {
		t.Errorf("hello link %+v", m)
	}
	// Metrics per peer.
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, mf := range mfs {
		names = append(names, mf.GetName())
	}
	for _, want := range []string{"roam_ctrl_link_rtt_seconds", "roam_ctrl_link_bandwidth_bits_per_second", "roam_ctrl_link_up", "roam_ctrl_link_loss_ratio", "roam_ctrl_link_probes_total"} {
		if !strings.Contains(strings.Join(names, " "), want) {
			t.Errorf("metric %s missing from %v", want, names)
		}
	}
	// The good peer goes away: it turns down and OnChange says so.
	s.Close()
	waitFor(t, "good link down", func() bool { g, _ := p.LinkTo("good"); return !g.Up })
	mu.Lock()
	if changes["good"] < 2 {
		t.Errorf("changes %v: want up then down for good", changes)
	}
	mu.Unlock()
	// A target dropped is forgotten.
	tmu.Lock()
	targets = targets[1:2]
	tmu.Unlock()
	waitFor(t, "good forgotten", func() bool { _, ok := p.LinkTo("good"); return !ok })
}

func TestProberKeepsMaxCold(t *testing.T) {
	var ts []Target
	for _, id := range []string{"a", "b", "c", "d"} {
		ts = append(ts, Target{Peer: id, Addr: "127.0.0.1:9"})
	}
	ts = append(ts, Target{Peer: "h", Addr: "127.0.0.1:9", Hot: true})
	p, err := New(Config{Targets: func() []Target { return ts }, MaxCold: 2})
	if err != nil {
		t.Fatal(err)
	}
	p.refresh(time.Now())
	if len(p.peers) != 3 || p.peers["a"] == nil || p.peers["b"] == nil || p.peers["h"] == nil || !p.peers["h"].Hot {
		t.Fatalf("peers %v: want a, b and the hot h", p.peers)
	}
}

func TestNewProberNeedsTargets(t *testing.T) {
	if _, err := New(Config{}); err == nil {
		t.Fatal("no error without targets")
	}
	if _, err := NewServer(ServerConfig{Addr: "256.0.0.1:1"}); err == nil {
		t.Fatal("no error for a bad address")
	}
}

func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	if err := tick.Until(context.Background(), 10*time.Second, 10*time.Millisecond, func() error {
		if !ok() {
			return errors.New(what)
		}
		return nil
	}); err != nil {
		t.Fatalf("timed out waiting: %v", err)
	}
}

// TestProberMeasuresWhenThePeerSaysItMoved: a hot peer's own figure of
// its direction of the path falling by more than 30% makes the prober
// measure its direction at once, not at its next turn (here an hour
// away); any peer's figure rising by more than 30% too (a restored
// better place must be seen from both ends); a change of 20% either way
// waits for the turn, and so does a cold peer's fall.
func TestProberMeasuresWhenThePeerSaysItMoved(t *testing.T) {
	for _, hot := range []bool{true, false} {
		t.Run(fmt.Sprintf("hot=%v", hot), func(t *testing.T) {
			s, _ := newServer(t, ServerConfig{})
			var tmu sync.Mutex
			target := Target{Peer: "cloud", Addr: s.Addr().String(), Hot: hot, PeerMbps: 100, PeerSamples: 1}
			set := func(mbps float64, n uint64) { tmu.Lock(); target.PeerMbps, target.PeerSamples = mbps, n; tmu.Unlock() }
			p, err := New(Config{Targets: func() []Target { tmu.Lock(); defer tmu.Unlock(); return []Target{target} },
				TargetsEvery: 20 * time.Millisecond, EchoInterval: 20 * time.Millisecond, BulkInterval: time.Hour, ColdBulkInterval: time.Hour,
				BulkDuration: 20 * time.Millisecond, BulkBytes: 1 << 20})
			if err != nil {
				t.Fatal(err)
			}
			defer runProber(p)()
			n := func() uint64 { l, _ := p.LinkTo("cloud"); return l.BandwidthN }
			// Loopback figures differ by more than 30% from one transfer
			// to the next at times: the prober then re-measures its own
			// big change once, at once. settle lets it.
			settle := func() uint64 { time.Sleep(300 * time.Millisecond); return n() }
			waitFor(t, "first bandwidth sample", func() bool { return n() == 1 })
			k := settle()
			set(120, 2) // a rise of 20%: not a change of the path
			time.Sleep(300 * time.Millisecond)
			set(100, 3) // a fall of 17%: neither
			if got := settle(); got != k {
				t.Fatalf("%d samples after the peer's figure moved by 20%%, want %d (the next turn is an hour away)", got, k)
			}
			set(1000, 4) // a rise
			waitFor(t, "a sample right after the peer's figure rose", func() bool { return n() > k })
			k = settle()
			set(10, 5) // a fall
			if !hot {
				if got := settle(); got != k {
					t.Fatalf("%d samples after a cold peer's figure fell, want %d", got, k)
				}
				return
			}
			waitFor(t, "a sample right after the peer's figure fell", func() bool { return n() > k })
		})
	}
}

// TestProberBoundsDuty: a slow transfer (here a dial that takes 100 ms)
// is repeated no more often than MaxDuty allows, however short
// BulkInterval is.
func TestProberBoundsDuty(t *testing.T) {
	s, _ := newServer(t, ServerConfig{})
	p, err := New(Config{Targets: func() []Target { return []Target{{Peer: "slow", Addr: s.Addr().String(), Hot: true}} },
		EchoInterval: 20 * time.Millisecond, BulkInterval: 10 * time.Millisecond, BulkDuration: 20 * time.Millisecond, BulkBytes: 1 << 20,
		MaxDuty: 0.1, Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
			time.Sleep(100 * time.Millisecond)
			return (&net.Dialer{Control: DialControl(ctx)}).DialContext(ctx, network, addr)
		}})
	if err != nil {
		t.Fatal(err)
	}
	stop := runProber(p)
	start := time.Now()
	waitFor(t, "first bandwidth sample", func() bool { l, _ := p.LinkTo("slow"); return l.BandwidthN >= 1 })
	time.Sleep(2 * time.Second)
	// The second transfer comes took/MaxDuty after the first: on a
	// loaded machine a transfer of 200 ms puts it beyond the 2 s.
	waitFor(t, "a second bandwidth sample", func() bool { l, _ := p.LinkTo("slow"); return l.BandwidthN >= 2 })
	stop()
	l, _ := p.LinkTo("slow")
	// A transfer takes >= 100 ms, so >= 1 s between two starts (one
	// immediate re-measure of a big change aside): at most el / 1 s +
	// the first + one re-measure, whatever the machine's speed (without
	// the bound: one every ~130 ms).
	el := time.Since(start)
	if max := uint64(el/time.Second) + 2; l.BandwidthN > max {
		t.Fatalf("%d transfers in %s with a 100 ms transfer and MaxDuty 0.1, want at most %d", l.BandwidthN, el, max)
	}
}

// runProber runs p until the returned stop is called, which waits for Run
// to return.
func runProber(p *Prober) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	return func() { cancel(); <-done }
}

// TestRxTimestampsAreArrivalTimes: a reader descheduled for 250 ms (here
// a sleep before the read) still learns when the bytes arrived, so a
// busy machine does not stretch a transfer; a conn that is not TCP gives
// no timestamp.
func TestRxTimestampsAreArrivalTimes(t *testing.T) {
	ln := testport.Listen(t)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		c.Read(make([]byte, 1)) // the client is ready
		// The kernel turns timestamping on for the first socket that
		// asks a little later (deferred work): give it that time.
		time.Sleep(50 * time.Millisecond)
		c.Write(make([]byte, 1000))
		c.Read(make([]byte, 1)) // until the client hangs up
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	read := rxTimestamps(c)
	c.Write([]byte{1})
	time.Sleep(300 * time.Millisecond) // the reader is descheduled; the bytes arrive after 50 ms
	n, at, err := read(make([]byte, 4096))
	readAt := time.Now()
	if err != nil || n != 1000 {
		t.Fatalf("read %d bytes, %v", n, err)
	}
	if at.IsZero() {
		t.Fatal("no receive timestamp on a TCP socket")
	}
	if late := readAt.Sub(at); late < 150*time.Millisecond || late > 5*time.Second {
		t.Fatalf("timestamp %s before the read returned, want about 250 ms (the bytes' arrival)", late)
	}

	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	go b.Write([]byte("x"))
	if n, at, err := rxTimestamps(a)(make([]byte, 8)); n != 1 || err != nil || !at.IsZero() {
		t.Fatalf("pipe: %d %v %v, want 1 byte and no timestamp", n, at, err)
	}
}

// TestServerRefusesDuringItsProbersTurn: while this cluster's prober
// receives a transfer (it holds the access link's turn), the server
// refuses a transfer at once, not after its queue wait, and the prober
// learns it as ErrRefused; the turn over, it is served.
func TestServerRefusesDuringItsProbersTurn(t *testing.T) {
	s, _ := newServer(t, ServerConfig{QueueWait: 5 * time.Second})
	s.turn.Lock() // the local prober's transfer
	start := time.Now()
	_, err := Bulk(context.Background(), nil, s.Addr().String(), 20*time.Millisecond, 1<<20)
	if !errors.Is(err, ErrRefused) {
		t.Fatalf("during the prober's turn: %v, want ErrRefused", err)
	}
	if el := time.Since(start); el > 2*time.Second {
		t.Fatalf("refused after %s: the server waited for its prober", el)
	}
	waitFor(t, "refusal counted", func() bool { return counter(t, s, "bulk", "refused") == 1 })
	s.turn.Unlock()
	if _, err := Bulk(context.Background(), nil, s.Addr().String(), 20*time.Millisecond, 1<<20); err != nil {
		t.Fatal(err)
	}
}

// TestProberTakesTheTurnOnceConnected: the prober's transfer holds its
// cluster's access link (the local server refuses meanwhile), but its
// dial does not: a peer slow to answer must not keep the server
// refusing everyone.
func TestProberTakesTheTurnOnceConnected(t *testing.T) {
	local, _ := newServer(t, ServerConfig{})
	// The remote answers a request only after 1 s.
	ln := testport.Listen(t)
	// It answers echoes (the prober probes a peer that is up).
	pc, err := net.ListenPacket("udp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	netns.ServePackets(pc, func(_ net.Addr, p []byte) []byte { return p })
	accepted := make(chan struct{}, 1)
	netns.Serve(ln, func(c net.Conn) {
		io.ReadFull(c, make([]byte, bulkReqLen))
		select {
		case accepted <- struct{}{}:
		default:
		}
		time.Sleep(time.Second)
		c.Write(make([]byte, 1<<20))
	})
	dialing := make(chan struct{}, 1)
	p, err := New(Config{Targets: func() []Target { return []Target{{Peer: "slow", Addr: ln.Addr().String(), Hot: true}} },
		EchoInterval: 20 * time.Millisecond, BulkInterval: time.Hour, BulkDuration: 20 * time.Millisecond, BulkBytes: 1 << 20,
		Server: local, Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
			select {
			case dialing <- struct{}{}:
			default:
			}
			time.Sleep(time.Second)
			return (&net.Dialer{Control: DialControl(ctx)}).DialContext(ctx, network, addr)
		}})
	if err != nil {
		t.Fatal(err)
	}
	defer runProber(p)()
	bulk := func() error {
		_, err := Bulk(context.Background(), nil, local.Addr().String(), 20*time.Millisecond, 1<<20)
		return err
	}
	<-dialing
	if err := bulk(); err != nil {
		t.Fatalf("while the prober dials: %v, want served", err)
	}
	<-accepted
	if err := bulk(); !errors.Is(err, ErrRefused) {
		t.Fatalf("while the prober's transfer runs: %v, want ErrRefused", err)
	}
}

// TestBulkWindowNeedsDialControl: a capped transfer (QueueBudget) whose
// dial does not apply DialControl would open with the handshake's full
// window; it fails with a clear error instead of overflowing a slow
// path's queue. With DialControl (and with the default dial) it runs.
func TestBulkWindowNeedsDialControl(t *testing.T) {
	s, _ := newServer(t, ServerConfig{})
	opt := BulkOptions{QueueBudget: 50 * time.Millisecond}
	var nd net.Dialer
	_, err := BulkWith(context.Background(), nd.DialContext, s.Addr().String(), 20*time.Millisecond, 1<<20, opt)
	if err == nil || !strings.Contains(err.Error(), "did not apply DialControl") {
		t.Fatalf("capped transfer through a dial without DialControl: err %v, want it refused", err)
	}
	withControl := func(ctx context.Context, network, addr string) (net.Conn, error) {
		return (&net.Dialer{Control: DialControl(ctx)}).DialContext(ctx, network, addr)
	}
	for _, dial := range []func(context.Context, string, string) (net.Conn, error){withControl, nil} {
		if bps, err := BulkWith(context.Background(), dial, s.Addr().String(), 20*time.Millisecond, 1<<20, opt); err != nil || bps <= 0 {
			t.Fatalf("capped transfer with DialControl: %.0f bit/s, %v", bps, err)
		}
	}
}

// steady is a transfer's arrivals: every step, chunk bytes, for d.
func steady(a []arrival, from, d, step time.Duration, chunk int64) []arrival {
	total := int64(0)
	if len(a) > 0 {
		total = a[len(a)-1].bytes
	}
	for t0 := from + step; t0 <= from+d; t0 += step {
		total += chunk
		a = append(a, arrival{t0, total})
	}
	return a
}

// TestEstimateRefusesSenderStall injects a sender that stalls for 230 ms
// in the last half of a 50 Mbit/s transfer (a probe server not scheduled,
// its socket buffer run empty): the rate over that half reads about half
// the path's (the fault), so the transfer is refused as sender-limited.
// Gaps that the bytes after them make up for are not: a shaper's offload
// batches at 2 Mbit/s (14 KiB every 58 ms, two at once after twice the
// gap) and at 10 Mbit/s (8 to 64 KiB, each after its time at the rate), a
// steady 50 Mbit/s, the burst then 2 Mbit/s of TestEstimateSkipsBurst.
func TestEstimateRefusesSenderStall(t *testing.T) {
	const step = time.Millisecond
	chunk := int64(5977) // payload per ms at 50 Mbit/s on the wire
	a := steady(nil, 0, 250*time.Millisecond, step, chunk)
	a = steady(a, 250*time.Millisecond+230*time.Millisecond, 220*time.Millisecond, step, chunk)
	bps, ok := estimate(a)
	if !ok || bps > 0.75*50e6 {
		t.Fatalf("stalled transfer reads %.1f Mbit/s (ok %v): the injected gap does not show the fault", bps/1e6, ok)
	}
	gap, with, without, lim := senderLimited(a)
	if !lim {
		t.Errorf("a %s gap (%.0f B/s with it, %.0f without; estimate %.1f Mbit/s of 50): not refused", gap, with, without, bps/1e6)
	}

	var regular [][]arrival
	regular = append(regular, steady(nil, 0, 700*time.Millisecond, step, chunk))
	b := steady(nil, 0, 600*time.Millisecond, 58*time.Millisecond, 14480)
	b = append(b, arrival{b[len(b)-1].t + 116*time.Millisecond, b[len(b)-1].bytes + 2*14480}) // two batches at once, after twice the gap
	b = steady(b, b[len(b)-1].t, 300*time.Millisecond, 58*time.Millisecond, 14480)
	// At 10 Mbit/s, batches of 8 to 64 KiB, each after its time at the rate.
	var c []arrival
	total0, t1 := int64(0), time.Duration(0)
	for k := 0; t1 < 500*time.Millisecond; k++ {
		sz := int64([]int{8, 64, 16, 32, 8, 8, 64, 24}[k%8] << 10)
		t1 += time.Duration(float64(sz) * 8 * wireFactor / 10e6 * float64(time.Second))
		total0 += sz
		c = append(c, arrival{t1, total0})
	}
	regular = append(regular, c)
	regular = append(regular, b)
	var burst []arrival
	total := int64(0)
	for i := range 16 {
		total += 1448
		burst = append(burst, arrival{time.Duration(i) * 12 * time.Microsecond, total})
	}
	regular = append(regular, steady(burst, burst[len(burst)-1].t, 150*time.Millisecond, time.Duration(1448/(2e6/8/wireFactor)*float64(time.Second)), 1448))
	for i, r := range regular {
		if gap, with, without, lim := senderLimited(r); lim {
			t.Errorf("regular transfer %d: refused (gap %s, %.0f B/s with it, %.0f without)", i, gap, with, without)
		}
		if _, ok := estimate(r); !ok {
			t.Errorf("regular transfer %d: no estimate", i)
		}
	}
}

// TestBulkRefusesSenderStall: a real transfer whose server stops sending
// for 230 ms in its second half is refused with ErrSenderLimited (not
// taken as the path's bandwidth). (Transfers without a stall are taken:
// TestEstimateRefusesSenderStall's regular ones, and the real ones of
// TestBulkOnTBF; this test's server, paced by sleeps, is itself stalled
// by a busy machine, which is refused as well.)
func TestBulkRefusesSenderStall(t *testing.T) {
	ln := testport.Listen(t)
	stall := make(chan time.Duration, 1)
	netns.Serve(ln, func(c net.Conn) {
		var req [bulkReqLen]byte
		if _, err := io.ReadFull(c, req[:]); err != nil {
			return
		}
		pause := <-stall
		chunk := make([]byte, 8<<10) // 8 KiB every 5 ms: ~13 Mbit/s
		start := time.Now()
		paused := false
		for time.Since(start) < 900*time.Millisecond {
			if !paused && time.Since(start) > 250*time.Millisecond {
				paused = true
				time.Sleep(pause)
			}
			if _, err := c.Write(chunk); err != nil {
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
	})
	stall <- 230 * time.Millisecond
	_, err := Bulk(context.Background(), nil, ln.Addr().String(), 400*time.Millisecond, 8<<20)
	if !errors.Is(err, ErrSenderLimited) {
		t.Errorf("transfer with a 230 ms sender stall: err %v, want ErrSenderLimited", err)
	} else {
		t.Logf("refused: %v", err)
	}
}
