// Command dataplane (make bench-dataplane, root) measures what one core
// pays to forward a packet through each way a home node can send a
// frontend's traffic to its target:
//
//	(a) roam's XDP redirector, loaded and configured by the dataplane package as the agent does,
//	(b) iptables DNAT+SNAT with conntrack (what kube-proxy does),
//	(c) the same with nftables,
//	(d) a userspace Go proxy.
//
// The generator is the kernel's own: an XDP program run by
// BPF_PROG_TEST_RUN with live frames from the client namespace, sending
// out of the client's veth. Generator, forwarder and sink (an XDP program
// at the far end that counts and drops) all run on one CPU, one after the
// other, so a path's rate is what one core does for all of it; the
// reference path (generator to a drop at the forwarder's ingress) is
// measured the same way, and 1/pps − 1/pps_reference is the forwarding
// cost per packet. Rates are packets delivered per second of CPU time
// spent on them (the generator's thread, ksoftirqd of that CPU and the
// proxy's threads), so other work on this shared machine does not count;
// wall-clock rates and the CPU share are printed beside them.
//
// Every path has its own namespaces, so samples of all paths alternate,
// and each figure is the median of -reps samples. It ends with a table and,
// as the very last line, one JSON object with the figures.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"math"
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/roamnet/roam/dataplane"
	"github.com/roamnet/roam/test/netns"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == proxyFlag {
		if err := runProxy(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		return
	}
	var o options
	flag.IntVar(&o.reps, "reps", 5, "samples per path and scenario (figures are medians)")
	flag.IntVar(&o.cpu, "cpu", 0, "the CPU generator, forwarders and sink run on")
	flag.DurationVar(&o.sample, "sample", 300*time.Millisecond, "CPU time one sample aims at")
	flag.IntVar(&o.repeat, "repeat", 1_000_000, "BPF_PROG_TEST_RUN repeat count of the program-cost figure")
	flag.Uint64Var(&o.few, "flows", 1024, "flows of the established-flow figures")
	flag.Uint64Var(&o.mid, "flows-mid", 100_000, "flows of the first large-conntrack figure")
	flag.Uint64Var(&o.big, "flows-big", 1_000_000, "flows of the second large-conntrack figure")
	flag.Uint64Var(&o.newFlows, "new-flows", 100_000, "new flows per new-flow sample (conntrack is emptied before each)")
	churn := flag.Uint("churn", 200_000, "flows that come and go before each established-flow scenario (0: a fresh table)")
	only := flag.String("scenarios", "", "comma-separated scenario keys to run (est4,new4,mid4,big4,est6,new6; default all)")
	onlyPaths := flag.String("paths", "", "comma-separated paths to measure besides the reference (xdp,xdpo,floor,iptables,nftables,userspace; default all): for experiments, the ratios need all")
	flag.StringVar(&o.profile, "profile", "", "directory: record one extra sample of each path under perf record -C <cpu> and print its top symbols")
	flag.BoolVar(&o.ablate, "ablate", false, "only profile roam's XDP program: build bpf/roam.c with each stage switched off (ROAM_ABLATE, bpf/consts.h) and measure the builds under BPF_PROG_TEST_RUN")
	flag.StringVar(&o.bpfDir, "bpf-dir", "bpf", "the data plane's C sources, for -ablate")
	flag.IntVar(&o.ablateRounds, "ablate-rounds", 30, "rounds of -ablate (every build measured once a round)")
	flag.IntVar(&o.ablateRepeat, "ablate-repeat", 200_000, "BPF_PROG_TEST_RUN repeat count of one -ablate measurement")
	flag.StringVar(&o.ablateOnly, "ablate-only", "", "only the -ablate builds whose name contains this")
	flag.StringVar(&o.ablateSrc, "ablate-src", "", "comma-separated directories holding other versions of bpf/ (e.g. git archive COMMIT bpf | tar -x -C DIR): -ablate measures each as built beside the builds of -bpf-dir, interleaved (an A/B of commits in one run)")
	frontends := flag.Uint("frontends", 128, "frontends (UDP ports) the flows are spread over")
	flag.Parse()
	o.frontends = uint32(*frontends)
	o.churn = uint32(*churn)
	if *only != "" {
		o.only = strings.Split(*only, ",")
	}
	if *onlyPaths != "" {
		o.paths = strings.Split(*onlyPaths, ",")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o); err != nil {
		slog.Error("bench-dataplane", "err", err)
		os.Exit(1)
	}
}

