// Command srv6 is `make bench-srv6`: the NAT and the SRv6 path mode side by
// side on the same namespaces (netns.SRv6Topology: an IPv6 client, the
// home, an old and a new location over an IPv6 underlay), each through the
// same migration with the old copy removed in the middle: a UDP stream with
// sequence numbers (lost, duplicated, reordered), new TCP connections at a
// fixed rate (connect time p99 as the client program sees it, over 1 s,
// those whose SYN was retransmitted, and the p99 of the kernel's path RTT
// sample), TCP goodput in 100 ms bins of a
// client that downloads in a loop and reconnects when its connection dies,
// the client address the service sees, and the home's XDP cost per packet
// (kernel BPF statistics). Which mode runs first is chosen at random per
// invocation (printed; -first forces it), so load drift does not always
// fall on the same mode. Last line: one JSON object.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/roamnet/roam/dataplane"
	"github.com/roamnet/roam/dataplane/lb"
	"github.com/roamnet/roam/test/netns"
)

var (
	oldUnder = netip.MustParseAddr("fd20:2::2")
	newUnder = netip.MustParseAddr("fd20:3::2")
	snat6    = netip.MustParseAddr("fd20:8::1") // the home's SNAT address (NAT mode); the locations route it to the home
	client   = netns.SRv6ClientV6
	fe       = netns.SRv6FrontendV6
)

func main() {
	dur := flag.Duration("duration", 3*time.Second, "length of one run (the migration's events at fixed fractions of it)")
	first := flag.String("first", "", "mode that runs first: nat or srv6 (default: chosen at random)")
	flag.Parse()
	if *first == "" {
		*first = []string{"nat", "srv6"}[rand.IntN(2)]
	}
	if *first != "nat" && *first != "srv6" {
		fmt.Fprintf(os.Stderr, "bench-srv6: -first %q: want nat or srv6\n", *first)
		os.Exit(2)
	}
	if err := run(*dur, *first); err != nil {
		fmt.Fprintln(os.Stderr, "bench-srv6:", err)
		os.Exit(1)
	}
}

type node struct {
	ns  string
	d   *dataplane.Dataplane
	pin string
}

