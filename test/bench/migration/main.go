// Command migration is the paper's Table I as a benchmark: it brings up the
// testbed (deep-edge, edge, cloud; local backend), deploys the classifier at
// home, and migrates it around home -> edge -> cloud -> home (at least 20
// migrations) while the camera streams requests, then prints each stage's
// median and p95 beside the paper's figures and the failed-request count.
// The LAST line is one JSON object. Needs root.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/roamnet/roam/ctrl"
	"github.com/roamnet/roam/ctrl/backend"
	"github.com/roamnet/roam/dataplane"
	"github.com/roamnet/roam/test/testbed"
)

func main() {
	n := flag.Int("migrations", 21, "number of migrations (at least 20)")
	bin := flag.String("bin", "", "directory with the roam binaries (default: go build them)")
	xdp := flag.String("xdp-mode", "native", "agents' XDP mode: native or generic")
	explicit := flag.Bool("explicit", false, "name each destination (home -> edge -> cloud -> home) instead of asking the MO (PR then measures no MO round trip)")
	drain := flag.Duration("drain-timeout", 2*time.Second, "controllers' drain timeout (the wait stage's upper bound)")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, max(*n, 20), *bin, *xdp, *drain, *explicit); err != nil {
		fmt.Fprintln(os.Stderr, "bench-migration:", err)
		os.Exit(1)
	}
}

type summary struct {
	PRMs          float64 `json:"pr_ms"`
	ReplicationMs float64 `json:"replication_ms"`
	RerouteMs     float64 `json:"reroute_ms"`
	WaitMs        float64 `json:"wait_ms"`
	CleanupMs     float64 `json:"cleanup_ms"`
	DeployMs      float64 `json:"deploy_ms"`
	Migrations    int     `json:"migrations"`
	Requests      int     `json:"requests"`
	Failed        int     `json:"failed"`
}

func run(ctx context.Context, n int, bin, xdp string, drain time.Duration, explicit bool) error {
	if err := testbed.CheckEnv(); err != nil {
		return err
	}
	if err := testbed.CheckXDP(); err != nil {
		return err
	}
	cfg := testbed.Default()
	cfg.Name = fmt.Sprintf("bench%d", os.Getpid()%100000)
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	fmt.Printf("testbed %s: up, launching roam (XDP %s, drain timeout %s)\n", cfg.Name, xdp, drain)
	tb, err := testbed.Up(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer func() {
		if err := tb.Down(context.WithoutCancel(ctx)); err != nil {
			fmt.Fprintln(os.Stderr, "testbed down:", err)
		}
	}()
	if _, err := tb.Launch(ctx, testbed.LaunchConfig{BinDir: bin, XDPMode: xdp, DrainTimeout: drain}); err != nil {
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
	if _, err := hc.Deploy(ctx, ctrl.Descriptor{Name: "classifier", Demo: true,
		Ports: []backend.Port{{Port: 80, Protocol: dataplane.TCP}}}); err != nil {
		return err
	}
	deploys = append(deploys, float64(time.Since(t0).Microseconds())/1000)
	st := testbed.StartStream(ctx, cam.NS, fmt.Sprintf("http://%s:80/", home.WAN4), 20*time.Millisecond, 2*time.Second)
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	err = st.WaitServedBy(wctx, "home", 5)
	cancel()
	if err != nil {
		st.Stop()
		return fmt.Errorf("classifier not answering at home: %w", err)
	}
	dests := []string{"edge", "cloud", "home"}
	var migs []ctrl.Migration
	for i := range n {
		dest := dests[i%len(dests)]
		ask := dest
		if !explicit {
			ask = "" // the MO places it (the paper's PR)
		}
		m, err := hc.Migrate(ctx, "classifier", ask, "manual")
		if err == nil {
			dest = m.To
		}
		if err != nil {
			st.Stop()
			return fmt.Errorf("migration %d to %s: %w", i+1, dest, err)
		}
		migs = append(migs, m)
		var total float64
		for _, s := range m.Stages {
			total += s.Ms
		}
		fmt.Printf("  migration %2d: %-5s -> %-5s %-6s %8.1f ms\n", i+1, m.From, m.To, m.Role, total)
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err = st.WaitServedBy(wctx, dest, 3)
		cancel()
		if err != nil {
			st.Stop()
			return fmt.Errorf("after migration %d: not answered by %s: %w", i+1, dest, err)
		}
	}
	samples := st.Stop()
	failed := 0
	for _, s := range samples {
		if !s.OK {
			failed++
		}
	}
	rows := testbed.Table(migs, deploys)
	fmt.Println()
	testbed.PrintTable(os.Stdout, rows)
	fmt.Printf("\nmigrations %d, requests %d, failed %d\n", len(migs), len(samples), failed)
	sum := summary{Migrations: len(migs), Requests: len(samples), Failed: failed}
	for _, r := range rows {
		v := r.MedianMs
		switch r.Stage {
		case "PR":
			sum.PRMs = v
		case "replication":
			sum.ReplicationMs = v
		case "reroute":
			sum.RerouteMs = v
		case "wait":
			sum.WaitMs = v
		case "cleanup":
			sum.CleanupMs = v
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