// xdpIdle is roam's UDP idle timeout in the benchmark (the kernel paths': 10 minutes).
const xdpIdle = 30 * time.Minute

// maxFlows is what roam's conntrack and NAT maps each hold: room for the
// largest scenario's flows, as the kernel's conntrack gets (ctLimits).
func (b *bench) maxFlows() int { return int(b.o.big + b.o.big/10) }

// floorSlots is the floor path's table: a power of two, at least the big scenario's flows.
func (b *bench) floorSlots() int {
	n := 1
	for uint64(n) < b.o.big {
		n *= 2
	}
	return n
}

type options struct {
	reps, cpu, repeat int
	sample            time.Duration
	few, mid, big     uint64
	newFlows          uint64
	frontends         uint32
	churn             uint32
	only              []string
	paths             []string // empty: all
	profile           string
	ablate            bool
	bpfDir            string
	ablateRounds      int
	ablateRepeat      int
	ablateOnly        string
	ablateSrc         string
}

func run(ctx context.Context, o options) (err error) {
	if os.Geteuid() != 0 {
		return errors.New("run as root (network namespaces, XDP, bpffs, netfilter)")
	}
	for _, tool := range []string{"ip", "iptables-restore", "ip6tables-restore", "nft", "taskset"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("find %s: %w (make deps)", tool, err)
		}
	}
	if o.reps < 1 || o.frontends < 1 || o.frontends > 1000 {
		return errors.New("want -reps >= 1 and 1 <= -frontends <= 1000")
	}
	if b, err := os.ReadFile("/proc/sys/kernel/bpf_stats_enabled"); err == nil && strings.TrimSpace(string(b)) != "0" {
		slog.Warn("kernel.bpf_stats_enabled is on (someone else turned it on?): every BPF program costs more while it is")
	}
	if o.ablate {
		return runAblations(ctx, o)
	}
	load0 := loadAvg()
	kp, err := ksoftirqd(o.cpu)
	if err != nil {
		return err
	}

	sfx := netns.RandSuffix(3)
	b := &bench{o: o, ksoftirqd: kp, res: map[string]map[string][]sample{}, entries: map[string]map[string]int{}}
	defer func() { err = errors.Join(err, b.Close()) }()
	slog.Info("building namespaces", "suffix", sfx)
	if b.ref, err = setupRef(ctx, sfx, o.frontends); err != nil {
		return err
	}
	b.paths = append(b.paths, b.ref)
	steps := []struct {
		name  string
		setup func() (*path, error)
	}{
		// Room for the largest scenario's flows, as the kernel's conntrack gets (ctLimits).
		{"xdp", func() (*path, error) {
			return setupXDP(ctx, sfx, o.frontends, xdpIdle, b.maxFlows(), false)
		}},
		// The same, an entry allocated per new flow: the A/B of BPF_F_NO_PREALLOC (bpf/maps.h).
		{"xdpo", func() (*path, error) {
			return setupXDP(ctx, sfx, o.frontends, xdpIdle, b.maxFlows(), true)
		}},
		// One read in a table of the big scenario's flows: the floor under its figure.
		{"floor", func() (*path, error) { return setupFloor(ctx, sfx, o.frontends, b.floorSlots()) }},
		{"iptables", func() (*path, error) { return setupNetfilter(ctx, "iptables", sfx, o.frontends) }},
		{"nftables", func() (*path, error) { return setupNetfilter(ctx, "nftables", sfx, o.frontends) }},
		{"userspace", func() (*path, error) { return setupUserspace(ctx, sfx, o.cpu) }},
	}
	for _, step := range steps {
		if step.name != "xdp" && len(o.paths) > 0 && !slices.Contains(o.paths, step.name) {
			continue // xdp is always set up: the program-cost figure uses its namespaces
		}
		p, err := step.setup()
		if err != nil {
			return err
		}
		b.paths = append(b.paths, p)
	}
	b.ct = newCTLimits(o.big)
	defer func() { err = errors.Join(err, b.ct.restore()) }()

	if b.nsPerPacket, err = b.programCost(ctx); err != nil {
		return err
	}
	for _, sc := range b.scenarios() {
		if err := b.runScenario(ctx, sc); err != nil {
			return fmt.Errorf("%s: %w", sc.title, err)
		}
	}
	if slices.ContainsFunc(b.scs, func(sc scenario) bool { return sc.key == "big4" }) {
		// What a lookup in a table of big flows pays at least on this machine.
		for i, size := range []int{ctTableBytes(b.maxFlows()), int(o.big) * 16} {
			if b.randomRead[i], err = randomRead(o.cpu, size, 1_000_000); err != nil {
				return err
			}
		}
	}
	b.load = [2]string{load0, loadAvg()}
	b.ctSettings = b.ct.current()
	return b.report()
}

