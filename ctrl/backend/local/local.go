// Package local is roam's embedded default orchestrator backend: it runs each
// service as a supervised process in the controller's own network namespace,
// restarts it with backoff when it dies, counts it ready once its own process
// holds the socket of every port (and the TCP ports answer), and
// reports it exposed on the cluster's data address. Two copies never share
// a port.
package local

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/roamnet/roam/ctrl/backend"
	"github.com/roamnet/roam/dataplane/lb"
	"github.com/roamnet/roam/internal/defaults"
)

// Config says where copies listen and what the "cluster" may hold.
type Config struct {
	// ClusterID is passed to the demo service (it says which cluster answered).
	ClusterID string
	// ListenAddr is where copies bind (default: unspecified, every address).
	ListenAddr netip.Addr
	// ExposeAddr is the address reported in endpoints and probed for
	// readiness (the cluster's data address). Required.
	ExposeAddr netip.Addr
	// Executable runs the demo service as `Executable demo --listen A:P
	// --cluster ID` (default os.Executable()).
	Executable string
	// DemoExecutable, when set, runs the demo service instead, as
	// `DemoExecutable --listen A:P --cluster ID` (roam-demo: it starts
	// faster than the controller). Default: roam-demo beside
	// os.Executable(), if it is there and Executable was not set.
	DemoExecutable string
	// Capacity limits (reported by Capacity; Deploy refuses beyond them
	// when set).
	MilliCPU, MemoryMB, Pods int64
	// StateDir, when set, records each running copy (pid, spec) so a
	// restarted backend adopts the copies a killed controller left running
	// (no interruption). Without it copies die with the controller.
	StateDir string
	// MinBackoff and MaxBackoff bound the restart delay (default 100ms, 5s).
	MinBackoff, MaxBackoff time.Duration
	// GracePeriod is how long a copy has to exit after SIGTERM before
	// SIGKILL (default 10s), as a pod's terminationGracePeriodSeconds;
	// Delete's context can end it sooner.
	GracePeriod time.Duration
	Logger      *slog.Logger
}

// Backend runs copies as local processes.
type Backend struct {
	cfg  Config
	log  *slog.Logger
	mu   sync.Mutex
	runs map[string]*run
	// stopping holds copies Delete is stopping: they no longer count as
	// running, but they still hold their ports until they exit.
	stopping map[string]*run
}

var _ backend.Backend = (*Backend)(nil)

// New checks cfg and returns a backend with nothing running.
func New(cfg Config) (*Backend, error) {
	if !cfg.ExposeAddr.IsValid() || cfg.ExposeAddr.IsUnspecified() {
		return nil, errors.New("new local backend: expose address must be set")
	}
	if !cfg.ListenAddr.IsValid() {
		if cfg.ExposeAddr.Is4() {
			cfg.ListenAddr = netip.IPv4Unspecified()
		} else {
			cfg.ListenAddr = netip.IPv6Unspecified()
		}
	}
	if cfg.Executable == "" {
		exe, err := os.Executable()
		if err != nil {
			return nil, fmt.Errorf("new local backend: find executable: %w", err)
		}
		cfg.Executable = exe
		if cfg.DemoExecutable == "" {
			if d := filepath.Join(filepath.Dir(exe), demoBinary); isExecutable(d) {
				cfg.DemoExecutable = d
			}
		}
	}
	defaults.Positive(&cfg.MinBackoff, 100*time.Millisecond)
	defaults.Positive(&cfg.MaxBackoff, 5*time.Second)
	defaults.Positive(&cfg.GracePeriod, 10*time.Second)
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	b := &Backend{cfg: cfg, log: cfg.Logger.With("backend", "local"), runs: map[string]*run{}, stopping: map[string]*run{}}
	if cfg.StateDir != "" {
		if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
			return nil, fmt.Errorf("new local backend: %w", err)
		}
		b.adoptAll()
	}
	return b, nil
}

// state is what StateDir holds for one copy.
type state struct {
	PID  int          `json:"pid"`
	Argv []string     `json:"argv"`
	Spec backend.Spec `json:"spec"`
}

func (b *Backend) statePath(name string) string { return filepath.Join(b.cfg.StateDir, name+".json") }

func (b *Backend) saveState(name string, st state) {
	if b.cfg.StateDir == "" {
		return
	}
	data, _ := json.Marshal(st)
	tmp := b.statePath(name) + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err == nil {
		_ = os.Rename(tmp, b.statePath(name))
	}
}

func (b *Backend) dropState(name string) {
	if b.cfg.StateDir != "" {
		_ = os.Remove(b.statePath(name))
	}
}

