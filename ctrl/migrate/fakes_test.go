package migrate

// The fixture the engine's unit tests run in, in the style of
// sample-controller's controller_test.go: a world of clusters, each with its
// own store and engine over fakes (a backend, every node's agent), joined by
// a fake peer network that routes calls to the other engines and can cut,
// black-hole or fail them, and a fake MO. Every fake records what it was
// asked to do as an action ("b: backend deploy web 1"), so a test states the
// actions it expects. No root, no network.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/roamnet/roam/ctrl"
	"github.com/roamnet/roam/ctrl/backend"
	"github.com/roamnet/roam/ctrl/backend/backendtest"
	"github.com/roamnet/roam/ctrl/store"
	"github.com/roamnet/roam/dataplane/agentapi"
	"github.com/roamnet/roam/dataplane/lb"
	"github.com/roamnet/roam/meta"
)

// actions is the shared, ordered record of what the fakes were asked.
type actions struct {
	mu  sync.Mutex
	log []string
}

func (a *actions) add(format string, args ...any) {
	a.mu.Lock()
	a.log = append(a.log, fmt.Sprintf(format, args...))
	a.mu.Unlock()
}

// seen reports whether action s was recorded since the last take.
func (a *actions) seen(s string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Contains(a.log, s)
}

// take returns the actions recorded since the last take, keeping those
// that start with one of prefixes (all when none is given).
func (a *actions) take(prefixes ...string) []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []string
	for _, s := range a.log {
		if len(prefixes) == 0 || slices.ContainsFunc(prefixes, func(p string) bool { return strings.HasPrefix(s, p) }) {
			out = append(out, s)
		}
	}
	a.log = nil
	return out
}

// fault is an injected failure: an error returned at once, or a black hole
// that holds the call until its context ends.
type fault struct {
	err   error
	block bool
	// times, when > 0, is how many calls it still hits.
	times int
}

// faults is a set of faults by key (an operation and its target).
type faults struct {
	mu sync.Mutex
	m  map[string]*fault
}

func (f *faults) set(key string, ft fault) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.m == nil {
		f.m = map[string]*fault{}
	}
	f.m[key] = &ft
}

func (f *faults) clear(key string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.m, key)
}

// hit applies the fault set for any of keys, if one is. A call on a
// context already ended fails, as a real call would.
func (f *faults) hit(ctx context.Context, keys ...string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	f.mu.Lock()
	var ft *fault
	for _, k := range keys {
		if x := f.m[k]; x != nil {
			ft = x
			if ft.times > 0 {
				ft.times--
				if ft.times == 0 {
					delete(f.m, k)
				}
			}
			break
		}
	}
	f.mu.Unlock()
	if ft == nil {
		return nil
	}
	if ft.block {
		<-ctx.Done()
		return fmt.Errorf("black hole: %w", ctx.Err())
	}
	return ft.err
}

var errInjected = errors.New("injected fault")

// fakeBackend is a backendtest.Memory (the copies, reached at its Addr)
// that logs what it is asked, takes injected faults, and stops a copy
// gracefully in stopFor unless killed.
type fakeBackend struct {
	backendtest.Memory
	cluster string
	acts    *actions
	faults  faults
	mu      sync.Mutex    // guards stopFor and killed
	stopFor time.Duration // a copy's graceful stop lasts this long unless killed
	killed  time.Time     // when a graceful stop was last cut short (SIGKILL)
}

var _ backend.Backend = (*fakeBackend)(nil)

func (b *fakeBackend) Deploy(ctx context.Context, s backend.Spec) (backend.Instance, error) {
	b.acts.add("%s: backend deploy %s %d", b.cluster, s.Name, s.Epoch)
	if err := b.faults.hit(ctx, "deploy "+s.Name, "deploy"); err != nil {
		return backend.Instance{}, err
	}
	inst, err := b.Memory.Deploy(ctx, s)
	if err != nil {
		return backend.Instance{}, err
	}
	// A copy that started but never got ready (a pod Pending, a
	// crash-looping process): it runs, and Deploy fails.
	if err := b.faults.hit(ctx, "ready "+s.Name); err != nil {
		return backend.Instance{}, err
	}
	return inst, nil
}