// bench holds the paths and the samples.
type bench struct {
	o           options
	ksoftirqd   int
	ctSettings  string           // the kernel's conntrack sysctls at the end of the run
	randomRead  [2]time.Duration // randomRead in a buffer the size of roam's conntrack map, and of 16 bytes per big flow
	ref         *path
	paths       []*path // ref first
	nsPerPacket [2]progCost
	res         map[string]map[string][]sample // scenario key -> path name -> samples
	entries     map[string]map[string]int      // conntrack entries after a prefill
	scs         []scenario
	load        [2]string
	ct          *ctLimits
	gcSweep     time.Duration // roam's GC, one full sweep of the big4 table
}

func (b *bench) Close() error {
	var errs []error
	for _, p := range b.paths {
		errs = append(errs, p.Close())
	}
	return errors.Join(errs...)
}

func (b *bench) path(name string) *path {
	for _, p := range b.paths {
		if p.name == name {
			return p
		}
	}
	return nil
}

// scenario is one row group of the table.
type scenario struct {
	key, title string
	fam        fam
	flows      uint64 // cycled through; 0: every packet a new flow
	prefill    bool   // send every flow once before measuring
	paths      []string
}

func (b *bench) scenarios() []scenario {
	all := []string{"xdp", "iptables", "nftables", "userspace"}
	nat := []string{"xdp", "iptables", "nftables"}
	// IPv4 also measures roam with entries on demand (xdpo) and the one-read floor.
	o := b.o
	b.scs = []scenario{
		{"est4", fmt.Sprintf("established flows, IPv4, %d flows", o.few), v4, o.few, true, append(all, "xdpo", "floor")},
		{"new4", "new flows (each packet a flow's first), IPv4", v4, 0, false, append(nat, "xdpo")},
		{"mid4", fmt.Sprintf("established flows, IPv4, %d flows in conntrack", o.mid), v4, o.mid, true, nat},
		{"big4", fmt.Sprintf("established flows, IPv4, %d flows in conntrack", o.big), v4, o.big, true, append(nat, "xdpo", "floor")},
		{"est6", fmt.Sprintf("established flows, IPv6, %d flows", o.few), v6, o.few, true, all},
		{"new6", "new flows (each packet a flow's first), IPv6", v6, 0, false, nat},
	}
	if len(o.only) > 0 {
		b.scs = slices.DeleteFunc(b.scs, func(sc scenario) bool { return !slices.Contains(o.only, sc.key) })
	}
	for i := range b.scs {
		b.scs[i].paths = slices.DeleteFunc(b.scs[i].paths, func(name string) bool { return b.path(name) == nil })
	}
	return b.scs
}

// clocks is the CPU time, besides the generator thread's, that a path's
// samples count.
func (b *bench) clocks(p *path) cpuClock {
	return func() (time.Duration, error) {
		d, err := schedRuntime(b.ksoftirqd, b.ksoftirqd)
		if err != nil || p.proxy == nil {
			return d, err
		}
		px, err := p.proxy.runtime()
		return d + px, err
	}
}

func (b *bench) flowsOf(sc scenario, p *path) flows {
	return flows{fam: sc.fam, count: sc.flows, frontends: p.frontends}
}

func (b *bench) record(sc scenario, path string, s sample) {
	if b.res[sc.key] == nil {
		b.res[sc.key] = map[string][]sample{}
	}
	b.res[sc.key][path] = append(b.res[sc.key][path], s)
}

