package e2e

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/roamnet/roam/dataplane"
	"github.com/roamnet/roam/dataplane/dptest"
	"github.com/roamnet/roam/dataplane/lb"
	"github.com/roamnet/roam/test/netns"
)

// synFlooder sends TCP SYNs with random source addresses and ports from a
// raw socket (IP_HDRINCL) opened in a namespace, at a fixed rate.
type synFlooder struct {
	fd   int
	dst  netip.AddrPort
	sent int
}

func newSYNFlooder(ns string, dst netip.AddrPort) (*synFlooder, error) {
	f := &synFlooder{fd: -1, dst: dst}
	err := netns.Do(ns, func() (err error) {
		f.fd, err = unix.Socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_RAW) // IPPROTO_RAW: IP_HDRINCL
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("open raw socket in %s: %w", ns, err)
	}
	return f, nil
}

func (f *synFlooder) Close() error { return unix.Close(f.fd) }

// syn builds an IPv4 TCP SYN from src to f.dst (the kernel fills the IP
// checksum and total length of an IP_HDRINCL packet).
func (f *synFlooder) syn(src netip.AddrPort, seq uint32) []byte {
	b := make([]byte, 40)
	b[0], b[8], b[9] = 0x45, 64, unix.IPPROTO_TCP
	s, d := src.Addr().As4(), f.dst.Addr().As4()
	copy(b[12:16], s[:])
	copy(b[16:20], d[:])
	tcp := b[20:]
	binary.BigEndian.PutUint16(tcp[0:], src.Port())
	binary.BigEndian.PutUint16(tcp[2:], f.dst.Port())
	binary.BigEndian.PutUint32(tcp[4:], seq)
	tcp[12], tcp[13] = 5<<4, 0x02 // data offset 5 words, SYN
	binary.BigEndian.PutUint16(tcp[14:], 64240)
	pseudo := make([]byte, 12)
	copy(pseudo[0:4], s[:])
	copy(pseudo[4:8], d[:])
	pseudo[9] = unix.IPPROTO_TCP
	binary.BigEndian.PutUint16(pseudo[10:], 20)
	binary.BigEndian.PutUint16(tcp[16:], ^dptest.Sum16(tcp, dptest.Sum16(pseudo, 0)))
	return b
}

// run sends rate SYNs a second until ctx ends, each from a random address
// of 100.64.0.0/10 (no host answers for them) and a random port.
func (f *synFlooder) run(ctx context.Context, rate int) error {
	to := &unix.SockaddrInet4{Addr: f.dst.Addr().As4()}
	start := time.Now()
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		due := int(time.Since(start).Seconds() * float64(rate))
		for ; f.sent < due; f.sent++ {
			a := netip.AddrFrom4([4]byte{100, 64 | byte(rand.IntN(64)), byte(rand.IntN(256)), byte(1 + rand.IntN(254))})
			src := netip.AddrPortFrom(a, uint16(1024+rand.IntN(64000)))
			if err := unix.Sendto(f.fd, f.syn(src, rand.Uint32()), 0, to); err != nil {
				return fmt.Errorf("send SYN: %w", err)
			}
		}
	}
}

// realClients opens a new connection every 10 ms from ns to addr and asks
// for a page over it, recording each connect's duration and each failure.
type realClients struct {
	mu       sync.Mutex
	connects []time.Duration
	answers  []time.Duration // connect to the whole answer read
	failed   []error
}

func (r *realClients) run(ctx context.Context, ns string, addr netip.AddrPort) {
	var wg sync.WaitGroup
	for ctx.Err() == nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			start := time.Now()
			d, err := r.one(ns, addr)
			total := time.Since(start)
			r.mu.Lock()
			defer r.mu.Unlock()
			if err != nil {
				r.failed = append(r.failed, err)
				return
			}
			r.connects = append(r.connects, d)
			r.answers = append(r.answers, total)
		}()
		time.Sleep(10 * time.Millisecond)
	}
	wg.Wait()
}

func (r *realClients) one(ns string, addr netip.AddrPort) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	start := time.Now()
	c, err := netns.Dial(ctx, ns, "tcp", addr.String())
	if err != nil {
		return 0, fmt.Errorf("connect: %w", err)
	}
	took := time.Since(start)
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, "GET / HTTP/1.0\r\n\r\n"); err != nil {
		return 0, fmt.Errorf("send request: %w", err)
	}
	body, err := io.ReadAll(c)
	if err != nil {
		return 0, fmt.Errorf("read answer: %w", err)
	}
	if !strings.Contains(string(body), "hello from abroad") {
		return 0, fmt.Errorf("answer %q", body)
	}
	return took, nil
}

