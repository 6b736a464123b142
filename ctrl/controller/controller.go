// Package controller wires one cluster controller together: store, backend,
// agents, meta-orchestrator client, migration engine, REST API and the hello
// loop. cmd/roam-ctrl parses flags into a Config; tests build controllers
// in-process with the same code.
package controller

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/roamnet/roam/ctrl"
	"github.com/roamnet/roam/ctrl/api"
	"github.com/roamnet/roam/ctrl/backend"
	"github.com/roamnet/roam/ctrl/migrate"
	"github.com/roamnet/roam/ctrl/netprobe"
	"github.com/roamnet/roam/ctrl/pki"
	"github.com/roamnet/roam/ctrl/store"
	"github.com/roamnet/roam/dataplane/agentapi"
	"github.com/roamnet/roam/dataplane/lb"
	"github.com/roamnet/roam/internal/defaults"
	"github.com/roamnet/roam/meta"
)

// Config is what roam-ctrl's flags say.
type Config struct {
	ClusterID    string
	Tier         string
	Labels       map[string]string
	APIAddr      string // listen address of the REST API
	AdvertiseURL string // how peers reach the API (default from APIAddr)
	NATSURL      string
	NATSUser     string // default: the cluster id when a password is set
	NATSPassword string
	// NATSTLSCA is the CA (PEM file) that signed the MO's NATS certificate:
	// set, the connection requires TLS. NATSTLSCert/Key are this
	// cluster's client pair, for an MO that asks for client certificates.
	NATSTLSCA, NATSTLSCert, NATSTLSKey string
	Agents                             []string // agent API URLs (https: mutual TLS with TLS's identity)
	// AgentToken is the bearer token of plain-HTTP agents (in-process
	// tests on loopback only; deployed agents use TLS).
	AgentToken   string
	FrontendAddr netip.Addr
	DataAddr     netip.Addr
	// Locator is the cluster's SRv6 locator, announced in its hellos
	// (unset: no SRv6 path mode here); RedirectMode the default of
	// services whose descriptor names none (default nat).
	Locator      netip.Prefix
	RedirectMode lb.Mode
	// SRv6DirectReturn: SRv6 services whose descriptor says nothing
	// answer their clients directly from abroad (default off).
	SRv6DirectReturn bool
	StorePath        string
	HelloInterval    time.Duration
	FailsafeAfter    time.Duration
	DrainTimeout     time.Duration
	// TLS is this cluster's identity (ctrl/pki): the API is served over
	// TLS with it, peers are called and verified with it, agents at https
	// URLs too. Nil: plain HTTP, and no peer call is made or accepted.
	TLS *pki.Source
	// Users are the API's users with their roles (nil: user routes refused).
	Users *api.Users
	// AllowCommand lets users deploy services given as a command line.
	AllowCommand bool
	// AllowLoopbackEndpoints admits peers' endpoints on loopback or
	// link-local addresses (in-process tests, where clusters share lo).
	AllowLoopbackEndpoints bool
	// Peers is a static directory id -> controller URL (used besides the
	// MO's view).
	Peers map[string]string
	// Backend runs the copies (built by the caller: local or kubernetes).
	Backend backend.Backend
	// Listener, when set, is used instead of listening on APIAddr.
	Listener net.Listener
	// LinksFile, when set, is a JSON list of meta.Link read at every
	// hello: it overrides what the prober measured toward those peers.
	LinksFile string
	// ProbeAddr, when set, is where this controller answers its peers'
	// probes and from where it probes them (ctrl/netprobe): RTT, loss and
	// available bandwidth, reported in the hellos and as metrics, and
	// read by the triggers. Empty: nothing is measured.
	ProbeAddr string
	// Probe tunes the prober (its Targets, OnChange, Registerer and
	// Logger are the controller's).
	Probe netprobe.Config
	// PolicyInterval and PolicyCooldown tune the triggers (see
	// migrate.Config); Trigger the rest of them.
	PolicyInterval, PolicyCooldown time.Duration
	Trigger                        migrate.TriggerConfig
	// Resync is how often every service is reconciled even when nothing
	// happened (default 10s); Workers how many are reconciled at once
	// (default 4); CollectAfter how long a copy or frontend no record owns
	// is left before it is removed (default 3m).
	Resync       time.Duration
	Workers      int
	CollectAfter time.Duration
	// ReadTimeout bounds how long the API waits for a request, its body
	// included (default 30s): a slow client holds a goroutine no longer.
	ReadTimeout time.Duration
	CrashHook   func(ctrl.Migration) error
	Logger      *slog.Logger
}