// alive reports whether pid still runs argv (a zombie or a reused pid does
// not count).
func alive(pid int, argv []string) bool {
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || len(cmdline) == 0 {
		return false
	}
	return string(cmdline) == strings.Join(argv, "\x00")+"\x00"
}

// adoptAll takes over the copies an earlier run left in StateDir, then
// kills those it started but never recorded.
func (b *Backend) adoptAll() {
	defer b.reapUnrecorded()
	files, _ := filepath.Glob(filepath.Join(b.cfg.StateDir, "*.json"))
	for _, f := range files {
		data, err := os.ReadFile(f)
		var st state
		if err != nil || json.Unmarshal(data, &st) != nil || !alive(st.PID, st.Argv) {
			_ = os.Remove(f)
			continue
		}
		rctx, cancel := context.WithCancel(context.Background())
		r := &run{spec: st.Spec, cancel: cancel, done: make(chan struct{}), kill: make(chan struct{}), adopt: st.PID, pid: st.PID}
		b.runs[st.Spec.Name] = r
		b.log.Info("adopted running copy", "name", st.Spec.Name, "pid", st.PID)
		go b.supervise(rctx, r)
	}
}

// run is one supervised copy.
type run struct {
	spec     backend.Spec
	cancel   context.CancelFunc // stop: SIGTERM, then SIGKILL after the grace period or kill
	done     chan struct{}
	kill     chan struct{} // closed: SIGKILL now
	killed   sync.Once
	mu       sync.Mutex
	pid      int
	restarts int
	adopt    int         // pid of a copy adopted from an earlier run
	detached atomic.Bool // stop supervising without killing (tests: a crash)
}

// snapshot is r's spec (its fence changes with a relabel).
func (r *run) snapshot() backend.Spec {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.spec
}

// killOnce closes kill (two Deletes may both give up waiting).
func (r *run) killOnce() { r.killed.Do(func() { close(r.kill) }) }

// Restarts returns how many times the named copy was restarted (for tests
// and status).
func (b *Backend) Restarts(name string) int {
	return b.runField(name, func(r *run) int { return r.restarts })
}

// PID returns the current process id of the named copy (0 if none).
func (b *Backend) PID(name string) int {
	return b.runField(name, func(r *run) int { return r.pid })
}

// runField reads one field of the named copy's run under its lock (0 if
// there is no such copy).
func (b *Backend) runField(name string, get func(*run) int) int {
	b.mu.Lock()
	r := b.runs[name]
	b.mu.Unlock()
	if r == nil {
		return 0
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return get(r)
}

func (b *Backend) command(s backend.Spec) ([]string, []string) {
	listen := netip.AddrPortFrom(b.cfg.ListenAddr, s.Ports[0].Port).String()
	env := []string{
		"PATH=" + copyPath,
		"ROAM_LISTEN=" + listen,
		"ROAM_PORT=" + strconv.Itoa(int(s.Ports[0].Port)),
		"ROAM_CLUSTER=" + b.cfg.ClusterID,
		"ROAM_SERVICE=" + s.Name,
		"ROAM_HOME=" + s.Home,
	}
	if s.Demo {
		// HTTP on the first TCP port, UDP on every UDP port.
		argv := []string{b.cfg.Executable, "demo", "--cluster", b.cfg.ClusterID}
		if b.cfg.DemoExecutable != "" {
			argv = []string{b.cfg.DemoExecutable, "--cluster", b.cfg.ClusterID}
		}
		http := false
		for _, p := range s.Ports {
			a := netip.AddrPortFrom(b.cfg.ListenAddr, p.Port).String()
			switch {
			case p.Protocol == lb.UDP:
				argv = append(argv, "--udp", a)
			case !http:
				argv, http = append(argv, "--listen", a), true
			}
		}
		return argv, env
	}
	return s.Command, env
}

// demoBinary is the demo service's own binary (cmd/roam-demo).
const demoBinary = "roam-demo"

func isExecutable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}

