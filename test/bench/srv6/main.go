// Command srv6 is `make bench-srv6`: the NAT and the SRv6 path mode side by
// side on the same namespaces (netns.SRv6Topology: an IPv6 client, the
// home, an old and a new location over an IPv6 underlay), each through the
// same migration with the old copy removed in the middle.
//
// Per mode, one after the other (which first is chosen at random per
// invocation, printed; -first forces it): a UDP stream with sequence
// numbers (lost, duplicated, reordered), TCP goodput in 100 ms bins of a
// client that downloads in a loop and reconnects when its connection dies,
// the client address the service sees, and the XDP cost per packet at the
// home and at both locations (kernel BPF statistics).
//
// Session opening, both modes in the same moments: -rounds migrations of
// two frontends at once (the same address, one port per mode, the same
// copies), new TCP connections at a fixed pace alternating between them
// (in an order drawn at random per pair), from one client process under
// one load. Per mode: the connect time's p99 and p50 as the program sees
// it over all the rounds' connects pooled, a failed dial counted as the
// dial timeout (a lost opening is the worst opening, not a missing
// sample), and the same per round with the medians of those beside; the
// kernel's path RTT sample (medians of the rounds'), connects failed, over
// 1 s and those whose SYN was retransmitted. A round in which a mode had
// no successful connect fails the run's verdict (exit status 1 after the
// JSON). Last line: one JSON object.
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
	dur := flag.Duration("duration", 3*time.Second, "length of one migration (its events at fixed fractions of it)")
	first := flag.String("first", "", "mode whose loss/goodput/cost scenario runs first: nat or srv6 (default: chosen at random)")
	rounds := flag.Int("rounds", 12, "connect rounds: migrations of two NAT frontends and an SRv6 one at once, new connections alternating between them")
	roundDur := flag.Duration("round-duration", 6*time.Second, "length of one connect round's migration (its events at the same fractions as -duration's)")
	every := flag.Duration("connect-every", 4*time.Millisecond, "pace of new connections in a connect round (each of the three frontends gets every third one)")
	flag.Parse()
	if *first == "" {
		*first = []string{"nat", "srv6"}[rand.IntN(2)]
	}
	if *first != "nat" && *first != "srv6" {
		fmt.Fprintf(os.Stderr, "bench-srv6: -first %q: want nat or srv6\n", *first)
		os.Exit(2)
	}
	if *rounds < 1 || *every <= 0 || *roundDur <= 0 {
		fmt.Fprintln(os.Stderr, "bench-srv6: -rounds must be at least 1, -connect-every and -round-duration positive")
		os.Exit(2)
	}
	if err := run(*dur, *first, *rounds, *roundDur, *every); err != nil {
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

// result is one mode's scenario: the UDP stream, the goodput bins, the
// client addresses the copies saw and the XDP cost per packet at the home,
// the old and the new location.
type result struct {
	sent, lost, dup, reordered int
	bins                       []int64 // bytes per 100 ms
	seen                       map[netip.Addr]int
	nsPerPacket                [3]float64 // home, old, new
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

func run(dur time.Duration, first string, rounds int, roundDur, every time.Duration) error {
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
	fmt.Printf("loss/goodput/cost scenarios: %s first, then %s\n", order[0], order[1])
	res := map[string]result{}
	for _, mode := range order {
		r, err := scenario(topo, home, old, nw, mode, dur)
		if err != nil {
			return fmt.Errorf("%s: %w", mode, err)
		}
		res[mode] = r
	}
	fmt.Printf("connect rounds: %d migrations (%s each) of an SRv6 and two NAT frontends at once (nat2: the A/A control), a new connection every %s alternating among them\n", rounds, roundDur, every)
	var natRounds, nat2Rounds, s6Rounds []connResult
	for i := 0; i < rounds; i++ {
		n, n2, s, err := connectRound(topo, home, old, nw, roundDur, every)
		if err != nil {
			return fmt.Errorf("connect round %d: %w", i+1, err)
		}
		natRounds, nat2Rounds, s6Rounds = append(natRounds, n), append(nat2Rounds, n2), append(s6Rounds, s)
	}
	nat, s6 := res["nat"], res["srv6"]
	cmp := compare(natRounds, s6Rounds)
	aa := compareTo(natRounds, nat2Rounds, "nat2") // the A/A control: how far two identical modes differ
	cn, cs, cn2 := cmp.nat, cmp.s6, aa.s6
	rng := rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))
	bn, bs, bn2 := blocks(natRounds, roundDur), blocks(s6Rounds, roundDur), blocks(nat2Rounds, roundDur)
	ivS6, okS6 := bootstrapP99Ratio(bn, bs, blocksPerRound(roundDur), bootResamples, rng)
	ivAA, okAA := bootstrapP99Ratio(bn, bn2, blocksPerRound(roundDur), bootResamples, rng)
	fmt.Printf("\n%-6s %9s %9s %9s %7s %7s %9s %9s %12s %12s %14s %14s\n", "round", "nat p99", "nat2 p99", "srv6 p99", "s6/nat", "n2/nat", "nat p50", "srv6 p50",
		"nat rtt p99", "srv6 rtt p99", "connects n/2/s", "failed n/2/s")
	for i := range natRounds {
		ratio, ratioAA := "empty", "empty"
		if cmp.roundOK[i] {
			ratio = fmt.Sprintf("%.2f", cmp.roundRatio[i])
		}
		if aa.roundOK[i] {
			ratioAA = fmt.Sprintf("%.2f", aa.roundRatio[i])
		}
		fmt.Printf("%-6d %9.2f %9.2f %9.2f %7s %7s %9.2f %9.2f %12.3f %12.3f %4d/%4d/%-4d %4d/%4d/%-4d\n", i+1, cn.roundP99[i], cn2.roundP99[i], cs.roundP99[i], ratio, ratioAA,
			cn.roundP50[i], cs.roundP50[i], cn.rttP99[i], cs.rttP99[i], len(natRounds[i].connects), len(nat2Rounds[i].connects), len(s6Rounds[i].connects),
			natRounds[i].failed, nat2Rounds[i].failed, s6Rounds[i].failed)
	}

	fmt.Printf("\nby phase of the migration, all rounds pooled (ms; a failed dial counts as %s)\n%-24s %16s %16s %16s %16s %12s\n", dialTimeout, "phase (srv6 path)",
		"connect p50 n/s", "connect p99 n/s", "path rtt p50 n/s", "path rtt p99 n/s", "failed n/s")
	for i, ph := range phases {
		var nc, sc, nr, sr []time.Duration
		var nf, sf int
		for j := range natRounds {
			np, sp := &natRounds[j].byPhase[i], &s6Rounds[j].byPhase[i]
			nc = append(nc, opens(np.connects, np.failed)...)
			sc = append(sc, opens(sp.connects, sp.failed)...)
			nr = append(nr, np.pathRTTs...)
			sr = append(sr, sp.pathRTTs...)
			nf, sf = nf+np.failed, sf+sp.failed
		}
		fmt.Printf("%-24s %7.2f/%-8.2f %7.2f/%-8.2f %7.3f/%-8.3f %7.3f/%-8.3f %5d/%-6d\n", ph.name, pct(nc, 50), pct(sc, 50),
			pct(nc, 99), pct(sc, 99), pct(nr, 50), pct(sr, 50), pct(nr, 99), pct(sr, 99), nf, sf)
	}

	fmt.Printf("\nmigration with the old copy removed mid-stream (%s per run, IPv6 client, IPv6 underlay)\n", dur)
	fmt.Printf("%-40s %14s %14s\n", "", "nat", "srv6")
	row := func(k string, a, b any) { fmt.Printf("%-40s %14v %14v\n", k, a, b) }
	row("udp sent", nat.sent, s6.sent)
	row("udp lost", nat.lost, s6.lost)
	row("udp duplicated", nat.dup, s6.dup)
	row("udp reordered", nat.reordered, s6.reordered)
	row("goodput dip (worst 100ms bin, %)", fmt.Sprintf("%.0f", nat.dipPct()), fmt.Sprintf("%.0f", s6.dipPct()))
	row("client address seen", addrs(nat.seen), addrs(s6.seen))
	row("home XDP ns/packet", fmt.Sprintf("%.0f", nat.nsPerPacket[0]), fmt.Sprintf("%.0f", s6.nsPerPacket[0]))
	row("old location XDP ns/packet", fmt.Sprintf("%.0f", nat.nsPerPacket[1]), fmt.Sprintf("%.0f", s6.nsPerPacket[1]))
	row("new location XDP ns/packet", fmt.Sprintf("%.0f", nat.nsPerPacket[2]), fmt.Sprintf("%.0f", s6.nsPerPacket[2]))
	fmt.Printf("connect rounds (both modes interleaved, %d rounds; a failed dial counts as %s in the connect times):\n", rounds, dialTimeout)
	row("tcp connects (successful)", cn.n, cs.n)
	row("tcp connects failed", cn.failed, cs.failed)
	row("rounds without a successful connect", len(cn.empty), len(cs.empty))
	row("connect p99, all rounds pooled (ms)", fmt.Sprintf("%.2f", cn.p99), fmt.Sprintf("%.2f", cs.p99))
	row("  A/A control nat2: connects, failed", fmt.Sprintf("%d, %d", cn2.n, cn2.failed), "")
	row("  A/A control nat2: connect p99 (ms)", fmt.Sprintf("%.2f", cn2.p99), "")
	row("connect p99, median of rounds (ms)", fmt.Sprintf("%.2f", median(cn.roundP99)), fmt.Sprintf("%.2f", median(cs.roundP99)))
	row("connect p50, all rounds pooled (ms)", fmt.Sprintf("%.2f", cn.p50), fmt.Sprintf("%.2f", cs.p50))
	row("connects over 1 s (or failed)", cn.over1s, cs.over1s)
	row("connects with a SYN retransmitted", cn.synRetrans, cs.synRetrans)
	row("path RTT p99, median of rounds (ms)", fmt.Sprintf("%.3f", median(cn.rttP99)), fmt.Sprintf("%.3f", median(cs.rttP99)))
	row("path RTT p50, median of rounds (ms)", fmt.Sprintf("%.3f", median(cn.rttP50)), fmt.Sprintf("%.3f", median(cs.rttP50)))
	row("path RTT samples 0 (left out)", cn.rttZero, cs.rttZero)
	var ratio, roundRatio any // null in the JSON when undefined
	if cmp.ratioOK {
		ratio = round2(cmp.ratio)
	}
	if m, ok := cmp.roundRatioMedian(); ok {
		roundRatio = round2(m)
	}
	var ratioAA any
	if aa.ratioOK {
		ratioAA = round2(aa.ratio)
	}
	fmt.Printf("connect p99 srv6/nat: pooled %v, median of the rounds' ratios %v (rounds without a successful connect of a mode have none)\n", ratio, roundRatio)
	ivJSON := func(iv interval, ok bool) any {
		if !ok {
			return nil
		}
		return []float64{round2(iv.lo), round2(iv.hi)}
	}
	judgeS6, judgeAA := "undefined", "undefined"
	if okS6 {
		judgeS6 = ivS6.judge()
	}
	if okAA {
		judgeAA = ivAA.judge()
	}
	fmt.Printf("connect p99 ratio, 95%% interval (block bootstrap, %s blocks, %d resamples): srv6/nat %v %v -> %s; A/A nat2/nat %v %v -> %s\n",
		bootBlock, bootResamples, ratio, ivJSON(ivS6, okS6), judgeS6, ratioAA, ivJSON(ivAA, okAA), judgeAA)
	// The goal "session-opening p99 no worse than NAT", a non-inferiority
	// claim with the margin noWorseMargin: met only when SRv6's interval
	// lies at or below 1+margin; "inconclusive" when it holds 1+margin,
	// "worse" when it lies above.
	goal := "undefined"
	if okS6 {
		goal = ivS6.noWorse(noWorseMargin)
	}
	goalMet := goal == "met"
	fmt.Printf("goal (connect p99 no worse than NAT, margin %.0f%%: interval's upper end <= %.2f): %s (met %v)\n", noWorseMargin*100, 1+noWorseMargin, goal, goalMet)
	fmt.Printf("goodput bins nat  (KB/100ms): %v\n", kb(nat.bins))
	fmt.Printf("goodput bins srv6 (KB/100ms): %v\n", kb(s6.bins))
	// The run's verdict: every mode, the control too, had a successful
	// connect in every round.
	failures := append([]string{}, cmp.failures...)
	for _, f := range aa.failures {
		if strings.Contains(f, " nat2 dial") { // nat's are in cmp's already
			failures = append(failures, f)
		}
	}
	verdict := "ok"
	if len(failures) > 0 {
		verdict = "fail"
	}
	fmt.Printf("verdict: %s\n", verdict)
	for _, f := range failures {
		fmt.Printf("  %s\n", f)
	}
	out, err := json.Marshal(map[string]any{
		"first": first, "lost_nat": nat.lost, "lost_srv6": s6.lost, "dup_nat": nat.dup, "dup_srv6": s6.dup,
		"reordered_nat": nat.reordered, "reordered_srv6": s6.reordered,
		"connect_rounds": rounds, "connects_nat": cn.n, "connects_srv6": cs.n,
		"connects_failed_nat": cn.failed, "connects_failed_srv6": cs.failed,
		"connect_empty_rounds_nat": len(cn.empty), "connect_empty_rounds_srv6": len(cs.empty),
		"dial_timeout_ms":    dialTimeout.Milliseconds(),
		"connect_p99_ms_nat": round2(cn.p99), "connect_p99_ms_srv6": round2(cs.p99),
		"connect_p99_ms_round_median_nat": round2(median(cn.roundP99)), "connect_p99_ms_round_median_srv6": round2(median(cs.roundP99)),
		"connect_p99_ms_rounds_nat": roundAll(cn.roundP99), "connect_p99_ms_rounds_srv6": roundAll(cs.roundP99),
		"connect_p99_ratio_srv6_nat": ratio, "connect_p99_ratio_round_median_srv6_nat": roundRatio,
		"connects_nat2": cn2.n, "connects_failed_nat2": cn2.failed, "connect_empty_rounds_nat2": len(cn2.empty),
		"connect_p99_ms_nat2": round2(cn2.p99), "connect_p99_ms_rounds_nat2": roundAll(cn2.roundP99),
		"connect_p99_ratio_nat2_nat":      ratioAA,
		"connect_p99_ratio_srv6_nat_ci95": ivJSON(ivS6, okS6), "connect_p99_ratio_nat2_nat_ci95": ivJSON(ivAA, okAA),
		"connect_p99_srv6_vs_nat": judgeS6, "connect_p99_nat2_vs_nat": judgeAA,
		"goal_connect_p99_no_worse_than_nat": goalMet, "goal_connect_p99_no_worse_than_nat_verdict": goal,
		"goal_connect_p99_margin": noWorseMargin,
		"bootstrap_block_ms":      bootBlock.Milliseconds(), "bootstrap_resamples": bootResamples,
		"connect_p50_ms_nat": round2(cn.p50), "connect_p50_ms_srv6": round2(cs.p50),
		"connect_p50_ms_round_median_nat": round2(median(cn.roundP50)), "connect_p50_ms_round_median_srv6": round2(median(cs.roundP50)),
		"connects_over_1s_nat": cn.over1s, "connects_over_1s_srv6": cs.over1s,
		"syn_retrans_connects_nat": cn.synRetrans, "syn_retrans_connects_srv6": cs.synRetrans,
		"path_rtt_p99_ms_nat": round3(median(cn.rttP99)), "path_rtt_p99_ms_srv6": round3(median(cs.rttP99)),
		"path_rtt_p50_ms_nat": round3(median(cn.rttP50)), "path_rtt_p50_ms_srv6": round3(median(cs.rttP50)),
		"path_rtt_zero_nat": cn.rttZero, "path_rtt_zero_srv6": cs.rttZero,
		"goodput_dip_pct_nat": round2(nat.dipPct()), "goodput_dip_pct_srv6": round2(s6.dipPct()),
		"client_ip_preserved_nat": nat.preserved(), "client_ip_preserved_srv6": s6.preserved(),
		"ns_per_packet_nat": round2(nat.nsPerPacket[0]), "ns_per_packet_srv6": round2(s6.nsPerPacket[0]),
		"ns_per_packet_old_nat": round2(nat.nsPerPacket[1]), "ns_per_packet_old_srv6": round2(s6.nsPerPacket[1]),
		"ns_per_packet_new_nat": round2(nat.nsPerPacket[2]), "ns_per_packet_new_srv6": round2(s6.nsPerPacket[2]),
		"verdict": verdict, "verdict_failures": failures,
	})
	if err != nil {
		return fmt.Errorf("JSON: %w", err)
	}
	fmt.Println(string(out))
	if len(failures) > 0 {
		return fmt.Errorf("verdict fail: %s", strings.Join(failures, "; "))
	}
	return nil
}