// Controller is one running controller.
type Controller struct {
	cfg    Config
	log    *slog.Logger
	st     *store.Store
	nc     *nats.Conn
	mc     *meta.Client
	Engine *migrate.Engine
	API    *api.Server
	ln     net.Listener
	srv    *http.Server
	reg    *prometheus.Registry
	url    string
	probeS *netprobe.Server
	prober *netprobe.Prober
	probeA string        // advertised probe address
	kick   chan struct{} // publish a hello now
	dir    directory
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// directory resolves cluster ids from the static list, then the MO's view
// (api.Directory: the only source of peer URLs), or, until the view is
// loaded after a restart, the directory saved before it (directory.go).
type directory struct {
	static map[string]string
	known  *lastKnown // nil without an MO
}

var _ api.Directory = directory{}

func (d directory) hellos() []meta.Hello {
	if d.known == nil {
		return nil
	}
	return d.known.hellos()
}

// ClustersAt lists the clusters the directory has at url.
func (d directory) ClustersAt(url string) []string {
	url = strings.TrimRight(url, "/")
	var out []string
	for id, u := range d.static {
		if strings.TrimRight(u, "/") == url {
			out = append(out, id)
		}
	}
	for _, h := range d.hellos() {
		if h.ControllerURL != "" && strings.TrimRight(h.ControllerURL, "/") == url && !slices.Contains(out, h.ClusterID) {
			if _, static := d.static[h.ClusterID]; !static {
				out = append(out, h.ClusterID)
			}
		}
	}
	slices.Sort(out)
	return out
}

// DataAddrs are the addresses a cluster's hello declares.
func (d directory) DataAddrs(id string) ([]netip.Addr, bool) {
	for _, h := range d.hellos() {
		if h.ClusterID == id {
			return h.DataAddrs, len(h.DataAddrs) > 0
		}
	}
	return nil, false
}

// size is how many clusters the directory has a controller URL for.
func (d directory) size() int {
	n := len(d.static)
	for _, h := range d.hellos() {
		if _, static := d.static[h.ClusterID]; !static && h.ControllerURL != "" {
			n++
		}
	}
	return n
}

func (d directory) ControllerURL(id string) (string, bool) {
	if u, ok := d.static[id]; ok {
		return u, true
	}
	for _, h := range d.hellos() {
		if h.ClusterID == id && h.ControllerURL != "" {
			return h.ControllerURL, true
		}
	}
	return "", false
}

// state is the directory's readiness (static without an MO) and the
// clusters it lists.
func (d directory) state() DirectoryState {
	st := DirectoryState{State: DirectoryStatic}
	if d.known != nil {
		st = d.known.state()
	}
	for id := range d.static {
		st.Clusters = append(st.Clusters, id)
	}
	for _, h := range d.hellos() {
		if _, static := d.static[h.ClusterID]; !static && h.ControllerURL != "" {
			st.Clusters = append(st.Clusters, h.ClusterID)
		}
	}
	slices.Sort(st.Clusters)
	return st
}

// New opens the store, connects to NATS (when configured), starts serving
// and starts the reconcilers, which recover what the journal and the
// records say (calls about a service not recovered yet get 503 with
// Retry-After). Close stops it.
func New(ctx context.Context, cfg Config) (_ *Controller, err error) {
	if err := meta.ValidateClusterID(cfg.ClusterID); err != nil {
		return nil, fmt.Errorf("new controller: %w", err)
	}
	if cfg.Backend == nil {
		return nil, errors.New("new controller: a backend is required")
	}
	if cfg.Locator.IsValid() {
		if err := lb.ValidateLocator(cfg.Locator); err != nil {
			return nil, fmt.Errorf("new controller: %w", err)
		}
	}
	if _, err := lb.ParseMode(string(cfg.RedirectMode)); err != nil {
		return nil, fmt.Errorf("new controller: %w", err)
	}
	if cfg.RedirectMode == lb.ModeSRv6 && !cfg.Locator.IsValid() {
		return nil, errors.New("new controller: redirect mode srv6 needs the cluster's locator (--srv6-locator)")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	defaults.Positive(&cfg.HelloInterval, time.Second)
	if cfg.Tier == "" {
		cfg.Tier = meta.TierEdge
	}
	defaults.Positive(&cfg.Resync, 10*time.Second)
	defaults.Positive(&cfg.Workers, 4)
	c := &Controller{cfg: cfg, log: cfg.Logger.With("cluster", cfg.ClusterID), reg: prometheus.NewRegistry(), kick: make(chan struct{}, 1)}
	defer func() {
		if err != nil {
			c.Close()
		}
	}()
	c.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	c.ln = cfg.Listener
	if c.ln == nil {
		if c.ln, err = net.Listen("tcp", cfg.APIAddr); err != nil {
			return nil, fmt.Errorf("listen api %s: %w", cfg.APIAddr, err)
		}
	}
	c.url = cfg.AdvertiseURL
	if c.url == "" {
		scheme := "https://"
		if cfg.TLS == nil {
			scheme = "http://"
		}
		c.url = scheme + cfg.advertised(c.ln.Addr()).String()
	}
	if cfg.ProbeAddr != "" {
		if c.probeS, err = netprobe.NewServer(netprobe.ServerConfig{Addr: cfg.ProbeAddr, Registerer: c.reg, Logger: c.log}); err != nil {
			return nil, err
		}
		c.probeA = cfg.advertised(c.probeS.Addr()).String()
	}
	path := cfg.StorePath
	if path == "" {
		path = "roam-ctrl-" + cfg.ClusterID + ".db"
	}
	if c.st, err = store.Open(path); err != nil {
		return nil, err
	}
	if cfg.NATSURL != "" {
		opts := meta.ClusterConnectOptions(cfg.ClusterID, cfg.NATSPassword)
		if cfg.NATSUser != "" && cfg.NATSUser != cfg.ClusterID {
			opts = append(opts, nats.UserInfo(cfg.NATSUser, cfg.NATSPassword))
		}
		tlsOpts, err := meta.NATSTLSOptions(cfg.NATSTLSCA, cfg.NATSTLSCert, cfg.NATSTLSKey)
		if err != nil {
			return nil, err
		}
		opts = append(opts, tlsOpts...)
		opts = append(opts, nats.MaxReconnects(-1), nats.ReconnectWait(250*time.Millisecond), nats.RetryOnFailedConnect(true))
		if c.nc, err = nats.Connect(cfg.NATSURL, opts...); err != nil {
			return nil, fmt.Errorf("connect nats %s: %w", cfg.NATSURL, err)
		}
		if c.mc, err = meta.NewClient(c.nc, cfg.ClusterID, meta.WithLogger(c.log), // The cache is the fallback when the MO is gone: its hellos
			// stop with it, so keep them usable for 30 intervals.
			meta.WithLiveness(30*cfg.HelloInterval, 3),
			meta.WithTimeout(max(cfg.HelloInterval, 500*time.Millisecond)), meta.WithRetries(1)); err != nil {
			return nil, err
		}
	}
	dir := directory{static: cfg.Peers}
	if c.mc != nil {
		if dir.known, err = newLastKnown(c.mc, c.st); err != nil {
			return nil, err
		}
	}
	c.dir = dir
	// The MO writes its compact view of the hellos periodically (a write
	// it has not had acknowledged waits for the next one) and this
	// controller follows it, so a cluster the MO has heard is not at once
	// in this directory: until it is, its peer calls here are refused
	// (unknown_cluster) and a migration toward it is invalid. /readyz
	// says whether the view is loaded (directory.go).
	c.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "roam_ctrl_directory_clusters",
		Help: "Clusters this controller has a controller URL for (configured peers and the MO's view as it holds it, itself included)."},
		func() float64 { return float64(dir.size()) }))
	c.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "roam_ctrl_directory_synced",
		Help: "1 when the directory is the MO's view as loaded since start (or there is no MO), 0 while it is the one saved before a restart, or none."},
		func() float64 {
			if st := dir.state().State; st == DirectorySynced || st == DirectoryStatic {
				return 1
			}
			return 0
		}))
	peers := api.NewPeerClient(cfg.ClusterID, cfg.TLS, dir)
	peers.Endpoints.AllowLoopback = cfg.AllowLoopbackEndpoints
	ecfg := migrate.Config{ClusterID: cfg.ClusterID, URL: c.url, FrontendAddr: cfg.FrontendAddr, Locator: cfg.Locator, RedirectMode: cfg.RedirectMode, SRv6DirectReturn: cfg.SRv6DirectReturn, Store: c.st,
		Backend: cfg.Backend, Directory: dir, Peers: peers,
		DrainTimeout: cfg.DrainTimeout, FailsafeAfter: cfg.FailsafeAfter, ProbeInterval: min(cfg.HelloInterval, 500*time.Millisecond),
		PolicyInterval: cfg.PolicyInterval, PolicyCooldown: cfg.PolicyCooldown, CollectAfter: cfg.CollectAfter,
		Tier: cfg.Tier, Trigger: cfg.Trigger, Measured: c.measured,
		CrashHook: cfg.CrashHook, Registerer: c.reg, Logger: c.log}
	if len(cfg.Agents) > 0 {
		g := make(agentapi.Group, len(cfg.Agents))
		for i, u := range cfg.Agents {
			if strings.HasPrefix(u, "https://") {
				if cfg.TLS == nil {
					return nil, fmt.Errorf("new controller: agent %s: https needs the cluster's identity (--tls-dir)", u)
				}
				g[i] = agentapi.NewTLS(u, cfg.TLS.ClientConfig(pki.ExpectNodeOf(cfg.ClusterID)))
			} else {
				g[i] = agentapi.New(u, cfg.AgentToken)
			}
		}
		ecfg.Agents = g
	}
	if c.mc != nil {
		ecfg.Placer = c.mc
		mc := c.mc
		ecfg.Hellos = func() []meta.Hello {
			var out []meta.Hello
			for _, s := range mc.ClusterStates() {
				if s.State != "down" {
					out = append(out, s.Hello)
				}
			}
			return out
		}
	}
	if c.Engine, err = migrate.New(ecfg); err != nil {
		return nil, err
	}
	// What the journal and the records hold is recovered by the
	// reconcilers while the API serves.
	keys, err := c.Engine.MarkRecovering()
	if err != nil {
		return nil, err
	}
	ecfg = c.Engine.Config()
	rec := newReconciler(c.Engine, c.log, cfg.Workers, cfg.Resync, ecfg.ProbeInterval, max(ecfg.CollectAfter/6, time.Second),
		ecfg.PolicyInterval, 2*ecfg.DeployTimeout+ecfg.DrainTimeout)
	if c.API, err = api.NewServer(api.Config{Engine: c.Engine, Users: cfg.Users, TLS: cfg.TLS, Peers: peers,
		AllowCommand: cfg.AllowCommand, Ready: c.ready, Gatherer: c.reg, Registerer: c.reg, Logger: c.log}); err != nil {
		return nil, err
	}
	// Every route's body is bounded (api.MaxBody); a slow client holds a
	// goroutine at most ReadTimeout. WriteTimeout outlasts the longest
	// call (a migration: two deploys and a drain).
	readTimeout := cfg.ReadTimeout
	if readTimeout <= 0 {
		readTimeout = 30 * time.Second
	}
	c.srv = &http.Server{Handler: c.API.Handler(), ReadHeaderTimeout: min(10*time.Second, readTimeout), ReadTimeout: readTimeout,
		WriteTimeout: 2*ecfg.DeployTimeout + ecfg.DrainTimeout + time.Minute, IdleTimeout: 2 * time.Minute,
		MaxHeaderBytes: 64 << 10, ErrorLog: slog.NewLogLogger(c.log.Handler(), slog.LevelDebug)}
	if cfg.TLS != nil {
		c.srv.TLSConfig = cfg.TLS.ServerConfig()
		c.ln = tls.NewListener(c.ln, c.srv.TLSConfig)
	}
	rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	c.cancel = cancel
	if c.probeS != nil {
		pc := cfg.Probe
		pc.Targets, pc.Registerer, pc.Logger, pc.Server = c.probeTargets, c.reg, c.log, c.probeS
		pc.OnChange = func(string) {
			select {
			case c.kick <- struct{}{}:
			default:
			}
		}
		if c.prober, err = netprobe.New(pc); err != nil {
			cancel()
			return nil, err
		}
		c.wg.Go(func() {
			if err := c.prober.Run(rctx); err != nil {
				c.log.Error("prober", "err", err)
			}
		})
	}
	c.wg.Add(3)
	go func() {
		defer c.wg.Done()
		if err := c.srv.Serve(c.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			c.log.Error("serve api", "err", err)
		}
	}()
	go func() { defer c.wg.Done(); rec.run(rctx, keys) }()
	go func() { defer c.wg.Done(); c.helloLoop(rctx) }()
	if dir.known != nil {
		c.wg.Go(func() { dir.known.run(rctx, cfg.HelloInterval, c.log) })
	}
	c.log.Info("controller up", "api", c.url, "recovering", len(keys), "frontend", cfg.FrontendAddr, "data", cfg.DataAddr, "agents", len(cfg.Agents), "mo", cfg.NATSURL != "")
	return c, nil
}