// runScenario measures the generator alone, the reference and each path
// of sc, alternating, reps times.
func (b *bench) runScenario(ctx context.Context, sc scenario) error {
	slog.Info("scenario", "what", sc.title)
	paths := []*path{b.ref}
	for _, name := range sc.paths {
		paths = append(paths, b.path(name))
	}
	for _, p := range paths {
		if err := p.expect(sc.fam, p == b.ref); err != nil {
			return err
		}
		if p.flush != nil {
			if err := p.flush(); err != nil {
				return err
			}
		}
	}
	if sc.prefill {
		if err := b.ct.ensure(); err != nil {
			return err
		}
	}
	if sc.prefill && b.o.churn > 0 {
		// A node in service: flows have come and gone, so a table's
		// entries are wherever its allocator left them (for roam's
		// hash maps when they were preallocated: scattered over the
		// whole table).
		for _, p := range paths[1:] {
			if p.flush == nil {
				continue
			}
			churn := flows{fam: sc.fam, first: 1 << 22, frontends: p.frontends}
			if _, err := measure(ctx, p.gen, p.sink, churn, b.o.churn, b.o.cpu, p.pace, b.clocks(p)); err != nil {
				return fmt.Errorf("churn %s: %w", p.name, err)
			}
			if err := p.flush(); err != nil {
				return err
			}
		}
	}
	if sc.prefill {
		for _, p := range paths[1:] {
			s, err := measure(ctx, p.gen, p.sink, b.flowsOf(sc, p), uint32(sc.flows), b.o.cpu, p.pace, b.clocks(p))
			if err != nil {
				return fmt.Errorf("prefill %s: %w", p.name, err)
			}
			if p.entries != nil {
				n, err := p.entries()
				if err != nil {
					return err
				}
				if b.entries[sc.key] == nil {
					b.entries[sc.key] = map[string]int{}
				}
				b.entries[sc.key][p.name] = n
			}
			slog.Info("prefilled", "path", p.name, "sample", s, "conntrack_entries", b.entries[sc.key][p.name])
			if p.drops != nil && s.delivered < uint64(sc.flows) {
				// Frames the forwarder refused (roam's drop counters since
				// its start), or lost before it (a softirq deferred).
				d, err := p.drops()
				if err != nil {
					return err
				}
				slog.Warn("prefill: flows not delivered", "path", p.name, "delivered", s.delivered, "flows", sc.flows, "forwarder_drops", d)
			}
			if p.gcSweep != nil && sc.key == "big4" {
				// What the agent's GC pays to read a full table (nothing in it has expired).
				if b.gcSweep, err = p.gcSweep(); err != nil {
					return fmt.Errorf("gc sweep %s: %w", p.name, err)
				}
				slog.Info("gc sweep", "path", p.name, "entries", b.entries[sc.key][p.name], "took", b.gcSweep)
			}
		}
	}
	// Size each path's samples from a short first one.
	n := map[string]uint32{}
	for _, p := range paths {
		probe := uint32(200_000)
		if p.proxy != nil {
			probe = 20_000
		}
		s, err := b.sample(ctx, sc, p, probe)
		if err != nil {
			return err
		}
		n[p.name] = uint32(min(math.Max(s.pps()*b.o.sample.Seconds(), 10_000), 50e6))
		if sc.flows == 0 {
			n[p.name] = uint32(min(uint64(n[p.name]), b.o.newFlows))
		}
	}
	gen := b.flowsOf(sc, b.ref)
	for r := range b.o.reps {
		if err := ctx.Err(); err != nil {
			return err
		}
		s, err := generatorOnly(ctx, b.ref.gen, gen, n[b.ref.name]*2, b.o.cpu)
		if err != nil {
			return err
		}
		b.record(sc, "generator", s)
		for _, p := range paths {
			s, err := b.sample(ctx, sc, p, n[p.name])
			if err != nil {
				return err
			}
			if s.lossPct() > 1 || s.other > s.delivered/100 {
				slog.Warn("frames lost or not forwarded as expected", "path", p.name, "rep", r, "sample", s, "unexpected_at_sink", s.other)
			}
			b.record(sc, p.name, s)
		}
	}
	if b.o.profile != "" {
		for _, p := range paths {
			if err := b.profileSample(ctx, sc, p, n[p.name]); err != nil {
				return err
			}
		}
	}
	return nil
}

// sample is one measurement of p in sc (conntrack emptied first for new flows).
func (b *bench) sample(ctx context.Context, sc scenario, p *path, n uint32) (sample, error) {
	if sc.flows == 0 && p.flush != nil {
		if err := p.flush(); err != nil {
			return sample{}, err
		}
	}
	s, err := measure(ctx, p.gen, p.sink, b.flowsOf(sc, p), n, b.o.cpu, p.pace, b.clocks(p))
	if err != nil {
		return sample{}, fmt.Errorf("%s: %w", p.name, err)
	}
	return s, nil
}

// median of the samples' CPU-time rates, wall rates, CPU shares and losses.
type summary struct {
	pps, wall, share, loss float64
	n                      int
}

