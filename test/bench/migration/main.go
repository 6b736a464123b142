// Command migration is the paper's Table I as a benchmark, with real
// clients: it brings up the testbed (deep-edge home, edge, cloud; local
// backend), deploys the demo service "classifier" at home (HTTP on 80/tcp,
// request/response on 80/udp) and migrates it around home -> edge -> cloud
// -> home (at least 50 migrations: the MO places two hops of three, the
// third is named home; the second hop is moved on by the
// abroad cluster) while three kinds of client run at once through the home
// frontend from the camera: short HTTP (a connection per request),
// keep-alive HTTP (8 persistent connections of Go's transport, and wrk -c8
// beside it) and UDP request/response (test/load). Then, with the service
// abroad, wrk opens new connections as fast as this machine can for
// --rate-duration and the home agent's port_exhausted drops are read.
//
// It prints each client kind's requests, failures and p99 latency, Table I
// beside the paper, the migration total's median and p95, and port
// exhaustion. The LAST line is one JSON object. Needs root.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/roamnet/roam/ctrl"
	"github.com/roamnet/roam/ctrl/backend"
	"github.com/roamnet/roam/dataplane"
	"github.com/roamnet/roam/dataplane/lb"
	"github.com/roamnet/roam/internal/cli"
	"github.com/roamnet/roam/test/load"
	"github.com/roamnet/roam/test/netns"
	"github.com/roamnet/roam/test/testbed"
)

type options struct {
	n            int
	bin, xdp     string
	name         string
	explicit     bool
	drain        time.Duration
	wrk          bool
	snatPool     int
	rateDuration time.Duration
	rateConns    int
	udp          bool
	rerouteN     int
	rerouteGap   time.Duration
	rerouteOnly  bool
	agentRounds  int
	agentGap     time.Duration
	answerAt     string
	callsOnly    bool
	roundsOut    string
	schedAB      []string
}

func main() {
	var o options
	flag.IntVar(&o.n, "migrations", 51, "number of migrations (at least 50)")
	flag.StringVar(&o.bin, "bin", "", "directory with the roam binaries (default: go build them)")
	flag.StringVar(&o.xdp, "xdp-mode", "native", "agents' XDP mode: native or generic")
	flag.StringVar(&o.name, "name", fmt.Sprintf("bench%d", os.Getpid()%100000), "testbed name (unique on this machine)")
	flag.BoolVar(&o.explicit, "explicit", false, "name each destination (home -> edge -> cloud -> home) instead of asking the MO for two hops of three (PR is measured over the MO's placements only)")
	flag.DurationVar(&o.drain, "drain-timeout", 10*time.Second, "controllers' drain timeout (a migration's cleanup ends by then at the latest)")
	flag.BoolVar(&o.wrk, "wrk", true, "run wrk -c8 (keep-alive, back to back) through the home frontend during the migrations")
	flag.DurationVar(&o.rateDuration, "rate-duration", 60*time.Second, "how long wrk opens new connections (Connection: close) at its highest rate after the migrations (0: skip)")
	flag.IntVar(&o.rateConns, "rate-conns", 32, "wrk's concurrent connections in the new-connection phase")
	flag.IntVar(&o.snatPool, "snat-pool", 16, "IPv4 SNAT addresses per agent (testbed.SNATPool4, assigned to the node's WAN interface); 1: the node's WAN address alone")
	flag.BoolVar(&o.udp, "udp", true, "give the service a UDP port and run the UDP client (its flows hold each drain for the data plane's UDP drain time, roam-agent --udp-drain)")
	flag.IntVar(&o.rerouteN, "reroute-rounds", 200, "rounds of the data plane's stage+commit of 2 frontends per layout (as built, and c81b169's), under the clients' load (0: skip)")
	flag.DurationVar(&o.rerouteGap, "reroute-gap", 20*time.Millisecond, "time between those rounds")
	flag.IntVar(&o.agentRounds, "agent-rounds", 100, "rounds of the controller's stage+commit calls of 2 frontends to the home agent per transport (as built, and net/http's HTTP/2), under the clients' load (0: skip)")
	flag.DurationVar(&o.agentGap, "agent-gap", 50*time.Millisecond, "time between those rounds")
	flag.StringVar(&o.answerAt, "return", ctrl.ReturnCommitted, "when each migrate call answers: \"committed\" (once the new copy serves and the home committed and recorded it; drain and cleanup run behind the answer, and the bench waits for the journal to say they are done before the next migration) or \"\" (once the old copy is removed)")
	flag.BoolVar(&o.rerouteOnly, "reroute-only", false, "only measure the data plane's stage+commit (no testbed)")
	flag.BoolVar(&o.callsOnly, "calls-only", false, "stop after the controller's calls to the home agent (testbed, clients and those calls; no migrations, no new-connection phase): a quick look at a reroute's way")
	flag.StringVar(&o.roundsOut, "rounds-out", "", "write each one-call reroute round to this file, one line each: round, the home's processes' slice (ns), CLOCK_MONOTONIC ns of the call made, the agent's handler entered, its answer ready, the call returned, then agent_us, stage_us, commit_us; to lay beside a kernel trace (ftrace trace_clock mono)")
	schedAB := flag.String("sched-ab", "", "alternate the migrations between these scheduling settings of the home's roam-agent and roam-ctrl, comma-separated: built (as the daemons run by default), nice (nice -10, 100µs slice), rt (SCHED_FIFO 1); Table I and the JSON's medians then mix them, and reroute_ms_sched gives reroute_ms per setting (default: none, every migration as built)")
	flag.Parse()
	o.n = max(o.n, 50)
	if *schedAB != "" {
		o.schedAB = strings.Split(*schedAB, ",")
		for _, v := range o.schedAB {
			if _, ok := schedVariants[v]; !ok {
				fmt.Fprintf(os.Stderr, "bench-migration: -sched-ab: %q: want built, nice or rt\n", v)
				os.Exit(2)
			}
		}
	}
	cli.Main("bench-migration", func(ctx context.Context, _ []string) error { return run(ctx, o) })
}