// copyPath is the PATH a copy runs with (a command given by a bare name is
// looked up in it).
const copyPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// Deploy starts the copy and waits until every TCP port accepts.
func (b *Backend) Deploy(ctx context.Context, s backend.Spec) (backend.Instance, error) {
	if err := s.Validate(); err != nil {
		return backend.Instance{}, fmt.Errorf("deploy %s: %w", s.Name, err)
	}
	if !s.Demo && len(s.Command) == 0 {
		return backend.Instance{}, fmt.Errorf("deploy %s: the local backend needs a command or demo", s.Name)
	}
	b.mu.Lock()
	for {
		old, ok := b.stopping[s.Name]
		if !ok {
			break
		}
		// A copy of that name is still stopping (a graceful stop, a
		// drain): it holds the ports the new one binds, and it would
		// answer the readiness probe in its place. Wait for it.
		b.mu.Unlock()
		select {
		case <-old.done:
		case <-ctx.Done():
			return backend.Instance{}, fmt.Errorf("deploy %s: wait for the previous copy to stop: %w", s.Name, ctx.Err())
		}
		b.mu.Lock()
		if b.stopping[s.Name] == old {
			delete(b.stopping, s.Name)
		}
	}
	if r, ok := b.runs[s.Name]; ok {
		r.mu.Lock()
		cur := r.spec
		same := cur.SameWorkload(s)
		if same && (cur.Home != s.Home || cur.MigrationID != s.MigrationID || cur.Epoch != s.Epoch) {
			// The same workload: relabel it with the new fence.
			r.spec.Home, r.spec.MigrationID, r.spec.Epoch = s.Home, s.MigrationID, s.Epoch
			if r.pid != 0 {
				argv, _ := b.command(r.spec)
				b.saveState(s.Name, state{PID: r.pid, Argv: argv, Spec: r.spec})
			}
		}
		r.mu.Unlock()
		b.mu.Unlock()
		if !same {
			return backend.Instance{}, fmt.Errorf("deploy %s: already runs with a different spec", s.Name)
		}
		return b.waitReady(ctx, r)
	}
	if err := b.portsFreeLocked(s); err != nil {
		b.mu.Unlock()
		return backend.Instance{}, fmt.Errorf("deploy %s: %w", s.Name, err)
	}
	if b.cfg.Pods > 0 && int64(len(b.runs)) >= b.cfg.Pods {
		b.mu.Unlock()
		return backend.Instance{}, fmt.Errorf("deploy %s: capacity full (%d copies)", s.Name, b.cfg.Pods)
	}
	if err := b.fitsLocked(s); err != nil {
		b.mu.Unlock()
		return backend.Instance{}, fmt.Errorf("deploy %s: %w", s.Name, err)
	}
	rctx, cancel := context.WithCancel(context.Background())
	r := &run{spec: s, cancel: cancel, done: make(chan struct{}), kill: make(chan struct{})}
	b.runs[s.Name] = r
	b.mu.Unlock()
	go b.supervise(rctx, r)
	inst, err := b.waitReady(ctx, r)
	if err != nil {
		_ = b.Delete(context.WithoutCancel(ctx), s.Name)
		return backend.Instance{}, err
	}
	b.log.Info("deployed", "name", s.Name, "home", s.Home, "endpoints", inst.Endpoints)
	return inst, nil
}

// portsFreeLocked refuses a copy that would share an (address, port,
// protocol) with another copy here, running or still stopping: both would
// be reached through the same frontend, and removing one would remove the
// other's.
func (b *Backend) portsFreeLocked(s backend.Spec) error {
	for _, set := range []map[string]*run{b.runs, b.stopping} {
		for name, r := range set {
			if name == s.Name {
				continue
			}
			for _, p := range s.Ports {
				for _, q := range r.spec.Ports {
					if p.Port == q.Port && p.Protocol == q.Protocol {
						return fmt.Errorf("port %d/%s is taken by copy %q", p.Port, p.Protocol, name)
					}
				}
			}
		}
	}
	return nil
}

func (b *Backend) fitsLocked(s backend.Spec) error {
	var cpu, mem int64
	for _, r := range b.runs {
		cpu += r.spec.Resources.MilliCPU
		mem += r.spec.Resources.MemoryMB
	}
	if b.cfg.MilliCPU > 0 && cpu+s.Resources.MilliCPU > b.cfg.MilliCPU {
		return fmt.Errorf("not enough cpu: %dm used of %dm, %dm asked", cpu, b.cfg.MilliCPU, s.Resources.MilliCPU)
	}
	if b.cfg.MemoryMB > 0 && mem+s.Resources.MemoryMB > b.cfg.MemoryMB {
		return fmt.Errorf("not enough memory: %dMB used of %dMB, %dMB asked", mem, b.cfg.MemoryMB, s.Resources.MemoryMB)
	}
	return nil
}

func (b *Backend) endpoints(s backend.Spec) []netip.AddrPort {
	eps := make([]netip.AddrPort, len(s.Ports))
	for i, p := range s.Ports {
		eps[i] = netip.AddrPortFrom(b.cfg.ExposeAddr, p.Port)
	}
	return eps
}

