// Command meta benchmarks roam's meta-orchestrator on loopback and prints
// a table, and as its last line one JSON object:
//
//   - placement round trip p50/p99 with 10, 1,000, 10,000 and 100,000
//     registered clusters sending hellos (one embedded MO);
//   - the hello ingest rate the MO's hello handler sustains;
//   - herding: where 100 concurrent identical placements land among 10
//     identical clusters (one MO with and without reservations, and three
//     MO replicas sharing reservations);
//   - failover: three roam-meta processes (each one NATS cluster node and
//     one MO replica) under a steady placement load, one killed with
//     SIGKILL: failed placements, p99 before, during and after.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"runtime"
	"runtime/pprof"
	"runtime/trace"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/roamnet/roam/meta"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "bench-meta:", err)
		os.Exit(1)
	}
}

func run() error {
	requests := flag.Int("requests", 3000, "placement requests measured per cluster count")
	ingest := flag.Int("ingest", 100000, "hellos published for the ingest measurement")
	// 100,000 clusters at 1 s would be 100,000 hellos/s, more than one MO
	// on two shared cores takes in; at 10 s the MO takes in 10,000/s, as
	// in the 10,000-cluster row, so the two rows differ in registry size
	// only.
	interval100k := flag.Duration("interval-100k", 10*time.Second, "hello interval of the 100,000 clusters (the others: 1s)")
	counts := flag.String("counts", "10,1000,10000,100000", "cluster counts measured")
	foClusters := flag.Int("failover-clusters", 1000, "clusters sending hellos during the failover")
	foRequesters := flag.Int("failover-requesters", 6, "requesters placing during the failover")
	foPace := flag.Duration("failover-pace", 10*time.Millisecond, "each requester's pause between placements")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile of the whole run here")
	rowProfile := flag.String("cpuprofile-rows", "", "write a CPU profile of the MO's process during each placement row here (the path, a dot and the cluster count)")
	traceOut := flag.String("trace", "", "write an execution trace of the placements measured at -trace-count clusters here")
	traceCount := flag.Int("trace-count", 100000, "the cluster count whose placements -trace traces")
	memProfile := flag.String("memprofile", "", "write a heap profile here after the placement rows")
	placementOnly := flag.Bool("placement-only", false, "stop after the placement rows (no ingest, herding or failover)")
	flag.DurationVar(&helloSlice, "hello-slice", helloSlice, "the simulated clusters' hellos are sent, spread evenly, in slices this long (each cluster keeps its interval)")
	requesterAB := flag.Int("requester-ab", -1, "after each row, alternate the requester with a second one whose GOMAXPROCS is this (0: Go's default) in chunks of 100 placements, and print both's p50/p99 (an A/B of the requester's GOMAXPROCS under the same load); -1: none")
	flag.IntVar(&clientProcs, "client-gomaxprocs", clientProcs, "GOMAXPROCS of the client processes (the clusters' hellos, the requester); 0: Go's default")
	clientOf := flag.String("client-of", "", "run as the client process of the MO at this NATS URL (clientproc.go; started by the benchmark itself)")
	flag.Parse()
	if *clientOf != "" {
		return runClientProc(*clientOf)
	}
	if err := checkProfileFlags(*cpuProfile, *rowProfile); err != nil {
		return err
	}
	// The MO's process runs with roam-meta's GC settings (the client
	// processes, standing for controllers and clusters, keep Go's).
	gogc, memLimit := meta.TuneGC()
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))

	srv, err := meta.NewServer(meta.ServerConfig{Listen: "127.0.0.1:0", Logger: quiet})
	if err != nil {
		return err
	}
	defer srv.Close()
	wctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	err = srv.WaitServing(wctx)
	cancel()
	if err != nil {
		return err
	}

	// The simulated clusters and the requester of the placement rows (and
	// the ingest measurement) run in a client process of their own.
	// Two client processes: one plays the clusters, the other times
	// placements (its process does nothing else meanwhile).
	cp, err := startClientProc(srv.ClientURL())
	if err != nil {
		return err
	}
	defer cp.stop()
	reqProc, err := startClientProc(srv.ClientURL())
	if err != nil {
		return err
	}
	defer reqProc.stop()
	var reqProcB *clientProc
	if *requesterAB >= 0 {
		if reqProcB, err = startClientProcs(srv.ClientURL(), *requesterAB); err != nil {
			return err
		}
		defer reqProcB.stop()
	}
	// The requester inside the MO's process, timed after the client
	// process's one in every row (the layout before: it shares the MO's
	// runtime, its cores and its GC).
	reqConn, err := nats.Connect(srv.ClientURL())
	if err != nil {
		return fmt.Errorf("connect requester: %w", err)
	}
	defer reqConn.Close()
	inClient, err := meta.NewClient(reqConn, "bench-requester-in", meta.WithTimeout(5*time.Second), meta.WithRetries(0), meta.WithoutCache(),
		meta.WithLogger(quiet))
	if err != nil {
		return err
	}
	defer inClient.Close()

	type row struct {
		clusters int
		alive    int
		failed   int // unanswered within the 5 s timeout
		interval time.Duration
		p50, p99 time.Duration
		mean     time.Duration
		// moP99 bounds the MO's own p99 (decode, decide, reply) from its
		// roam_meta_placement_seconds histogram: the bucket holding it.
		moP99 float64
		rt    rtStats
		// The same placements from a requester in the MO's process.
		inP50, inP99 time.Duration
		inFailed     int
		// What the MO's process allocated per placement (the hello
		// ingest's rate taken off).
		allocB, allocObj float64
		// The round trips split at the MO's decision, CPU use meanwhile,
		// and the requester's GC (legs.go).
		legs          legs
		cpu           cpuUse
		dur           time.Duration
		reqGCs        uint64
		reqGCPauseMax float64
	}
	var rows []row
	// printLegs says where each row's round trips spent their time and
	// what used the cores meanwhile (legs.go).
	printLegs := func(rows []row) {
		fmt.Println("where a round trip's time goes (requester's clock before send / MO's decision, from its audit record / requester's clock after the reply is decoded),")
		fmt.Println("and CPU seconds used during the row by: the MO's process (MO + NATS), the clusters' hello process, the requester's process, everything else on the machine")
		fmt.Printf("%-10s %9s %12s %12s %12s %12s %13s | %8s %8s %8s %8s %9s | %8s %12s\n", "clusters", "matched", "to dec p50", "to dec p99", "from dec p50",
			"from dec p99", "slow 1%: to>", "MO", "hellos", "req", "other", "of cores", "req GCs", "req GC pause")
		for _, r := range rows {
			l := r.legs
			fmt.Printf("%-10d %9d %12.0f %12.0f %12.0f %12.0f %13s | %8.2f %8.2f %8.2f %8.2f %9.2f | %8d %12s\n", r.clusters, l.matched, us(l.toP50), us(l.toP99),
				us(l.fromP50), us(l.fromP99), fmt.Sprintf("%d of %d", l.slowTo, l.slow), r.cpu.mo, r.cpu.hellos, r.cpu.requester, r.cpu.other,
				r.dur.Seconds()*float64(runtime.NumCPU()), r.reqGCs, fmt.Sprintf("<= %.0f µs", r.reqGCPauseMax*1e6))
		}
	}
	// printAllocs says what the MO's process allocated per placement in
	// each row (its NATS server and JetStream included, the hello
	// ingest's rate taken off).
	printAllocs := func(rows []row) {
		fmt.Printf("MO process allocations per placement (embedded NATS and JetStream included; the hello ingest's own rate, measured 1 s before each row, taken off):")
		for _, r := range rows {
			fmt.Printf(" %d clusters %.0f B / %.1f objects;", r.clusters, r.allocB, r.allocObj)
		}
		fmt.Println()
	}
	var ns []int
	for _, f := range strings.Split(*counts, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 2 {
			return fmt.Errorf("-counts: %q", f)
		}
		ns = append(ns, n)
	}
	var rate float64
	for _, n := range ns {
		if n > 10000 && rate == 0 && len(rows) > 0 {
			// The ingest rate with the fleet so far, before the largest
			// one loads the MO.
			if rate, err = measureIngest(srv, cp, *ingest); err != nil {
				return err
			}
		}
		iv := time.Second
		if n >= 100000 {
			iv = *interval100k
		}
		if err := cp.set(n, iv); err != nil {
			return err
		}
		// Every cluster registered and (nearly) all alive: on a busy
		// machine a few may be a hello late at any moment. A fleet the
		// MO cannot keep alive on this machine is measured anyway after
		// 5 minutes, with the alive count shown beside it.
		deadline := time.Now().Add(300 * time.Second)
		for srv.Registry().Len() < n || srv.Registry().Counts(time.Now())[meta.StateAlive] < n*99/100 {
			if time.Now().After(deadline) {
				fmt.Fprintf(os.Stderr, "%d clusters: %d registered, %d alive after 300s (hellos by result: %v); measuring anyway\n",
					n, srv.Registry().Len(), srv.Registry().Counts(time.Now())[meta.StateAlive], helloResults(srv))
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		// Steady state: the compact view has written the new clusters'
		// summaries (a burst at registration only; then each summary is
		// rewritten every 30 intervals or on a material change).
		waitViewQuiet(srv, time.Minute)
		alive := srv.Registry().Counts(time.Now())[meta.StateAlive]
		before := placementBuckets(srv)
		stopTrace, err := startTrace(*traceOut, n == *traceCount)
		if err != nil {
			return err
		}
		stopProfile, err := startRowProfile(*rowProfile, n)
		if err != nil {
			return err
		}
		clientTrace := ""
		if *traceOut != "" && n == *traceCount {
			clientTrace = *traceOut + ".client"
		}
		// A second without placements first: the hello ingest's own
		// allocations, taken off the row's (perPlacement).
		idle0, idleStart := readRuntime(), time.Now()
		time.Sleep(time.Second)
		idle, idleDur := rtDelta(idle0, readRuntime()), time.Since(idleStart)
		cpu0 := readCPU(cp.pid(), reqProc.pid())
		rt0, rowStart := readRuntime(), time.Now()
		ans, err := reqProc.place(*requests, clientTrace)
		rt := rtDelta(rt0, readRuntime())
		rowDur := time.Since(rowStart)
		cpu := cpuDelta(cpu0, readCPU(cp.pid(), reqProc.pid()))
		lat, failed := ans.Latency, ans.Failed
		allocB, allocObj := perPlacement(rt, rowDur, idle, idleDur, len(lat))
		stopTrace()
		stopProfile()
		if err != nil {
			return err
		}
		want := map[string]bool{}
		for _, tr := range ans.Trips {
			want[tr.ID] = true
		}
		at, err := decisionTimes(srv.ClientURL(), rowStart.Add(-time.Second), want, 10*time.Second)
		if err != nil {
			return fmt.Errorf("read the row's audit records: %w", err)
		}
		moP99 := bucketQuantile(before, placementBuckets(srv), 0.99)
		inLat, _, inFailed, err := measurePlacement(inClient, *requests)
		if err != nil {
			return fmt.Errorf("requester in the MO's process: %w", err)
		}
		if reqProcB != nil {
			if err := requesterABRow(n, reqProc, reqProcB, *requesterAB, *requests); err != nil {
				return err
			}
		}
		rows = append(rows, row{clusters: n, alive: alive, failed: failed, interval: iv, p50: pct(lat, 50), p99: pct(lat, 99), mean: mean(lat),
			moP99: moP99, rt: rt, inP50: pct(inLat, 50), inP99: pct(inLat, 99), inFailed: inFailed, allocB: allocB, allocObj: allocObj,
			legs: splitLegs(ans.Trips, at), cpu: cpu, dur: rowDur, reqGCs: ans.GCs, reqGCPauseMax: ans.GCPauseMax})
		fmt.Fprintf(os.Stderr, "measured %d clusters\n", n)
	}

	if *memProfile != "" {
		f, err := os.Create(*memProfile)
		if err != nil {
			return err
		}
		runtime.GC()
		err = pprof.WriteHeapProfile(f)
		f.Close()
		if err != nil {
			return err
		}
	}
	if *placementOnly {
		fmt.Println("placement rows only (-placement-only)")
		fmt.Println(measuredLine)
		fmt.Println(helloLine())
		for _, r := range rows {
			printRow(r.clusters, r.alive, r.interval, r.p50, r.p99, r.mean, r.failed, r.moP99, r.rt, r.inP50, r.inP99)
		}
		printAllocs(rows)
		printLegs(rows)
		return nil
	}
	if rate == 0 {
		if rate, err = measureIngest(srv, cp, *ingest); err != nil {
			return err
		}
	}
	// The client processes stop (and the fleet's hellos); the herd's own
	// hellos come from this process.
	cp.stop()
	reqProc.stop()
	pubConn, err := nats.Connect(srv.ClientURL())
	if err != nil {
		return fmt.Errorf("connect publisher: %w", err)
	}
	defer pubConn.Close()
	sim := newSimulator(pubConn)
	defer sim.stop()

	// Herding on the single MO: with reservations (the default) and
	// without, among the herd clusters only.
	sim.set(herdHellos(time.Second), time.Second)
	// The herd's hellos may queue behind the 100,000 clusters' last ones.
	if err := waitHerdAlive(srv, 2*time.Minute); err != nil {
		return err
	}
	herdOne, err := herd([]string{srv.ClientURL()}, nil)
	if err != nil {
		return fmt.Errorf("herd, one MO: %w", err)
	}
	noResv, err := meta.NewServer(meta.ServerConfig{Listen: "127.0.0.1:0", Logger: quiet, ReservationTTL: -1, WarmUp: time.Millisecond})
	if err != nil {
		return err
	}
	defer noResv.Close()
	nrConn, err := nats.Connect(noResv.ClientURL())
	if err != nil {
		return err
	}
	defer nrConn.Close()
	nrSim := newSimulator(nrConn)
	defer nrSim.stop()
	nrSim.set(herdHellos(time.Second), time.Second)
	if err := waitAlive(noResv, herdClusters); err != nil {
		return err
	}
	if err := noResv.WaitServing(context.Background()); err != nil {
		return err
	}
	herdNone, err := herd([]string{noResv.ClientURL()}, nil)
	if err != nil {
		return fmt.Errorf("herd, no reservations: %w", err)
	}
	nrSim.stop()
	sim.stop()

	decodeRate := measureDecode()
	srv.Close()

	// Three roam-meta processes.
	fmt.Fprintln(os.Stderr, "starting three roam-meta processes")
	mc, err := startMOCluster(3, *foRequesters)
	if err != nil {
		return err
	}
	defer mc.stop()
	helloOpts, err := mc.connOpts(helloUser, false)
	if err != nil {
		return err
	}
	helloConn, err := nats.Connect(mc.urls(1), append(helloOpts, nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))...)
	if err != nil {
		return err
	}
	defer helloConn.Close()
	csim := newSimulator(helloConn)
	defer csim.stop()
	fleet := herdHellos(time.Second)
	for i := range *foClusters {
		fleet = append(fleet, simHello(i, *foClusters, time.Second))
	}
	csim.set(fleet, time.Second)
	if err := mc.waitAlive(len(fleet), 2*time.Minute); err != nil {
		return err
	}
	herdThree, err := herd([]string{mc.replicas[0].clientURL, mc.replicas[1].clientURL, mc.replicas[2].clientURL}, mc)
	if err != nil {
		return fmt.Errorf("herd, three replicas: %w", err)
	}
	fmt.Fprintln(os.Stderr, "failover: killing mo0 under load")
	fo, err := failover(mc, 0, *foRequesters, *foPace, 5*time.Second, 5*time.Second, 5*time.Second)
	if err != nil {
		return err
	}
	csim.stop()

	fmt.Println("roam meta-orchestrator on loopback (embedded NATS, least-loaded policy; requester without hello cache)")
	fmt.Printf("the MO's process runs with roam-meta's GC settings (meta.TuneGC): GOGC %d, GOMEMLIMIT %s\n", gogc, meta.MemLimitText(memLimit))
	fmt.Println(measuredLine)
	fmt.Println(helloLine())
	if la, err := os.ReadFile("/proc/loadavg"); err == nil {
		fmt.Printf("machine load average (other work shares these cores): %s", la)
	}
	for _, r := range rows {
		printRow(r.clusters, r.alive, r.interval, r.p50, r.p99, r.mean, r.failed, r.moP99, r.rt, r.inP50, r.inP99)
	}
	printAllocs(rows)
	printLegs(rows)
	byCount := map[int]row{}
	for _, r := range rows {
		byCount[r.clusters] = r
	}
	if r10k, ok := byCount[10000]; ok {
		fmt.Printf("paper's placement request: 3000 µs; ours at 10000 clusters: p50 %.0f µs (paper/ours %.2f), p99 %.0f µs (paper/ours %.2f)\n",
			us(r10k.p50), 3000/us(r10k.p50), us(r10k.p99), 3000/us(r10k.p99))
		if r100k, ok := byCount[100000]; ok {
			fmt.Printf("p99 100000/10000 clusters: %.2f\n", us(r100k.p99)/us(r10k.p99))
		}
	}
	fmt.Printf("hello ingest over NATS (one handler goroutine; 1 hello in %d changed, decoded in full, the others on the fast path): %.0f hellos/s\n", changeEvery, rate)
	fmt.Printf("hello decode+register in-process, one core:      %.0f hellos/s\n", decodeRate)
	fair := 1.0 / herdClusters
	fmt.Printf("herding: %d concurrent identical placements, %d identical clusters (fair share %.2f, goal max share <= %.2f)\n",
		herdRequests, herdClusters, fair, 1.5*fair)
	fmt.Printf("  one MO, no reservations:        max share %.2f (%.1fx fair) per cluster %s\n", maxShare(herdNone), maxShare(herdNone)/fair, spread(herdNone))
	fmt.Printf("  one MO, reservations:           max share %.2f (%.1fx fair) per cluster %s\n", maxShare(herdOne), maxShare(herdOne)/fair, spread(herdOne))
	fmt.Printf("  three MO replicas, shared:      max share %.2f (%.1fx fair) per cluster %s\n", maxShare(herdThree), maxShare(herdThree)/fair, spread(herdThree))
	fmt.Printf("failover: 3 roam-meta processes (NATS cluster node + MO replica each; TLS, a user per cluster), %d clusters at 1 Hz, %d requesters every %s;\n",
		*foClusters, *foRequesters, *foPace)
	fmt.Printf("  mo0 SIGKILLed after 5s; client timeout 1s, 1 retry, no cached view\n")
	fmt.Printf("  %-22s %8s %10s %10s %10s\n", "window", "placed", "p50 µs", "p99 µs", "max µs")
	for _, w := range []struct {
		name string
		lat  []time.Duration
	}{{"before the kill", fo.before}, {"kill .. +5s", fo.during}, {"+5s .. +10s", fo.after}} {
		fmt.Printf("  %-22s %8d %10.0f %10.0f %10.0f\n", w.name, len(w.lat), us(pct(w.lat, 50)), us(pct(w.lat, 99)), us(pct(w.lat, 100)))
	}
	fmt.Printf("  failed placements: %d (goal 0)", fo.failed)
	if fo.firstErr != nil {
		fmt.Printf("; first: %v", fo.firstErr)
	}
	fmt.Println()
	fmt.Printf("  p99 during/before the kill: %.2f\n", us(pct(fo.during, 99))/us(pct(fo.before, 99)))

	out := map[string]float64{"hellos_per_s": round(rate), "hello_decode_per_s": round(decodeRate),
		"herd_max_share": maxShare(herdThree), "herd_max_share_one_mo": maxShare(herdOne), "herd_max_share_no_reservations": maxShare(herdNone),
		"herd_fair_share": fair, "failover_failed": float64(fo.failed), "failover_p99_us": round(us(pct(fo.during, 99))),
		"failover_before_p99_us": round(us(pct(fo.before, 99)))}
	for _, r := range rows {
		out["pr_p50_us_"+strconv.Itoa(r.clusters)] = round(us(r.p50))
		out["pr_p99_us_"+strconv.Itoa(r.clusters)] = round(us(r.p99))
		out["alive_"+strconv.Itoa(r.clusters)] = float64(r.alive)
		out["pr_timeouts_"+strconv.Itoa(r.clusters)] = float64(r.failed)
		out["mo_p99_le_us_"+strconv.Itoa(r.clusters)] = round(r.moP99 * 1e6)
		out["sched_p99_le_us_"+strconv.Itoa(r.clusters)] = round(r.rt.schedP99 * 1e6)
		out["gc_pause_max_le_us_"+strconv.Itoa(r.clusters)] = round(r.rt.gcPauseMax * 1e6)
		out["gc_cycles_"+strconv.Itoa(r.clusters)] = float64(r.rt.gcCycles)
		out["heap_live_mb_"+strconv.Itoa(r.clusters)] = round(float64(r.rt.heapLive) / (1 << 20))
		out["pr_p50_us_inproc_"+strconv.Itoa(r.clusters)] = round(us(r.inP50))
		out["pr_p99_us_inproc_"+strconv.Itoa(r.clusters)] = round(us(r.inP99))
		out["pr_timeouts_inproc_"+strconv.Itoa(r.clusters)] = float64(r.inFailed)
		out["mo_alloc_b_per_placement_"+strconv.Itoa(r.clusters)] = round(r.allocB)
		out["mo_allocs_per_placement_"+strconv.Itoa(r.clusters)] = round(r.allocObj)
		out["pr_to_decision_p99_us_"+strconv.Itoa(r.clusters)] = round(us(r.legs.toP99))
		out["pr_from_decision_p99_us_"+strconv.Itoa(r.clusters)] = round(us(r.legs.fromP99))
		out["cpu_other_pct_"+strconv.Itoa(r.clusters)] = round(100 * r.cpu.other / (r.dur.Seconds() * float64(runtime.NumCPU())))
	}
	b, _ := json.Marshal(out)
	fmt.Println(string(b))
	return nil
}