type summary struct {
	Migrations       int     `json:"migrations"`
	MigrationsFailed int     `json:"migrations_failed"`
	Requests         int     `json:"requests"`
	Failed           int     `json:"failed"`
	FailedShort      int     `json:"failed_short"`
	FailedKeepalive  int     `json:"failed_keepalive"`
	FailedUDP        int     `json:"failed_udp"`
	WrkRequests      int     `json:"wrk_requests"`
	WrkErrors        int     `json:"wrk_errors"`
	PRMs             float64 `json:"pr_ms"`
	ReplicationMs    float64 `json:"replication_ms"`
	RerouteMs        float64 `json:"reroute_ms"`
	CommitMs         float64 `json:"commit_ms"`
	WaitMs           float64 `json:"wait_ms"`
	CleanupMs        float64 `json:"cleanup_ms"`
	DeployMs         float64 `json:"deploy_ms"`
	DrainMs          float64 `json:"drain_ms"`
	// TotalMs is the migrate call's wall time (request to answer; the
	// answer comes at the commit with -return committed, after the
	// cleanup with -return ""); TotalWithCleanupMs from the request to
	// the journal's finish of that migration (the old copy removed).
	Return                string  `json:"return"`
	TotalMs               float64 `json:"total_ms"`
	TotalP95Ms            float64 `json:"total_p95_ms"`
	TotalWithCleanupMs    float64 `json:"total_with_cleanup_ms"`
	TotalWithCleanupP95Ms float64 `json:"total_with_cleanup_p95_ms"`
	DrainTimeoutMs        float64 `json:"drain_timeout_ms"`
	NewConnsPerSec        float64 `json:"new_conns_per_s"`
	PortExhausted         int64   `json:"port_exhausted"`
	SNATPool              int     `json:"snat_pool"`       // IPv4 SNAT addresses of each agent
	NATEntriesEnd         int64   `json:"nat_entries_end"` // SNAT ports held when the new-connection phase ended
	// The data plane's stage and commit of 2 frontends, p50 (µs): as
	// built, and c81b169's layout (reroute.go).
	DPStageUs       float64 `json:"dp_stage_us"`
	DPCommitUs      float64 `json:"dp_commit_us"`
	DPStageGraceUs  float64 `json:"dp_stage_grace_us"`
	DPCommitGraceUs float64 `json:"dp_commit_grace_us"`
	// The controller's stage and commit calls of 2 frontends to the home
	// agent, p50 (µs): as built, and net/http's HTTP/2 (agentcalls.go).
	APIStageUs    float64 `json:"api_stage_us"`
	APICommitUs   float64 `json:"api_commit_us"`
	APIStageH2Us  float64 `json:"api_stage_h2_us"`
	APICommitH2Us float64 `json:"api_commit_h2_us"`
	// The one /v1/reroute call (stage and commit of 2 frontends in the
	// agent) a one-node cluster's migration makes, p50 (µs).
	APIRerouteUs float64 `json:"api_reroute_us"`
	// Its share in the agent (its handler, from the request read until
	// the answer is ready to write), p50 (µs): the rest is the wire, both
	// wake-ups, the caller.
	APIRerouteAgentUs float64 `json:"api_reroute_agent_us"`
	// The request's way (the call made until the agent's handler was
	// entered) and the answer's (the answer ready until the call
	// returned), p50 (µs), from the agent's wall clock beside the
	// bench's (one host).
	APIRerouteToAgentUs float64 `json:"api_reroute_to_agent_us"`
	APIRerouteBackUs    float64 `json:"api_reroute_back_us"`
	// The same with the home's roam processes at a short scheduler
	// slice (--sched-slice 100µs; rounds alternating with those as built).
	APIRerouteShortSliceUs float64 `json:"api_reroute_short_slice_us"`
	// With -sched-ab: reroute_ms (median) of the migrations made at each
	// scheduling setting of the home's roam processes.
	RerouteMsSched map[string]float64 `json:"reroute_ms_sched,omitempty"`
}