func summarize(ss []sample) summary {
	med := func(f func(sample) float64) float64 {
		v := make([]float64, len(ss))
		for i, s := range ss {
			v[i] = f(s)
		}
		slices.Sort(v)
		if len(v) == 0 {
			return 0
		}
		if len(v)%2 == 1 {
			return v[len(v)/2]
		}
		return (v[len(v)/2-1] + v[len(v)/2]) / 2
	}
	return summary{pps: med(sample.pps), wall: med(sample.wallPPS), share: med(sample.share), loss: med(sample.lossPct), n: len(ss)}
}

func (b *bench) summary(sc, path string) summary { return summarize(b.res[sc][path]) }

// perRep is the median over reps of f, which reads the samples of one
// rep (taken seconds apart): the machine is shared and its speed drifts
// over minutes, much less within a rep.
func (b *bench) perRep(sc string, f func(rep func(path string) sample) float64) float64 {
	n := -1
	for _, ss := range b.res[sc] {
		if n < 0 || len(ss) < n {
			n = len(ss)
		}
	}
	var v []float64
	for i := range max(n, 0) {
		v = append(v, f(func(path string) sample {
			if ss := b.res[sc][path]; i < len(ss) {
				return ss[i]
			}
			return sample{} // a path not measured (-paths): its figures are 0
		}))
	}
	return median(v)
}

// nsPer is the CPU time per packet delivered.
func (s sample) nsPer() float64 { return ratio(1e9, s.pps()) }

// fwdNs is the forwarding cost per packet beyond the reference path.
func (b *bench) fwdNs(sc, path string) float64 {
	return b.perRep(sc, func(rep func(string) sample) float64 { return rep(path).nsPer() - rep("ref").nsPer() })
}

// vsXDP is how many times path's rate XDP's is.
func (b *bench) vsXDP(sc, path string) float64 {
	return b.perRep(sc, func(rep func(string) sample) float64 { return ratio(rep("xdp").pps(), rep(path).pps()) })
}