// URL is the controller's advertised API URL.
func (c *Controller) URL() string { return c.url }

// Clusters is the meta client's cached view of the hellos (nil without an
// MO).
func (c *Controller) Clusters() []meta.ClusterStatus {
	if c.mc == nil {
		return nil
	}
	return c.mc.ClusterStates()
}

// Directory says whether the peer directory is the MO's view (synced),
// the one saved before a restart (stale), none yet (loading), or the
// configured peers alone (static).
func (c *Controller) Directory() DirectoryState { return c.dir.state() }

// ready is /readyz: ready once the directory can recognise the peers,
// from the MO's view or from the one saved before a restart.
func (c *Controller) ready() (bool, any) {
	st := c.dir.state()
	return st.State != DirectoryLoading, map[string]any{"directory": st}
}

// Registry is the controller's metrics registry.
func (c *Controller) Registry() *prometheus.Registry { return c.reg }

// Hello builds the hello this controller publishes.
func (c *Controller) Hello(ctx context.Context) (meta.Hello, error) {
	capy, err := c.cfg.Backend.Capacity(ctx)
	if err != nil {
		return meta.Hello{}, fmt.Errorf("read capacity: %w", err)
	}
	recs, err := c.Engine.List()
	if err != nil {
		return meta.Hello{}, err
	}
	h := meta.Hello{ClusterID: c.cfg.ClusterID, Tier: c.cfg.Tier, Labels: c.cfg.Labels, ControllerURL: c.url,
		Capacity: meta.Capacity{MilliCPU: capy.MilliCPU, MemoryMB: capy.MemoryMB, Pods: capy.Pods,
			UsedMilliCPU: capy.UsedMilliCPU, UsedMemoryMB: capy.UsedMemoryMB, UsedPods: capy.UsedPods},
		// No IntervalMs: the MO judges liveness by its own interval, and
		// our cached view (the fallback without the MO) by a lenient one.
		Services: len(recs)}
	// Placements taken in lately: our figures show them now, so the MO
	// ends their reservations (the placement id is the migration's).
	for _, r := range recs {
		if r.Kind == ctrl.KindForeign && r.Epoch.MigrationID != "" && time.Since(r.Updated) < placedWindow && len(h.Placed) < meta.MaxPlaced {
			h.Placed = append(h.Placed, r.Epoch.MigrationID)
		}
	}
	if c.cfg.DataAddr.IsValid() {
		h.DataAddrs = []netip.Addr{c.cfg.DataAddr}
	}
	h.ProbeAddr = c.probeA
	h.Locator = c.cfg.Locator
	ms, err := c.links()
	for _, m := range ms {
		h.Links = append(h.Links, m.Link)
	}
	return h, err
}