// ready reports whether r's own process holds the socket of every port
// of its spec (see sockets.go) and every TCP port accepts a connection;
// the demo service must also answer HTTP GET /healthz with 200. The TCP
// probes go first: while the copy starts they fail at once (connection
// refused), before the socket tables are read.
func (b *Backend) ready(ctx context.Context, r *run) bool {
	r.mu.Lock()
	s, pid := r.spec, r.pid
	r.mu.Unlock()
	if pid <= 0 {
		return false
	}
	for i, p := range s.Ports {
		if p.Protocol != lb.TCP {
			continue
		}
		if s.Demo {
			if !httpReady(ctx, "http://"+b.endpoints(s)[i].String()+"/healthz") {
				return false
			}
			continue
		}
		d := net.Dialer{Timeout: 500 * time.Millisecond}
		c, err := d.DialContext(ctx, "tcp", b.endpoints(s)[i].String())
		if err != nil {
			return false
		}
		c.Close()
	}
	for _, p := range s.Ports {
		if !ownsPort(pid, p.Port, p.Protocol) {
			return false
		}
	}
	return true
}

// readyPollMin and readyPollMax bound how often waitReady checks a
// starting copy: from readyPollMin (a copy is often ready within a few
// milliseconds), doubling up to readyPollMax.
const (
	readyPollMin = time.Millisecond
	readyPollMax = 20 * time.Millisecond
)

func (b *Backend) waitReady(ctx context.Context, r *run) (backend.Instance, error) {
	poll := readyPollMin
	t := time.NewTimer(poll)
	defer t.Stop()
	for {
		if b.ready(ctx, r) {
			return b.instance(r, true), nil
		}
		select {
		case <-ctx.Done():
			return backend.Instance{}, fmt.Errorf("wait for %s ready (its own process holding its ports): %w", r.spec.Name, ctx.Err())
		case <-t.C:
		}
		poll = min(2*poll, readyPollMax)
		t.Reset(poll)
	}
}

// supervise runs the process until ctx ends, restarting it with backoff.
func (b *Backend) supervise(ctx context.Context, r *run) {
	defer close(r.done)
	if pid := r.adopt; pid != 0 {
		argv, _ := b.command(r.snapshot())
		r.mu.Lock()
		r.pid = pid
		r.mu.Unlock()
		t := time.NewTicker(100 * time.Millisecond)
		for alive(pid, argv) {
			select {
			case <-ctx.Done():
				t.Stop()
				if r.detached.Load() {
					return
				}
				// Not our child: poll for its exit.
				exited := make(chan error, 1)
				go func() {
					for alive(pid, argv) {
						time.Sleep(10 * time.Millisecond)
					}
					exited <- nil
				}()
				b.stopGroup(pid, exited, r.kill)
				return
			case <-t.C:
			}
		}
		t.Stop()
		r.mu.Lock()
		r.pid = 0
		r.mu.Unlock()
	}
	backoff := b.cfg.MinBackoff
	for {
		spec := r.snapshot()
		argv, env := b.command(spec)
		cmd := exec.Command(argv[0], argv[1:]...)
		// An explicit, minimal environment: never the controller's own,
		// which may hold its secrets (and a foreign copy runs another
		// domain's code).
		cmd.Env = env
		if b.cfg.StateDir != "" {
			// Marks the copy as this backend's, so a restarted one finds
			// it even if it was killed before recording it (reapUnrecorded).
			cmd.Env = append(cmd.Env, copyMark+"="+b.statePath(spec.Name))
		}
		// Own process group (Delete kills the group); killed with the
		// controller, so a restarted controller redeploys from its records
		// instead of finding unknown copies holding the ports (with StateDir they
		// outlive it and are adopted).
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if b.cfg.StateDir == "" {
			cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
		}
		started := time.Now()
		err := cmd.Start()
		if err == nil {
			r.mu.Lock()
			r.pid = cmd.Process.Pid
			r.mu.Unlock()
			b.saveState(spec.Name, state{PID: cmd.Process.Pid, Argv: argv, Spec: spec})
			waited := make(chan error, 1)
			go func() { waited <- cmd.Wait() }()
			select {
			case err = <-waited:
			case <-ctx.Done():
				if r.detached.Load() {
					return
				}
				b.stopGroup(cmd.Process.Pid, waited, r.kill)
				return
			}
			r.mu.Lock()
			r.pid = 0
			r.mu.Unlock()
		}
		if ctx.Err() != nil {
			return
		}
		if time.Since(started) > 10*time.Second {
			backoff = b.cfg.MinBackoff
		}
		b.log.Warn("copy exited, restarting", "name", r.spec.Name, "err", err, "backoff", backoff)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		r.mu.Lock()
		r.restarts++
		r.mu.Unlock()
		backoff = min(2*backoff, b.cfg.MaxBackoff)
	}
}

