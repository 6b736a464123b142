// Package e2e runs roam end to end on the testbed: real roam-meta, roam-ctrl
// and roam-agent processes (XDP native on veth) in network namespaces, a
// streaming client, real migrations, a real link cut.
package e2e

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/roamnet/roam/ctrl"
	"github.com/roamnet/roam/ctrl/backend"
	"github.com/roamnet/roam/dataplane/lb"
	"github.com/roamnet/roam/test/load"
	"github.com/roamnet/roam/test/netns"
	"github.com/roamnet/roam/test/testbed"
)

var binDir string

// drainTimeout is the controllers' drain timeout in these tests.
const drainTimeout = 10 * time.Second

func TestMain(m *testing.M) {
	code := func() int {
		if testbed.CheckEnv() != nil {
			return m.Run() // every test skips
		}
		mod, err := testbed.FindModule(".")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		dir, err := os.MkdirTemp("", "roam-e2e-bin-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		if err := testbed.Build(ctx, mod, dir); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		binDir = dir
		return m.Run()
	}()
	os.Exit(code)
}

func need(t *testing.T) {
	t.Helper()
	if err := testbed.CheckEnv(); err != nil {
		t.Skipf("e2e: %v", err)
	}
}

// xdpMode is the agents' XDP mode: $ROAM_E2E_XDP_MODE, default native.
func xdpMode() string {
	if m := os.Getenv("ROAM_E2E_XDP_MODE"); m != "" {
		return m
	}
	return "native"
}

func randName(t *testing.T) string {
	var b [3]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	return "e" + hex.EncodeToString(b[:])
}

// launch brings up the paper's topology under a random name with roam
// running in it; Cleanup takes it down even on failure.
func launch(t *testing.T) (*testbed.Testbed, testbed.Config) {
	t.Helper()
	return launchWith(t, testbed.LaunchConfig{DrainTimeout: drainTimeout})
}

// launchWith is launch with lc's settings (its binaries and XDP mode are
// the tests' own).
func launchWith(t *testing.T, lc testbed.LaunchConfig) (*testbed.Testbed, testbed.Config) {
	t.Helper()
	cfg := testbed.Default()
	cfg.Name = randName(t)
	cfg.StateDir = t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	tb, err := testbed.Up(ctx, cfg, nil)
	if err != nil {
		t.Fatalf("testbed up: %v", err)
	}
	t.Cleanup(func() {
		if err := testbed.Cleanup(context.Background(), cfg, nil); err != nil {
			t.Errorf("testbed cleanup: %v", err)
		}
	})
	lc.BinDir, lc.XDPMode = binDir, xdpMode()
	if _, err := tb.Launch(ctx, lc); err != nil {
		logs(t, tb)
		t.Fatalf("launch roam: %v", err)
	}
	return tb, cfg
}

// waitServedBy fails the test, with the logs, unless served (a load's
// WaitServedBy) says within 30 s that cluster answers.
func waitServedBy(ctx context.Context, t *testing.T, tb *testbed.Testbed, cluster string, served func(context.Context) error) {
	t.Helper()
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := served(wctx); err != nil {
		logs(t, tb)
		t.Fatalf("requests not answered by %s: %v", cluster, err)
	}
}

// startLoad starts clients in the client namespace ns, each request
// bounded by requestTimeout, and returns them with wait(cluster), which
// fails the test (with the logs) unless every client kind has 5
// consecutive requests answered by cluster within 30 s. The caller stops
// them.
func startLoad(ctx context.Context, t *testing.T, tb *testbed.Testbed, ns string, clients ...load.Client) (l *load.Load, wait func(cluster string)) {
	t.Helper()
	l, err := load.Start(ctx, load.Config{Dial: netns.Dialer(ns), Timeout: requestTimeout, Clients: clients})
	if err != nil {
		t.Fatal(err)
	}
	return l, func(cluster string) {
		t.Helper()
		waitServedBy(ctx, t, tb, cluster, func(ctx context.Context) error { return l.WaitServedBy(ctx, cluster, 5) })
	}
}

// deployClassifier deploys the demo service "classifier" with ports at
// the home cluster and returns the home's controller client.
func deployClassifier(ctx context.Context, t *testing.T, tb *testbed.Testbed, ports ...backend.Port) *testbed.CtrlClient {
	t.Helper()
	hc, err := tb.Ctrl("home")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := hc.Deploy(ctx, ctrl.Descriptor{Name: "classifier", Demo: true, Ports: ports}); err != nil {
		logs(t, tb)
		t.Fatalf("deploy: %v", err)
	}
	return hc
}

// migrateClassifier asks the controller c to migrate the classifier to
// dest (reason "manual"), fails the test with the logs if the call fails,
// and logs the migration's stages and times.
func migrateClassifier(ctx context.Context, t *testing.T, tb *testbed.Testbed, c *testbed.CtrlClient, dest string) ctrl.Migration {
	t.Helper()
	m, err := c.Migrate(ctx, "classifier", dest, "manual")
	if err != nil {
		logs(t, tb)
		t.Fatalf("migrate to %s: %v", dest, err)
	}
	t.Logf("migrated %s -> %s (%s): %v %+v", m.From, m.To, m.Role, m.Stages, m.Times)
	return m
}

// logs prints the tail of every process log (on failure).
func logs(t *testing.T, tb *testbed.Testbed) {
	t.Helper()
	for _, p := range tb.State().Procs {
		b, err := os.ReadFile(p.Log)
		if err != nil {
			continue
		}
		if len(b) > 3000 {
			b = b[len(b)-3000:]
		}
		t.Logf("---- %s (%s) ----\n%s", p.Name, p.Log, b)
	}
}

// assertGone checks that Down left nothing behind.
func assertGone(t *testing.T, tb *testbed.Testbed, cfg testbed.Config) {
	t.Helper()
	st := tb.State()
	if err := tb.Down(context.Background()); err != nil {
		t.Fatalf("down: %v", err)
	}
	for _, n := range st.Namespaces {
		if _, err := os.Stat("/var/run/netns/" + n); err == nil {
			t.Errorf("netns %s left after down", n)
		}
	}
	for _, p := range st.Procs {
		if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", p.PID)); err == nil && len(b) > 0 && string(b[:len(p.Binary)]) == p.Binary {
			t.Errorf("%s (pid %d) still runs after down", p.Name, p.PID)
		}
	}
	for _, pin := range st.PinPaths {
		if _, err := os.Stat(pin); err == nil {
			t.Errorf("pin path %s left after down", pin)
		}
	}
	if _, err := os.Stat(testbed.StatePath(cfg)); err == nil {
		t.Errorf("state file left after down")
	}
}

