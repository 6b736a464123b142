// Command soak runs roam on the testbed with real processes for a while
// (default 10 minutes) under a chaos schedule, with real clients, and
// checks its invariants all along. Needs root.
//
// The testbed is the default one (deep-edge home with the camera client,
// edge, cloud; local backend, fail-safe after 3 s). Two demo services are
// homed at home: "classifier" (HTTP on 80/tcp, request/response on
// 80/udp) and "api" (HTTP on 8090/tcp). From the camera, through the home
// frontends, short HTTP (a connection per request), keep-alive HTTP (8
// connections of Go's transport) and, for the classifier, UDP
// request/response clients (test/load) run the whole time. The schedule
// repeats three rounds of planned migrations (both services at once, each
// to a cluster chosen at random: named, or placed by the MO; from abroad
// to abroad it is a multi-hop move) and one chaos event aimed at the
// classifier, in turn:
//
//   - kill -9 of a controller (home, the cluster running the service, or
//     the destination) at a random moment of a migration, then restarted;
//   - kill -9 of an agent (then restarted: its pins keep the data plane);
//   - kill -9 of the MO, then restarted;
//   - the link of the cluster running the service cut (the fail-safe takes
//     it home) and healed (its orphan copy must go);
//   - that link shaped to 20 Mbit/s for a few seconds, then unshaped.
//
// Every chaos event but the shaping is announced to the clients as an
// outage: failures of requests in flight during one are the outage's
// (failed_outage); any other failure is a failure of the system
// (failed_planned). Invariants checked all along by a watcher, not only at
// the end: no node's load balancer points at a port nothing listens on in
// the cluster it names (lb_to_nothing: episodes seen on two samples in a
// row); the home's record of the service never disappears
// (lost_services); after every chaos event exactly one copy runs, where
// the record says, within a settle time (duplicates: events after which it
// did not). It prints a table and, last, one JSON object.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/roamnet/roam/ctrl"
	"github.com/roamnet/roam/ctrl/backend"
	"github.com/roamnet/roam/dataplane/lb"
	"github.com/roamnet/roam/internal/cli"
	"github.com/roamnet/roam/internal/tick"
	"github.com/roamnet/roam/test/load"
	"github.com/roamnet/roam/test/netns"
	"github.com/roamnet/roam/test/testbed"
)

// svc is one service of the soak and the clients that use it.
type svc struct {
	name  string
	ports []backend.Port
	l     *load.Load
}

func (v *svc) port() uint16 { return v.ports[0].Port }

type options struct {
	duration time.Duration
	name     string
	bin, xdp string
	seed     uint64
	settle   time.Duration
	timeout  time.Duration
}

func main() {
	var o options
	flag.DurationVar(&o.duration, "duration", 10*time.Minute, "how long the chaos schedule runs")
	flag.StringVar(&o.name, "name", fmt.Sprintf("soak%d", os.Getpid()%100000), "testbed name (unique on this machine)")
	flag.StringVar(&o.bin, "bin", "", "directory with the roam binaries (default: go build them)")
	flag.StringVar(&o.xdp, "xdp-mode", "native", "agents' XDP mode: native or generic")
	flag.Uint64Var(&o.seed, "seed", uint64(time.Now().UnixNano()), "random seed of the schedule")
	flag.DurationVar(&o.settle, "settle", 60*time.Second, "how long after a chaos event exactly one copy must be running again")
	flag.DurationVar(&o.timeout, "timeout", 5*time.Second, "a request not answered within this is a failure")
	flag.Parse()
	cli.Main("soak", func(ctx context.Context, _ []string) error { return run(ctx, o) })
}