// openNode opens a node's data plane with XDP (native) on devs and, as
// roam-agent --tc-ifaces does, tc on them too: a packet whose next hop has
// no neighbour yet goes up from XDP untouched, and tc translates it and
// sends it with bpf_redirect_neigh (NAT mode's first packets).
func openNode(ns string, sid netip.Addr, devs ...string) (*node, error) {
	pin := filepath.Join("/sys/fs/bpf", "roam-bench-srv6-"+netns.RandSuffix(4))
	d, err := dataplane.Open(dataplane.Config{PinPath: pin, SNATv6: snat6, SRv6: dataplane.SRv6Config{SID: sid,
		Locators: []netip.Prefix{netns.SRv6LocHome, netns.SRv6LocOld, netns.SRv6LocNew}}})
	if err != nil {
		return nil, err
	}
	n := &node{ns: ns, d: d, pin: pin}
	err = netns.Do(ns, func() error {
		for _, dev := range devs {
			if err := d.AttachXDP(dev, dataplane.XDPNative); err != nil {
				return err
			}
		}
		for _, dev := range devs {
			if err := d.AttachTC(dev); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		n.close()
		return nil, err
	}
	return n, nil
}

func (n *node) close() {
	_ = n.d.Close()
	_ = dataplane.Unpin(n.pin)
}

type result struct {
	sent, lost, dup, reordered int
	connects                   []time.Duration
	// pathRTTs are the kernel's RTT samples (TCP_INFO rtt right after
	// connect), the zero ones left out and counted in rttZero. Not the
	// handshake's time: with a retransmitted SYN, Karn's rule leaves no
	// sample or the last SYN's, so retransmission delays are in connects,
	// connOver1s and synRetrans, never here.
	pathRTTs               []time.Duration
	rttZero                int
	synRetrans             int // connects whose SYN was retransmitted (tcpi_total_retrans > 0 after connect)
	connFailed, connOver1s int
	bins                   []int64 // bytes per 100 ms
	seen                   map[netip.Addr]int
	nsPerPacket            float64
}

func (r result) connP99() float64 { return p99ms(r.connects) }

func (r result) pathRTTP99() float64 { return p99ms(r.pathRTTs) }

// p99ms is the 99th percentile of d in milliseconds (0 if empty).
func p99ms(d []time.Duration) float64 {
	if len(d) == 0 {
		return 0
	}
	c := slices.Clone(d)
	slices.Sort(c)
	return float64(c[(len(c)*99)/100]) / 1e6
}

// dipPct is how far the worst 100 ms bin fell below the median bin, in percent.
func (r result) dipPct() float64 {
	if len(r.bins) < 3 {
		return 0
	}
	b := slices.Clone(r.bins[1 : len(r.bins)-1]) // the first and last bins are partial
	sorted := slices.Clone(b)
	slices.Sort(sorted)
	med := sorted[len(sorted)/2]
	if med == 0 {
		return 100
	}
	return 100 * (1 - float64(sorted[0])/float64(med))
}

func (r result) preserved() bool {
	if len(r.seen) == 0 {
		return false
	}
	for a := range r.seen {
		if a != client {
			return false
		}
	}
	return true
}

func run(dur time.Duration, first string) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("needs root (BPF, namespaces)")
	}
	topo, err := netns.NewSRv6Topology()
	if err != nil {
		return err
	}
	defer topo.Close()
	home, err := openNode(topo.Home, netns.SRv6SIDHome, "h0", "h1", "h2")
	if err != nil {
		return err
	}
	defer home.close()
	old, err := openNode(topo.Old, netns.SRv6SIDOld, "o0")
	if err != nil {
		return err
	}
	defer old.close()
	nw, err := openNode(topo.New, netns.SRv6SIDNew, "n0")
	if err != nil {
		return err
	}
	defer nw.close()
	for _, loc := range []struct {
		ns, dev string
		sid     netip.Addr
	}{{topo.Old, "o0", netns.SRv6SIDOld}, {topo.New, "n0", netns.SRv6SIDNew}} {
		err := netns.Do(loc.ns, func() error {
			if err := dataplane.SetSRv6TunnelSource(loc.sid); err != nil {
				return err
			}
			return dataplane.SRv6Return{Frontend: fe, HomeSID: netns.SRv6SIDHome, Dev: loc.dev, Table: 100}.Install()
		})
		if err != nil {
			return err
		}
	}
	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		return fmt.Errorf("enable BPF statistics: %w", err)
	}
	defer stats.Close()

	order := []string{"nat", "srv6"}
	if first == "srv6" {
		order = []string{"srv6", "nat"}
	}
	fmt.Printf("order: %s first, then %s\n", order[0], order[1])
	res := map[string]result{}
	for _, mode := range order {
		r, err := scenario(topo, home, old, nw, mode, dur)
		if err != nil {
			return fmt.Errorf("%s: %w", mode, err)
		}
		res[mode] = r
	}
	nat, s6 := res["nat"], res["srv6"]
	fmt.Printf("\nmigration with the old copy removed mid-stream (%s per run, IPv6 client, IPv6 underlay)\n", dur)
	fmt.Printf("%-34s %14s %14s\n", "", "nat", "srv6")
	row := func(k string, a, b any) { fmt.Printf("%-34s %14v %14v\n", k, a, b) }
	row("udp sent", nat.sent, s6.sent)
	row("udp lost", nat.lost, s6.lost)
	row("udp duplicated", nat.dup, s6.dup)
	row("udp reordered", nat.reordered, s6.reordered)
	row("tcp connects", len(nat.connects), len(s6.connects))
	row("tcp connects failed", nat.connFailed, s6.connFailed)
	row("connect p99 (ms)", fmt.Sprintf("%.2f", nat.connP99()), fmt.Sprintf("%.2f", s6.connP99()))
	row("connects over 1 s", nat.connOver1s, s6.connOver1s)
	row("connects with a SYN retransmitted", nat.synRetrans, s6.synRetrans)
	row("path RTT p99 (kernel sample, ms)", fmt.Sprintf("%.3f", nat.pathRTTP99()), fmt.Sprintf("%.3f", s6.pathRTTP99()))
	row("path RTT samples 0 (left out)", nat.rttZero, s6.rttZero)
	row("goodput dip (worst 100ms bin, %)", fmt.Sprintf("%.0f", nat.dipPct()), fmt.Sprintf("%.0f", s6.dipPct()))
	row("client address seen", addrs(nat.seen), addrs(s6.seen))
	row("home XDP ns/packet", fmt.Sprintf("%.0f", nat.nsPerPacket), fmt.Sprintf("%.0f", s6.nsPerPacket))
	fmt.Printf("goodput bins nat  (KB/100ms): %v\n", kb(nat.bins))
	fmt.Printf("goodput bins srv6 (KB/100ms): %v\n", kb(s6.bins))
	out, _ := json.Marshal(map[string]any{
		"first": first, "lost_nat": nat.lost, "lost_srv6": s6.lost, "dup_nat": nat.dup, "dup_srv6": s6.dup,
		"reordered_nat": nat.reordered, "reordered_srv6": s6.reordered,
		"connect_p99_ms_nat": round2(nat.connP99()), "connect_p99_ms_srv6": round2(s6.connP99()),
		"connects_over_1s_nat": nat.connOver1s, "connects_over_1s_srv6": s6.connOver1s,
		"syn_retrans_connects_nat": nat.synRetrans, "syn_retrans_connects_srv6": s6.synRetrans,
		"path_rtt_p99_ms_nat": round3(nat.pathRTTP99()), "path_rtt_p99_ms_srv6": round3(s6.pathRTTP99()),
		"path_rtt_zero_nat": nat.rttZero, "path_rtt_zero_srv6": s6.rttZero,
		"goodput_dip_pct_nat": round2(nat.dipPct()), "goodput_dip_pct_srv6": round2(s6.dipPct()),
		"client_ip_preserved_nat": nat.preserved(), "client_ip_preserved_srv6": s6.preserved(),
		"ns_per_packet_nat": round2(nat.nsPerPacket), "ns_per_packet_srv6": round2(s6.nsPerPacket),
	})
	fmt.Println(string(out))
	return nil
}