// stopGroup stops a copy's process group the way Kubernetes stops a pod:
// SIGTERM, then SIGKILL when the grace period is over or kill is closed,
// whichever comes first; it returns once the leader has exited.
func (b *Backend) stopGroup(pid int, exited <-chan error, kill <-chan struct{}) {
	_ = syscall.Kill(-pid, syscall.SIGTERM)
	grace := time.NewTimer(b.cfg.GracePeriod)
	defer grace.Stop()
	select {
	case <-exited:
	case <-grace.C:
		_ = syscall.Kill(-pid, syscall.SIGKILL)
		<-exited
	case <-kill:
		_ = syscall.Kill(-pid, syscall.SIGKILL)
		<-exited
	}
	// Children that outlived the leader.
	_ = syscall.Kill(-pid, syscall.SIGKILL)
}

// Delete stops the copy gracefully: SIGTERM to its process group, then
// SIGKILL once the grace period is over or ctx ends, whichever comes
// first (a migration passes a context that ends when the old copy's flows
// are drained or at the drain timeout). It returns when the copy is gone.
func (b *Backend) Delete(ctx context.Context, name string) error {
	b.mu.Lock()
	r, ok := b.runs[name]
	if !ok {
		old, stopping := b.stopping[name]
		b.mu.Unlock()
		if stopping {
			// Another Delete stops it: wait for the same end.
			select {
			case <-old.done:
			case <-ctx.Done():
				old.killOnce()
				<-old.done
			}
		}
		return nil
	}
	delete(b.runs, name)
	b.stopping[name] = r
	b.mu.Unlock()
	r.cancel()
	select {
	case <-r.done:
	case <-ctx.Done():
		r.killOnce()
		<-r.done
	}
	b.mu.Lock()
	if b.stopping[name] == r {
		delete(b.stopping, name)
	}
	b.mu.Unlock()
	b.dropState(name)
	b.log.Info("deleted", "name", name)
	return nil
}

// Get returns one copy.
func (b *Backend) Get(ctx context.Context, name string) (backend.Instance, error) {
	b.mu.Lock()
	r, ok := b.runs[name]
	b.mu.Unlock()
	if !ok {
		return backend.Instance{}, fmt.Errorf("get %s: %w", name, backend.ErrNotFound)
	}
	return b.instance(r, b.ready(ctx, r)), nil
}

// instance is r as an Instance, with its fence.
func (b *Backend) instance(r *run, ready bool) backend.Instance {
	r.mu.Lock()
	s := r.spec
	r.mu.Unlock()
	return backend.Instance{Name: s.Name, Home: s.Home, MigrationID: s.MigrationID, Epoch: s.Epoch,
		Endpoints: b.endpoints(s), Ready: ready}
}

// List returns every copy.
func (b *Backend) List(ctx context.Context) ([]backend.Instance, error) {
	b.mu.Lock()
	names := make([]string, 0, len(b.runs))
	for n := range b.runs {
		names = append(names, n)
	}
	b.mu.Unlock()
	sort.Strings(names)
	out := make([]backend.Instance, 0, len(names))
	for _, n := range names {
		i, err := b.Get(ctx, n)
		if err != nil {
			continue
		}
		out = append(out, i)
	}
	return out, nil
}

// Capacity reports the configured limits and what running copies ask.
func (b *Backend) Capacity(ctx context.Context) (backend.Capacity, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	c := backend.Capacity{MilliCPU: b.cfg.MilliCPU, MemoryMB: b.cfg.MemoryMB, Pods: b.cfg.Pods}
	for _, r := range b.runs {
		c.UsedMilliCPU += r.spec.Resources.MilliCPU
		c.UsedMemoryMB += r.spec.Resources.MemoryMB
		c.UsedPods++
	}
	return c, nil
}

// Close stops every copy (all at once, each with its grace period).
func (b *Backend) Close() error {
	b.mu.Lock()
	names := make([]string, 0, len(b.runs))
	for n := range b.runs {
		names = append(names, n)
	}
	b.mu.Unlock()
	var wg sync.WaitGroup
	for _, n := range names {
		wg.Go(func() { _ = b.Delete(context.Background(), n) })
	}
	wg.Wait()
	return nil
}

var probeClient = &http.Client{Timeout: time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

func httpReady(ctx context.Context, url string) bool {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return false
	}
	resp, err := probeClient.Do(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}