func (b *fakeBackend) Delete(ctx context.Context, name string) error {
	b.acts.add("%s: backend delete %s", b.cluster, name)
	if ctx.Err() == nil {
		if err := b.faults.hit(ctx, "delete "+name, "delete"); err != nil {
			return err
		}
	} // else: as the local backend does, an ended context kills at once
	b.mu.Lock()
	stop := b.stopFor
	b.mu.Unlock()
	if stop > 0 {
		// The graceful stop (SIGTERM, the copy lingers while clients
		// finish), cut short by the end of ctx (SIGKILL).
		select {
		case <-time.After(stop):
		case <-ctx.Done():
			b.mu.Lock()
			b.killed = time.Now()
			b.mu.Unlock()
			b.acts.add("%s: backend killed %s", b.cluster, name)
		}
	}
	return b.Memory.Delete(ctx, name)
}

func (b *fakeBackend) Get(ctx context.Context, name string) (backend.Instance, error) {
	if err := b.faults.hit(ctx, "get"); err != nil {
		return backend.Instance{}, err
	}
	return b.Memory.Get(ctx, name)
}

func (b *fakeBackend) List(ctx context.Context) ([]backend.Instance, error) {
	if err := b.faults.hit(ctx, "list"); err != nil {
		return nil, err
	}
	return b.Memory.List(ctx)
}

// running reports the epoch of the copy of name, if one runs.
func (b *fakeBackend) running(name string) (uint64, bool) {
	s, ok := b.Running(name)
	return s.Epoch, ok
}

// fakeAgents is every node of one cluster, each holding its services as
// the data plane does: two slots, an active index, a generation.
type fakeAgents struct {
	cluster string
	acts    *actions
	faults  faults // keys "stage", "commit", "abort", "flows", "list", each optionally " node<i>"
	mu      sync.Mutex
	nodes   []map[lb.Frontend]*lb.Service
	flows   int       // flows still pinned to any old target
	ended   time.Time // when flows last dropped to 0 (set by tests)
	warms   int       // Warm calls (not actions: they change nothing)
}

var _ ctrl.Agents = (*fakeAgents)(nil)

func newFakeAgents(cluster string, n int, acts *actions) *fakeAgents {
	a := &fakeAgents{cluster: cluster, acts: acts}
	for range n {
		a.nodes = append(a.nodes, map[lb.Frontend]*lb.Service{})
	}
	return a
}

func (a *fakeAgents) node(i int, f lb.Frontend) *lb.Service {
	s := a.nodes[i][f]
	if s == nil {
		s = &lb.Service{Frontend: f}
		a.nodes[i][f] = s
	}
	return s
}

// StageAll stages on each node in turn, all of fs in one call there, as
// agentapi.Group does: a fault on a frontend of one node leaves nothing
// staged anywhere (that node rolls back its own call, the nodes before it
// are aborted). Faults: "stage node<i>", "stage", "stage <proto>".
func (a *fakeAgents) StageAll(ctx context.Context, fs []lb.Frontend, ts []lb.Target) ([]agentapi.Generations, error) {
	for j, f := range fs {
		a.acts.add("%s: agents stage %d %s", a.cluster, f.Port, ts[j])
	}
	gens := make([]agentapi.Generations, len(fs))
	for j := range fs {
		gens[j] = make(agentapi.Generations, len(a.nodes))
	}
	for i := range a.nodes {
		for j, f := range fs {
			if err := a.faults.hit(ctx, fmt.Sprintf("stage node%d", i), "stage", "stage "+f.Proto.String()); err != nil {
				a.mu.Lock()
				for n := range i + 1 {
					for k := range fs {
						if n < i || k < j {
							a.node(n, fs[k]).Staged = lb.Target{}
						}
					}
				}
				a.mu.Unlock()
				return nil, fmt.Errorf("stage %s on node %d: %w", f, i, err)
			}
			a.mu.Lock()
			s := a.node(i, f)
			s.Generation++
			s.Staged = ts[j]
			gens[j][i] = s.Generation
			a.mu.Unlock()
		}
	}
	return gens, nil
}

