package main

// The NATS cluster part of the benchmark: three roam-meta processes, each
// one node of a NATS cluster and one MO replica; herding (100 concurrent
// identical placements) and failover (one process, so one NATS server and
// one MO replica, killed with SIGKILL under a steady placement load).

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/roamnet/roam/dataplane/lb"
	"github.com/roamnet/roam/meta"
	"github.com/roamnet/roam/test/testbed"
)

// replica is one roam-meta process.
type replica struct {
	name      string
	clientURL string
	httpURL   string
	cmd       *exec.Cmd
	done      chan struct{}
}

// moCluster is three roam-meta processes clustered over loopback, as
// roam-meta runs by default: TLS and a NATS user per cluster.
type moCluster struct {
	dir      string
	replicas []*replica
	creds    testbed.NATSFiles
}

// connOpts are the options user connects with: TLS, its password, and for
// a cluster its inbox.
func (mc *moCluster) connOpts(user string, cluster bool) ([]nats.Option, error) {
	pw, err := testbed.ReadPassword(mc.creds.Passwords[user])
	if err != nil {
		return nil, err
	}
	opts, err := meta.NATSTLSOptions(mc.creds.CA, "", "")
	if err != nil {
		return nil, err
	}
	if cluster {
		return append(opts, meta.ClusterConnectOptions(user, pw)...), nil
	}
	return append(opts, nats.UserInfo(user, pw)), nil
}

// requesterIDs are the clusters the benchmark places for.
func requesterIDs(n int) []string {
	var ids []string
	for i := range n {
		ids = append(ids, "fo-req-"+strconv.Itoa(i))
	}
	for i := range herdRequests / 10 {
		ids = append(ids, "herd-req-"+strconv.Itoa(i))
	}
	return ids
}

const helloUser = "bench-hellos" // the simulator publishes every cluster's hellos