func roundAll(v []float64) []float64 {
	out := make([]float64, len(v))
	for i, x := range v {
		out[i] = round2(x)
	}
	return out
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

// svc is one service of a migration: a frontend in one mode. A NAT
// frontend is redirected to the copy's underlay address on copyPort (the
// home translates the port); an SRv6 one is delivered to the frontend
// itself at the location, where the copy listens on it.
type svc struct {
	f        lb.Frontend
	srv6     bool
	copyPort uint16
}

// to is the target that sends s to the copy at under, along sids in SRv6 mode.
func (s svc) to(under netip.Addr, sids ...netip.Addr) lb.Target {
	if s.srv6 {
		return lb.SRv6(sids...)
	}
	return lb.Redirect(netip.AddrPortFrom(under, s.copyPort))
}

// modeSvcs are a per-mode scenario's services: TCP and UDP on the frontend.
func modeSvcs(mode string) []svc {
	s6 := mode == "srv6"
	return []svc{
		{lb.Frontend{Addr: fe, Port: netns.CopyTCPPort, Proto: lb.TCP}, s6, netns.CopyTCPPort},
		{lb.Frontend{Addr: fe, Port: netns.CopyUDPPort, Proto: lb.UDP}, s6, netns.CopyUDPPort},
	}
}

// Interleaved connect rounds: the same copy's TCP port behind three
// frontends of the same address at once, one in SRv6 mode and two in NAT
// mode (the second, connNAT2, the A/A control: measured the same way in
// the same moments as connNAT, it shows how far two identical modes
// differ).
var (
	connSRv6 = svc{lb.Frontend{Addr: fe, Port: netns.CopyTCPPort, Proto: lb.TCP}, true, netns.CopyTCPPort}
	connNAT  = svc{lb.Frontend{Addr: fe, Port: netns.CopyTCPPort + 1, Proto: lb.TCP}, false, netns.CopyTCPPort}
	connNAT2 = svc{lb.Frontend{Addr: fe, Port: netns.CopyTCPPort + 2, Proto: lb.TCP}, false, netns.CopyTCPPort}
)

// migrate runs one migration of svcs, all through the same events at the
// same moments: [old] until 20% of dur; at 20% the new copy serves and the
// home commits to it (NAT: new flows to new, open flows pinned to old;
// SRv6: path [old, new]); at 40% the old copy drains (SRv6); at 50% the old
// copy is removed (SRv6: the location forwards first, the process stops
// 50 ms later); at 80% SRv6 commits [new]. traffic starts at 0 (after one
// exchange through each frontend) and returns by itself about dur later.
// migrate returns the client addresses the copies saw.
func migrate(topo *netns.SRv6Topology, home, old, nw *node, svcs []svc, dur time.Duration, traffic func(ctx context.Context) error) (map[netip.Addr]int, error) {
	anySRv6 := slices.ContainsFunc(svcs, func(s svc) bool { return s.srv6 })
	oldSrv, err := netns.StartCopyServer(topo.Old, "old", fe, oldUnder)
	if err != nil {
		return nil, err
	}
	oldStopped := false
	defer func() {
		if !oldStopped {
			oldSrv.Close()
		}
	}()
	newSrv, err := netns.StartCopyServer(topo.New, "new", fe, newUnder)
	if err != nil {
		return nil, err
	}
	defer newSrv.Close()
	commit := func(f lb.Frontend, t lb.Target) error {
		gen, err := home.d.Stage(f, t)
		if err != nil {
			return err
		}
		return home.d.Commit(f, gen)
	}
	setCopies := func(n *node, st dataplane.SRv6State) error {
		for _, s := range svcs {
			if !s.srv6 {
				continue
			}
			if err := n.d.SetSRv6Copy(s.f, st); err != nil {
				return err
			}
		}
		return nil
	}
	if err := setCopies(old, dataplane.SRv6Serving); err != nil {
		return nil, err
	}
	for _, s := range svcs {
		if err := commit(s.f, s.to(oldUnder, netns.SRv6SIDOld)); err != nil {
			return nil, err
		}
	}
	defer func() {
		for _, s := range svcs {
			_ = home.d.Remove(s.f)
			for _, n := range []*node{old, nw} {
				_ = n.d.SetSRv6Copy(s.f, dataplane.SRv6Gone)
			}
		}
	}()
	// Warm up: neighbours resolved, one exchange through each path.
	if err := warm(topo.Client, svcs); err != nil {
		return nil, fmt.Errorf("warm up: %w", err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), dur+5*time.Second)
	defer cancel()
	start := time.Now()
	trafficErr := make(chan error, 1)
	go func() { trafficErr <- traffic(ctx) }()

	at := func(frac float64) { time.Sleep(time.Until(start.Add(time.Duration(frac * float64(dur))))) }
	var evErr error
	at(0.2)
	if err := setCopies(nw, dataplane.SRv6Serving); err != nil {
		evErr = err
	}
	for _, s := range svcs {
		if err := commit(s.f, s.to(newUnder, netns.SRv6SIDOld, netns.SRv6SIDNew)); err != nil && evErr == nil {
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
	if anySRv6 {
		time.Sleep(50 * time.Millisecond) // packets already delivered are read before the process stops
	}
	oldSrv.Close()
	oldStopped = true
	at(0.8)
	for _, s := range svcs {
		if !s.srv6 {
			continue
		}
		if err := commit(s.f, lb.SRv6(netns.SRv6SIDNew)); err != nil && evErr == nil {
			evErr = err
		}
	}
	if err := <-trafficErr; err != nil && evErr == nil {
		evErr = err
	}
	if evErr != nil {
		return nil, evErr
	}
	seen := map[netip.Addr]int{}
	for _, s := range []*netns.CopyServer{oldSrv, newSrv} {
		for a, n := range s.Seen() {
			seen[a] += n
		}
	}
	return seen, nil
}

// scenario runs one migration in mode (migrate) under a UDP stream and a
// goodput client, and times the home's, the old and the new location's XDP
// program per packet meanwhile.
func scenario(topo *netns.SRv6Topology, home, old, nw *node, mode string, dur time.Duration) (result, error) {
	var r result
	var udpRes, goodRes result
	nodes := []*node{home, old, nw}
	seen, err := migrate(topo, home, old, nw, modeSvcs(mode), dur, func(ctx context.Context) error {
		before, err := runStats(nodes)
		if err != nil {
			return err
		}
		var wg sync.WaitGroup
		wg.Add(2)
		go func() { defer wg.Done(); udpRes = udpStream(ctx, topo.Client, dur) }()
		go func() { defer wg.Done(); goodRes = goodput(ctx, topo.Client, dur) }()
		wg.Wait()
		after, err := runStats(nodes)
		if err != nil {
			return err
		}
		for i := range nodes {
			if runs := after[i].runs - before[i].runs; runs > 0 {
				r.nsPerPacket[i] = float64(after[i].t-before[i].t) / float64(runs)
			}
		}
		return nil
	})
	if err != nil {
		return r, err
	}
	r.sent, r.lost, r.dup, r.reordered = udpRes.sent, udpRes.lost, udpRes.dup, udpRes.reordered
	r.bins = goodRes.bins
	r.seen = seen
	return r, nil
}

type runStat struct {
	t    time.Duration
	runs uint64
}

// runStats reads each node's XDP run time and count (kernel BPF statistics).
func runStats(nodes []*node) ([]runStat, error) {
	out := make([]runStat, len(nodes))
	for i, n := range nodes {
		t, runs, err := n.d.XDPRunStats()
		if err != nil {
			return nil, err
		}
		out[i] = runStat{t, runs}
	}
	return out, nil
}

// connectRound runs one migration of connNAT, connNAT2 and connSRv6
// together under new connections that alternate among them (connects):
// the modes in the same moments, from the same client process under the
// same load.
func connectRound(topo *netns.SRv6Topology, home, old, nw *node, dur, every time.Duration) (nat, nat2, s6 connResult, err error) {
	var res []connResult
	_, err = migrate(topo, home, old, nw, []svc{connNAT, connNAT2, connSRv6}, dur, func(ctx context.Context) error {
		res = connects(ctx, topo.Client, []lb.Frontend{connNAT.f, connNAT2.f, connSRv6.f}, every, dur)
		return nil
	})
	if err != nil {
		return nat, nat2, s6, err
	}
	return res[0], res[1], res[2], nil
}

// warm makes one exchange through each of svcs' frontends from ns (a
// datagram answered, or a connection answering a line), retrying while the
// path is being set up.
func warm(ns string, svcs []svc) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	buf := make([]byte, 256)
	for _, s := range svcs {
		addr := netip.AddrPortFrom(s.f.Addr, s.f.Port).String()
		ok := false
		for i := 0; i < 20 && !ok && ctx.Err() == nil; i++ {
			network := "udp"
			if s.f.Proto == lb.TCP {
				network = "tcp"
			}
			dctx, dcancel := context.WithTimeout(ctx, 250*time.Millisecond)
			c, err := netns.Dial(dctx, ns, network, addr)
			dcancel()
			if err != nil {
				time.Sleep(50 * time.Millisecond)
				continue
			}
			fmt.Fprintf(c, "warm%d\n", i)
			_ = c.SetReadDeadline(time.Now().Add(250 * time.Millisecond))
			_, err = c.Read(buf)
			c.Close()
			ok = err == nil
		}
		if !ok {
			return fmt.Errorf("no answer through %s", s.f)
		}
	}
	return nil
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

// connResult is what connects measured toward one frontend.
type connResult struct {
	connects []time.Duration // each dial as the program sees it
	// pathRTTs are the kernel's RTT samples (TCP_INFO rtt right after
	// connect: the SYN's or, with a retransmitted SYN, per Karn's rule none
	// or the last one's), the zero ones left out and counted in rttZero.
	// Retransmission delays are in connects, over1s and synRetrans, never
	// here.
	pathRTTs []time.Duration
	// failed counts the dials that failed (their times are not in
	// connects; the percentiles count each as dialTimeout: opens), over1s
	// the successful ones over 1 s.
	rttZero, synRetrans, failed, over1s int
	// timed are all the openings, successful and failed (as dialTimeout),
	// with the time their dial started, since the round's start: the
	// bootstrap's blocks.
	timed []timedOpen
	// byPhase are connects, pathRTTs and failed again, by the migration's
	// phase the dial started in (phases).
	byPhase [nPhases]struct {
		connects, pathRTTs []time.Duration
		failed             int
	}
}

// timedOpen is one opening: when its dial started (since the round's
// start) and how long it took (dialTimeout if it failed).
type timedOpen struct{ at, d time.Duration }

// phases are a migration's phases (migrate), as fractions of its length:
// the path a new connection takes in SRv6 mode differs in each (NAT: to
// the old copy, then from 20% to the new one).
const nPhases = 5

var phases = [nPhases]struct {
	name     string
	from, to float64
}{
	{"[old]", 0, 0.2}, {"[old,new] old serving", 0.2, 0.4}, {"[old,new] old draining", 0.4, 0.5},
	{"[old,new] old gone", 0.5, 0.8}, {"[new]", 0.8, 1.01},
}

func phaseAt(frac float64) int {
	for i, p := range phases {
		if frac < p.to {
			return i
		}
	}
	return len(phases) - 1
}

// connects opens a new TCP connection every `every`, to each of fs in turn:
// round k opens one to each, in an order drawn at random for that round,
// so that no frontend always goes first or follows the same one. It times
// each dial as the program sees it (with its goroutine's and thread's
// scheduling, the same for every frontend) and right after connect reads
// TCP_INFO: whether a SYN was retransmitted, and the kernel's RTT sample
// (which no scheduling delays). One result per frontend.
func connects(ctx context.Context, ns string, fs []lb.Frontend, every, dur time.Duration) []connResult {
	res := make([]connResult, len(fs))
	var mu sync.Mutex
	var wg sync.WaitGroup
	t := time.NewTicker(every)
	defer t.Stop()
	start := time.Now()
	end := start.Add(dur)
	perm := make([]int, len(fs))
	for i := 0; time.Now().Before(end); i++ {
		<-t.C
		if i%len(fs) == 0 {
			for j := range perm {
				perm[j] = j
			}
			rand.Shuffle(len(perm), func(a, b int) { perm[a], perm[b] = perm[b], perm[a] })
		}
		k := perm[i%len(fs)]
		addr := netip.AddrPortFrom(fs[k].Addr, fs[k].Port).String()
		wg.Add(1)
		go func() {
			defer wg.Done()
			dctx, cancel := context.WithTimeout(ctx, dialTimeout)
			defer cancel()
			t0 := time.Now()
			c, err := netns.Dial(dctx, ns, "tcp", addr)
			d := time.Since(t0)
			mu.Lock()
			defer mu.Unlock()
			r := &res[k]
			ph := &r.byPhase[phaseAt(float64(t0.Sub(start))/float64(dur))]
			if err != nil {
				r.failed++
				ph.failed++
				r.timed = append(r.timed, timedOpen{t0.Sub(start), dialTimeout})
				return
			}
			if ti, ok := tcpInfo(c); ok {
				if ti.Total_retrans > 0 {
					r.synRetrans++
				}
				if ti.Rtt == 0 {
					r.rttZero++
				} else {
					rtt := time.Duration(ti.Rtt) * time.Microsecond
					r.pathRTTs = append(r.pathRTTs, rtt)
					ph.pathRTTs = append(ph.pathRTTs, rtt)
				}
			}
			c.Close()
			r.connects = append(r.connects, d)
			r.timed = append(r.timed, timedOpen{t0.Sub(start), d})
			ph.connects = append(ph.connects, d)
			if d > time.Second {
				r.over1s++
			}
		}()
	}
	wg.Wait()
	return res
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
