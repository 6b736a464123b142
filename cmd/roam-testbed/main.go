// Command roam-testbed runs roam on one machine with clusters as network
// namespaces (test/testbed): up, status, down, and run (the paper's
// experiment). It is a development and demo tool: no image ships it, and
// roamctl and the daemons link none of its code.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/roamnet/roam/internal/cli"
	"github.com/roamnet/roam/test/testbed"
)

func main() { cli.Main("roam-testbed", runTestbed) }

const testbedUsage = `usage: roam-testbed up|status|down|run [flags]

  up      build the topology and start roam-meta, roam-agent and roam-ctrl in it
  status  show namespaces, links, processes and where to reach them
  down    stop every process and remove every namespace, link, pin and the state
  run     up, the paper's experiment (Table I, plot), down

flags:`

type testbedFlags struct {
	config, name, bin, out, xdpMode string
	mode                            string
	keep, verbose, jsonOut          bool
	interval, dwell                 time.Duration
	degraded                        string
}

func runTestbed(ctx context.Context, args []string) error {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		return errors.New(testbedUsage[:strings.Index(testbedUsage, "\n\nflags:")])
	}
	sub := args[0]
	var f testbedFlags
	fs := flag.NewFlagSet("roam-testbed "+sub, flag.ContinueOnError)
	fs.StringVar(&f.config, "config", "", "topology YAML (default: the paper's deep-edge/edge/cloud)")
	fs.StringVar(&f.name, "name", "", "testbed name (overrides the config's; namespaces are roam-NAME-*)")
	fs.StringVar(&f.bin, "bin", "", "directory with roam-meta, roam-ctrl, roam-agent (default: go build them)")
	fs.StringVar(&f.out, "out", "roam-demo", "run: output directory for result.json and latency.png")
	fs.StringVar(&f.xdpMode, "xdp-mode", "native", "agents' XDP mode: native or generic")
	fs.StringVar(&f.mode, "mode", "nat", "up, run: how homes redirect to abroad copies: nat, or srv6 (SRv6 path mode over the IPv6 WAN: the client's packets unchanged, its address kept)")
	fs.BoolVar(&f.keep, "keep", false, "run: leave the testbed up afterwards")
	fs.BoolVar(&f.verbose, "v", false, "log every testbed step")
	fs.BoolVar(&f.jsonOut, "json", false, "status: print JSON")
	fs.DurationVar(&f.interval, "interval", 20*time.Millisecond, "run: time between the camera's requests")
	fs.DurationVar(&f.dwell, "dwell", 3*time.Second, "run: time spent in each phase around its action")
	fs.StringVar(&f.degraded, "degraded-rate", "2mbit", "run: the cloud link's rate in the degraded phase")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), testbedUsage)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	cfg := testbed.Default()
	if f.config != "" {
		c, err := testbed.LoadConfig(f.config)
		if err != nil {
			return err
		}
		cfg = c
	}
	if f.name != "" {
		cfg.Name = f.name
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	level := slog.LevelWarn
	if f.verbose {
		level = slog.LevelInfo
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	switch sub {
	case "up":
		return testbedUp(ctx, cfg, f, log)
	case "status":
		tb, err := testbed.Load(cfg)
		if err != nil {
			return err
		}
		st := tb.Status()
		if f.jsonOut {
			enc := json.NewEncoder(os.Stdout)
			enc.SetIndent("", "  ")
			return enc.Encode(st)
		}
		printStatus(os.Stdout, tb, st)
		return nil
	case "down":
		if err := testbed.CheckEnv(); err != nil {
			return err
		}
		if err := testbed.Cleanup(context.WithoutCancel(ctx), cfg, log); err != nil {
			return err
		}
		fmt.Printf("testbed %s is down: processes stopped, namespaces roam-%s-* and pins removed\n", cfg.Name, cfg.Name)
		return nil
	case "run":
		return testbedRun(ctx, cfg, f, log)
	}
	return fmt.Errorf("unknown command %q\n%s", sub, testbedUsage[:strings.Index(testbedUsage, "\n\nflags:")])
}

// upAndLaunch builds the topology and starts roam in it; on any failure
// (or Ctrl-C) it takes everything down again.
func upAndLaunch(ctx context.Context, cfg testbed.Config, f testbedFlags, log *slog.Logger) (*testbed.Testbed, error) {
	fmt.Printf("testbed %s: building %d clusters as network namespaces\n", cfg.Name, len(cfg.Clusters))
	tb, _, err := testbed.UpAndLaunch(ctx, cfg, testbed.LaunchConfig{BinDir: f.bin, XDPMode: f.xdpMode, Mode: f.mode}, log, func() {
		fmt.Printf("testbed %s: starting roam-meta, roam-agent (XDP %s) and roam-ctrl (building them first if needed)\n", cfg.Name, f.xdpMode)
	})
	return tb, err
}

func testbedUp(ctx context.Context, cfg testbed.Config, f testbedFlags, log *slog.Logger) error {
	tb, err := upAndLaunch(ctx, cfg, f, log)
	if err != nil {
		return err
	}
	printStatus(os.Stdout, tb, tb.Status())
	fmt.Printf("\nbring it down with: roam-testbed down --name %s\n", cfg.Name)
	return nil
}

func testbedRun(ctx context.Context, cfg testbed.Config, f testbedFlags, log *slog.Logger) error {
	rate, err := testbed.ParseRate(f.degraded)
	if err != nil {
		return err
	}
	tb, err := upAndLaunch(ctx, cfg, f, log)
	if err != nil {
		return err
	}
	if !f.keep {
		defer func() {
			if err := tb.Down(context.WithoutCancel(ctx)); err != nil {
				fmt.Fprintf(os.Stderr, "testbed down: %v\n", err)
				return
			}
			fmt.Printf("testbed %s is down\n", cfg.Name)
		}()
	}
	fmt.Println("experiment: the paper's use case (good bandwidth -> cloud, degraded -> edge, partition -> fail-safe home, recovery)")
	res, runErr := testbed.RunExperiment(ctx, tb, testbed.ExperimentConfig{
		Interval: f.interval, Dwell: f.dwell, DegradedRate: rate,
		Progress: func(s string) { fmt.Println("  " + s) },
	})
	if res == nil {
		return runErr
	}
	testbed.PrintReport(os.Stdout, res)
	out, err := filepath.Abs(f.out)
	if err != nil {
		return err
	}
	jp, pp, err := testbed.WriteOutputs(out, res)
	if err != nil {
		return errors.Join(runErr, err)
	}
	fmt.Printf("\nresult: %s\nplot:   %s\n", jp, pp)
	if f.keep {
		fmt.Printf("testbed left up; bring it down with: roam-testbed down --name %s\n", cfg.Name)
	}
	return runErr
}

// table prints, after a blank line, header and rows aligned in columns;
// nothing when there is no row.
func table(w io.Writer, header string, rows []string) {
	if len(rows) == 0 {
		return
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, header)
	for _, r := range rows {
		fmt.Fprintln(tw, r)
	}
	tw.Flush()
}

func printStatus(w io.Writer, tb *testbed.Testbed, st testbed.Status) {
	fmt.Fprintf(w, "testbed %s (state %s)\n\n", st.Name, st.StateFile)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "CLUSTER\tTIER\tNETNS\tNODE\tLINK\tQDISC\tCONTROLLER")
	for i, c := range st.Clusters {
		link := "?"
		qd := ""
		if i < len(st.Links) {
			link = "down (cut)"
			if st.Links[i].Up {
				link = "up"
			}
			qd = st.Links[i].Qdisc
			if st.Links[i].Rate != "" {
				qd += " " + st.Links[i].Rate
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s, %s\t%s\t%s\t%s\n", c.Name, c.Tier, c.NS, c.WAN4, c.WAN6, link, qd, c.CtrlURL())
	}
	tw.Flush()
	var rows []string
	for _, c := range st.Clients {
		rows = append(rows, fmt.Sprintf("%s\t%s\t%s\t%s, %s", c.Name, c.Cluster, c.NS, c.Addr4, c.Addr6))
	}
	table(w, "CLIENT\tBEHIND\tNETNS\tADDRESS", rows)
	rows = nil
	for _, p := range st.Procs {
		rows = append(rows, fmt.Sprintf("%s\t%d\t%v\t%s\t%s", p.Name, p.PID, p.Alive, p.NS, p.Log))
	}
	table(w, "PROCESS\tPID\tALIVE\tNETNS\tLOG", rows)
	var missing []string
	for n, ok := range st.Namespaces {
		if !ok {
			missing = append(missing, n)
		}
	}
	sort.Strings(missing)
	if len(missing) > 0 {
		fmt.Fprintf(w, "\nmissing namespaces: %s\n", strings.Join(missing, ", "))
	}
	for _, e := range st.Events {
		fmt.Fprintf(w, "event: %s\n", e)
	}
	if len(st.Clusters) > 0 {
		c := st.Clusters[0]
		work := tb.State().WorkDir
		fmt.Fprintf(w, "\nreach it (mutual TLS between the controllers and to the agents; the user's token is in a 0600 file):\n")
		fmt.Fprintf(w, "  ip netns exec %s curl -s --cacert %s -H @%s %s/v1/services\n", c.NS, testbed.CAFile(work), testbed.AuthHeaderFile(work), c.CtrlURL())
		fmt.Fprintf(w, "  ip netns exec %s curl -s 127.0.0.1:%d/metrics          # the agent\n", c.NS, testbed.AgentMetrics)
		fmt.Fprintf(w, "  bpftool map show | grep roam; ls %s                      # pinned maps\n", tb.PinPath(c.Name))
		fmt.Fprintf(w, "  ip netns exec %s curl -s %s:%d/v1/clusters         # the MO\n", tb.RouterNS(), testbed.WANRouter4(1), testbed.MetaHTTPPort)
	}
}