func (r *realClients) p99() time.Duration { return r.pct(r.connects, 99) }

// answerP99 is the 99th percentile of connect to answer.
func (r *realClients) answerP99() time.Duration { return r.pct(r.answers, 99) }

func (r *realClients) pct(d []time.Duration, p int) time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)*p/100]
}

// TestSYNFlood: a spoofed SYN flood (random sources, from a raw socket in
// the client's namespace) at 10x the SNAT port range per embryonic
// timeout, while a real client opens a connection every 10 ms through the
// same frontend to a target abroad that runs Linux's default
// tcp_syncookies=1. Undefended (one SNAT address, no eviction: the flood's
// flows hold their ports for the whole embryonic timeout), the flood
// exhausts the ports and the real client's connects fail or wait for their
// SYN's retransmissions (p99 >= 1 s). With a pool of 8 SNAT addresses
// (routed to the home node by the abroad namespace) and eviction of silent
// embryonic flows, no port runs out, but the target keeps a request socket
// for each flood SYN it saw, which eats the real client's SYN on that port:
// connect p99 stays >= 1 s (asserted with the default target: this is what
// the SYN proxy is for). With the SYN proxy on under port pressure
// (SYNProxyFlood), the flood's SYNs are answered by the home with cookies
// and reach neither a port nor the target: every real connection succeeds
// with connect p99 < 1 s, and the cookies and proxied flows are counted.
func TestSYNFlood(t *testing.T) {
	netns.SkipUnlessRoot(t)
	target := netip.AddrPortFrom(netns.AbroadAddr1, 8080)
	topo := abroadTopology(t, target)
	// The pool 10.10.3.0-7 is the home node's: the abroad side routes it there.
	pool := netip.MustParsePrefix("10.10.3.0/29")
	err := netns.Handle(topo.Abroad, func(h *netlink.Handle) error {
		l, err := h.LinkByName("a0")
		if err != nil {
			return err
		}
		return h.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Dst: &net.IPNet{IP: pool.Addr().AsSlice(), Mask: net.CIDRMask(pool.Bits(), 32)},
			Gw: netns.HomeWAN.AsSlice()})
	})
	if err != nil {
		t.Fatalf("route the SNAT pool to home: %v", err)
	}
	// The target keeps a request socket for each SYN it sees (a minute,
	// sending its SYN-ACK again), cookies only when its queue overflows:
	// Linux's default, tcp_syncookies=1 (ROAM_FLOOD_TARGET_SYNCOOKIES
	// overrides: with 2 it keeps no state, and the pool alone suffices).
	cookies := "1\n"
	if v := os.Getenv("ROAM_FLOOD_TARGET_SYNCOOKIES"); v != "" {
		cookies = v + "\n"
	}
	if err := netns.Sysctl(topo.Abroad, "net.ipv4.tcp_syncookies", cookies); err != nil {
		t.Fatal(err)
	}

	const (
		portMin, portMax = 41000, 41249 // 250 ports
		synTimeout       = 2 * time.Second
		flood            = 10 * (portMax - portMin + 1) * int(time.Second) / int(synTimeout) // 10x the port range per embryonic timeout
		phase            = 6 * time.Second
	)
	pin := "/sys/fs/bpf/roam-e2e-flood-" + topo.Suffix
	t.Cleanup(func() {
		if err := dataplane.Unpin(pin); err != nil {
			t.Errorf("unpin: %v", err)
		}
	})
	var d *dataplane.Dataplane
	open := func(cfg dataplane.Config, attach bool) {
		t.Helper()
		if d != nil {
			d.Close()
		}
		cfg.PinPath, cfg.PortMin, cfg.PortMax = pin, portMin, portMax
		var err error
		if d, err = openHome(topo, cfg, attach); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		if d != nil {
			d.Close()
		}
	})

	// runPhase floods frontend fe for the phase while the real client connects; it returns the clients and the drops' change.
	runPhase := func(name string, fe lb.Frontend) (*realClients, map[string]uint64) {
		t.Helper()
		dptest.SetActive(t, d, fe, lb.Redirect(target))
		fl, err := newSYNFlooder(topo.Client, netip.AddrPortFrom(fe.Addr, fe.Port))
		if err != nil {
			t.Fatal(err)
		}
		defer fl.Close()
		before := dptest.Drops(t, d)
		ctx, cancel := context.WithTimeout(context.Background(), phase)
		defer cancel()
		var floodErr error
		done := make(chan struct{})
		go func() { defer close(done); floodErr = fl.run(ctx, flood) }()
		time.Sleep(synTimeout) // the flood fills the table first
		rc := &realClients{}
		rc.run(ctx, topo.Client, netip.AddrPortFrom(fe.Addr, fe.Port))
		<-done
		if floodErr != nil {
			t.Fatal(floodErr)
		}
		delta := dptest.DropsSince(t, d, before)
		perSec := float64(fl.sent) / phase.Seconds()
		t.Logf("%s: flood %d SYNs (%.0f/s, target %d/s); real connects %d ok, %d failed, p99 %s (to the whole answer: p99 %s); drops %v",
			name, fl.sent, perSec, flood, len(rc.connects), len(rc.failed), rc.p99(), rc.answerP99(), delta)
		if perSec < 0.8*float64(flood) {
			t.Fatalf("%s: the flood ran at %.0f SYN/s, below the %d/s asked: the result says nothing", name, perSec, flood)
		}
		return rc, delta
	}

	// Undefended: one SNAT address, embryonic flows hold their port for the whole timeout.
	open(dataplane.Config{SNATv4: netns.HomeWAN, Timeouts: dataplane.Timeouts{SYN: synTimeout, SYNEvict: time.Hour}}, true)
	rc, delta := runPhase("undefended", lb.Frontend{Addr: netns.HomeAddr, Port: 80, Proto: lb.TCP})
	if delta["port_exhausted"] == 0 || (len(rc.failed) == 0 && rc.p99() < time.Second) {
		t.Fatalf("undefended: port_exhausted +%d, %d real connects failed, p99 %s: the flood did not hurt the real client, so the defended run proves nothing",
			delta["port_exhausted"], len(rc.failed), rc.p99())
	}

	// A pool of 8 addresses (2,000 slots: the flood's 2,500 embryonic
	// flows per timeout do not fit) and the eviction of silent embryonic
	// flows (default SYNEvict), no SYN proxy: no port runs out, but the
	// target's request sockets eat real SYNs.
	open(dataplane.Config{SNATv4: pool.Addr(), SNATv4Count: 8, Timeouts: dataplane.Timeouts{SYN: synTimeout}}, false)
	rc, delta = runPhase("pool", lb.Frontend{Addr: netns.HomeAddr, Port: 81, Proto: lb.TCP})
	if delta["port_exhausted"] != 0 {
		t.Errorf("pool: port_exhausted +%d, want 0", delta["port_exhausted"])
	}
	if delta["syn_evicted"] == 0 {
		t.Errorf("pool: no embryonic flow evicted: the pool alone held the flood, the eviction was not exercised")
	}
	if cookies == "1\n" && len(rc.failed) == 0 && rc.p99() < time.Second {
		t.Errorf("pool, no SYN proxy, target at tcp_syncookies=1: real connect p99 %s and no failure: the flood did not hurt, so the proxy's run proves nothing", rc.p99())
	}

	// The same with the SYN proxy on under port pressure.
	open(dataplane.Config{SNATv4: pool.Addr(), SNATv4Count: 8, Timeouts: dataplane.Timeouts{SYN: synTimeout}, SYNProxy: dataplane.SYNProxyFlood}, false)
	rc, delta = runPhase("proxy", lb.Frontend{Addr: netns.HomeAddr, Port: 82, Proto: lb.TCP})
	if len(rc.failed) > 0 {
		t.Errorf("proxy: %d of %d real connections failed, first: %v", len(rc.failed), len(rc.failed)+len(rc.connects), rc.failed[0])
	}
	if len(rc.connects) < 100 {
		t.Errorf("proxy: only %d real connections in %s", len(rc.connects), phase-synTimeout)
	}
	if p := rc.p99(); p >= time.Second {
		t.Errorf("proxy: real connect p99 %s, want < 1 s", p)
	}
	if delta["port_exhausted"] != 0 {
		t.Errorf("proxy: port_exhausted +%d, want 0", delta["port_exhausted"])
	}
	if delta["synproxy_cookie_sent"] < uint64(flood) || delta["synproxy_flows"] < uint64(len(rc.connects)) {
		t.Errorf("proxy: synproxy_cookie_sent +%d (flood %d/s), synproxy_flows +%d (%d real connections): the proxy did not take the flood",
			delta["synproxy_cookie_sent"], flood, delta["synproxy_flows"], len(rc.connects))
	}
}