// Reroute stages on every node, then commits on every node, as
// agentapi.Group does (make-before-break across nodes): a stage fault
// leaves nothing committed (agentapi.ErrNotCommitted), a commit fault on
// some node leaves the others committed. Its commit takes commitFor.
func (a *fakeAgents) Reroute(ctx context.Context, fs []lb.Frontend, ts []lb.Target) (agentapi.RerouteTimes, error) {
	t0 := time.Now()
	gens, err := a.StageAll(ctx, fs, ts)
	if err != nil {
		return agentapi.RerouteTimes{}, fmt.Errorf("%w (%w)", err, agentapi.ErrNotCommitted)
	}
	t1 := time.Now()
	err = a.CommitAll(ctx, fs, gens)
	return agentapi.RerouteTimes{Stage: t1.Sub(t0), Commit: time.Since(t1)}, err
}

func (a *fakeAgents) CommitAll(ctx context.Context, fs []lb.Frontend, gens []agentapi.Generations) error {
	for _, f := range fs {
		a.acts.add("%s: agents commit %d", a.cluster, f.Port)
	}
	var errs []error
	for i := range a.nodes {
		if err := a.faults.hit(ctx, fmt.Sprintf("commit node%d", i), "commit"); err != nil {
			errs = append(errs, fmt.Errorf("commit on node %d: %w", i, err))
			continue
		}
		a.mu.Lock()
		for j, f := range fs {
			s := a.node(i, f)
			if s.Staged.Kind == lb.TargetNone || gens[j][i] != s.Generation {
				errs = append(errs, fmt.Errorf("commit %s on node %d: nothing staged at generation %d", f, i, gens[j][i]))
			} else {
				s.Active, s.Staged = s.Staged, lb.Target{}
			}
		}
		a.mu.Unlock()
	}
	return errors.Join(errs...)
}

func (a *fakeAgents) Abort(ctx context.Context, f lb.Frontend, gens agentapi.Generations) error {
	a.acts.add("%s: agents abort %d", a.cluster, f.Port)
	return a.onEveryNode(ctx, "abort", func(i int, node map[lb.Frontend]*lb.Service) {
		if s := node[f]; s != nil && (gens == nil || gens[i] == s.Generation) {
			s.Staged = lb.Target{}
		}
	})
}

func (a *fakeAgents) Remove(ctx context.Context, f lb.Frontend) error {
	a.acts.add("%s: agents remove %d", a.cluster, f.Port)
	return a.onEveryNode(ctx, "remove", func(_ int, node map[lb.Frontend]*lb.Service) { delete(node, f) })
}