// measuredLine says what a placement row times.
const measuredLine = "placement rows: round trip timed in a requester process of its own (another process plays the clusters' hellos), so the MO's process holds only the MO and its NATS " +
	"and the runtime columns are that process's; \"in-proc\" columns: the same placements from a requester inside the MO's process, as measured before (it shares the MO's cores, scheduler and GC)"

// helloLine says how the simulated clusters' hellos are sent (sim.go).
func helloLine() string {
	return fmt.Sprintf("simulated clusters: each sends its hello every interval (column \"hello\"), the fleet in turn, spread evenly in %s slices (-hello-slice), "+
		"from a process of their own; 1 hello in %d changes and is decoded in full by the MO", helloSlice, changeEvery)
}

var rowHeader sync.Once

// printRow prints one placement row, with the process's runtime figures
// over its measurement (rtmetrics.go).
func printRow(clusters, alive int, iv, p50, p99, avg time.Duration, failed int, moP99 float64, rt rtStats, inP50, inP99 time.Duration) {
	rowHeader.Do(func() {
		fmt.Printf("%-10s %8s %8s %10s %10s %10s %8s %10s %12s | %10s %10s %9s %6s %8s %8s | %12s %12s\n", "clusters", "alive", "hello", "p50 µs", "p99 µs", "mean µs",
			"timeouts", "goal p99", "MO p99 µs", "sched p99", "sched max", "GC pause", "GCs", "GC cpu", "heap MB", "in-proc p50", "in-proc p99")
	})
	goal := "<1000 µs"
	if clusters >= 100000 {
		goal = "<2000 µs"
	}
	fmt.Printf("%-10d %8d %8s %10.0f %10.0f %10.0f %8d %10s %12s | %10s %10s %9s %6d %7.0f%% %8.0f | %12.0f %12.0f\n", clusters, alive, "/"+iv.String(), us(p50), us(p99), us(avg), failed, goal,
		fmt.Sprintf("<= %.0f", moP99*1e6), fmt.Sprintf("<= %.0f", rt.schedP99*1e6), fmt.Sprintf("<= %.0f", rt.schedMax*1e6),
		fmt.Sprintf("<= %.0f", rt.gcPauseMax*1e6), rt.gcCycles, rt.gcCPUShare*100, float64(rt.heapLive)/(1<<20), us(inP50), us(inP99))
}