// reroute measures the data plane's share of a reroute into sum.
func reroute(o options, sum *summary) error {
	if o.rerouteN <= 0 {
		return nil
	}
	slots, grace, err := benchReroute(o.rerouteN, o.rerouteGap)
	if err != nil {
		return fmt.Errorf("data plane reroute: %w", err)
	}
	printReroute(slots, grace, o.rerouteN, o.rerouteGap)
	sum.DPStageUs, sum.DPCommitUs = testbed.Quantile(slots.stage, 0.5), testbed.Quantile(slots.commit, 0.5)
	sum.DPStageGraceUs, sum.DPCommitGraceUs = testbed.Quantile(grace.stage, 0.5), testbed.Quantile(grace.commit, 0.5)
	return nil
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func run(ctx context.Context, o options) error {
	if err := testbed.CheckHost(); err != nil {
		return err
	}
	var sum summary
	if o.rerouteOnly {
		if err := reroute(o, &sum); err != nil {
			return err
		}
		b, err := json.Marshal(sum)
		if err != nil {
			return err
		}
		fmt.Println(string(b))
		return nil
	}
	cfg := testbed.Default()
	cfg.Name = o.name
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	fmt.Printf("testbed %s: up, launching roam (XDP %s, drain timeout %s)\n", cfg.Name, o.xdp, o.drain)
	tb, err := testbed.Up(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer func() {
		if err := tb.Down(context.WithoutCancel(ctx)); err != nil {
			fmt.Fprintln(os.Stderr, "testbed down:", err)
		}
	}()
	if _, err := tb.Launch(ctx, testbed.LaunchConfig{BinDir: o.bin, XDPMode: o.xdp, DrainTimeout: o.drain, SNATPool: o.snatPool}); err != nil {
		return err
	}
	home, _ := tb.Cluster("home")
	cam, _ := tb.Client("camera")
	hc, err := tb.Ctrl("home")
	if err != nil {
		return err
	}
	var deploys []float64
	t0 := time.Now()
	ports := []backend.Port{{Name: "http", Port: 80, Protocol: lb.TCP}}
	if o.udp {
		ports = append(ports, backend.Port{Name: "rr", Port: 80, Protocol: lb.UDP})
	}
	if _, err := hc.Deploy(ctx, ctrl.Descriptor{Name: "classifier", Demo: true, Ports: ports}); err != nil {
		return err
	}
	deploys = append(deploys, ms(time.Since(t0)))
	fe := fmt.Sprintf("%s:80", home.WAN4)
	clients := []load.Client{
		{Kind: load.Short, Addr: fe, Interval: 20 * time.Millisecond},
		{Kind: load.KeepAlive, Addr: fe, Conns: 8, Interval: 2 * time.Millisecond},
	}
	if o.udp {
		clients = append(clients, load.Client{Kind: load.UDP, Addr: fe, Interval: 20 * time.Millisecond})
	}
	l, err := load.Start(ctx, load.Config{Dial: netns.Dialer(cam.NS), Timeout: 2 * time.Second, Clients: clients})
	if err != nil {
		return err
	}
	defer l.Stop()
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	err = l.WaitServedBy(wctx, "home", 5)
	cancel()
	if err != nil {
		return fmt.Errorf("classifier not answering at home: %w", err)
	}
	cmdIn := func(ctx context.Context, prog string, args ...string) *exec.Cmd {
		return netns.Cmd(ctx, cam.NS, prog, args...)
	}
	var wrkRun *load.WrkRun
	if o.wrk {
		w := load.Wrk{URL: "http://" + fe + "/", Threads: 1, Conns: 8, Duration: time.Hour, Command: cmdIn}
		if wrkRun, err = w.Start(ctx); err != nil {
			return err
		}
		fmt.Printf("clients: short HTTP every 20ms, keep-alive HTTP 8 connections (Go), UDP every 20ms, and %s\n", strings.Join(append([]string{"wrk"}, w.Args()...), " "))
	}

	fmt.Println("data plane reroute, both layouts, under the clients' load ...")
	if err := reroute(o, &sum); err != nil {
		return err
	}
	if o.agentRounds > 0 {
		fmt.Println("controller's calls to the home agent, both transports, under the clients' load ...")
		var perRound io.Writer
		var roundsFile *os.File
		if o.roundsOut != "" {
			if roundsFile, err = os.Create(o.roundsOut); err != nil {
				return fmt.Errorf("rounds out: %w", err)
			}
			perRound = roundsFile
		}
		sc, h2, one, oneShort, inAgent, err := agentCalls(ctx, tb, o.agentRounds, o.agentGap, perRound)
		if roundsFile != nil {
			// Closed here, its error returned: a file the disk did not
			// take whole is not laid beside a trace.
			if cerr := roundsFile.Close(); cerr != nil && err == nil {
				return fmt.Errorf("rounds out: %w", cerr)
			}
		}
		if err != nil {
			return fmt.Errorf("agent calls: %w", err)
		}
		printAgentCalls(sc, h2, one, oneShort, inAgent, o.agentRounds, o.agentGap)
		q := testbed.Quantile
		sum.APIRerouteUs, sum.APIRerouteShortSliceUs = q(one, 0.5), q(oneShort, 0.5)
		sum.APIRerouteAgentUs = q(inAgent.agent, 0.5)
		sum.APIRerouteToAgentUs, sum.APIRerouteBackUs = q(inAgent.to, 0.5), q(inAgent.back, 0.5)
		sum.APIStageUs, sum.APICommitUs = q(sc.stage, 0.5), q(sc.commit, 0.5)
		sum.APIStageH2Us, sum.APICommitH2Us = q(h2.stage, 0.5), q(h2.commit, 0.5)
	}
	if o.callsOnly {
		b, err := json.Marshal(sum)
		if err != nil {
			return err
		}
		fmt.Println(string(b))
		return nil
	}
	dests := []string{"edge", "cloud", "home"}
	var migs []ctrl.Migration
	var totals, withCleanup []float64
	reroutes := map[string][]float64{} // -sched-ab: reroute_ms by setting
	for i := range o.n {
		dest := dests[i%len(dests)]
		ask := dest
		if !o.explicit && dest != "home" {
			// The MO places it (the paper's PR); every third hop is
			// named home, so the chain is home -> X -> Y -> home.
			ask = ""
		}
		sched := ""
		if len(o.schedAB) > 0 {
			// The home's processes at this migration's setting (the
			// home controller makes every reroute, for a mover too).
			sched = o.schedAB[i%len(o.schedAB)]
			pids, err := pidsIn(home.NS, "roam-agent", "roam-ctrl")
			if err != nil {
				return err
			}
			if err := setSched(pids, sched); err != nil {
				return err
			}
		}
		start := time.Now()
		m, err := hc.MigrateWith(ctx, "classifier", ctrl.MigrateRequest{Destination: ask, Reason: "manual", Return: o.answerAt})
		wall := ms(time.Since(start))
		if err == nil {
			// The journal of the cluster that ran it says when its drain
			// and cleanup are done (at once with -return "").
			m, err = settledMigration(ctx, tb, m)
		}
		if err != nil {
			// Rolled back: the service stays where it was. Counted, and
			// the run goes on.
			sum.MigrationsFailed++
			fmt.Printf("  migration %2d: to %-5s FAILED after %.1f ms: %v\n", i+1, dest, wall, err)
			r, gerr := hc.Get(ctx, "classifier")
			if gerr != nil {
				return fmt.Errorf("after failed migration %d: %w", i+1, gerr)
			}
			wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			err = l.WaitServedBy(wctx, r.Cluster, 3)
			cancel()
			if err != nil {
				return fmt.Errorf("after failed migration %d: not answered by %s: %w", i+1, r.Cluster, err)
			}
			continue
		}
		dest = m.To
		if ask != "" {
			m.Times.PR = 0 // named: no placement round trip to measure
		}
		migs = append(migs, m)
		if sched != "" {
			reroutes[sched] = append(reroutes[sched], m.Times.Reroute)
		}
		totals = append(totals, wall)
		wc := ms(m.Finished.Sub(start))
		withCleanup = append(withCleanup, wc)
		fmt.Printf("  migration %2d: %-5s -> %-5s %-6s %8.1f ms (%6.1f ms to the old copy removed)  %s\n", i+1, m.From, m.To, m.Role, wall, wc, stagesLine(m.Stages))
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err = l.WaitServedBy(wctx, dest, 3)
		cancel()
		if err != nil {
			return fmt.Errorf("after migration %d: not answered by %s: %w", i+1, dest, err)
		}
	}
	if len(o.schedAB) > 0 {
		// The rest of the run as built.
		pids, err := pidsIn(home.NS, "roam-agent", "roam-ctrl")
		if err != nil {
			return err
		}
		if err := setSched(pids, "built"); err != nil {
			return err
		}
	}
	var wr load.WrkResult
	if wrkRun != nil {
		if wr, err = wrkRun.Stop(); err != nil {
			return err
		}
	}
	rep := l.Stop()

	// New connections at the highest rate, toward a target abroad (SNAT).
	var rate load.WrkResult
	if o.rateDuration > 0 {
		if r, err := hc.Get(ctx, "classifier"); err == nil && r.Cluster == "home" {
			if _, err := hc.Migrate(ctx, "classifier", "edge", "manual"); err != nil {
				return fmt.Errorf("move abroad for the new-connection phase: %w", err)
			}
		}
		before, err := agentCount(ctx, home.NS, "roam_dataplane_drops_total", "reason", "port_exhausted")
		if err != nil {
			return err
		}
		w := load.Wrk{URL: "http://" + fe + "/", Threads: 2, Conns: o.rateConns, Duration: o.rateDuration,
			Header: "Connection: close", Command: cmdIn}
		fmt.Printf("\nnew connections for %s: %s\n", o.rateDuration, strings.Join(append([]string{"wrk"}, w.Args()...), " "))
		if rate, err = w.Run(ctx); err != nil {
			return err
		}
		after, err := agentCount(ctx, home.NS, "roam_dataplane_drops_total", "reason", "port_exhausted")
		if err != nil {
			return err
		}
		sum.PortExhausted = after - before
		if sum.NATEntriesEnd, err = agentCount(ctx, home.NS, "roam_dataplane_conntrack_entries", "map", "nat"); err != nil {
			return err
		}
		sum.NewConnsPerSec = rate.RequestsPerSec
	}

	fmt.Println("\nClients through the home frontend during the migrations")
	rep.Print(os.Stdout, 10)
	if wrkRun != nil {
		fmt.Printf("  %-10s %9d %7d %8s %8s %8s %9s %9s %9s  (%s; socket errors: connect %d, read %d, write %d, timeout %d; non-2xx %d)\n",
			"wrk", wr.Requests, wr.Errors(), "—", "—", "—", fmtDur(wr.P50), fmtDur(wr.P99), "—", wr.Command,
			wr.ConnectErrors, wr.ReadErrors, wr.WriteErrors, wr.Timeouts, wr.Non2xx)
	}
	rows := testbed.Table(migs, deploys)
	fmt.Println()
	testbed.PrintTable(os.Stdout, rows)
	fmt.Println("reroute (reroute_ms): at the home controller, from the start of staging to the last node's commit (its agent calls' wall time; the verify of the new copy comes before it, the journal's writes before it, the record after); every cluster of the testbed has one node: one /v1/reroute call, the agent staging then committing both frontends. commit (commit_ms): the commit itself, the agent's own in that call. A mover's rows are its home's.")
	sum.TotalMs, sum.TotalP95Ms = testbed.Quantile(totals, 0.5), testbed.Quantile(totals, 0.95)
	sum.TotalWithCleanupMs, sum.TotalWithCleanupP95Ms = testbed.Quantile(withCleanup, 0.5), testbed.Quantile(withCleanup, 0.95)
	sum.Return = o.answerAt
	answer := "once the old copy is removed"
	if o.answerAt == ctrl.ReturnCommitted {
		answer = "at the commit: the new copy serves, the home committed and recorded it; drain and cleanup behind it"
	}
	fmt.Printf("\nmigration total (total_ms: the migrate API call, request to answer; answered %s): median %.1f ms, p95 %.1f ms over %d migrations (drain timeout %s); %d failed and rolled back\n",
		answer, sum.TotalMs, sum.TotalP95Ms, len(migs), o.drain, sum.MigrationsFailed)
	fmt.Printf("migration total with drain and cleanup (total_with_cleanup_ms: request to the journal's finish, the old copy removed): median %.1f ms, p95 %.1f ms\n",
		sum.TotalWithCleanupMs, sum.TotalWithCleanupP95Ms)
	if o.rateDuration > 0 {
		fmt.Printf("new connections: %d in %s (%.0f/s, %d errors), port_exhausted drops %d\n",
			rate.Requests, rate.Duration, rate.RequestsPerSec, rate.Errors(), sum.PortExhausted)
		// What the run held, measured at its end, beside what one
		// address and the pool hold.
		ports := int64(dataplane.DefaultPortMax - dataplane.DefaultPortMin + 1)
		pool := int64(max(o.snatPool, 1))
		fmt.Printf("SNAT ports held at the end (NAT entries, unreclaimed expired ones included): %d; one address holds %d, this pool of %d holds %d\n",
			sum.NATEntriesEnd, ports, pool, pool*ports)
	}

	if len(o.schedAB) > 0 {
		sum.RerouteMsSched = map[string]float64{}
		fmt.Printf("reroute by the home's roam-agent and roam-ctrl scheduling (-sched-ab, migrations alternating):")
		for _, v := range o.schedAB {
			if _, done := sum.RerouteMsSched[v]; done || len(reroutes[v]) == 0 {
				continue
			}
			sum.RerouteMsSched[v] = testbed.Quantile(reroutes[v], 0.5)
			fmt.Printf(" %s median %.3f ms, p95 %.3f ms (%d);", v, sum.RerouteMsSched[v], testbed.Quantile(reroutes[v], 0.95), len(reroutes[v]))
		}
		fmt.Println()
	}
	sum.Migrations = len(migs)
	sum.SNATPool = max(o.snatPool, 1)
	sum.DrainTimeoutMs = ms(o.drain)
	sum.FailedShort = rep.Kinds[load.Short].Failed
	sum.FailedKeepalive = rep.Kinds[load.KeepAlive].Failed + wr.Errors()
	sum.FailedUDP = rep.Kinds[load.UDP].Failed
	sum.WrkRequests, sum.WrkErrors = wr.Requests, wr.Errors()
	sum.Requests = rep.Requests() + wr.Requests
	sum.Failed = sum.FailedShort + sum.FailedKeepalive + sum.FailedUDP
	for _, r := range rows {
		v := r.MedianMs
		switch r.Stage {
		case "PR":
			sum.PRMs = v
		case "replication":
			sum.ReplicationMs = v
		case "reroute":
			sum.RerouteMs = v
		case "commit":
			sum.CommitMs = v
		case "wait":
			sum.WaitMs = v
		case "cleanup":
			sum.CleanupMs = v
		case "drain":
			sum.DrainMs = v
		case "deploy":
			sum.DeployMs = v
		}
	}
	b, err := json.Marshal(sum)
	if err != nil {
		return err
	}
	fmt.Println(string(b))
	return nil
}

// settledMigration is m as the journal of the cluster that ran it holds
// it once settled (done or failed): with an answer at the commit, its
// drain and cleanup run after the answer. A migration that failed there
// is an error.
func settledMigration(ctx context.Context, tb *testbed.Testbed, m ctrl.Migration) (ctrl.Migration, error) {
	if m.State != ctrl.StateRunning {
		return m, nil
	}
	c, err := tb.Ctrl(m.From)
	if err != nil {
		return m, err
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		ms, err := c.Migrations(wctx)
		if err != nil {
			return m, fmt.Errorf("read %s's journal: %w", m.From, err)
		}
		for _, j := range ms {
			if j.ID != m.ID || j.State == ctrl.StateRunning {
				continue
			}
			if j.State != ctrl.StateDone {
				return j, fmt.Errorf("migration %s %s behind its answer: %s", j.ID, j.State, j.Error)
			}
			return j, nil
		}
		select {
		case <-wctx.Done():
			return m, fmt.Errorf("migration %s not settled: %w", m.ID, wctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
}

func fmtDur(d time.Duration) string { return fmt.Sprintf("%.2f", ms(d)) }

func stagesLine(st []ctrl.StageTime) string {
	var parts []string
	for _, s := range st {
		parts = append(parts, fmt.Sprintf("%s=%.1f", s.Stage, s.Ms))
	}
	return strings.Join(parts, " ")
}

// agentMetrics scrapes the home agent's metrics.
func agentMetrics(ctx context.Context, ns string) (map[string]*dto.MetricFamily, error) {
	c := testbed.HTTPClient(ns, 5*time.Second)
	defer c.CloseIdleConnections()
	url := fmt.Sprintf("http://127.0.0.1:%d/metrics", testbed.AgentMetrics)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, fmt.Errorf("scrape agent metrics: %w", err)
	}
	defer resp.Body.Close()
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("parse agent metrics: %w", err)
	}
	return fams, nil
}

// metricSum is the sum of family name's samples whose label is value.
func metricSum(fams map[string]*dto.MetricFamily, name, label, value string) (float64, error) {
	fam, ok := fams[name]
	if !ok {
		return 0, fmt.Errorf("agent metrics: no %s", name)
	}
	var n float64
	for _, m := range fam.GetMetric() {
		for _, lp := range m.GetLabel() {
			if lp.GetName() == label && lp.GetValue() == value {
				n += m.GetCounter().GetValue() + m.GetGauge().GetValue()
			}
		}
	}
	return n, nil
}

// agentCount reads the sum of the home agent's samples of metric name
// whose label is value: drops_total{reason="port_exhausted"}, or
// conntrack_entries{map="nat"} (one per SNAT port held; expired ones the
// GC has not reclaimed yet included, so an upper bound).
func agentCount(ctx context.Context, ns, name, label, value string) (int64, error) {
	fams, err := agentMetrics(ctx, ns)
	if err != nil {
		return 0, err
	}
	n, err := metricSum(fams, name, label, value)
	return int64(n), err
}