func freePorts(n int) ([]int, error) {
	var lns []net.Listener
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	var ports []int
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		lns = append(lns, ln)
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// startMOCluster builds cmd/roam-meta and starts n replicas, then waits
// until every one answers placements (/readyz).
func startMOCluster(n, requesters int, extra ...string) (*moCluster, error) {
	dir, err := os.MkdirTemp("", "roam-bench-meta-")
	if err != nil {
		return nil, err
	}
	mc := &moCluster{dir: dir}
	mc.creds, err = testbed.WriteNATSCredentials(filepath.Join(dir, "nats"), requesterIDs(requesters), []string{helloUser},
		[]net.IP{net.IPv4(127, 0, 0, 1)})
	if err != nil {
		mc.stop()
		return nil, err
	}
	extra = append([]string{"--auth-file", mc.creds.Auth, "--tls-cert", mc.creds.ServerCert, "--tls-key", mc.creds.ServerKey}, extra...)
	bin := filepath.Join(dir, "roam-meta")
	build := exec.Command("go", "build", "-o", bin, "./cmd/roam-meta")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		mc.stop()
		return nil, fmt.Errorf("build roam-meta (run from the repository root): %w", err)
	}
	ports, err := freePorts(3 * n)
	if err != nil {
		mc.stop()
		return nil, err
	}
	var routes []string
	for i := range n {
		routes = append(routes, "nats://127.0.0.1:"+strconv.Itoa(ports[n+i]))
	}
	for i := range n {
		r := &replica{name: "mo" + strconv.Itoa(i), clientURL: "nats://127.0.0.1:" + strconv.Itoa(ports[i]),
			httpURL: "http://127.0.0.1:" + strconv.Itoa(ports[2*n+i]), done: make(chan struct{})}
		args := append([]string{"--name", r.name, "--listen", "127.0.0.1:" + strconv.Itoa(ports[i]),
			"--cluster-listen", "127.0.0.1:" + strconv.Itoa(ports[n+i]), "--routes", strings.Join(routes, ","),
			"--http-addr", "127.0.0.1:" + strconv.Itoa(ports[2*n+i]), "--store-dir", filepath.Join(dir, r.name)}, extra...)
		r.cmd = exec.Command(bin, args...)
		logf, err := os.Create(filepath.Join(dir, r.name+".log"))
		if err != nil {
			mc.stop()
			return nil, err
		}
		r.cmd.Stdout, r.cmd.Stderr = logf, logf
		if err := r.cmd.Start(); err != nil {
			logf.Close()
			mc.stop()
			return nil, fmt.Errorf("start %s: %w", r.name, err)
		}
		go func() { _ = r.cmd.Wait(); logf.Close(); close(r.done) }()
		mc.replicas = append(mc.replicas, r)
	}
	deadline := time.Now().Add(90 * time.Second)
	for _, r := range mc.replicas {
		for !r.ready() {
			select {
			case <-r.done:
				mc.stop()
				return nil, fmt.Errorf("%s exited: see %s", r.name, filepath.Join(dir, r.name+".log"))
			default:
			}
			if time.Now().After(deadline) {
				mc.stop()
				return nil, fmt.Errorf("%s not serving after 90s", r.name)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	return mc, nil
}

func (r *replica) ready() bool {
	resp, err := http.Get(r.httpURL + "/readyz")
	if err != nil {
		return false
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// alive is how many clusters the replica counts alive (its metrics).
func (r *replica) alive() int {
	resp, err := http.Get(r.httpURL + "/metrics")
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, `roam_meta_clusters{state="alive"} `); ok {
			n, _ := strconv.ParseFloat(v, 64)
			return int(n)
		}
	}
	return 0
}

// waitAlive waits until every replica counts n clusters alive.
func (mc *moCluster) waitAlive(n int, within time.Duration) error {
	deadline := time.Now().Add(within)
	for _, r := range mc.replicas {
		for r.alive() < n {
			if time.Now().After(deadline) {
				return fmt.Errorf("%s: %d of %d clusters alive after %s", r.name, r.alive(), n, within)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	return nil
}

// kill stops the replica as a crash would.
func (r *replica) kill() {
	_ = r.cmd.Process.Signal(syscall.SIGKILL)
	<-r.done
}

// urls lists every node, starting with node first (clients fail over in
// this order).
func (mc *moCluster) urls(first int) string {
	var u []string
	for i := range mc.replicas {
		u = append(u, mc.replicas[(first+i)%len(mc.replicas)].clientURL)
	}
	return strings.Join(u, ",")
}

func (mc *moCluster) stop() {
	for _, r := range mc.replicas {
		select {
		case <-r.done:
		default:
			_ = r.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-r.done:
			case <-time.After(10 * time.Second):
				r.kill()
			}
		}
	}
	_ = os.RemoveAll(mc.dir)
}

// newRequester is a controller's MO client as roam-ctrl configures it
// (timeout one hello interval, one retry), without the cached view, so a
// placement the MO does not answer counts as failed.
func newRequester(urls, id string, opts ...nats.Option) (*meta.Client, *nats.Conn, error) {
	nc, err := nats.Connect(urls, append([]nats.Option{nats.DontRandomize(), nats.MaxReconnects(-1), nats.ReconnectWait(50 * time.Millisecond),
		nats.CustomInboxPrefix(meta.InboxPrefix(id))}, opts...)...)
	if err != nil {
		return nil, nil, fmt.Errorf("connect %s: %w", id, err)
	}
	c, err := meta.NewClient(nc, id, meta.WithoutCache(), meta.WithTimeout(time.Second), meta.WithRetries(1),
		meta.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))
	if err != nil {
		nc.Close()
		return nil, nil, err
	}
	return c, nc, nil
}

func benchRequest(labels map[string]string) meta.PlacementRequest {
	return meta.PlacementRequest{
		Home: "bench-requester", Reason: meta.ReasonLackOfResources,
		Service: meta.ServiceDescriptor{Name: "web", Ports: []meta.Port{{Port: 80, Protocol: lb.TCP}},
			Resources: meta.Resources{MilliCPU: 250, MemoryMB: 128}, Constraints: meta.Constraints{WantLabels: labels}},
	}
}

const herdClusters, herdRequests = 10, 100

// herdHellos are herdClusters identical clusters labelled role=herd.
func herdHellos(interval time.Duration) []meta.Hello {
	var hs []meta.Hello
	for i := range herdClusters {
		h := simHello(i, herdClusters, interval)
		h.ClusterID = "herd-" + strconv.Itoa(i)
		h.Labels = map[string]string{"role": "herd"}
		h.Capacity = meta.Capacity{MilliCPU: 16000, UsedMilliCPU: 4000, MemoryMB: 65536, UsedMemoryMB: 16384, Pods: 110, UsedPods: 10}
		h.Links = nil
		hs = append(hs, h)
	}
	return hs
}

// herd sends herdRequests identical placements at once from
// herdRequests/10 connections (spread over urls[i%len]) and returns how
// many landed on each cluster.
func herd(urls []string, mc *moCluster) (map[string]int, error) {
	const conns = herdRequests / 10
	var clients []*meta.Client
	for i := range conns {
		id := "herd-req-" + strconv.Itoa(i)
		var opts []nats.Option
		if mc != nil {
			var err error
			if opts, err = mc.connOpts(id, true); err != nil {
				return nil, err
			}
		}
		c, nc, err := newRequester(urls[i%len(urls)], id, opts...)
		if err != nil {
			return nil, err
		}
		defer nc.Close()
		defer c.Close()
		clients = append(clients, c)
	}
	var mu sync.Mutex
	got := map[string]int{}
	var errs []error
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range herdRequests {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := clients[i%conns]
			req := benchRequest(map[string]string{"role": "herd"})
			req.Home = c.ClusterID()
			<-start
			rep, err := c.Place(context.Background(), req)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err != nil:
				errs = append(errs, err)
			case !rep.OK():
				errs = append(errs, fmt.Errorf("no placement: %s", rep.NoPlacement))
			default:
				got[rep.Destination.ClusterID]++
			}
		}()
	}
	close(start)
	wg.Wait()
	return got, errors.Join(errs...)
}

func maxShare(got map[string]int) float64 {
	m := 0
	for _, n := range got {
		m = max(m, n)
	}
	return float64(m) / herdRequests
}

func spread(got map[string]int) string {
	var ns []int
	for _, n := range got {
		ns = append(ns, n)
	}
	sort.Sort(sort.Reverse(sort.IntSlice(ns)))
	var s []string
	for _, n := range ns {
		s = append(s, strconv.Itoa(n))
	}
	return "[" + strings.Join(s, " ") + "]"
}

// failoverResult is what the placement load saw around the kill.
type failoverResult struct {
	before, during, after []time.Duration // latencies: steady, first window after the kill, rest
	failed                int
	firstErr              error
}

// failover runs requesters placing steadily against mc, kills replica
// victim (its NATS node and its MO replica, SIGKILL) after steady, and
// keeps the load for window and then rest more.
func failover(mc *moCluster, victim, requesters int, pace, steady, window, rest time.Duration) (failoverResult, error) {
	var res failoverResult
	var clients []*meta.Client
	for i := range requesters {
		// Half the requesters start on the victim's node.
		first := (victim + i) % len(mc.replicas)
		id := "fo-req-" + strconv.Itoa(i)
		opts, err := mc.connOpts(id, true)
		if err != nil {
			return res, err
		}
		c, nc, err := newRequester(mc.urls(first), id, opts...)
		if err != nil {
			return res, err
		}
		defer nc.Close()
		defer c.Close()
		clients = append(clients, c)
	}
	var mu sync.Mutex
	var killedAt time.Time
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for _, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			t := time.NewTicker(pace)
			defer t.Stop()
			for {
				select {
				case <-stop:
					return
				case <-t.C:
				}
				req := benchRequest(map[string]string{"role": "sim"})
				req.Home = c.ClusterID()
				start := time.Now()
				rep, err := c.Place(context.Background(), req)
				d := time.Since(start)
				if err == nil && !rep.OK() {
					err = fmt.Errorf("no placement: %s", rep.NoPlacement)
				}
				mu.Lock()
				switch {
				case err != nil:
					res.failed++
					if res.firstErr == nil {
						res.firstErr = err
					}
				case killedAt.IsZero() || start.Add(d).Before(killedAt):
					res.before = append(res.before, d)
				case start.Before(killedAt.Add(window)):
					res.during = append(res.during, d)
				default:
					res.after = append(res.after, d)
				}
				mu.Unlock()
			}
		}()
	}
	time.Sleep(steady)
	mu.Lock()
	killedAt = time.Now()
	mu.Unlock()
	// A request started just before the kill is in flight during it.
	mc.replicas[victim].kill()
	time.Sleep(window + rest)
	close(stop)
	wg.Wait()
	return res, nil
}