// summary is the JSON line.
type summary struct {
	DurationS        float64 `json:"duration_s"`
	Migrations       int     `json:"migrations"`
	MultiHop         int     `json:"multi_hop"`
	MigrationsFailed int     `json:"migrations_failed"`
	Kills            int     `json:"kills"`
	CtrlKills        int     `json:"ctrl_kills"`
	AgentKills       int     `json:"agent_kills"`
	MORestarts       int     `json:"mo_restarts"`
	Partitions       int     `json:"partitions"`
	Shapes           int     `json:"shapes"`
	Requests         int     `json:"requests"`
	FailedPlanned    int     `json:"failed_planned"`
	FailedOutage     int     `json:"failed_outage"`
	Duplicates       int     `json:"duplicates"`
	LostServices     int     `json:"lost_services"`
	LBToNothing      int     `json:"lb_to_nothing"`
	Seed             uint64  `json:"seed"`
}

type soak struct {
	o    options
	tb   *testbed.Testbed
	svcs []*svc // the first is the one chaos events aim at
	hc   *testbed.CtrlClient
	rnd  *rand.Rand
	sec  testbed.Secrets
	cls  []testbed.Cluster
	mu   sync.Mutex
	sum  summary
	// nOutage numbers the announced outages.
	nOutage int
	logf    func(format string, args ...any)
}

