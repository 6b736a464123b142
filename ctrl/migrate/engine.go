// Package migrate is the cluster controller's engine: it deploys services,
// moves them between clusters in the paper's five stages (trigger,
// placement, replication, reroute, verify+commit+drain+cleanup), journals
// every step so a restarted controller finishes or rolls back, handles the
// multi-hop "moved on" notices, and runs the fail-safe that takes services
// home from a lost cluster.
package migrate

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/roamnet/roam/ctrl"
	"github.com/roamnet/roam/ctrl/backend"
	"github.com/roamnet/roam/ctrl/store"
	"github.com/roamnet/roam/dataplane"
	"github.com/roamnet/roam/meta"
)

// Errors the API maps to status codes.
var (
	ErrNotFound = errors.New("no such service")
	ErrConflict = errors.New("conflict")
	ErrInvalid  = errors.New("invalid request")
	// ErrCrash is returned when the test hook stopped the engine.
	ErrCrash = errors.New("engine stopped by the crash hook")
	// ErrUnsettled is returned when a migration's outcome depends on a
	// cluster that cannot be asked now; it stays in the journal and Run
	// settles it later.
	ErrUnsettled = errors.New("outcome unknown until the home answers")
)

// Config wires the engine.
type Config struct {
	ClusterID string
	// URL is this controller's REST API as peers reach it.
	URL string
	// FrontendAddr is the address users hit at this cluster.
	FrontendAddr netip.Addr
	Store        *store.Store
	Backend      backend.Backend
	Agents       ctrl.Agents    // nil: no data plane to program
	Placer       ctrl.Placer    // nil: a destination must be given
	Directory    ctrl.Directory // nil: destinations need a URL from Placer
	// Hellos returns the MO's view (cached hellos) for the policy and the
	// fail-safe; nil means none.
	Hellos        func() []meta.Hello
	Peers         ctrl.Peers
	DrainTimeout  time.Duration // default 10s
	FailsafeAfter time.Duration // default 3s
	ProbeInterval time.Duration // default 500ms
	// PolicyInterval is how often the bandwidth policy looks at the
	// hellos (default 5s); PolicyCooldown is the least time between two
	// policy moves of one service (default 30s).
	PolicyInterval, PolicyCooldown time.Duration
	// CrashHook, when set, is called after each journal write; a non-nil
	// return stops the migration right there, as a kill -9 would (tests).
	CrashHook  func(m ctrl.Migration) error
	Registerer prometheus.Registerer
	Logger     *slog.Logger
}

// Engine runs a cluster's records and migrations.
type Engine struct {
	cfg     Config
	log     *slog.Logger
	st      *store.Store
	locks   sync.Map // service name -> *sync.Mutex
	stageH  *prometheus.HistogramVec
	migs    *prometheus.CounterVec
	probeMu sync.Mutex
	lastOK  map[string]time.Time // cluster -> last successful probe
}

// New builds an engine; call Recover before serving, then Run.
func New(cfg Config) (*Engine, error) {
	if cfg.ClusterID == "" || cfg.Store == nil || cfg.Backend == nil || cfg.Peers == nil {
		return nil, errors.New("new engine: cluster id, store, backend and peers are required")
	}
	if cfg.DrainTimeout <= 0 {
		cfg.DrainTimeout = 10 * time.Second
	}
	if cfg.FailsafeAfter <= 0 {
		cfg.FailsafeAfter = 3 * time.Second
	}
	if cfg.ProbeInterval <= 0 {
		cfg.ProbeInterval = 500 * time.Millisecond
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.PolicyInterval <= 0 {
		cfg.PolicyInterval = 5 * time.Second
	}
	if cfg.PolicyCooldown <= 0 {
		cfg.PolicyCooldown = 30 * time.Second
	}
	e := &Engine{cfg: cfg, st: cfg.Store, log: cfg.Logger, lastOK: map[string]time.Time{}}
	e.stageH = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "roam_ctrl_migration_stage_seconds",
		Help:    "Duration of each migration stage.",
		Buckets: prometheus.ExponentialBuckets(0.0001, 3, 14),
	}, []string{"stage"})
	e.migs = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "roam_ctrl_migrations_total",
		Help: "Migrations by role and result.",
	}, []string{"role", "result"})
	if cfg.Registerer != nil {
		for _, c := range []prometheus.Collector{e.stageH, e.migs} {
			if err := cfg.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("register engine metrics: %w", err)
			}
		}
	}
	return e, nil
}