// links is what this cluster knows of its paths: the prober's
// measurements, overridden peer by peer by --links-file (whose entries
// carry no time: every look counts as a measurement).
func (c *Controller) links() ([]migrate.Measured, error) {
	var out []migrate.Measured
	if c.prober != nil {
		for _, l := range c.prober.Links() {
			// A measurement is fresh when its bandwidth is (echoes come
			// every 250 ms and must not confirm one low figure).
			at := l.At
			if l.BandwidthN > 0 {
				at = l.BandwidthAt
			}
			out = append(out, migrate.Measured{Link: l.Meta(), At: at})
		}
	}
	if c.cfg.LinksFile == "" {
		return out, nil
	}
	b, err := os.ReadFile(c.cfg.LinksFile)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return out, fmt.Errorf("read links: %w", err)
	}
	if len(b) == 0 {
		return out, nil
	}
	var over []meta.Link
	if err := json.Unmarshal(b, &over); err != nil {
		return out, fmt.Errorf("read links %s: %w", c.cfg.LinksFile, err)
	}
	for _, l := range over {
		if err := l.Validate(); err != nil {
			return out, fmt.Errorf("read links %s: %w", c.cfg.LinksFile, err)
		}
		out = slices.DeleteFunc(out, func(m migrate.Measured) bool { return m.Peer == l.Peer })
		out = append(out, migrate.Measured{Link: l})
	}
	return out, nil
}