func run(ctx context.Context, o options) error {
	cfg := testbed.Default()
	cfg.Name = o.name
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
	start := time.Now()
	s := &soak{o: o, rnd: rand.New(rand.NewPCG(o.seed, 12)), logf: func(format string, args ...any) {
		fmt.Printf("%7.1fs  %s\n", time.Since(start).Seconds(), fmt.Sprintf(format, args...))
	}}
	s.sum.Seed = o.seed
	fmt.Printf("soak: testbed %s, %s of chaos, seed %d\n", cfg.Name, o.duration, o.seed)
	tb, sec, err := testbed.UpAndLaunch(ctx, cfg, testbed.LaunchConfig{BinDir: o.bin, XDPMode: o.xdp, DrainTimeout: 5 * time.Second}, log, nil)
	if err != nil {
		return err
	}
	s.tb, s.sec = tb, sec
	defer func() {
		if err := tb.Down(context.WithoutCancel(ctx)); err != nil {
			fmt.Fprintln(os.Stderr, "testbed down:", err)
		}
	}()
	s.cls = tb.Clusters()
	home, _ := tb.Cluster("home")
	cam, _ := tb.Client("camera")
	if s.hc, err = tb.Ctrl("home"); err != nil {
		return err
	}
	s.svcs = []*svc{
		{name: "classifier", ports: []backend.Port{{Name: "http", Port: 80, Protocol: lb.TCP}, {Name: "rr", Port: 80, Protocol: lb.UDP}}},
		// Not 8081: the controllers' probe server holds it on the
		// testbed's cluster addresses (testbed.ProbePort).
		{name: "api", ports: []backend.Port{{Name: "http", Port: 8090, Protocol: lb.TCP}}},
	}
	for _, v := range s.svcs {
		if _, err := s.hc.Deploy(ctx, ctrl.Descriptor{Name: v.name, Demo: true, Ports: v.ports}); err != nil {
			return err
		}
		fe := fmt.Sprintf("%s:%d", home.WAN4, v.port())
		clients := []load.Client{
			{Kind: load.Short, Addr: fe, Interval: 20 * time.Millisecond},
			{Kind: load.KeepAlive, Addr: fe, Conns: 8, Interval: 20 * time.Millisecond},
		}
		if len(v.ports) > 1 {
			clients = append(clients, load.Client{Kind: load.UDP, Addr: fe, Interval: 20 * time.Millisecond})
		}
		// A request counts as lost when it is not answered within
		// o.timeout (a slow answer on a busy machine is not a loss).
		if v.l, err = load.Start(ctx, load.Config{Dial: netns.Dialer(cam.NS), Timeout: o.timeout, MaxInFlight: 1024, Clients: clients}); err != nil {
			return err
		}
		defer v.l.Stop()
		if err := s.served(ctx, v, "home"); err != nil {
			return fmt.Errorf("%s not answering at home: %w", v.name, err)
		}
		s.logf("%s: short HTTP every 20ms, keep-alive HTTP 8 connections (20ms between requests)%s, through %s", v.name,
			map[bool]string{true: ", UDP every 20ms", false: ""}[len(v.ports) > 1], fe)
	}

	wctx, wcancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { s.watch(wctx) })

	chaos := []func(context.Context) error{s.killCtrl, s.killAgent, s.killCtrl, s.cutHeal, s.killCtrl, s.restartMO,
		s.killAgent, s.shape, s.killCtrl, s.killAgent}
	chaosStart := time.Now()
	deadline := chaosStart.Add(o.duration)
	var runErr error
	for i := 0; time.Now().Before(deadline) && ctx.Err() == nil; i++ {
		var err error
		if i%4 == 3 {
			err = chaos[(i/4)%len(chaos)](ctx)
		} else {
			err = s.planned(ctx)
		}
		if err != nil {
			runErr = err
			break
		}
	}
	s.sum.DurationS = time.Since(chaosStart).Seconds()
	wcancel()
	wg.Wait()
	if runErr == nil && ctx.Err() == nil {
		// The end state: one copy, where the record says, answering.
		if err := s.oneCopy(ctx, "end"); err != nil {
			s.logf("end: %v", err)
		}
	}
	s.sum.Kills = s.sum.CtrlKills + s.sum.AgentKills + s.sum.MORestarts
	for _, v := range s.svcs {
		rep := v.l.Stop()
		s.sum.Requests += rep.Requests()
		s.sum.FailedPlanned += rep.Failed()
		s.sum.FailedOutage += rep.FailedOutage()
		fmt.Printf("\n%s: clients through the home frontend (failed: outside every announced outage; outage: inside one)\n", v.name)
		rep.Print(os.Stdout, 0)
		n := 0
		for _, k := range load.Kinds {
			for _, f := range rep.Kinds[k].Failures {
				if f.Outage == "" && n < 20 {
					n++
					fmt.Printf("  failed outside every outage: %s sent %s after %s: %s\n", f.Kind, f.Sent.Format("15:04:05.000"), f.Latency, f.Err)
				}
			}
		}
		for _, or := range rep.Outages {
			if or.Failed > 0 {
				fmt.Printf("  outage %-40s %8.1f s  failed %d\n", or.Name, or.End.Sub(or.Start).Seconds(), or.Failed)
			}
		}
	}
	sm := s.sum
	fmt.Println("\nSoak")
	for _, row := range []struct {
		k string
		v any
	}{
		{"duration", fmt.Sprintf("%.0f s", sm.DurationS)},
		{"migrations (done; multi-hop)", fmt.Sprintf("%d (%d)", sm.Migrations, sm.MultiHop)},
		{"migrations failed (rolled back)", sm.MigrationsFailed},
		{"kill -9 (ctrl / agent / MO)", fmt.Sprintf("%d (%d / %d / %d)", sm.Kills, sm.CtrlKills, sm.AgentKills, sm.MORestarts)},
		{"partitions (cut, healed)", sm.Partitions},
		{"links shaped", sm.Shapes},
		{"requests", sm.Requests},
		{"failed outside outages (planned)", sm.FailedPlanned},
		{"failed inside announced outages", sm.FailedOutage},
		{"duplicates after a heal", sm.Duplicates},
		{"lost services", sm.LostServices},
		{"LB pointing at nothing", sm.LBToNothing},
	} {
		fmt.Printf("  %-34s %v\n", row.k, row.v)
	}
	b, err := json.Marshal(sm)
	if err != nil {
		return err
	}
	fmt.Println(string(b))
	return runErr
}

// served waits until every client kind of v is answered by cluster.
func (s *soak) served(ctx context.Context, v *svc, cluster string) error {
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	return v.l.WaitServedBy(wctx, cluster, 3)
}