// ClusterID is this cluster's id.
func (e *Engine) ClusterID() string { return e.cfg.ClusterID }

func (e *Engine) lock(name string) func() {
	v, _ := e.locks.LoadOrStore(name, &sync.Mutex{})
	mu := v.(*sync.Mutex)
	mu.Lock()
	return mu.Unlock
}

func newID() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return "m-" + time.Now().UTC().Format("20060102T150405") + "-" + hex.EncodeToString(b)
}

func (e *Engine) frontends(d ctrl.Descriptor) []dataplane.Frontend {
	if !e.cfg.FrontendAddr.IsValid() {
		return nil
	}
	fs := make([]dataplane.Frontend, len(d.Ports))
	for i, p := range d.Ports {
		fs[i] = dataplane.Frontend{Addr: e.cfg.FrontendAddr, Port: p.Port, Proto: p.Protocol}
	}
	return fs
}

// program stages t(i) for every frontend, then commits (two-phase on every
// node). On a stage failure everything staged is aborted.
func (e *Engine) program(ctx context.Context, fs []dataplane.Frontend, t func(i int) dataplane.Target) error {
	if e.cfg.Agents == nil || len(fs) == 0 {
		return nil
	}
	gens, err := e.stage(ctx, fs, t)
	if err != nil {
		return err
	}
	return e.commit(ctx, fs, gens)
}

func (e *Engine) stage(ctx context.Context, fs []dataplane.Frontend, t func(i int) dataplane.Target) ([][]uint64, error) {
	if e.cfg.Agents == nil {
		return nil, nil
	}
	gens := make([][]uint64, len(fs))
	for i, f := range fs {
		g, err := e.cfg.Agents.Stage(ctx, f, t(i))
		if err != nil {
			e.abort(ctx, fs[:i])
			return nil, fmt.Errorf("stage %s -> %s: %w", f, t(i), err)
		}
		gens[i] = g
	}
	return gens, nil
}

func (e *Engine) commit(ctx context.Context, fs []dataplane.Frontend, gens [][]uint64) error {
	if e.cfg.Agents == nil {
		return nil
	}
	for i, f := range fs {
		var g []uint64
		if gens != nil {
			g = gens[i]
		}
		if err := e.cfg.Agents.Commit(ctx, f, g); err != nil {
			return fmt.Errorf("commit %s: %w", f, err)
		}
	}
	return nil
}

func (e *Engine) abort(ctx context.Context, fs []dataplane.Frontend) {
	if e.cfg.Agents == nil {
		return
	}
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	for _, f := range fs {
		if err := e.cfg.Agents.Abort(actx, f); err != nil {
			e.log.Warn("abort staged target", "frontend", f, "err", err)
		}
	}
}

func redirectTo(eps []netip.AddrPort) func(int) dataplane.Target {
	return func(i int) dataplane.Target {
		if len(eps) == 0 {
			return dataplane.Local
		}
		return dataplane.Redirect(eps[min(i, len(eps)-1)])
	}
}