func round2(v float64) float64 { return float64(int64(v*100+0.5)) / 100 }

func round3(v float64) float64 { return float64(int64(v*1000+0.5)) / 1000 }

func kb(b []int64) []int64 {
	out := make([]int64, len(b))
	for i, v := range b {
		out[i] = v / 1024
	}
	return out
}

func addrs(m map[netip.Addr]int) string {
	var s []string
	for a := range m {
		s = append(s, a.String())
	}
	sort.Strings(s)
	return strings.Join(s, ",")
}

// scenario runs one migration in mode: [old] until 20% of dur; at 20% the
// new copy serves and the home commits to it (NAT: new flows to new, open
// flows pinned to old; SRv6: path [old, new]); at 40% the old copy drains
// (SRv6); at 50% the old copy is removed (SRv6: the location forwards
// first, the process stops 50 ms later); at 80% SRv6 commits [new].
func scenario(topo *netns.SRv6Topology, home, old, nw *node, mode string, dur time.Duration) (result, error) {
	var r result
	fT := lb.Frontend{Addr: fe, Port: 80, Proto: lb.TCP}
	fU := lb.Frontend{Addr: fe, Port: 7000, Proto: lb.UDP}
	oldSrv, err := netns.StartCopyServer(topo.Old, "old", fe, oldUnder)
	if err != nil {
		return r, err
	}
	oldStopped := false
	defer func() {
		if !oldStopped {
			oldSrv.Close()
		}
	}()
	newSrv, err := netns.StartCopyServer(topo.New, "new", fe, newUnder)
	if err != nil {
		return r, err
	}
	defer newSrv.Close()
	commit := func(f lb.Frontend, t lb.Target) error {
		gen, err := home.d.Stage(f, t)
		if err != nil {
			return err
		}
		return home.d.Commit(f, gen)
	}
	target := func(f lb.Frontend, at netip.Addr, sids ...netip.Addr) lb.Target {
		if mode == "srv6" {
			return lb.SRv6(sids...)
		}
		return lb.Redirect(netip.AddrPortFrom(at, f.Port))
	}
	setCopies := func(n *node, s dataplane.SRv6State) error {
		if mode != "srv6" {
			return nil
		}
		for _, f := range []lb.Frontend{fT, fU} {
			if err := n.d.SetSRv6Copy(f, s); err != nil {
				return err
			}
		}
		return nil
	}
	if err := setCopies(old, dataplane.SRv6Serving); err != nil {
		return r, err
	}
	for _, f := range []lb.Frontend{fT, fU} {
		if err := commit(f, target(f, oldUnder, netns.SRv6SIDOld)); err != nil {
			return r, err
		}
	}
	defer func() {
		for _, f := range []lb.Frontend{fT, fU} {
			_ = home.d.Remove(f)
			for _, n := range []*node{old, nw} {
				_ = n.d.SetSRv6Copy(f, dataplane.SRv6Gone)
			}
		}
	}()
	// Warm up: neighbours resolved, one exchange through each path.
	if err := warm(topo.Client); err != nil {
		return r, fmt.Errorf("warm up: %w", err)
	}
	rt0, runs0, err := home.d.XDPRunStats()
	if err != nil {
		return r, err
	}

	ctx, cancel := context.WithTimeout(context.Background(), dur+5*time.Second)
	defer cancel()
	start := time.Now()
	var wg sync.WaitGroup
	var udpRes, connRes, goodRes result
	wg.Add(3)
	go func() { defer wg.Done(); udpRes = udpStream(ctx, topo.Client, dur) }()
	go func() { defer wg.Done(); connRes = connects(ctx, topo.Client, dur) }()
	go func() { defer wg.Done(); goodRes = goodput(ctx, topo.Client, dur) }()

	at := func(frac float64) { time.Sleep(time.Until(start.Add(time.Duration(frac * float64(dur))))) }
	var evErr error
	at(0.2)
	if err := setCopies(nw, dataplane.SRv6Serving); err != nil {
		evErr = err
	}
	for _, f := range []lb.Frontend{fT, fU} {
		if err := commit(f, target(f, newUnder, netns.SRv6SIDOld, netns.SRv6SIDNew)); err != nil && evErr == nil {
			evErr = err
		}
	}
	at(0.4)
	if err := setCopies(old, dataplane.SRv6Draining); err != nil && evErr == nil {
		evErr = err
	}
	at(0.5)
	if err := setCopies(old, dataplane.SRv6Gone); err != nil && evErr == nil {
		evErr = err
	}
	if mode == "srv6" {
		time.Sleep(50 * time.Millisecond) // packets already delivered are read before the process stops
	}
	oldSrv.Close()
	oldStopped = true
	at(0.8)
	if mode == "srv6" {
		for _, f := range []lb.Frontend{fT, fU} {
			if err := commit(f, lb.SRv6(netns.SRv6SIDNew)); err != nil && evErr == nil {
				evErr = err
			}
		}
	}
	wg.Wait()
	if evErr != nil {
		return r, evErr
	}
	rt1, runs1, err := home.d.XDPRunStats()
	if err != nil {
		return r, err
	}
	r = udpRes
	r.connects, r.pathRTTs, r.rttZero, r.synRetrans = connRes.connects, connRes.pathRTTs, connRes.rttZero, connRes.synRetrans
	r.connFailed, r.connOver1s = connRes.connFailed, connRes.connOver1s
	r.bins = goodRes.bins
	if runs1 > runs0 {
		r.nsPerPacket = float64(rt1-rt0) / float64(runs1-runs0)
	}
	r.seen = map[netip.Addr]int{}
	for _, s := range []*netns.CopyServer{oldSrv, newSrv} {
		for a, n := range s.Seen() {
			r.seen[a] += n
		}
	}
	return r, nil
}