// advertised is the address peers reach a listener of this controller
// at: its own, or, when it listens on every address, the cluster's data
// address, else its frontend address, else loopback.
func (cfg *Config) advertised(a net.Addr) netip.AddrPort {
	ap := netip.MustParseAddrPort(a.String())
	host := ap.Addr().Unmap()
	if host.IsUnspecified() {
		switch {
		case cfg.DataAddr.IsValid():
			host = cfg.DataAddr
		case cfg.FrontendAddr.IsValid():
			host = cfg.FrontendAddr
		default:
			host = netip.MustParseAddr("127.0.0.1")
		}
	}
	return netip.AddrPortFrom(host, ap.Port())
}

func (c *Controller) measured() []migrate.Measured {
	ms, err := c.links()
	if err != nil {
		c.log.Warn("links", "err", err)
	}
	return ms
}

// probeTargets are the peers whose paths matter: those hosting this
// cluster's services, the homes of the copies it runs and the better
// places its triggers wait on (hot, see migrate.Engine.Watched), then the
// placement candidates, best tier and least loaded first (the prober
// keeps the first MaxCold of them). So each cluster probes a bounded set,
// however many clusters there are.
func (c *Controller) probeTargets() []netprobe.Target {
	if c.mc == nil {
		return nil
	}
	hot := map[string]bool{}
	if recs, err := c.Engine.List(); err == nil {
		for _, r := range recs {
			switch r.Kind {
			case ctrl.KindAbroad:
				hot[r.Cluster] = true
			case ctrl.KindForeign:
				hot[r.Home] = true
			}
		}
	}
	var hs []meta.Hello
	for _, s := range c.mc.ClusterStates() {
		if s.State != "down" && s.Hello.ClusterID != c.cfg.ClusterID && s.Hello.ProbeAddr != "" {
			hs = append(hs, s.Hello)
		}
	}
	// And the better places the triggers wait on (two at most).
	for _, id := range c.Engine.Watched(hs, 2) {
		hot[id] = true
	}
	rank := func(h meta.Hello) int {
		r, _, ok := meta.TierAware{}.Rank(h.Tier, &meta.ServiceDescriptor{})
		if !ok {
			return -1
		}
		return r
	}
	slices.SortFunc(hs, func(a, b meta.Hello) int {
		if ha, hb := hot[a.ClusterID], hot[b.ClusterID]; ha != hb {
			if ha {
				return -1
			}
			return 1
		}
		if ra, rb := rank(a), rank(b); ra != rb {
			return rb - ra
		}
		if la, lb := a.Capacity.Load(), b.Capacity.Load(); la != lb {
			if la < lb {
				return -1
			}
			return 1
		}
		return strings.Compare(a.ClusterID, b.ClusterID)
	})
	out := make([]netprobe.Target, 0, len(hs))
	for _, h := range hs {
		t := netprobe.Target{Peer: h.ClusterID, Addr: h.ProbeAddr, Hot: hot[h.ClusterID]}
		if l, ok := h.LinkTo(c.cfg.ClusterID); ok && l.Up {
			t.PeerMbps, t.PeerSamples = l.BandwidthMbps, l.Samples
		}
		out = append(out, t)
	}
	return out
}

