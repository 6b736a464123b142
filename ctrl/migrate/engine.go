// Package migrate is the cluster controller's engine. Its files follow the
// jobs it does:
//
//   - services.go: deploy, list, delete (the user's CRUD);
//   - stages.go: a migration in the paper's five stages (trigger,
//     placement, replication, reroute, verify+commit+drain+cleanup), each
//     journalled and timed in one place (step);
//   - dataplane.go, verify.go, drain.go: programming every node's agent
//     two-phase, checking a new copy answers, waiting for old flows;
//   - foreign.go: what other clusters ask of this one (run a copy for its
//     home, remove it, "moved on", "where is it");
//   - failsafe.go: taking a service home from a lost cluster;
//   - recovery.go: settling what the journal holds as running after a
//     restart;
//   - orphans.go: removing copies left at clusters that were unreachable;
//   - triggers.go: moves the controller starts by itself (zero-touch:
//     network change, better placement), with hysteresis.
package migrate

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"

	"github.com/roamnet/roam/ctrl"
	"github.com/roamnet/roam/ctrl/backend"
	"github.com/roamnet/roam/ctrl/store"
	"github.com/roamnet/roam/dataplane/lb"
	"github.com/roamnet/roam/internal/defaults"
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
	// cluster that cannot be asked now; it stays in the journal and is
	// settled later.
	ErrUnsettled = errors.New("outcome unknown until the home answers")
)

// Config wires the engine.
type Config struct {
	ClusterID string
	// URL is this controller's REST API as peers reach it.
	URL string
	// FrontendAddr is the address users hit at this cluster.
	FrontendAddr netip.Addr
	// Locator is this cluster's SRv6 locator and RedirectMode the
	// default of services whose descriptor names none (srv6.go).
	Locator      netip.Prefix
	RedirectMode lb.Mode
	// SRv6DirectReturn is the default of SRv6 services whose descriptor
	// says nothing of direct return (srv6.go).
	SRv6DirectReturn bool
	Store            *store.Store
	Backend          backend.Backend
	Agents           ctrl.Agents    // nil: no data plane to program
	Placer           ctrl.Placer    // nil: a destination must be given
	Directory        ctrl.Directory // nil: peer URLs only from the records
	// Hellos returns the MO's view (cached hellos) for the policy and the
	// fail-safe; nil means none.
	Hellos        func() []meta.Hello
	Peers         ctrl.Peers
	DrainTimeout  time.Duration // default 10s
	FailsafeAfter time.Duration // default 3s
	ProbeInterval time.Duration // default 500ms
	// CallTimeout bounds every call to a peer, an agent or the backend
	// (default 15s); DeployTimeout a copy's start until it is ready
	// (default 60s).
	CallTimeout, DeployTimeout time.Duration
	// CollectAfter is how long a backend copy or a frontend no record
	// owns is left before it is removed (default 3m).
	CollectAfter time.Duration
	// ForeignCheckAfter is how long a foreign record stays unchanged
	// before this cluster asks its home whether it still wants it
	// (default DrainTimeout+30s).
	ForeignCheckAfter time.Duration
	// PolicyInterval is how often the triggers look at the links
	// (default 5s); PolicyCooldown is the least time between two moves of
	// one service they start (default 30s).
	PolicyInterval, PolicyCooldown time.Duration
	// Tier is this cluster's tier (the triggers rank the home by it).
	Tier string
	// Measured returns the links this cluster measured itself (nil:
	// none; the triggers then read the peers' hellos).
	Measured func() []Measured
	// Trigger tunes the triggers (triggers.go).
	Trigger TriggerConfig
	// Verify checks that a new copy answers at eps before the commit
	// (default: a TCP connect per port, an HTTP GET for the demo
	// service). Tests replace it.
	Verify func(ctx context.Context, d ctrl.Descriptor, eps []netip.AddrPort) error
	// ProbeEndpoint checks, for the fail-safe, whether an abroad copy
	// still answers on the path users take (default: an HTTP GET for the
	// demo service, a TCP connect otherwise). Tests replace it.
	ProbeEndpoint func(ctx context.Context, d ctrl.Descriptor, eps []netip.AddrPort) error
	// TakeBackRate and TakeBackBurst limit the fail-safe's take-backs
	// (default 2 a second, bursts of 10): a wrong verdict cannot pull
	// every service home at once.
	TakeBackRate  float64
	TakeBackBurst int
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
	locks   sync.Map // service name -> chan struct{} (its lock, mutex)
	stageH  *prometheus.HistogramVec
	migs    *prometheus.CounterVec
	probeMu sync.Mutex
	lastOK  map[string]time.Time // cluster -> last successful probe (while something of ours runs there)
	lostSvc map[string]lostCopy  // services the last probe found lost
	// takeBacks limits the fail-safe's take-backs.
	takeBacks *rate.Limiter

	recovering sync.Map // service name -> true until its first reconcile
	notify     func(name string)
	collectMu  sync.Mutex
	unowned    map[string]time.Time // "copy/<name>", "frontend/<f>" -> first seen unowned

	srv6m     *srv6Metrics
	trig      *Trigger
	triggered *prometheus.CounterVec

	// moving holds, for each copy a mover is stopping, the signal its
	// home's "drained" closes (see moveOn).
	movingMu sync.Mutex
	moving   map[movingKey]chan struct{}

	// tails holds, per service, the end of the drain and cleanup of a
	// migration that answered at its commit (tail.go).
	tailsMu sync.Mutex
	tails   map[string]chan struct{}
}