func warm(ns string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := netns.Dial(ctx, ns, "udp", netip.AddrPortFrom(fe, 7000).String())
	if err != nil {
		return err
	}
	defer c.Close()
	buf := make([]byte, 256)
	for i := 0; i < 20; i++ {
		fmt.Fprintf(c, "warm%d", i)
		_ = c.SetReadDeadline(time.Now().Add(250 * time.Millisecond))
		if _, err := c.Read(buf); err == nil {
			return nil
		}
	}
	return fmt.Errorf("no answer through the frontend")
}

// udpStream sends a datagram every millisecond on one socket and counts the answers by sequence number.
func udpStream(ctx context.Context, ns string, dur time.Duration) result {
	var r result
	c, err := netns.Dial(ctx, ns, "udp", netip.AddrPortFrom(fe, 7000).String())
	if err != nil {
		r.lost = -1
		return r
	}
	defer c.Close()
	got := map[int]int{}
	var mu sync.Mutex
	maxSeen, reordered := -1, 0
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 2048)
		for {
			_ = c.SetReadDeadline(time.Now().Add(time.Second))
			n, err := c.Read(buf)
			if err != nil {
				if ne, ok := err.(net.Error); ok && ne.Timeout() && ctx.Err() == nil {
					mu.Lock()
					finished := r.sent > 0
					mu.Unlock()
					if finished {
						return
					}
					continue
				}
				return
			}
			f := strings.Fields(string(buf[:n]))
			if len(f) != 3 {
				continue
			}
			seq, err := strconv.Atoi(f[2])
			if err != nil {
				continue
			}
			mu.Lock()
			got[seq]++
			if seq < maxSeen {
				reordered++
			} else {
				maxSeen = seq
			}
			mu.Unlock()
		}
	}()
	t := time.NewTicker(time.Millisecond)
	defer t.Stop()
	end := time.Now().Add(dur)
	seq := 0
	for time.Now().Before(end) {
		<-t.C
		fmt.Fprintf(c, "%d", seq)
		seq++
	}
	mu.Lock()
	r.sent = seq
	mu.Unlock()
	<-done
	mu.Lock()
	defer mu.Unlock()
	for i := 0; i < seq; i++ {
		switch n := got[i]; {
		case n == 0:
			r.lost++
		case n > 1:
			r.dup += n - 1
		}
	}
	r.reordered = reordered
	return r
}