// Deploy runs a new service at home and points its frontends at it.
func (e *Engine) Deploy(ctx context.Context, d ctrl.Descriptor) (ctrl.Record, error) {
	if err := d.Validate(); err != nil {
		return ctrl.Record{}, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	defer e.lock(d.Name)()
	if r, err := e.st.Record(d.Name); err == nil {
		return r, fmt.Errorf("deploy %s: %w: already exists (%s)", d.Name, ErrConflict, r.Kind)
	}
	inst, err := e.cfg.Backend.Deploy(ctx, d.Spec(e.cfg.ClusterID, ""))
	if err != nil {
		return ctrl.Record{}, fmt.Errorf("deploy %s: %w", d.Name, err)
	}
	r := ctrl.Record{Service: d, Kind: ctrl.KindLocal, Home: e.cfg.ClusterID, HomeURL: e.cfg.URL,
		Cluster: e.cfg.ClusterID, ClusterURL: e.cfg.URL, Frontends: e.frontends(d), Endpoints: inst.Endpoints}
	if err := e.program(ctx, r.Frontends, redirectTo(nil)); err != nil {
		_ = e.cfg.Backend.Delete(context.WithoutCancel(ctx), d.Name)
		return ctrl.Record{}, fmt.Errorf("deploy %s: program data plane: %w", d.Name, err)
	}
	if err := e.st.PutRecord(r); err != nil {
		return ctrl.Record{}, fmt.Errorf("deploy %s: %w", d.Name, err)
	}
	e.log.Info("deployed", "service", d.Name, "frontends", r.Frontends)
	return r, nil
}

// Get returns a record.
func (e *Engine) Get(name string) (ctrl.Record, error) {
	r, err := e.st.Record(name)
	if errors.Is(err, store.ErrNotFound) {
		return r, fmt.Errorf("get %s: %w", name, ErrNotFound)
	}
	return r, err
}

// List returns every record.
func (e *Engine) List() ([]ctrl.Record, error) { return e.st.Records() }

// Migrations returns the journal, oldest first.
func (e *Engine) Migrations() ([]ctrl.Migration, error) { return e.st.Migrations() }

// Delete removes a service this cluster owns, wherever it runs.
func (e *Engine) Delete(ctx context.Context, name string) error {
	defer e.lock(name)()
	r, err := e.st.Record(name)
	if err != nil {
		return fmt.Errorf("delete %s: %w", name, ErrNotFound)
	}
	switch r.Kind {
	case ctrl.KindForeign:
		return fmt.Errorf("delete %s: %w: a foreign copy (home %s); delete it at its home", name, ErrConflict, r.Home)
	case ctrl.KindAbroad:
		if err := e.cfg.Peers.RemoveForeign(ctx, r.ClusterURL, name, e.cfg.ClusterID, ""); err != nil {
			// Unreachable: remember it and remove it when it returns.
			_ = e.st.PutOrphan(ctrl.Orphan{Service: name, Home: e.cfg.ClusterID, Cluster: r.Cluster, ClusterURL: r.ClusterURL})
			e.log.Warn("remove abroad copy later", "service", name, "cluster", r.Cluster, "err", err)
		}
	default:
		if err := e.cfg.Backend.Delete(ctx, name); err != nil {
			return fmt.Errorf("delete %s: %w", name, err)
		}
	}
	if e.cfg.Agents != nil {
		for _, f := range r.Frontends {
			if err := e.cfg.Agents.Remove(ctx, f); err != nil {
				e.log.Warn("remove frontend", "frontend", f, "err", err)
			}
		}
	}
	return e.st.DeleteRecord(name)
}

// journal writes m before the step named stage, then gives the crash hook
// its chance.
func (e *Engine) journal(m *ctrl.Migration, stage string) error {
	m.Stage = stage
	if err := e.st.PutMigration(*m); err != nil {
		return err
	}
	if e.cfg.CrashHook != nil {
		if err := e.cfg.CrashHook(*m); err != nil {
			return fmt.Errorf("%w: %w", ErrCrash, err)
		}
	}
	return nil
}

// timed runs fn as stage s of m, records its duration and journals first.
func (e *Engine) timed(m *ctrl.Migration, s string, fn func() error) error {
	if err := e.journal(m, s); err != nil {
		return err
	}
	start := time.Now()
	err := fn()
	d := time.Since(start)
	e.stageH.WithLabelValues(s).Observe(d.Seconds())
	m.Stages = append(m.Stages, ctrl.StageTime{Stage: s, Ms: float64(d.Microseconds()) / 1000})
	if err != nil {
		return fmt.Errorf("%s: %w", s, err)
	}
	return nil
}

func (e *Engine) finish(m *ctrl.Migration, err error) (ctrl.Migration, error) {
	if errors.Is(err, ErrCrash) {
		return *m, err
	}
	if errors.Is(err, ErrUnsettled) {
		m.Error = err.Error()
		_ = e.st.PutMigration(*m)
		e.log.Warn("migration unsettled, will retry", "id", m.ID, "service", m.Service, "err", err)
		return *m, err
	}
	m.Finished = time.Now().UTC()
	if err != nil {
		m.State, m.Error = ctrl.StateFailed, err.Error()
		e.migs.WithLabelValues(m.Role, "failed").Inc()
		e.log.Warn("migration failed", "id", m.ID, "service", m.Service, "stage", m.Stage, "err", err)
	} else {
		m.State = ctrl.StateDone
		e.migs.WithLabelValues(m.Role, "done").Inc()
		e.log.Info("migration done", "id", m.ID, "service", m.Service, "from", m.From, "to", m.To, "stages", m.Stages)
	}
	if perr := e.st.PutMigration(*m); perr != nil {
		return *m, errors.Join(err, perr)
	}
	if r, gerr := e.st.Record(m.Service); gerr == nil {
		mc := *m
		r.LastMigration = &mc
		_ = e.st.PutRecord(r)
	}
	return *m, err
}

// place asks the MO (or uses dest) and returns the destination's id and URL.
func (e *Engine) place(ctx context.Context, m *ctrl.Migration, r ctrl.Record, dest string) error {
	if dest != "" {
		if dest == e.cfg.ClusterID {
			m.To, m.ToURL = dest, e.cfg.URL
			return nil
		}
		if dest == r.Home && r.HomeURL != "" {
			m.To, m.ToURL = dest, r.HomeURL
			return nil
		}
		if e.cfg.Directory != nil {
			if u, ok := e.cfg.Directory.ControllerURL(dest); ok {
				m.To, m.ToURL = dest, u
				return nil
			}
		}
		return fmt.Errorf("%w: destination %s: no controller URL known (not in the MO's view)", ErrInvalid, dest)
	}
	if e.cfg.Placer == nil {
		return fmt.Errorf("%w: no destination given and no meta-orchestrator configured", ErrInvalid)
	}
	sd := r.Service.Meta()
	sd.Constraints.ExcludeClusters = append(slices.Clone(sd.Constraints.ExcludeClusters), e.cfg.ClusterID)
	reason := meta.Reason(m.Reason)
	if reason.Validate() != nil {
		reason = meta.ReasonManual
	}
	rep, err := e.cfg.Placer.Place(ctx, meta.PlacementRequest{Version: meta.Version, RequestID: m.ID,
		Requester: e.cfg.ClusterID, Home: r.Home, Service: sd, Reason: reason})
	if err != nil {
		return fmt.Errorf("placement request: %w", err)
	}
	if rep.Destination == nil {
		return fmt.Errorf("no placement: %s", rep.NoPlacement)
	}
	m.To, m.ToURL, m.LocalDecision = rep.Destination.ClusterID, rep.Destination.ControllerURL, rep.Local
	if m.To == r.Home && r.HomeURL != "" {
		m.ToURL = r.HomeURL
	}
	if m.ToURL == "" {
		return fmt.Errorf("placement chose %s without a controller URL", m.To)
	}
	return nil
}

// Migrate moves a service: a local one from here (role home), a foreign one
// on from here (role mover, with a "moved on" notice to its home); a call
// on an abroad one is forwarded to the cluster running it.
func (e *Engine) Migrate(ctx context.Context, name string, req ctrl.MigrateRequest) (ctrl.Migration, error) {
	r, err := e.st.Record(name)
	if err != nil {
		return ctrl.Migration{}, fmt.Errorf("migrate %s: %w", name, ErrNotFound)
	}
	if r.Kind == ctrl.KindAbroad {
		return e.cfg.Peers.Migrate(ctx, r.ClusterURL, name, req)
	}
	if req.Destination == e.cfg.ClusterID {
		return ctrl.Migration{}, fmt.Errorf("migrate %s: %w: it already runs at %s", name, ErrInvalid, req.Destination)
	}
	unlock := e.lock(name)
	defer unlock()
	r, err = e.st.Record(name)
	if err != nil {
		return ctrl.Migration{}, fmt.Errorf("migrate %s: %w", name, ErrNotFound)
	}
	if req.Reason == "" {
		req.Reason = string(meta.ReasonManual)
	}
	m := &ctrl.Migration{ID: newID(), Service: name, Reason: req.Reason, Home: r.Home, HomeURL: r.HomeURL,
		From: e.cfg.ClusterID, FromURL: e.cfg.URL, FromEndpoints: r.Endpoints, State: ctrl.StateRunning, Started: time.Now().UTC()}
	switch r.Kind {
	case ctrl.KindLocal:
		m.Role, m.FromEndpoints = ctrl.RoleHome, nil
	case ctrl.KindForeign:
		m.Role = ctrl.RoleMover
	default:
		return ctrl.Migration{}, fmt.Errorf("migrate %s: %w: kind %s", name, ErrInvalid, r.Kind)
	}
	err = e.run(ctx, m, r, req.Destination)
	return e.finish(m, err)
}

// run performs the five stages of m.
func (e *Engine) run(ctx context.Context, m *ctrl.Migration, r ctrl.Record, dest string) error {
	if err := e.timed(m, ctrl.StageTrigger, func() error { return nil }); err != nil {
		return err
	}
	if err := e.timed(m, ctrl.StagePlacement, func() error { return e.place(ctx, m, r, dest) }); err != nil {
		return err
	}
	if m.To == e.cfg.ClusterID {
		return fmt.Errorf("%w: placement chose this cluster", ErrInvalid)
	}
	err := e.timed(m, ctrl.StageReplication, func() error {
		rep, err := e.cfg.Peers.DeployForeign(ctx, m.ToURL, ctrl.ForeignRequest{Home: r.Home, HomeURL: r.HomeURL, MigrationID: m.ID, Service: r.Service})
		if err != nil {
			return err
		}
		if rep.Home {
			m.ToEndpoints = nil
		} else {
			if len(rep.Endpoints) == 0 {
				return fmt.Errorf("%s reported no endpoint", m.To)
			}
			m.ToEndpoints = rep.Endpoints
		}
		return nil
	})
	if err != nil {
		return e.rollback(ctx, m, err)
	}
	if m.Role == ctrl.RoleMover {
		// The home reroutes (stages 4 and 5 there), then we clean up.
		err = e.timed(m, ctrl.StageReroute, func() error {
			_, err := e.cfg.Peers.MovedOn(ctx, m.HomeURL, ctrl.MovedOn{Service: m.Service, MigrationID: m.ID,
				From: e.cfg.ClusterID, To: m.To, ToURL: m.ToURL, Endpoints: m.ToEndpoints})
			return err
		})
		if errors.Is(err, ErrCrash) {
			return err
		}
		if err != nil {
			// Did the home commit before the error reached us? If it
			// cannot say, removing the new copy could leave its LB
			// pointing at nothing: keep both copies until it answers.
			w, werr := e.cfg.Peers.Where(ctx, m.HomeURL, m.Service)
			if werr != nil {
				return fmt.Errorf("%w: %w (and ask home: %w)", ErrUnsettled, err, werr)
			}
			if w.Cluster != m.To {
				return e.rollback(ctx, m, err)
			}
		}
		return e.cleanupForeign(ctx, m)
	}
	return e.rerouteHome(ctx, m, r)
}

// rerouteHome is stages 4 and 5 at the home cluster: stage the new target,
// verify the new copy, commit, record, drain the old target, clean up.
func (e *Engine) rerouteHome(ctx context.Context, m *ctrl.Migration, r ctrl.Record) error {
	fs := r.Frontends
	var gens [][]uint64
	err := e.timed(m, ctrl.StageReroute, func() error {
		var err error
		gens, err = e.stage(ctx, fs, redirectTo(m.ToEndpoints))
		return err
	})
	if err != nil {
		return e.rollback(ctx, m, err)
	}
	err = e.timed(m, ctrl.StageVerify, func() error { return verify(ctx, r.Service, m.ToEndpoints, e.localEndpoints(r)) })
	if err != nil {
		e.abort(ctx, fs)
		return e.rollback(ctx, m, err)
	}
	err = e.timed(m, ctrl.StageCommit, func() error {
		if err := e.commit(ctx, fs, gens); err != nil {
			return err
		}
		return e.recordMoved(m, r)
	})
	if err != nil {
		if errors.Is(err, ErrCrash) {
			return err
		}
		// A commit that failed on some node cannot be undone there:
		// restore the old target everywhere.
		oldT := redirectTo(m.FromEndpoints)
		if m.From == e.cfg.ClusterID {
			oldT = redirectTo(nil)
		}
		if perr := e.program(context.WithoutCancel(ctx), fs, oldT); perr != nil {
			e.log.Error("restore old target after failed commit", "service", m.Service, "err", perr)
		}
		return e.rollback(ctx, m, err)
	}
	err = e.timed(m, ctrl.StageDrain, func() error {
		old := redirectTo(m.FromEndpoints)
		if len(m.FromEndpoints) == 0 || m.From == e.cfg.ClusterID {
			old = redirectTo(nil)
		}
		m.DrainedFlows = e.drain(ctx, fs, old)
		return nil
	})
	if err != nil {
		return err
	}
	if m.Role == ctrl.RoleReroute {
		return nil // the mover cleans up its own copy
	}
	return e.timed(m, ctrl.StageCleanup, func() error {
		if m.From == e.cfg.ClusterID {
			return e.cfg.Backend.Delete(ctx, m.Service)
		}
		return e.cfg.Peers.RemoveForeign(ctx, m.FromURL, m.Service, e.cfg.ClusterID, "")
	})
}

func (e *Engine) localEndpoints(r ctrl.Record) []netip.AddrPort {
	if inst, err := e.cfg.Backend.Get(context.Background(), r.Service.Name); err == nil {
		return inst.Endpoints
	}
	return nil
}

// recordMoved writes the home record after a commit.
func (e *Engine) recordMoved(m *ctrl.Migration, r ctrl.Record) error {
	if m.To == e.cfg.ClusterID {
		r.Kind, r.Cluster, r.ClusterURL, r.Endpoints = ctrl.KindLocal, e.cfg.ClusterID, e.cfg.URL, e.localEndpoints(r)
	} else {
		r.Kind, r.Cluster, r.ClusterURL, r.Endpoints = ctrl.KindAbroad, m.To, m.ToURL, m.ToEndpoints
	}
	r.MigrationID = m.ID
	return e.st.PutRecord(r)
}

// cleanupForeign is the mover's last stage: drop its own copy and record.
func (e *Engine) cleanupForeign(ctx context.Context, m *ctrl.Migration) error {
	return e.timed(m, ctrl.StageCleanup, func() error {
		if err := e.cfg.Backend.Delete(ctx, m.Service); err != nil {
			return err
		}
		return e.st.DeleteRecord(m.Service)
	})
}

// rollback undoes what a migration did before its commit: the copy at the
// destination goes, nothing staged stays.
func (e *Engine) rollback(ctx context.Context, m *ctrl.Migration, cause error) error {
	if errors.Is(cause, ErrCrash) {
		return cause
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 15*time.Second)
	defer cancel()
	if m.ToURL != "" && m.To != "" && m.Stage != ctrl.StagePlacement && m.Stage != ctrl.StageTrigger {
		if err := e.cfg.Peers.RemoveForeign(rctx, m.ToURL, m.Service, m.Home, m.ID); err != nil {
			e.log.Warn("roll back: remove new copy, will retry", "service", m.Service, "cluster", m.To, "err", err)
			_ = e.st.PutOrphan(ctrl.Orphan{Service: m.Service, Home: m.Home, Cluster: m.To, ClusterURL: m.ToURL, MigrationID: m.ID})
		}
	}
	return cause
}

// verify checks that the new copy answers through its endpoints (TCP
// connect; an HTTP GET for the demo service).
func verify(ctx context.Context, d ctrl.Descriptor, eps, local []netip.AddrPort) error {
	if len(eps) == 0 {
		eps = local
	}
	for i, p := range d.Ports {
		if p.Protocol != dataplane.TCP || i >= len(eps) {
			continue
		}
		addr := eps[i].String()
		if d.Demo {
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/", nil)
			c := http.Client{Timeout: 3 * time.Second}
			resp, err := c.Do(req)
			if err != nil {
				return fmt.Errorf("verify %s: %w", addr, err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				return fmt.Errorf("verify %s: status %d", addr, resp.StatusCode)
			}
			continue
		}
		dl := net.Dialer{Timeout: 3 * time.Second}
		c, err := dl.DialContext(ctx, "tcp", addr)
		if err != nil {
			return fmt.Errorf("verify %s: %w", addr, err)
		}
		c.Close()
	}
	return nil
}

// drain waits until no live flow uses old on any frontend, or the drain
// timeout; it returns the flows left.
func (e *Engine) drain(ctx context.Context, fs []dataplane.Frontend, old func(int) dataplane.Target) int {
	if e.cfg.Agents == nil {
		return 0
	}
	deadline := time.Now().Add(e.cfg.DrainTimeout)
	for {
		left := 0
		for i, f := range fs {
			n, err := e.cfg.Agents.Flows(ctx, f, old(i))
			if err != nil {
				e.log.Warn("count flows", "frontend", f, "err", err)
				n = 0
			}
			left += n
		}
		if left == 0 || time.Now().After(deadline) || ctx.Err() != nil {
			return left
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// DeployForeign runs a copy for another cluster (or, when the request names
// this cluster as home, brings its own service back).
func (e *Engine) DeployForeign(ctx context.Context, req ctrl.ForeignRequest) (ctrl.ForeignReply, error) {
	if err := req.Service.Validate(); err != nil {
		return ctrl.ForeignReply{}, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if err := meta.ValidateClusterID(req.Home); err != nil {
		return ctrl.ForeignReply{}, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	name := req.Service.Name
	if req.Home == e.cfg.ClusterID {
		// Coming home: start the copy; the record changes at the commit
		// (the "moved on" notice).
		inst, err := e.cfg.Backend.Deploy(ctx, req.Service.Spec(e.cfg.ClusterID, req.MigrationID))
		if err != nil {
			return ctrl.ForeignReply{}, fmt.Errorf("deploy %s at home: %w", name, err)
		}
		_ = inst
		return ctrl.ForeignReply{Cluster: e.cfg.ClusterID, Home: true}, nil
	}
	defer e.lock(name)()
	if r, err := e.st.Record(name); err == nil && !(r.Kind == ctrl.KindForeign && r.Home == req.Home) {
		return ctrl.ForeignReply{}, fmt.Errorf("deploy foreign %s: %w: a %s service of that name runs here", name, ErrConflict, r.Kind)
	}
	r := ctrl.Record{Service: req.Service, Kind: ctrl.KindForeign, Home: req.Home, HomeURL: req.HomeURL,
		Cluster: e.cfg.ClusterID, ClusterURL: e.cfg.URL, MigrationID: req.MigrationID}
	// Record first: a crash after the deploy must not leave an unknown copy.
	if err := e.st.PutRecord(r); err != nil {
		return ctrl.ForeignReply{}, err
	}
	inst, err := e.cfg.Backend.Deploy(ctx, req.Service.Spec(req.Home, req.MigrationID))
	if err != nil {
		_ = e.st.DeleteRecord(name)
		return ctrl.ForeignReply{}, fmt.Errorf("deploy foreign %s: %w", name, err)
	}
	r.Endpoints = inst.Endpoints
	if err := e.st.PutRecord(r); err != nil {
		return ctrl.ForeignReply{}, err
	}
	e.log.Info("deployed foreign", "service", name, "home", req.Home, "endpoints", inst.Endpoints)
	return ctrl.ForeignReply{Cluster: e.cfg.ClusterID, Endpoints: inst.Endpoints}, nil
}

// RemoveForeign drops a foreign copy (home must match; a non-empty
// migration id must match the one that made the copy).
func (e *Engine) RemoveForeign(ctx context.Context, name, home, migrationID string) error {
	defer e.lock(name)()
	r, err := e.st.Record(name)
	if home == e.cfg.ClusterID {
		// Our own service: drop a copy started for a move home that did
		// not commit.
		if err == nil && r.Kind == ctrl.KindLocal {
			return nil
		}
		return e.cfg.Backend.Delete(ctx, name)
	}
	if err != nil {
		return e.cfg.Backend.Delete(ctx, name) // nothing recorded: make sure nothing runs
	}
	if r.Kind != ctrl.KindForeign || r.Home != home {
		return fmt.Errorf("remove foreign %s: %w: it is %s (home %s)", name, ErrConflict, r.Kind, r.Home)
	}
	if migrationID != "" && r.MigrationID != migrationID {
		return nil // a newer copy: not the one asked about
	}
	if err := e.cfg.Backend.Delete(ctx, name); err != nil {
		return fmt.Errorf("remove foreign %s: %w", name, err)
	}
	e.log.Info("removed foreign", "service", name, "home", home)
	return e.st.DeleteRecord(name)
}

// MovedOn reroutes the home's load balancer to where an abroad cluster moved
// the service (stages 4 and 5 at home).
func (e *Engine) MovedOn(ctx context.Context, n ctrl.MovedOn) (ctrl.Migration, error) {
	defer e.lock(n.Service)()
	r, err := e.st.Record(n.Service)
	if err != nil {
		return ctrl.Migration{}, fmt.Errorf("moved on %s: %w", n.Service, ErrNotFound)
	}
	if r.Kind != ctrl.KindAbroad || r.Cluster != n.From {
		return ctrl.Migration{}, fmt.Errorf("moved on %s: %w: it is %s at %s, not at %s", n.Service, ErrConflict, r.Kind, r.Cluster, n.From)
	}
	if n.To != e.cfg.ClusterID && len(n.Endpoints) == 0 {
		return ctrl.Migration{}, fmt.Errorf("moved on %s: %w: no endpoints", n.Service, ErrInvalid)
	}
	m := &ctrl.Migration{ID: n.MigrationID, Service: n.Service, Role: ctrl.RoleReroute, Reason: "moved-on",
		Home: e.cfg.ClusterID, HomeURL: e.cfg.URL, From: n.From, FromURL: r.ClusterURL, FromEndpoints: r.Endpoints,
		To: n.To, ToURL: n.ToURL, ToEndpoints: n.Endpoints, State: ctrl.StateRunning, Started: time.Now().UTC()}
	if n.To == e.cfg.ClusterID {
		m.ToEndpoints = nil
	}
	err = e.rerouteHome(ctx, m, r)
	return e.finish(m, err)
}

// Where answers a foreign copy's question: where does its home run it?
// While a migration of the service is in flight here the answer is not
// known yet: it returns an error wrapping ErrUnsettled (ask again).
func (e *Engine) Where(name string) (ctrl.Where, error) {
	inflight, err := e.st.InFlight()
	if err != nil {
		return ctrl.Where{}, err
	}
	for _, m := range inflight {
		if m.Service == name {
			return ctrl.Where{}, fmt.Errorf("where %s: migration %s at stage %s: %w", name, m.ID, m.Stage, ErrUnsettled)
		}
	}
	r, err := e.st.Record(name)
	if err != nil || r.Kind == ctrl.KindForeign {
		return ctrl.Where{Home: e.cfg.ClusterID}, nil
	}
	return ctrl.Where{Home: e.cfg.ClusterID, Kind: r.Kind, Cluster: r.Cluster, Known: true}, nil
}