// fwdVsXDP is how many times XDP's forwarding cost path's is.
func (b *bench) fwdVsXDP(sc, path string) float64 {
	return b.perRep(sc, func(rep func(string) sample) float64 {
		return ratio(rep(path).nsPer()-rep("ref").nsPer(), rep("xdp").nsPer()-rep("ref").nsPer())
	})
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

func ratio(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}

// result is the JSON line.
type result struct {
	NsPerPacket       float64 `json:"ns_per_packet"`
	NsPerPacketV6     float64 `json:"ns_per_packet_v6"`
	NsPerPacketMin    float64 `json:"ns_per_packet_least_disturbed"`
	NsMinimal         float64 `json:"ns_per_packet_minimal_fwd"`
	VsMinimal         float64 `json:"ratio_program_minimal_fwd"`
	GeneratorPPS      float64 `json:"generator_pps"`
	PPSReference      float64 `json:"pps_reference"`
	PPSXDP            float64 `json:"pps_xdp"`
	PPSIptables       float64 `json:"pps_iptables"`
	PPSNftables       float64 `json:"pps_nftables"`
	PPSUserspace      float64 `json:"pps_userspace"`
	FwdNsXDP          float64 `json:"fwd_ns_xdp"`
	FwdNsIptables     float64 `json:"fwd_ns_iptables"`
	FwdNsNftables     float64 `json:"fwd_ns_nftables"`
	FwdNsUserspace    float64 `json:"fwd_ns_userspace"`
	RatioXDPIptables  float64 `json:"ratio_xdp_iptables"`
	RatioXDPNftables  float64 `json:"ratio_xdp_nftables"`
	RatioXDPUserspace float64 `json:"ratio_xdp_userspace"`
	RatioFwdIptables  float64 `json:"ratio_fwd_iptables_xdp"`
	NewXDP            float64 `json:"newflows_per_s_xdp"`
	NewIptables       float64 `json:"newflows_per_s_iptables"`
	NewNftables       float64 `json:"newflows_per_s_nftables"`
	PPSXDPMid         float64 `json:"pps_xdp_100k_flows"`
	PPSIptablesMid    float64 `json:"pps_iptables_100k_flows"`
	PPSNftablesMid    float64 `json:"pps_nftables_100k_flows"`
	PPSXDPBig         float64 `json:"pps_xdp_1m_flows"`
	PPSIptablesBig    float64 `json:"pps_iptables_1m_flows"`
	PPSNftablesBig    float64 `json:"pps_nftables_1m_flows"`
	XDPConntrackBig   int     `json:"xdp_conntrack_entries_1m_flows"`
	GCSweepMsBig      float64 `json:"gc_sweep_ms_1m_flows"`
	RandomReadNsCT    float64 `json:"random_read_ns_ct_table"`
	RandomReadNs16    float64 `json:"random_read_ns_16b_per_flow"`
	PPSXDPv6          float64 `json:"pps_xdp_v6"`
	PPSIptablesv6     float64 `json:"pps_iptables_v6"`
	PPSNftablesv6     float64 `json:"pps_nftables_v6"`
	PPSUserspacev6    float64 `json:"pps_userspace_v6"`
	FwdNsXDPv6        float64 `json:"fwd_ns_xdp_v6"`
	FwdNsIptablesv6   float64 `json:"fwd_ns_iptables_v6"`
	NewXDPv6          float64 `json:"newflows_per_s_xdp_v6"`
	NewIptablesv6     float64 `json:"newflows_per_s_iptables_v6"`
	PPSXDPOnDemand    float64 `json:"pps_xdp_on_demand"`
	FwdNsXDPOnDemand  float64 `json:"fwd_ns_xdp_on_demand"`
	NewXDPOnDemand    float64 `json:"newflows_per_s_xdp_on_demand"`
	PPSXDPOnDemandBig float64 `json:"pps_xdp_on_demand_1m_flows"`
	PPSFloor          float64 `json:"pps_floor"`
	PPSFloorBig       float64 `json:"pps_floor_1m_flows"`
	FloorExtraNsBig   float64 `json:"floor_extra_ns_1m_flows"`
	BudgetNsBig       float64 `json:"budget_ns_1m_flows"`
	Reps              int     `json:"reps"`
	CPU               int     `json:"cpu"`
	LoadAvgStart      string  `json:"loadavg_start"`
	LoadAvgEnd        string  `json:"loadavg_end"`
}

func (b *bench) result() result {
	s := func(sc, p string) float64 { return b.summary(sc, p).pps }
	r := result{
		NsPerPacket: b.nsPerPacket[v4].perPacket, NsPerPacketV6: b.nsPerPacket[v6].perPacket,
		NsPerPacketMin: b.nsPerPacket[v4].min, NsMinimal: b.nsPerPacket[v4].minimal, VsMinimal: b.nsPerPacket[v4].vsMinimal,
		GeneratorPPS: s("est4", "generator"), PPSReference: s("est4", "ref"),
		PPSXDP: s("est4", "xdp"), PPSIptables: s("est4", "iptables"), PPSNftables: s("est4", "nftables"), PPSUserspace: s("est4", "userspace"),
		FwdNsXDP: b.fwdNs("est4", "xdp"), FwdNsIptables: b.fwdNs("est4", "iptables"),
		FwdNsNftables: b.fwdNs("est4", "nftables"), FwdNsUserspace: b.fwdNs("est4", "userspace"),
		NewXDP: s("new4", "xdp"), NewIptables: s("new4", "iptables"), NewNftables: s("new4", "nftables"),
		PPSXDPMid: s("mid4", "xdp"), PPSIptablesMid: s("mid4", "iptables"), PPSNftablesMid: s("mid4", "nftables"),
		PPSXDPBig: s("big4", "xdp"), PPSIptablesBig: s("big4", "iptables"), PPSNftablesBig: s("big4", "nftables"),
		XDPConntrackBig: b.entries["big4"]["xdp"], GCSweepMsBig: float64(b.gcSweep.Microseconds()) / 1000,
		RandomReadNsCT: float64(b.randomRead[0].Nanoseconds()), RandomReadNs16: float64(b.randomRead[1].Nanoseconds()),
		PPSXDPv6: s("est6", "xdp"), PPSIptablesv6: s("est6", "iptables"), PPSNftablesv6: s("est6", "nftables"), PPSUserspacev6: s("est6", "userspace"),
		FwdNsXDPv6: b.fwdNs("est6", "xdp"), FwdNsIptablesv6: b.fwdNs("est6", "iptables"),
		NewXDPv6: s("new6", "xdp"), NewIptablesv6: s("new6", "iptables"),
		PPSXDPOnDemand: s("est4", "xdpo"), FwdNsXDPOnDemand: b.fwdNs("est4", "xdpo"),
		NewXDPOnDemand: s("new4", "xdpo"), PPSXDPOnDemandBig: s("big4", "xdpo"),
		PPSFloor: s("est4", "floor"), PPSFloorBig: s("big4", "floor"),
		Reps: b.o.reps, CPU: b.o.cpu, LoadAvgStart: b.load[0], LoadAvgEnd: b.load[1],
	}
	r.RatioXDPIptables = b.vsXDP("est4", "iptables")
	r.RatioXDPNftables = b.vsXDP("est4", "nftables")
	r.RatioXDPUserspace = b.vsXDP("est4", "userspace")
	r.RatioFwdIptables = b.fwdVsXDP("est4", "iptables")
	if r.PPSFloor > 0 && r.PPSFloorBig > 0 {
		r.FloorExtraNsBig = 1e9/r.PPSFloorBig - 1e9/r.PPSFloor
	}
	// "Within 30 %": the big rate at least 70 % of the few-flow one, i.e.
	// per packet at most 1/0.7 - 1 = 3/7 more time than with few flows.
	r.BudgetNsBig = ratio(1e9, r.PPSXDP) * 3 / 7
	return r
}

func (b *bench) report() error {
	r := b.result()
	fmt.Printf("\nroam data plane benchmark: one core (CPU %d) serialized, generator -> forwarder -> sink; medians of %d samples\n", b.o.cpu, b.o.reps)
	fmt.Printf("load average %s at the start, %s at the end (%d CPUs, shared)\n\n", b.load[0], b.load[1], numCPU())
	for _, f := range []fam{v4, v6} {
		c := b.nsPerPacket[f]
		fmt.Printf("roam's XDP program alone, %s (BPF_PROG_TEST_RUN x %d, established flow): %.1f ns/packet (least disturbed sample %.1f; an empty program %.1f);\n"+
			"  a minimal rewrite-and-redirect in the same samples %.1f: roam's costs %.2fx it\n",
			f, b.o.repeat, c.perPacket, c.min, c.baseline, c.minimal, c.vsMinimal)
	}
	fmt.Printf("generator alone (its ceiling, sends nothing): %.2f Mpps, %.1fx the reference path, %.1fx the fastest forwarder\n\n",
		r.GeneratorPPS/1e6, ratio(r.GeneratorPPS, r.PPSReference), ratio(r.GeneratorPPS, max(r.PPSXDP, r.PPSIptables, r.PPSNftables, r.PPSUserspace)))
	fmt.Printf("%-42s %9s %8s %8s %7s %7s %9s %6s %6s %9s\n", "path", "Mpps/core", "ns/pkt", "fwd ns", "XDP/x", "fwd/XDP", "wall Mpps", "share", "loss%", "conntrack")
	for _, sc := range b.scs {
		fmt.Printf("%s\n", sc.title)
		for _, name := range append([]string{"generator", "ref"}, sc.paths...) {
			s := b.summary(sc.key, name)
			if s.n == 0 {
				continue
			}
			title := name
			fwd, vs, fvs := "", "", ""
			if p := b.path(name); p != nil {
				title = p.title
			}
			if name == "generator" {
				title = "generator alone"
			}
			if name != "generator" && name != "ref" {
				fwd = fmt.Sprintf("%.1f", b.fwdNs(sc.key, name))
				vs = fmt.Sprintf("%.2fx", b.vsXDP(sc.key, name))
				fvs = fmt.Sprintf("%.2fx", b.fwdVsXDP(sc.key, name))
			}
			ct := ""
			if n, ok := b.entries[sc.key][name]; ok {
				ct = fmt.Sprint(n)
			}
			fmt.Printf("  %-40s %9.3f %8.1f %8s %7s %7s %9.3f %6.2f %6.2f %9s\n", title, s.pps/1e6, 1e9/s.pps, fwd, vs, fvs, s.wall/1e6, s.share, s.loss, ct)
		}
	}
	for _, sc := range b.scs {
		for _, name := range sc.paths {
			if n, ok := b.entries[sc.key][name]; ok && uint64(n) < sc.flows*99/100 {
				fmt.Printf("\n%s: conntrack held %d entries after %d flows were sent; in %q its figure is that of a\n"+
					"table that is full (roam's maps refuse new flows, counted as ct_full/nat_full; the kernel drops entries that saw no reply).\n",
					b.path(name).title, n, sc.flows, sc.title)
			}
		}
	}
	pace := pace{}
	if p := b.path("userspace"); p != nil {
		pace = p.pace
	}
	fmt.Printf("\nMpps/core: packets delivered per second of CPU time (generator thread, ksoftirqd/%d, proxy threads);\n"+
		"fwd ns: 1/pps - 1/pps_reference; XDP/x and fwd/XDP: XDP's rate over the path's, the path's forwarding cost over XDP's\n"+
		"(fwd ns and the ratios are medians of per-rep values, each rep's paths measured seconds apart);\n"+
		"wall Mpps and share: the same samples by the clock, and the part of it the path had the CPU (the rest went to other work).\n"+
		"The userspace proxy serves one frontend per family; the generator feeds it bursts of %d frames, at most %d in its socket.\n",
		b.o.cpu, pace.burst, pace.window)
	fmt.Printf("\nconntrack tables: roam's conntrack and NAT maps %d entries each (hash maps, preallocated as roam-agent's (xdpo: on demand), nothing evicted; UDP idle %v, %v once its frontend moved);\n"+
		"  the kernel's %s (global, the count per namespace; UDP idle 10 min, checksums not verified).\n",
		b.maxFlows(), xdpIdle, dataplane.DefaultTimeouts.UDPDrain, b.ctSettings)
	if b.gcSweep > 0 {
		fmt.Printf("\nroam's garbage collection read its %d-flow tables (conntrack and NAT) in %.0f ms (one sweep, passes of %d entries per map).\n",
			b.entries["big4"]["xdp"], float64(b.gcSweep.Microseconds())/1000, dataplane.DefaultGCScan)
	}
	if b.randomRead[0] > 0 {
		fmt.Printf("\nmemory, CPU %d: one dependent read at a random place of %.0f MB (roam's conntrack map for %d flows) costs %d ns,\n"+
			"  of %.0f MB (%d flows of 16 bytes) %d ns: what a lookup among %d flows pays at least beyond a few-flow one\n"+
			"  (a hash lookup makes two such reads, one after the other: the bucket, then the element).\n",
			b.o.cpu, float64(ctTableBytes(b.maxFlows()))/1e6, b.maxFlows(), b.randomRead[0].Nanoseconds(),
			float64(b.o.big*16)/1e6, b.o.big, b.randomRead[1].Nanoseconds(), b.o.big)
	}
	if r.PPSFloorBig > 0 {
		verdict := "so a table reachable from BPF could meet it on this machine"
		if r.FloorExtraNsBig > r.BudgetNsBig {
			verdict = "more than the goal allows: no table reachable from BPF meets it on this machine"
		}
		fmt.Printf("\nthe %d-flow goal (>= 70%% of the few-flow rate) allows roam 3/7 of its few-flow %.0f ns/packet more: %.0f ns;\n"+
			"  the one-read floor (f) pays %.0f ns more per packet with %d flows than with %d (%.2f -> %.2f Mpps/core),\n"+
			"  %s.\n",
			b.o.big, ratio(1e9, r.PPSXDP), r.BudgetNsBig, r.FloorExtraNsBig, b.o.big, b.o.few, r.PPSFloor/1e6, r.PPSFloorBig/1e6, verdict)
	}
	if r.PPSXDPOnDemand > 0 {
		fmt.Printf("\nBPF_F_NO_PREALLOC A/B (same run): established %.2f (xdp, preallocated) vs %.2f Mpps/core (xdpo, on demand), fwd ns %.1f vs %.1f;\n"+
			"  new flows %.0f vs %.0f /s; %d flows %.2f vs %.2f Mpps/core.\n",
			r.PPSXDP/1e6, r.PPSXDPOnDemand/1e6, r.FwdNsXDP, r.FwdNsXDPOnDemand, r.NewXDP, r.NewXDPOnDemand, b.o.big, r.PPSXDPBig/1e6, r.PPSXDPOnDemandBig/1e6)
	}
	fmt.Printf("\ngoals (one core): XDP/iptables pps %.2fx (>= 3), forwarding cost iptables/XDP %.2fx (>= 5), XDP/userspace %.2fx (>= 10),\n"+
		"  program %.1f ns/packet (< 60), %d flows at %.0f%% of the few-flow rate (>= 70%%)\n\n",
		r.RatioXDPIptables, r.RatioFwdIptables, r.RatioXDPUserspace, r.NsPerPacket, b.o.big, 100*ratio(r.PPSXDPBig, r.PPSXDP))
	out, err := json.Marshal(r)
	if err != nil {
		return err
	}
	fmt.Println(string(out))
	return nil
}