// connects opens a new TCP connection every 10 ms and times the dial as the
// program sees it (with its goroutine's and thread's scheduling). Right
// after connect it reads TCP_INFO: whether a SYN was retransmitted, and the
// kernel's RTT sample (which no scheduling delays; see result.pathRTTs).
func connects(ctx context.Context, ns string, dur time.Duration) result {
	var r result
	var mu sync.Mutex
	var wg sync.WaitGroup
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	end := time.Now().Add(dur)
	for time.Now().Before(end) {
		<-t.C
		wg.Add(1)
		go func() {
			defer wg.Done()
			dctx, cancel := context.WithTimeout(ctx, 3*time.Second)
			defer cancel()
			t0 := time.Now()
			c, err := netns.Dial(dctx, ns, "tcp", netip.AddrPortFrom(fe, 80).String())
			d := time.Since(t0)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				r.connFailed++
				return
			}
			if ti, ok := tcpInfo(c); ok {
				if ti.Total_retrans > 0 {
					r.synRetrans++
				}
				if ti.Rtt == 0 {
					r.rttZero++
				} else {
					r.pathRTTs = append(r.pathRTTs, time.Duration(ti.Rtt)*time.Microsecond)
				}
			}
			c.Close()
			r.connects = append(r.connects, d)
			if d > time.Second {
				r.connOver1s++
			}
		}()
	}
	wg.Wait()
	return r
}

// tcpInfo is c's TCP_INFO (read before any data, so a retransmission
// counted there is a SYN's).
func tcpInfo(c net.Conn) (*unix.TCPInfo, bool) {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return nil, false
	}
	raw, err := tc.SyscallConn()
	if err != nil {
		return nil, false
	}
	var ti *unix.TCPInfo
	_ = raw.Control(func(fd uintptr) {
		if t, err := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO); err == nil {
			ti = t
		}
	})
	return ti, ti != nil
}

// goodput downloads 256 KB at a time on a kept connection, reconnecting when it dies, and counts bytes per 100 ms.
func goodput(ctx context.Context, ns string, dur time.Duration) result {
	var r result
	start := time.Now()
	r.bins = make([]int64, int(dur/(100*time.Millisecond))+1)
	var c net.Conn
	defer func() {
		if c != nil {
			c.Close()
		}
	}()
	buf := make([]byte, 64<<10)
	for time.Since(start) < dur {
		if c == nil {
			dctx, cancel := context.WithTimeout(ctx, time.Second)
			var err error
			c, err = netns.Dial(dctx, ns, "tcp", netip.AddrPortFrom(fe, 80).String())
			cancel()
			if err != nil {
				c = nil
				continue
			}
		}
		_ = c.SetDeadline(time.Now().Add(time.Second))
		if _, err := fmt.Fprintf(c, "get %d\n", 256<<10); err != nil {
			c.Close()
			c = nil
			continue
		}
		left := 256 << 10
		for left > 0 {
			n, err := c.Read(buf[:min(left, len(buf))])
			if n > 0 {
				if i := int(time.Since(start) / (100 * time.Millisecond)); i < len(r.bins) {
					r.bins[i] += int64(n)
				}
				left -= n
			}
			if err != nil {
				if err != io.EOF || left > 0 {
					c.Close()
					c = nil
				}
				break
			}
		}
	}
	return r
}