// outage announces an outage to every service's clients.
func (s *soak) outage(name string) (end func()) {
	s.nOutage++
	name = fmt.Sprintf("#%d %s", s.nOutage, name)
	s.logf("outage %s", name)
	var ends []func()
	for _, v := range s.svcs {
		ends = append(ends, v.l.Outage(name))
	}
	return func() {
		for _, e := range ends {
			e()
		}
	}
}

// add changes the summary (planned moves run concurrently).
func (s *soak) add(f func(*summary)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f(&s.sum)
}

// record is the home's record of v, retried while the home controller
// restarts or recovers.
func (s *soak) record(ctx context.Context, v *svc) (ctrl.Record, error) {
	var last error
	for end := time.Now().Add(30 * time.Second); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		r, err := s.hc.Get(cctx, v.name)
		cancel()
		if err == nil {
			return r, nil
		}
		last = err
		if ctx.Err() != nil {
			break
		}
	}
	return ctrl.Record{}, last
}

// pick returns a cluster other than cur, at random.
func (s *soak) pick(cur string) string {
	var others []string
	for _, c := range s.cls {
		if c.Name != cur {
			others = append(others, c.Name)
		}
	}
	return others[s.rnd.IntN(len(others))]
}

// planned moves every service at once, each to a cluster chosen at random.
func (s *soak) planned(ctx context.Context) error {
	errs := make([]error, len(s.svcs))
	var wg sync.WaitGroup
	for i, v := range s.svcs {
		wg.Go(func() {
			r, err := s.record(ctx, v)
			if err != nil {
				errs[i] = fmt.Errorf("read record of %s: %w", v.name, err)
				return
			}
			errs[i] = s.plannedTo(ctx, v, s.pickLocked(r.Cluster))
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

func (s *soak) pickLocked(cur string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pick(cur)
}

// plannedTo is one planned migration to dest (named, or placed by the MO
// when it is not home, at random): failures during it are the system's.
func (s *soak) plannedTo(ctx context.Context, v *svc, dest string) error {
	r, err := s.record(ctx, v)
	if err != nil {
		return fmt.Errorf("read record of %s: %w", v.name, err)
	}
	ask := dest
	s.mu.Lock()
	if dest != "home" && s.rnd.IntN(2) == 0 {
		ask = "" // the MO places it
	}
	s.mu.Unlock()
	t0 := time.Now()
	var m ctrl.Migration
	for try := 0; ; try++ {
		cctx, cancel := context.WithTimeout(ctx, 60*time.Second)
		m, err = s.hc.Migrate(cctx, v.name, ask, "soak")
		cancel()
		var he *testbed.HTTPError
		if err == nil || try >= 30 || !errors.As(err, &he) || !strings.Contains(he.Message, "being recovered") {
			break
		}
		time.Sleep(500 * time.Millisecond) // still being recovered: Retry-After
	}
	if err != nil {
		s.add(func(sm *summary) { sm.MigrationsFailed++ })
		s.logf("%s: migration %s -> %s failed: %v", v.name, r.Cluster, dest, err)
		// Whatever happened, it must settle where the record says.
		return s.oneCopyOf(ctx, v, "failed migration")
	}
	var n int
	s.add(func(sm *summary) {
		sm.Migrations++
		n = sm.Migrations
		if m.Role == ctrl.RoleMover {
			sm.MultiHop++
		}
	})
	s.logf("migration %3d: %-10s %-5s -> %-5s %-8s %7.1f ms", n, v.name, m.From, m.To, m.Role, float64(time.Since(t0).Microseconds())/1000)
	if err := s.served(ctx, v, m.To); err != nil {
		s.logf("%s: after migration to %s: %v", v.name, m.To, err)
	}
	return nil
}

// proc is the latest process of that name the testbed started.
func (s *soak) proc(name string) (testbed.Proc, error) {
	ps := s.tb.State().Procs
	for i := len(ps) - 1; i >= 0; i-- {
		if ps[i].Name == name {
			return ps[i], nil
		}
	}
	return testbed.Proc{}, fmt.Errorf("no process %s", name)
}

// kill9 kills the named process with SIGKILL (its process only: the
// copies a controller runs are in process groups of their own and
// outlive it, as pods outlive a crashed controller), and restarts it
// after pause.
func (s *soak) kill9(ctx context.Context, name string, pause time.Duration) error {
	p, err := s.proc(name)
	if err != nil {
		return err
	}
	if err := syscall.Kill(p.PID, syscall.SIGKILL); err != nil {
		return fmt.Errorf("kill -9 %s: %w", name, err)
	}
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		if gone, _ := s.tb.Exited(p); gone {
			break
		}
	}
	time.Sleep(pause)
	np, err := s.tb.Start(p.NS, p.Name, p.Binary, p.Args, p.Health)
	if err != nil {
		return fmt.Errorf("restart %s: %w", name, err)
	}
	wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	if err := s.tb.WaitHealthy(wctx, np, np.Health); err != nil {
		return fmt.Errorf("restart %s: %w", name, err)
	}
	// A controller is back when its directory is the MO's view again and
	// lists every cluster (/readyz), not when it answers /healthz: until
	// then it serves the directory saved before the kill.
	if id, ok := strings.CutPrefix(name, "roam-ctrl-"); ok {
		c, err := s.tb.Cluster(id)
		if err != nil {
			return fmt.Errorf("restart %s: %w", name, err)
		}
		if err := s.tb.WaitDirectory(wctx, c); err != nil {
			return fmt.Errorf("restart %s: %w", name, err)
		}
	}
	return nil
}

// killCtrl kills a controller at a random moment of a migration.
func (s *soak) killCtrl(ctx context.Context) error {
	v := s.svcs[0]
	r, err := s.record(ctx, v)
	if err != nil {
		return err
	}
	dest := s.pick(r.Cluster)
	victim := []string{"home", r.Cluster, dest}[s.rnd.IntN(3)]
	delay := time.Duration(s.rnd.IntN(400)) * time.Millisecond
	end := s.outage("kill -9 roam-ctrl-" + victim)
	defer end()
	s.sum.CtrlKills++
	done := make(chan error, 1)
	go func() {
		cctx, cancel := context.WithTimeout(ctx, 60*time.Second)
		defer cancel()
		_, err := s.hc.Migrate(cctx, v.name, dest, "soak")
		done <- err
	}()
	time.Sleep(delay)
	s.logf("kill -9 roam-ctrl-%s %s into a migration %s -> %s", victim, delay, r.Cluster, dest)
	if err := s.kill9(ctx, "roam-ctrl-"+victim, 200*time.Millisecond); err != nil {
		return err
	}
	if err := <-done; err == nil {
		s.sum.Migrations++
		s.logf("  the migration finished before the kill")
	} else {
		s.logf("  the migration: %v", err)
	}
	return s.oneCopy(ctx, "kill -9 roam-ctrl-"+victim)
}

// killAgent kills the agent of the cluster running the service (or the
// home's).
func (s *soak) killAgent(ctx context.Context) error {
	r, err := s.record(ctx, s.svcs[0])
	if err != nil {
		return err
	}
	victim := []string{"home", r.Cluster}[s.rnd.IntN(2)]
	end := s.outage("kill -9 roam-agent-" + victim)
	defer end()
	s.sum.AgentKills++
	s.logf("kill -9 roam-agent-%s", victim)
	if err := s.kill9(ctx, "roam-agent-"+victim, 300*time.Millisecond); err != nil {
		return err
	}
	return s.oneCopy(ctx, "kill -9 roam-agent-"+victim)
}

// restartMO kills the MO and restarts it.
func (s *soak) restartMO(ctx context.Context) error {
	end := s.outage("kill -9 roam-meta")
	defer end()
	s.sum.MORestarts++
	s.logf("kill -9 roam-meta")
	if err := s.kill9(ctx, "roam-meta", time.Second); err != nil {
		return err
	}
	time.Sleep(3 * time.Second) // the controllers reconnect and say hello
	return s.oneCopy(ctx, "kill -9 roam-meta")
}

// cutHeal cuts the link of the cluster running the service (or of a
// cluster abroad), waits for the fail-safe, and heals it.
func (s *soak) cutHeal(ctx context.Context) error {
	v := s.svcs[0]
	r, err := s.record(ctx, v)
	if err != nil {
		return err
	}
	victim := r.Cluster
	if victim == "home" {
		// Move it abroad first, so the cut exercises the fail-safe.
		if err := s.plannedTo(ctx, v, s.pick("home")); err != nil {
			return err
		}
		if r, err = s.record(ctx, v); err != nil {
			return err
		}
		if victim = r.Cluster; victim == "home" {
			victim = s.pick("home")
		}
	}
	end := s.outage("cut " + victim)
	defer end()
	s.sum.Partitions++
	s.logf("cut %s (service at %s)", victim, r.Cluster)
	if _, err := s.tb.Cut(victim); err != nil {
		return err
	}
	if r.Cluster == victim {
		if err := s.served(ctx, v, "home"); err != nil {
			s.logf("  fail-safe: %v", err)
		} else {
			s.logf("  fail-safe: served at home again")
		}
	}
	time.Sleep(2 * time.Second)
	if _, err := s.tb.Restore(victim); err != nil {
		return err
	}
	s.logf("heal %s", victim)
	return s.oneCopy(ctx, "heal "+victim)
}

// shape slows the link of the cluster running the service (or of one
// abroad) for a few seconds. Not an outage: nothing may fail.
func (s *soak) shape(ctx context.Context) error {
	r, err := s.record(ctx, s.svcs[0])
	if err != nil {
		return err
	}
	victim := r.Cluster
	if victim == "home" {
		victim = s.pick("home")
	}
	s.sum.Shapes++
	s.logf("shape %s to 20mbit", victim)
	if _, err := s.tb.Shape(victim, 20_000_000); err != nil {
		return err
	}
	time.Sleep(4 * time.Second)
	if _, err := s.tb.Unshape(victim); err != nil {
		return err
	}
	return nil
}

// oneCopy waits (up to the settle time) until exactly one copy runs, at
// the cluster the home's record names, and the clients are answered
// there; it counts a duplicate when two copies still run at the end, a
// lost service when the record is gone.
func (s *soak) oneCopy(ctx context.Context, after string) error {
	errs := make([]error, len(s.svcs))
	var wg sync.WaitGroup
	for i, v := range s.svcs {
		wg.Go(func() { errs[i] = s.oneCopyOf(ctx, v, after) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

// oneCopyOf is oneCopy for one service.
func (s *soak) oneCopyOf(ctx context.Context, v *svc, after string) error {
	end := time.Now().Add(s.o.settle)
	var last string
	for time.Now().Before(end) && ctx.Err() == nil {
		r, err := s.record(ctx, v)
		if err != nil {
			var he *testbed.HTTPError
			if errors.As(err, &he) && he.Status == http.StatusNotFound {
				s.mu.Lock()
				s.sum.LostServices++
				s.mu.Unlock()
				return fmt.Errorf("after %s: the home lost the record of %s: %w", after, v.name, err)
			}
			last = err.Error()
			continue
		}
		at := s.copies(v)
		if len(at) == 1 && at[0] == r.Cluster {
			if err := s.served(ctx, v, r.Cluster); err != nil {
				last = err.Error()
				continue
			}
			return nil
		}
		last = fmt.Sprintf("record at %s, copies listening at %v", r.Cluster, at)
		time.Sleep(200 * time.Millisecond)
	}
	at := s.copies(v)
	s.logf("%s: after %s: not settled in %s: %s", v.name, after, s.o.settle, last)
	if len(at) > 1 {
		s.mu.Lock()
		s.sum.Duplicates++
		s.mu.Unlock()
	}
	if len(at) == 0 {
		s.mu.Lock()
		s.sum.LostServices++
		s.mu.Unlock()
	}
	return nil
}

// copies lists the clusters where something listens on the service's TCP
// port (read from the kernel's socket table inside each namespace: a
// connection from there would be caught by the cluster's own frontend).
func (s *soak) copies(v *svc) []string {
	var out []string
	for _, c := range s.cls {
		if listens(c.NS, v.port(), lb.TCP) {
			out = append(out, c.Name)
		}
	}
	return out
}

// listens reports whether a socket listens on (TCP) or is bound to (UDP)
// p in namespace ns.
func listens(ns string, p uint16, proto lb.Proto) bool {
	files, state := []string{"tcp", "tcp6"}, "0A"
	if proto == lb.UDP {
		files, state = []string{"udp", "udp6"}, "07"
	}
	found := false
	_ = netns.Do(ns, func() error {
		for _, f := range files {
			data, err := os.ReadFile("/proc/thread-self/net/" + f)
			if err != nil {
				continue
			}
			sc := bufio.NewScanner(bytes.NewReader(data))
			for sc.Scan() {
				fs := strings.Fields(sc.Text())
				if len(fs) > 3 && strings.HasSuffix(fs[1], fmt.Sprintf(":%04X", p)) && fs[3] == state {
					found = true
				}
			}
		}
		return nil
	})
	return found
}

// watch checks, every 500 ms while the schedule runs, that no node's load
// balancer points at nothing: the home agent's active target for each
// frontend of the service must be a cluster where something listens on
// that port. An episode counts when two samples in a row show the same
// target with nothing behind it (a move between reading the agent and
// looking behind the target is not one).
func (s *soak) watch(ctx context.Context) {
	home, _ := s.tb.Cluster("home")
	ag, err := s.tb.AgentClient("home", 2*time.Second)
	if err != nil {
		s.logf("agent client: %v", err)
		return
	}
	byAddr := map[netip.Addr]testbed.Cluster{}
	for _, c := range s.cls {
		byAddr[c.WAN4] = c
	}
	ports := map[uint16]bool{}
	for _, v := range s.svcs {
		ports[v.port()] = true
	}
	bad := map[lb.Frontend]lb.Target{} // last sample's target with nothing behind it
	inEpisode := map[lb.Frontend]bool{}
	tick.Every(ctx, 500*time.Millisecond, func() {
		lctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		svcs, err := ag.List(lctx)
		cancel()
		if err != nil {
			return // the agent is being restarted
		}
		for _, sv := range svcs {
			f := sv.Frontend
			if f.Addr != home.WAN4 || !ports[f.Port] {
				continue
			}
			var ns string
			switch sv.Active.Kind {
			case lb.TargetLocal:
				ns = home.NS
			case lb.TargetRedirect:
				c, ok := byAddr[sv.Active.Addr]
				if !ok {
					s.lbToNothing(f, sv.Active, inEpisode, "an address of no cluster")
					continue
				}
				ns = c.NS
			default:
				continue
			}
			p := sv.Active.Port
			if sv.Active.Kind == lb.TargetLocal {
				p = f.Port
			}
			if listens(ns, p, f.Proto) {
				delete(bad, f)
				inEpisode[f] = false
				continue
			}
			if prev, ok := bad[f]; ok && prev == sv.Active {
				s.lbToNothing(f, sv.Active, inEpisode, "nothing listens there")
			}
			bad[f] = sv.Active
		}
	})
}

func (s *soak) lbToNothing(f lb.Frontend, t lb.Target, inEpisode map[lb.Frontend]bool, why string) {
	if inEpisode[f] {
		return
	}
	inEpisode[f] = true
	s.mu.Lock()
	s.sum.LBToNothing++
	s.mu.Unlock()
	s.logf("INVARIANT: home frontend %s points at %s: %s", f, t, why)
}