// New builds an engine. The controller marks what it must recover
// (MarkRecovering), serves, and reconciles every key (Keys, Reconcile,
// Collect, Probe, Policy) from its loops.
func New(cfg Config) (*Engine, error) {
	if cfg.ClusterID == "" || cfg.Store == nil || cfg.Backend == nil || cfg.Peers == nil {
		return nil, errors.New("new engine: cluster id, store, backend and peers are required")
	}
	defaults.Positive(&cfg.DrainTimeout, 10*time.Second)
	defaults.Positive(&cfg.FailsafeAfter, 3*time.Second)
	defaults.Positive(&cfg.ProbeInterval, 500*time.Millisecond)
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	defaults.Positive(&cfg.PolicyInterval, 5*time.Second)
	defaults.Positive(&cfg.PolicyCooldown, 30*time.Second)
	defaults.Positive(&cfg.CallTimeout, 15*time.Second)
	defaults.Positive(&cfg.DeployTimeout, 60*time.Second)
	defaults.Positive(&cfg.CollectAfter, 3*time.Minute)
	defaults.Positive(&cfg.ForeignCheckAfter, cfg.DrainTimeout+30*time.Second)
	if cfg.Verify == nil {
		cfg.Verify = verify
	}
	if cfg.ProbeEndpoint == nil {
		cfg.ProbeEndpoint = probeEndpoint
	}
	defaults.Positive(&cfg.TakeBackRate, 2)
	defaults.Positive(&cfg.TakeBackBurst, 10)
	e := &Engine{cfg: cfg, st: cfg.Store, log: cfg.Logger, lastOK: map[string]time.Time{}, lostSvc: map[string]lostCopy{}, moving: map[movingKey]chan struct{}{}, tails: map[string]chan struct{}{},
		takeBacks: rate.NewLimiter(rate.Limit(cfg.TakeBackRate), cfg.TakeBackBurst), unowned: map[string]time.Time{}}
	e.stageH = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "roam_ctrl_migration_stage_seconds",
		Help:    "Duration of each migration stage.",
		Buckets: prometheus.ExponentialBuckets(0.0001, 3, 14),
	}, []string{"stage"})
	e.migs = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "roam_ctrl_migrations_total",
		Help: "Migrations by role and result.",
	}, []string{"role", "result"})
	var err error
	if e.srv6m, err = newSRv6Metrics(cfg.Registerer); err != nil {
		return nil, err
	}
	e.cfg.Trigger.defaults(cfg.PolicyCooldown)
	e.trig = &Trigger{cfg: e.cfg.Trigger, st: map[string]*trigState{}}
	e.triggered = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "roam_ctrl_triggered_total",
		Help: "Moves the controller started by itself, by reason (network-change, better-placement).",
	}, []string{"reason"})
	if cfg.Registerer != nil {
		for _, c := range []prometheus.Collector{e.stageH, e.migs, e.triggered} {
			if err := cfg.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("register engine metrics: %w", err)
			}
		}
	}
	return e, nil
}