// startTrace starts an execution trace to path when on; the returned
// func stops it.
func startTrace(path string, on bool) (func(), error) {
	if path == "" || !on {
		return func() {}, nil
	}
	return startTo(path, trace.Start, trace.Stop)
}

// startTo starts writing a trace or profile to a new file at path; the
// returned func stops it and closes the file.
func startTo(path string, start func(io.Writer) error, stop func()) (func(), error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := start(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() { stop(); f.Close() }, nil
}

// requesterABRow times n placements from each of two requester
// processes, alternating them in chunks of 100 (after a warm-up each),
// so both meet the same load, and prints their p50 and p99.
func requesterABRow(clusters int, a, b *clientProc, bProcs, n int) error {
	var lat [2][]time.Duration
	for i, p := range []*clientProc{a, b} {
		if _, err := p.place(1, ""); err != nil { // its warm-up
			return fmt.Errorf("requester A/B, warm-up %d: %w", i, err)
		}
	}
	for _, k := range abChunks(n, 100) {
		for i, p := range []*clientProc{a, b} {
			ans, err := p.placeNoWarmUp(k)
			if err != nil {
				return fmt.Errorf("requester A/B: %w", err)
			}
			lat[i] = append(lat[i], ans.Latency...)
		}
	}
	fmt.Fprintf(os.Stderr, "requester A/B at %d clusters: GOMAXPROCS %d: p50 %.0f p99 %.0f µs (%d placements); GOMAXPROCS %d: p50 %.0f p99 %.0f µs (%d placements); alternating by 100\n",
		clusters, clientProcs, us(pct(lat[0], 50)), us(pct(lat[0], 99)), len(lat[0]), bProcs, us(pct(lat[1], 50)), us(pct(lat[1], 99)), len(lat[1]))
	return nil
}

// abChunks splits n placements into the chunks each requester of an A/B
// takes in turn: by chunk, the last one shorter, so that both take n.
func abChunks(n, chunk int) []int {
	var ks []int
	for done := 0; done < n; done += chunk {
		ks = append(ks, min(chunk, n-done))
	}
	return ks
}

// checkProfileFlags refuses -cpuprofile with -cpuprofile-rows at the
// start: Go runs one CPU profile at a time, so the first row's profile
// would fail after the whole setup.
func checkProfileFlags(cpuProfile, rowProfile string) error {
	if cpuProfile != "" && rowProfile != "" {
		return errors.New("-cpuprofile and -cpuprofile-rows: Go runs one CPU profile at a time; give one of them")
	}
	return nil
}

// startRowProfile starts a CPU profile to path.n when path is set; the
// returned func stops it.
func startRowProfile(path string, n int) (func(), error) {
	if path == "" {
		return func() {}, nil
	}
	return startTo(path+"."+strconv.Itoa(n), pprof.StartCPUProfile, pprof.StopCPUProfile)
}

// waitHerdAlive waits until every herd cluster is alive in srv's registry.
func waitHerdAlive(srv *meta.Server, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		alive := 0
		for _, h := range herdHellos(time.Second) {
			if _, st, ok := srv.Registry().Get(time.Now(), h.ClusterID); ok && st == meta.StateAlive {
				alive++
			}
		}
		if alive == herdClusters {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("only %d of %d herd clusters alive after %s", alive, herdClusters, limit)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func waitAlive(srv *meta.Server, n int) error {
	deadline := time.Now().Add(30 * time.Second)
	for srv.Registry().Counts(time.Now())[meta.StateAlive] < n {
		if time.Now().After(deadline) {
			return fmt.Errorf("only %d of %d clusters alive after 30s", srv.Registry().Counts(time.Now())[meta.StateAlive], n)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil
}

// measureIngest floods the MO with hellos from the first 10,000 clusters
// the simulator plays (its steady hellos paused) and times how long its
// hello handler takes to take them all in. Hellos the MO drops as a slow
// consumer are never taken in: after 90 s the rate so far is returned.
func measureIngest(srv *meta.Server, cp *clientProc, total int) (float64, error) {
	if err := cp.pause(true); err != nil {
		return 0, err
	}
	base := seenHellos(srv)
	start := time.Now()
	if err := cp.flood(total, 10000); err != nil {
		return 0, err
	}
	deadline := time.Now().Add(90 * time.Second)
	for seenHellos(srv)-base < float64(total) {
		if time.Now().After(deadline) {
			fmt.Fprintf(os.Stderr, "ingest: the MO took in %.0f of %d hellos in 90s (the rest dropped or queued)\n", seenHellos(srv)-base, total)
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	rate := (seenHellos(srv) - base) / time.Since(start).Seconds()
	return rate, cp.pause(false)
}

// waitViewQuiet waits (at most limit) until the MO writes fewer than 1,000
// summaries a second to its compact view.
func waitViewQuiet(srv *meta.Server, limit time.Duration) {
	deadline := time.Now().Add(limit)
	last := viewWrites(srv)
	for time.Now().Before(deadline) {
		time.Sleep(time.Second)
		n := viewWrites(srv)
		if n-last < 1000 {
			return
		}
		last = n
	}
	fmt.Fprintf(os.Stderr, "the compact view still writes over 1,000 summaries/s after %s; measuring anyway\n", limit)
}

func viewWrites(srv *meta.Server) float64 { return counterSum(srv, "roam_meta_view_writes_total") }

// hist is a reading of a histogram: upper bounds, cumulative counts.
type hist struct {
	bounds []float64
	counts []uint64
}

// placementBuckets reads the MO's placement histogram.
func placementBuckets(srv *meta.Server) (h hist) {
	mfs, _ := srv.Gatherer().Gather()
	for _, mf := range mfs {
		if mf.GetName() != "roam_meta_placement_seconds" || len(mf.GetMetric()) == 0 {
			continue
		}
		m := mf.GetMetric()[0].GetHistogram()
		for _, b := range m.GetBucket() {
			h.bounds = append(h.bounds, b.GetUpperBound())
			h.counts = append(h.counts, b.GetCumulativeCount())
		}
		h.bounds = append(h.bounds, math.Inf(1))
		h.counts = append(h.counts, m.GetSampleCount())
	}
	return h
}

// bucketQuantile is the upper bound of the bucket holding quantile q of
// the placements between two readings of placementBuckets.
func bucketQuantile(before, after hist, q float64) float64 {
	c0, c1, bounds := before.counts, after.counts, after.bounds
	if len(c0) != len(c1) || len(c1) == 0 {
		return math.NaN()
	}
	total := c1[len(c1)-1] - c0[len(c0)-1]
	for i := range c1 {
		if float64(c1[i]-c0[i]) >= q*float64(total) {
			return bounds[i]
		}
	}
	return math.Inf(1)
}

func helloResults(srv *meta.Server) map[string]float64 {
	out := map[string]float64{}
	mfs, _ := srv.Gatherer().Gather()
	for _, mf := range mfs {
		if mf.GetName() == "roam_meta_hellos_total" {
			for _, m := range mf.GetMetric() {
				out[m.GetLabel()[0].GetValue()] = m.GetCounter().GetValue()
			}
		}
	}
	return out
}

func seenHellos(srv *meta.Server) float64 { return counterSum(srv, "roam_meta_hellos_total") }

// counterSum is the sum of the MO's counter name over its labels (0 when
// it cannot be read).
func counterSum(srv *meta.Server, name string) float64 {
	mfs, err := srv.Gatherer().Gather()
	if err != nil {
		return 0
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, m := range mf.GetMetric() {
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return sum
}

// measureDecode is the in-process cost of decoding and registering a hello.
func measureDecode() float64 {
	const n = 200000
	bufs := make([][]byte, 1000)
	for i := range bufs {
		h := simHello(i, len(bufs), time.Second)
		h.Version, h.Seq = meta.Version, 1
		bufs[i], _ = json.Marshal(h)
	}
	reg := meta.NewRegistry(time.Second, 3)
	start := time.Now()
	for i := range n {
		h, err := meta.DecodeHello(bufs[i%len(bufs)])
		if err != nil {
			panic(err)
		}
		h.Seq = uint64(i/len(bufs) + 1)
		reg.Observe(h, start)
	}
	return n / time.Since(start).Seconds()
}

func pct(d []time.Duration, p int) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	i := (len(s)*p + 99) / 100
	return s[min(max(i-1, 0), len(s)-1)]
}

func mean(d []time.Duration) time.Duration {
	var sum time.Duration
	for _, x := range d {
		sum += x
	}
	return sum / time.Duration(len(d))
}

func us(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1000 }

func round(f float64) float64 { return float64(int64(f*10+0.5)) / 10 }