// requestTimeout is the camera's patience for one request.
const requestTimeout = 2 * time.Second

// TestPaperScenario runs the paper's experiment playing only the network
// (no call names a destination or asks for a migration) and checks its
// outcome: the system moved the classifier by itself to the cloud, to the
// edge when the cloud path was shaped, home by the fail-safe when the edge
// was cut, back to the cloud after recovery; every move the system made
// sent a real placement request and lost no request (none failed while
// in flight during a move or the second after it; failures before a move
// started are reported apart, and fail their phase all the same); the
// orphan was removed; Down left nothing.
func TestPaperScenario(t *testing.T) {
	need(t)
	tb, cfg := launch(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	res, err := testbed.RunExperiment(ctx, tb, testbed.ExperimentConfig{
		Dwell: 1500 * time.Millisecond, Timeout: requestTimeout,
		Progress: func(s string) { t.Log(s) },
	})
	if err != nil {
		logs(t, tb)
		t.Fatalf("experiment: %v", err)
	}
	var moves []string
	for _, m := range res.Migrations {
		t.Logf("migration %s %s->%s %s (%s): %.1f ms, %d requests, %d failed; change->commit %.0f ms; trigger: %s",
			m.Phase, m.From, m.To, m.State, m.Reason, m.TotalMs, m.Requests, m.FailedReq, m.ChangeToCommitMs, m.Trigger)
		if !m.Planned {
			continue
		}
		moves = append(moves, m.From+"->"+m.To+":"+m.Reason)
		if m.State != string(ctrl.StateDone) {
			t.Errorf("move %s->%s: state %s", m.From, m.To, m.State)
		}
		if m.Requests == 0 || m.FailedReq != 0 {
			t.Errorf("move %s->%s: %d of the %d requests in flight during it (or the second after it) failed: lost in the move", m.From, m.To, m.FailedReq, m.Requests)
		}
		if m.Trigger == "" || m.Placement == "" || m.Times.PR <= 0 {
			t.Errorf("move %s->%s: trigger %q, placement %q, PR %.3f ms: want the measurement, the MO's judgement and a real round trip",
				m.From, m.To, m.Trigger, m.Placement, m.Times.PR)
		}
	}
	want := []string{"home->cloud:better-placement", "cloud->edge:network-change", "home->cloud:better-placement"}
	if strings.Join(moves, " ") != strings.Join(want, " ") {
		t.Errorf("moves %v, want %v", moves, want)
	}
	if res.ManualMigrations != 0 {
		t.Errorf("%d migrations asked by hand, want 0", res.ManualMigrations)
	}
	if res.FinalCluster != "cloud" {
		t.Errorf("the service ends at %q, want the cloud (the best place)", res.FinalCluster)
	}
	// A request still in flight when the link is cut fails because of the
	// cut, whatever phase it was sent in: it belongs to the outage.
	var cut time.Time
	for _, p := range res.Phases {
		if p.Name == "partition" {
			cut = p.Start
		}
	}
	inFlightAtCut := func(smp testbed.Sample) bool {
		return !cut.IsZero() && smp.Sent.Before(cut) && smp.Sent.Add(requestTimeout).After(cut)
	}
	// Lost in the planned moves: failed while in flight during a move
	// or the second after it (testbed.Result.LostInMoves); the goal is
	// none. Failed before roam acted (deadline passed before the phase's
	// move started) is reported apart, and still fails the phase below:
	// on the degraded path nothing but roam's own probes should drop a
	// request, and those must not.
	t.Logf("requests lost in the planned moves: %d; failed before roam acted: %d", res.LostInMoves, res.FailedBeforeMoves)
	if res.LostInMoves != 0 {
		t.Errorf("%d requests lost in the planned moves, want 0", res.LostInMoves)
	}
	for _, p := range res.Phases {
		t.Logf("phase %s: sent %d failed %d (before its move %d, in it %d) served by %v", p.Name, p.Sent, p.Failed, p.FailedBeforeMove, p.LostInMove, p.ServedBy)
		if p.Sent == 0 {
			t.Errorf("phase %s: no request sent", p.Name)
		}
		if p.Name == "partition" {
			continue
		}
		failed := 0
		for _, smp := range res.Samples {
			if smp.OK || smp.Sent.Before(p.Start) || !smp.Sent.Before(p.End) {
				continue
			}
			if inFlightAtCut(smp) {
				t.Logf("phase %s: request sent %s was in flight at the cut: %s", p.Name, smp.Sent.Format("15:04:05.000"), smp.Err)
				continue
			}
			failed++
			t.Logf("phase %s: request sent %s failed: %s", p.Name, smp.Sent.Format("15:04:05.000"), smp.Err)
		}
		if failed != 0 {
			t.Errorf("phase %s: %d requests failed", p.Name, failed)
		}
	}
	if !res.FailsafeRestored || res.FailsafeDowntimeMs < 0 {
		t.Errorf("fail-safe did not restore the service (downtime %v ms)", res.FailsafeDowntimeMs)
	}
	if !res.OrphanRemoved {
		t.Errorf("orphan copy at the edge not removed after recovery")
	}
	t.Logf("fail-safe downtime %.0f ms; %d requests, %d failed", res.FailsafeDowntimeMs, res.Sent, res.Failed)
	if t.Failed() {
		logs(t, tb)
	}
	assertGone(t, tb, cfg)
}

// TestMigrateChainZeroLoss moves the service home -> edge -> cloud -> home
// (the second hop asked of the edge, which holds it as a foreign resource)
// while the camera streams requests, and asserts no request failed.
func TestMigrateChainZeroLoss(t *testing.T) {
	need(t)
	tb, cfg := launch(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	home, _ := tb.Cluster("home")
	cam, _ := tb.Client("camera")
	hc := deployClassifier(ctx, t, tb, backend.Port{Port: 80, Protocol: lb.TCP})
	edge, err := tb.Ctrl("edge")
	if err != nil {
		t.Fatal(err)
	}
	st := testbed.StartStream(ctx, cam.NS, fmt.Sprintf("http://%s:80/", home.WAN4), 20*time.Millisecond, 2*time.Second)
	defer st.Stop()
	wait := func(cluster string) {
		t.Helper()
		waitServedBy(ctx, t, tb, cluster, func(ctx context.Context) error { return st.WaitServedBy(ctx, cluster, 10) })
	}
	wait("home")
	for _, hop := range []struct {
		via  *testbed.CtrlClient
		dest string
	}{{hc, "edge"}, {edge, "cloud"}, {hc, "home"}} {
		migrateClassifier(ctx, t, tb, hop.via, hop.dest)
		wait(hop.dest)
	}
	samples := st.Stop()
	failed := 0
	for _, s := range samples {
		if !s.OK {
			failed++
			t.Logf("failed request at %s: %s", s.Sent.Format("15:04:05.000"), s.Err)
		}
	}
	if failed != 0 || len(samples) < 50 {
		t.Errorf("%d of %d requests failed across home->edge->cloud->home", failed, len(samples))
	}
	if t.Failed() {
		logs(t, tb)
	}
	assertGone(t, tb, cfg)
}

// TestKeepAliveAcrossMigrations moves the service home -> edge -> cloud ->
// home twice while short, keep-alive (Go's transport, and wrk) and UDP
// clients run through the home frontend. Keep-alive connections are pinned
// to the old copy until it closes them (Connection: close once it is told
// to stop at the commit), so nobody may lose a request, and every drain
// must end because no flow was left, before the drain timeout.
func TestKeepAliveAcrossMigrations(t *testing.T) {
	need(t)
	if _, err := exec.LookPath("wrk"); err != nil {
		t.Fatal("wrk not found: install Debian's wrk package (make deps)")
	}
	tb, cfg := launch(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	home, _ := tb.Cluster("home")
	cam, _ := tb.Client("camera")
	hc := deployClassifier(ctx, t, tb, backend.Port{Port: 80, Protocol: lb.TCP}, backend.Port{Port: 80, Protocol: lb.UDP})
	fe := fmt.Sprintf("%s:80", home.WAN4)
	l, wait := startLoad(ctx, t, tb, cam.NS,
		load.Client{Kind: load.Short, Addr: fe, Interval: 20 * time.Millisecond},
		load.Client{Kind: load.KeepAlive, Addr: fe, Conns: 8, Interval: 5 * time.Millisecond},
		load.Client{Kind: load.UDP, Addr: fe, Interval: 20 * time.Millisecond})
	defer l.Stop()
	wait("home")
	wrk, err := load.Wrk{URL: "http://" + fe + "/", Threads: 1, Conns: 8, Duration: time.Hour,
		Command: func(ctx context.Context, prog string, args ...string) *exec.Cmd {
			return netns.Cmd(ctx, cam.NS, prog, args...)
		}}.Start(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		for _, dest := range []string{"edge", "cloud", "home"} {
			m := migrateClassifier(ctx, t, tb, hc, dest)
			if m.State != ctrl.StateDone {
				t.Errorf("migration to %s: %s %s", dest, m.State, m.Error)
			}
			// The drain ended with its last flow, not at the timeout.
			if m.DrainedFlows != 0 || m.Times.Drain >= drainTimeout.Seconds()*1000 || m.Times.Cleanup >= drainTimeout.Seconds()*1000 {
				t.Errorf("migration %s -> %s: drain %.0f ms, cleanup %.0f ms, %d flows left: want it over before the %s drain timeout",
					m.From, m.To, m.Times.Drain, m.Times.Cleanup, m.DrainedFlows, drainTimeout)
			}
			wait(dest)
		}
	}
	wr, err := wrk.Stop()
	if err != nil {
		t.Fatal(err)
	}
	rep := l.Stop()
	var b strings.Builder
	rep.Print(&b, 10)
	t.Logf("clients:\n%s  %s: %d requests, %d errors (read %d), p99 %v", b.String(), wr.Command, wr.Requests, wr.Errors(), wr.ReadErrors, wr.P99)
	for _, k := range load.Kinds {
		if kr := rep.Kinds[k]; kr.Failed != 0 || kr.Requests == 0 {
			t.Errorf("%s clients: %d of %d requests failed", k, kr.Failed, kr.Requests)
		}
	}
	if wr.Requests == 0 || wr.Errors() != 0 {
		t.Errorf("wrk: %d errors in %d requests:\n%s", wr.Errors(), wr.Requests, wr.Output)
	}
	if t.Failed() {
		logs(t, tb)
	}
	assertGone(t, tb, cfg)
}