// Config is the engine's configuration with its defaults filled in.
func (e *Engine) Config() Config { return e.cfg }

// ClusterID is this cluster's id.
func (e *Engine) ClusterID() string { return e.cfg.ClusterID }

// Incarnation is this controller's store incarnation (see store).
func (e *Engine) Incarnation() string { return e.st.Incarnation() }

// mutex is the service's lock: a channel of one slot, so that a wait for
// it can end with its caller's context.
func (e *Engine) mutex(name string) chan struct{} {
	v, _ := e.locks.LoadOrStore(name, make(chan struct{}, 1))
	return v.(chan struct{})
}

// lock takes the service's lock: every change to a service's record, its
// copies and its frontends happens under it. It also waits for the
// service's tail (a drain and cleanup running behind a migration that
// answered at its commit, tail.go), which does not hold the lock: what
// takes the lock never sees the old copy half removed. For the engine's
// own work (recovery, reconcile, collection), which waits as long as it
// takes; a caller's request takes it with lockCtx.
func (e *Engine) lock(name string) func() {
	unlock, _ := e.lockCtx(context.Background(), name)
	return unlock
}

// lockCtx is lock for a caller's request: it gives up, with ctx's error
// (and holding nothing), when ctx ends first, whether it waits for the
// lock or for the tail of a migration that answered at its commit (a
// second migration asked right after such an answer waits for the first
// one's drain and cleanup, up to the drain timeout).
func (e *Engine) lockCtx(ctx context.Context, name string) (func(), error) {
	mu := e.mutex(name)
	unlock := func() { <-mu }
	for {
		select {
		case mu <- struct{}{}:
		case <-ctx.Done():
			return func() {}, fmt.Errorf("wait for the lock of %s: %w", name, ctx.Err())
		}
		t := e.tail(name)
		if t == nil {
			return unlock, nil
		}
		unlock()
		select {
		case <-t:
		case <-ctx.Done():
			return func() {}, fmt.Errorf("wait for the drain and cleanup of %s's last migration: %w", name, ctx.Err())
		}
	}
}

// lockChange opens a caller's change of service name (what: the error's
// word): refused while recovery has not looked at the service, else under
// its lock (lockCtx). The returned done, to defer even on an error,
// releases the lock and then says the service changed.
func (e *Engine) lockChange(ctx context.Context, name, what string) (done func(), err error) {
	if err := e.recovered(name); err != nil {
		return func() {}, err
	}
	unlock, err := e.lockCtx(ctx, name)
	done = func() {
		unlock()
		e.changed(name)
	}
	if err != nil {
		return done, fmt.Errorf("%s %s: %w", what, name, err)
	}
	return done, nil
}

func newID() string {
	b := make([]byte, 6)
	if _, err := rand.Read(b); err != nil {
		panic(fmt.Sprintf("read random: %v", err)) // crypto/rand never fails on Linux
	}
	return "m-" + time.Now().UTC().Format("20060102T150405") + "-" + hex.EncodeToString(b)
}

// detached is ctx without its cancellation and with a deadline of its own:
// what must finish once started (a cleanup, a roll back) never runs on the
// context of the user's request, which ends when the client goes away.
func detached(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), d)
}

func isNotFound(err error) bool { return errors.Is(err, backend.ErrNotFound) }

// urlOf is the controller URL of cluster: from the directory when it knows
// the cluster, else the URL recorded with it.
func (e *Engine) urlOf(cluster, recorded string) string {
	if cluster == e.cfg.ClusterID {
		return e.cfg.URL
	}
	if e.cfg.Directory != nil {
		if u, ok := e.cfg.Directory.ControllerURL(cluster); ok {
			return u
		}
	}
	return recorded
}