// onEveryNode takes the fault, if one is set, else runs fn on each node's
// services in turn, under the lock.
func (a *fakeAgents) onEveryNode(ctx context.Context, fault string, fn func(i int, node map[lb.Frontend]*lb.Service)) error {
	if err := a.faults.hit(ctx, fault); err != nil {
		return err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for i, node := range a.nodes {
		fn(i, node)
	}
	return nil
}

func (a *fakeAgents) Flows(ctx context.Context, f lb.Frontend, t lb.Target) (int, error) {
	if err := a.faults.hit(ctx, "flows"); err != nil {
		return 0, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.flows, nil
}

func (a *fakeAgents) Warm(ctx context.Context) error {
	if err := a.faults.hit(ctx, "warm"); err != nil {
		return err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.warms++
	return nil
}

func (a *fakeAgents) List(ctx context.Context) ([][]lb.Service, error) {
	if err := a.faults.hit(ctx, "list"); err != nil {
		return nil, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([][]lb.Service, len(a.nodes))
	for i, n := range a.nodes {
		for _, s := range n {
			out[i] = append(out[i], *s)
		}
		slices.SortFunc(out[i], func(x, y lb.Service) int { return int(x.Frontend.Port) - int(y.Frontend.Port) })
	}
	return out, nil
}

// reboot clears node i's services, as a reboot clears the bpffs pins.
func (a *fakeAgents) reboot(i int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.nodes[i] = map[lb.Frontend]*lb.Service{}
}

// active is node i's active target for f (none when it has no entry).
func (a *fakeAgents) active(i int, f lb.Frontend) lb.Target {
	a.mu.Lock()
	defer a.mu.Unlock()
	if s := a.nodes[i][f]; s != nil {
		return s.Active
	}
	return lb.Target{}
}

// fakeCluster is one cluster of the world: its store survives a crash of
// its engine, as its backend and agents do.
type fakeCluster struct {
	id    string
	url   string
	addr  netip.Addr
	store string
	st    *store.Store
	be    *fakeBackend
	ag    *fakeAgents
	eng   *Engine
	crash func(ctrl.Migration) error
	w     *world
}

// world is the fixture: clusters, the network between them and the MO.
type world struct {
	t        *testing.T
	acts     *actions
	clusters map[string]*fakeCluster
	order    []string
	net      faults // keys "<from>-><to>", "<from>-><to> <Op>", "-><to>"
	mo       fakeMO
	failsafe time.Duration
	// tune, when set, adjusts each engine's config before it is built.
	tune func(*Config)
	mu   sync.Mutex
	down map[string]bool // clusters whose controller is stopped
	// aliases sends calls to one cluster's URL to another's controller
	// (a URL that now reaches someone else).
	aliases map[string]string
	// healths counts Health calls by "<from>-><to>".
	healths map[string]int
}

// alias makes calls to id's URL reach other's controller.
func (w *world) alias(id, other string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.aliases == nil {
		w.aliases = map[string]string{}
	}
	w.aliases[id] = other
}

func (w *world) unalias(id string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	delete(w.aliases, id)
}

// fakeMO places where it is told and lists the clusters it hears from.
type fakeMO struct {
	mu   sync.Mutex
	dest string
	gone map[string]bool // clusters whose hellos stopped
}

func (m *fakeMO) Place(ctx context.Context, req meta.PlacementRequest) (meta.PlacementReply, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.dest == "" {
		return meta.PlacementReply{NoPlacement: "no cluster fits"}, nil
	}
	return meta.PlacementReply{Destination: &meta.Candidate{ClusterID: m.dest, ControllerURL: "fake://" + m.dest}}, nil
}

const testPort = 8080

func newWorld(t *testing.T, ids ...string) *world {
	t.Helper()
	w := &world{t: t, acts: &actions{}, clusters: map[string]*fakeCluster{}, failsafe: time.Second, down: map[string]bool{}, healths: map[string]int{}}
	dir := t.TempDir()
	for i, id := range ids {
		addr := netip.AddrFrom4([4]byte{10, 0, 0, byte(i + 1)})
		c := &fakeCluster{id: id, url: "fake://" + id, addr: addr, store: filepath.Join(dir, id+".db"), w: w,
			be: &fakeBackend{Memory: backendtest.Memory{Addr: addr}, cluster: id, acts: w.acts},
			ag: newFakeAgents(id, 2, w.acts)}
		w.clusters[id] = c
		w.order = append(w.order, id)
	}
	for _, id := range ids {
		w.start(id)
	}
	t.Cleanup(func() {
		for _, c := range w.clusters {
			if c.st != nil {
				c.st.Close()
			}
		}
	})
	return w
}

func testLogger() *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// start opens c's store and builds its engine (as a restarted controller
// does); it does not recover.
func (w *world) start(id string) *Engine {
	w.t.Helper()
	c := w.clusters[id]
	st, err := store.Open(c.store)
	if err != nil {
		w.t.Fatal(err)
	}
	c.st = st
	cfg := Config{ClusterID: id, URL: c.url, FrontendAddr: c.addr, Store: st, Backend: c.be, Agents: c.ag,
		Placer: &w.mo, Directory: w, Peers: &fakePeers{w: w, from: id}, Hellos: w.hellos,
		DrainTimeout: 200 * time.Millisecond, FailsafeAfter: w.failsafe, ProbeInterval: 50 * time.Millisecond,
		CallTimeout: time.Second, DeployTimeout: time.Second,
		Verify: w.verify, ProbeEndpoint: w.probeEndpoint, CrashHook: func(m ctrl.Migration) error {
			if c.crash != nil {
				return c.crash(m)
			}
			return nil
		}, Logger: testLogger().With("cluster", id)}
	if w.tune != nil {
		w.tune(&cfg)
	}
	eng, err := New(cfg)
	if err != nil {
		w.t.Fatal(err)
	}
	c.eng = eng
	w.mu.Lock()
	delete(w.down, id)
	w.mu.Unlock()
	return eng
}

// stop kills c's controller: its engine is gone (calls to it fail), its
// store closed; its backend's copies and its agents' maps stay.
func (w *world) stop(id string) {
	c := w.clusters[id]
	w.mu.Lock()
	w.down[id] = true
	w.mu.Unlock()
	if c.st != nil {
		c.st.Close()
		c.st = nil
	}
	c.eng = nil
}

// restart is stop, start and one round of reconciliation (what the
// controller's work queue does first).
func (w *world) restart(id string) {
	w.t.Helper()
	w.stop(id)
	eng := w.start(id)
	if _, err := eng.MarkRecovering(); err != nil {
		w.t.Fatal(err)
	}
	w.reconcile(id)
}

// reconcile runs one round of c's reconcilers over every key, as a resync
// does; errors (work left for a retry) are logged.
func (w *world) reconcile(id string) {
	w.t.Helper()
	eng := w.eng(id)
	keys, err := eng.Keys()
	if err != nil {
		w.t.Fatal(err)
	}
	for _, k := range keys {
		if _, err := eng.Reconcile(context.Background(), k); err != nil {
			w.t.Logf("reconcile %s at %s: %v", k, id, err)
		}
	}
}

// ControllerURL makes the world the engines' directory.
func (w *world) ControllerURL(id string) (string, bool) {
	if c, ok := w.clusters[id]; ok {
		return c.url, true
	}
	return "", false
}

func (w *world) hellos() []meta.Hello {
	w.mo.mu.Lock()
	defer w.mo.mu.Unlock()
	var hs []meta.Hello
	for _, id := range w.order {
		if !w.mo.gone[id] {
			hs = append(hs, meta.Hello{ClusterID: id, ControllerURL: "fake://" + id})
		}
	}
	return hs
}

// copyAt says which cluster runs the copy reached at ep, if one runs.
func (w *world) copyAt(ep netip.AddrPort) (*fakeCluster, string, bool) {
	for _, c := range w.clusters {
		if c.addr != ep.Addr() {
			continue
		}
		copies, _ := c.be.Memory.List(context.Background()) // no faults: the test's own look
		for _, inst := range copies {
			if slices.Contains(inst.Endpoints, ep) {
				return c, inst.Name, true
			}
		}
		return c, "", false
	}
	return nil, "", false
}

// verify answers when a copy runs at every endpoint.
func (w *world) verify(ctx context.Context, d ctrl.Descriptor, eps []netip.AddrPort) error {
	for _, ep := range eps {
		c, name, ok := w.copyAt(ep)
		if !ok || name != d.Name {
			return fmt.Errorf("verify %s: connection refused", ep)
		}
		if err := w.net.hit(ctx, "verify ->"+c.id); err != nil {
			return fmt.Errorf("verify %s: %w", ep, err)
		}
	}
	return nil
}

// probeEndpoint is the fail-safe's look at a copy on the users' path: it
// answers when a copy runs there and the path to its cluster ("->c",
// "endpoint ->c") is not cut.
func (w *world) probeEndpoint(ctx context.Context, d ctrl.Descriptor, eps []netip.AddrPort) error {
	for _, ep := range eps {
		c, name, ok := w.copyAt(ep)
		if !ok || name != d.Name {
			return fmt.Errorf("probe %s: connection refused", ep)
		}
		if err := w.net.hit(ctx, "endpoint ->"+c.id, "->"+c.id); err != nil {
			return fmt.Errorf("probe %s: %w", ep, err)
		}
	}
	return nil
}

func (w *world) cluster(id string) *fakeCluster { return w.clusters[id] }

// mustRecord is id's record of web.
func (w *world) mustRecord(id string) ctrl.Record {
	w.t.Helper()
	r, err := w.clusters[id].st.Record("web")
	if err != nil {
		w.t.Fatal(err)
	}
	return r
}

func (w *world) eng(id string) *Engine {
	w.t.Helper()
	e := w.clusters[id].eng
	if e == nil {
		w.t.Fatalf("%s is stopped", id)
	}
	return e
}

func (w *world) frontend(id string) lb.Frontend {
	return lb.Frontend{Addr: w.clusters[id].addr, Port: testPort, Proto: lb.TCP}
}

func (w *world) descriptor() ctrl.Descriptor {
	return ctrl.Descriptor{Name: "web", Demo: true, Ports: []backend.Port{{Port: testPort, Protocol: lb.TCP}}}
}

func (w *world) deploy(home string) {
	w.t.Helper()
	if _, err := w.eng(home).Deploy(context.Background(), w.descriptor()); err != nil {
		w.t.Fatal(err)
	}
}

func (w *world) migrate(from, dest string) (ctrl.Migration, error) {
	w.t.Helper()
	return w.eng(from).Migrate(context.Background(), "web", ctrl.MigrateRequest{Destination: dest})
}

func (w *world) mustMigrate(from, dest string) ctrl.Migration {
	w.t.Helper()
	m, err := w.migrate(from, dest)
	if err != nil {
		w.t.Fatalf("migrate %s -> %s: %v", from, dest, err)
	}
	return m
}

// expectActions checks the actions recorded since the last check (those
// starting with one of prefixes) against want.
func (w *world) expectActions(want []string, prefixes ...string) {
	w.t.Helper()
	got := w.acts.take(prefixes...)
	if !slices.Equal(got, want) {
		w.t.Fatalf("actions:\n  got  %s\n  want %s", strings.Join(got, "\n       "), strings.Join(want, "\n       "))
	}
}

// expectAt checks the whole picture for web homed at home running at at:
// every node of the home points at the copy, the copy runs there and
// nowhere else, every record agrees, nothing is in flight.
func (w *world) expectAt(home, at string) {
	w.t.Helper()
	if err := w.check(home, at); err != nil {
		w.t.Fatal(err)
	}
}

func (w *world) check(home, at string) error {
	want := lb.Local
	if at != home {
		want = lb.Redirect(netip.AddrPortFrom(w.clusters[at].addr, testPort))
	}
	h := w.clusters[home]
	for i := range h.ag.nodes {
		if got := h.ag.active(i, w.frontend(home)); got != want {
			return fmt.Errorf("home %s node %d points at %s, want %s", home, i, got, want)
		}
	}
	for _, id := range w.order {
		_, runs := w.clusters[id].be.running("web")
		if runs != (id == at) {
			return fmt.Errorf("copy at %s: %v (service at %s)", id, runs, at)
		}
	}
	if h.st == nil {
		return nil
	}
	r, err := h.st.Record("web")
	if err != nil || r.Cluster != at {
		return fmt.Errorf("home record %+v (%v), want running at %s", r, err, at)
	}
	for _, id := range w.order {
		c := w.clusters[id]
		if c.st == nil {
			continue
		}
		inf, err := c.st.InFlight()
		if err != nil || len(inf) > 0 {
			return fmt.Errorf("%s: migrations in flight %+v (%v)", id, inf, err)
		}
		if id == home || id == at {
			continue
		}
		if _, err := c.st.Record("web"); err == nil {
			return fmt.Errorf("%s still holds a record", id)
		}
	}
	if at != home {
		fr, err := w.clusters[at].st.Record("web")
		if err != nil || fr.Kind != ctrl.KindForeign || fr.Home != home || fr.Epoch != r.Epoch {
			return fmt.Errorf("record at %s: %+v (%v), home's epoch %s", at, fr, err, r.Epoch)
		}
		if n, _ := w.clusters[at].be.running("web"); n != r.Epoch.N {
			return fmt.Errorf("copy at %s has epoch %d, home's record %s", at, n, r.Epoch)
		}
	}
	return nil
}

// noLBToNothing checks every node of every cluster: each frontend points
// at a copy that runs (its own backend's for a local target).
func (w *world) noLBToNothing() error {
	for _, id := range w.order {
		c := w.clusters[id]
		c.ag.mu.Lock()
		var svcs []lb.Service
		for _, n := range c.ag.nodes {
			for _, s := range n {
				svcs = append(svcs, *s)
			}
		}
		c.ag.mu.Unlock()
		for _, s := range svcs {
			switch s.Active.Kind {
			case lb.TargetLocal:
				if _, ok := c.be.running("web"); !ok {
					return fmt.Errorf("%s: %s points at a local copy that does not run", id, s.Frontend)
				}
			case lb.TargetRedirect:
				if _, _, ok := w.copyAt(netip.AddrPortFrom(s.Active.Addr, s.Active.Port)); !ok {
					return fmt.Errorf("%s: %s points at %s where nothing runs", id, s.Frontend, s.Active)
				}
			}
		}
	}
	return nil
}

// eventually polls cond until it holds or 10 s pass.
func (w *world) eventually(what string, cond func() error) {
	w.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			w.t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// fakePeers is one cluster's view of the network: it routes each call to
// the engine behind the URL, as the API layer would (the callee's errors
// reach the caller as text only, as over HTTP).
type fakePeers struct {
	w    *world
	from string
}

var _ ctrl.Peers = (*fakePeers)(nil)

// peerError is an answer over the fake wire: only its text survives.
type peerError struct{ msg string }

func (e *peerError) Error() string { return e.msg }

func (p *fakePeers) target(ctx context.Context, url, op string) (*Engine, error) {
	id := strings.TrimPrefix(url, "fake://")
	c, ok := p.w.clusters[id]
	if !ok || url == "" {
		return nil, fmt.Errorf("call %s %s: no such host", op, url)
	}
	if op == "Health" {
		// A probe changes nothing: counted, not an action (a migration
		// warms its connection to the home with one, concurrently with
		// its other calls).
		p.w.mu.Lock()
		p.w.healths[p.from+"->"+id]++
		p.w.mu.Unlock()
	} else {
		p.w.acts.add("%s: peer %s %s", p.from, op, id)
	}
	if err := p.w.net.hit(ctx, p.from+"->"+id+" "+op, p.from+"->"+id, "->"+id); err != nil {
		return nil, fmt.Errorf("call %s %s: %w", op, url, err)
	}
	p.w.mu.Lock()
	if to, ok := p.w.aliases[id]; ok {
		id, c = to, p.w.clusters[to]
	}
	down := p.w.down[id]
	p.w.mu.Unlock()
	if down || c.eng == nil {
		return nil, fmt.Errorf("call %s %s: connection refused", op, url)
	}
	return c.eng, nil
}

func wire(err error) error {
	if err == nil {
		return nil
	}
	return &peerError{msg: err.Error()}
}

func (p *fakePeers) caller() ctrl.Caller { return ctrl.Caller{Cluster: p.from} }

// call routes op to url's engine and runs fn there; the error comes back
// as the wire carries it.
func call[T any](ctx context.Context, p *fakePeers, url, op string, fn func(*Engine) (T, error)) (T, error) {
	e, err := p.target(ctx, url, op)
	if err != nil {
		var zero T
		return zero, err
	}
	v, err := fn(e)
	return v, wire(err)
}

// callErr is call for an op that answers only an error.
func callErr(ctx context.Context, p *fakePeers, url, op string, fn func(*Engine) error) error {
	_, err := call(ctx, p, url, op, func(e *Engine) (struct{}, error) { return struct{}{}, fn(e) })
	return err
}

func (p *fakePeers) DeployForeign(ctx context.Context, url string, req ctrl.ForeignRequest) (ctrl.ForeignReply, error) {
	return call(ctx, p, url, "DeployForeign", func(e *Engine) (ctrl.ForeignReply, error) { return e.DeployForeign(ctx, p.caller(), req) })
}

func (p *fakePeers) RemoveForeign(ctx context.Context, url, name, home string, epoch ctrl.Epoch) error {
	return callErr(ctx, p, url, "RemoveForeign", func(e *Engine) error { return e.RemoveForeign(ctx, p.caller(), name, home, epoch) })
}

func (p *fakePeers) MovedOn(ctx context.Context, url string, n ctrl.MovedOn) (ctrl.Migration, error) {
	return call(ctx, p, url, "MovedOn", func(e *Engine) (ctrl.Migration, error) { return e.MovedOn(ctx, p.caller(), n) })
}

func (p *fakePeers) Drained(ctx context.Context, url, name string, epoch ctrl.Epoch) error {
	return callErr(ctx, p, url, "Drained", func(e *Engine) error { return e.Drained(ctx, p.caller(), name, epoch) })
}

func (p *fakePeers) SRv6Gone(ctx context.Context, url, name string, epoch ctrl.Epoch) error {
	return callErr(ctx, p, url, "SRv6Gone", func(e *Engine) error { return e.SRv6Gone(ctx, p.caller(), name, epoch) })
}

func (p *fakePeers) Where(ctx context.Context, url, name string) (ctrl.Where, error) {
	return call(ctx, p, url, "Where", func(e *Engine) (ctrl.Where, error) { return e.Where(ctx, p.caller(), name) })
}

func (p *fakePeers) Health(ctx context.Context, url string) (ctrl.Health, error) {
	return call(ctx, p, url, "Health", func(e *Engine) (ctrl.Health, error) { return e.Health(), nil })
}

func (p *fakePeers) Migrate(ctx context.Context, url, name string, req ctrl.MigrateRequest) (ctrl.Migration, error) {
	return call(ctx, p, url, "Migrate", func(e *Engine) (ctrl.Migration, error) { return e.Migrate(ctx, name, req) })
}