// Prober is the controller's prober (nil without ProbeAddr).
func (c *Controller) Prober() *netprobe.Prober { return c.prober }

// placedWindow is how long a hello lists a placement taken in: longer
// than the MO keeps a reservation, so that a replica replaying the audit
// stream still sees the placement shown.
const placedWindow = 5 * time.Minute

func (c *Controller) helloLoop(ctx context.Context) {
	if c.mc == nil {
		return
	}
	t := time.NewTicker(c.cfg.HelloInterval)
	defer t.Stop()
	for {
		if h, err := c.Hello(ctx); err != nil {
			c.log.Warn("build hello", "err", err)
		} else if err := c.mc.PublishHello(ctx, h); err != nil && ctx.Err() == nil {
			c.log.Warn("publish hello", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-c.kick: // a link changed: tell the MO now
		}
	}
}

// Close stops serving, the loops and the NATS connection and closes the
// store. Copies the backend runs are left to the caller's backend.
func (c *Controller) Close() error {
	var errs []error
	if c.cancel != nil {
		c.cancel()
	}
	if c.srv != nil {
		sctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		if err := c.srv.Shutdown(sctx); err != nil {
			errs = append(errs, fmt.Errorf("shut down api: %w", err))
		}
		cancel()
	} else if c.ln != nil {
		c.ln.Close()
	}
	c.wg.Wait()
	if c.probeS != nil {
		if err := c.probeS.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close probe server: %w", err))
		}
	}
	if c.mc != nil {
		if err := c.mc.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	if c.nc != nil {
		c.nc.Close()
	}
	if c.st != nil {
		if err := c.st.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close store: %w", err))
		}
	}
	return errors.Join(errs...)
}
