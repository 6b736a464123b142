// This file holds the MO server: the embedded NATS server (or a connection
// to an external one), the hello ingest, the placement endpoint served as a
// nats.go micro service in a queue group, persistence in JetStream, metrics.

package meta

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
	"github.com/nats-io/nuid"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// JetStream names.
const (
	KVBucket      = "roam_meta_clusters"
	AuditStream   = "ROAM_META_AUDIT"
	AuditSubject  = "roam.audit.place"
	persistMaxAge = 30 // hello intervals between two writes of an unchanged cluster
)

// ServerConfig configures an MO.
type ServerConfig struct {
	// Listen is the embedded NATS client address (host:port; port 0 picks
	// a free one). Ignored with NATSURL.
	Listen string
	// NATSURL uses an external NATS instead of the embedded one, with
	// NATSOptions (credentials, TLS) for the connection.
	NATSURL     string
	NATSOptions []nats.Option
	// StoreDir holds JetStream data (registry, audit log); empty keeps
	// them in memory only (nothing survives a restart).
	StoreDir string
	// HTTPAddr serves /metrics, /healthz and /v1/clusters; empty: none.
	HTTPAddr      string
	Policy        Policy // nil: LeastLoaded
	HelloInterval time.Duration
	DownAfter     int
	// Auth enables per-cluster users on the embedded server.
	Auth *AuthConfig
	// TLS, when set, makes the embedded server require TLS.
	TLS *tls.Config
	// Name identifies this replica in replies (DecidedBy) and micro.
	Name   string
	Logger *slog.Logger
}

// Server is a running MO.
type Server struct {
	cfg    ServerConfig
	log    *slog.Logger
	policy Policy
	reg    *Registry
	name   string

	ns      *server.Server // nil with an external NATS
	tmpDir  string
	nc      *nats.Conn // placement, JetStream
	ncHello *nats.Conn // hello ingest
	js      jetstream.JetStream
	kv      jetstream.KeyValue // nil: no persistence
	svc     micro.Service
	helloSb *nats.Subscription
	httpSrv *http.Server
	httpLn  net.Listener

	metrics  *metrics
	promReg  *prometheus.Registry
	limiter  logLimiter
	persist  persister
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	closeOne sync.Once
}

// NewServer starts an MO: NATS (embedded unless cfg.NATSURL), the registry
// restored from JetStream, the hello subscription and the placement
// endpoint. Close stops it.
func NewServer(cfg ServerConfig) (_ *Server, err error) {
	if cfg.HelloInterval <= 0 {
		cfg.HelloInterval = time.Second
	}
	if cfg.DownAfter <= 0 {
		cfg.DownAfter = 3
	}
	if cfg.Policy == nil {
		cfg.Policy = LeastLoaded{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Name == "" {
		host, _ := os.Hostname()
		cfg.Name = host + "-" + nuid.Next()[16:]
	}
	s := &Server{
		cfg: cfg, log: cfg.Logger.With("mo", cfg.Name), policy: cfg.Policy, name: cfg.Name,
		reg: NewRegistry(cfg.HelloInterval, cfg.DownAfter),
	}
	s.limiter.every = time.Minute
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	if err := s.connect(); err != nil {
		return nil, err
	}
	s.promReg = prometheus.NewRegistry()
	s.metrics = newMetrics(s.promReg, s.reg)

	ctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	if err := s.setupJetStream(ctx); err != nil {
		return nil, err
	}
	s.helloSb, err = s.ncHello.Subscribe(SubjectHelloAll, s.handleHello)
	if err != nil {
		return nil, fmt.Errorf("subscribe hellos: %w", err)
	}
	// Bursts of 10,000 hellos must not make the MO a slow consumer.
	if err := s.helloSb.SetPendingLimits(1<<20, 256<<20); err != nil {
		return nil, fmt.Errorf("set hello pending limits: %w", err)
	}
	s.svc, err = micro.AddService(s.nc, micro.Config{
		Name:        ServiceName,
		Version:     "1.0.0",
		Description: "roam meta-orchestrator: cluster registry and placement",
		QueueGroup:  QueueGroup,
		Metadata:    map[string]string{"replica": s.name, "policy": s.policy.Name()},
	})
	if err != nil {
		return nil, fmt.Errorf("add micro service: %w", err)
	}
	if err := s.svc.AddEndpoint("place", micro.HandlerFunc(s.handlePlace), micro.WithEndpointSubject(SubjectPlace),
		micro.WithEndpointPendingLimits(1<<16, 64<<20)); err != nil {
		return nil, fmt.Errorf("add place endpoint: %w", err)
	}
	if err := s.nc.Flush(); err != nil {
		return nil, fmt.Errorf("flush subscriptions: %w", err)
	}
	if err := s.ncHello.Flush(); err != nil {
		return nil, fmt.Errorf("flush subscriptions: %w", err)
	}
	if cfg.HTTPAddr != "" {
		if err := s.serveHTTP(); err != nil {
			return nil, err
		}
	}
	s.wg.Add(1)
	go s.watchLiveness(ctx)
	s.log.Info("meta-orchestrator started", "nats", s.ClientURL(), "policy", s.policy.Name(),
		"persistent", s.kv != nil && cfg.StoreDir != "", "auth", cfg.Auth != nil)
	return s, nil
}

func (s *Server) connect() error {
	cfg := s.cfg
	if cfg.NATSURL != "" {
		opts := append([]nats.Option{nats.Name("roam-meta " + s.name), nats.MaxReconnects(-1)}, cfg.NATSOptions...)
		if cfg.Auth != nil && cfg.Auth.Meta.User != "" {
			opts = append(opts, nats.UserInfo(cfg.Auth.Meta.User, cfg.Auth.Meta.Password))
		}
		return s.dial(func(role string) (*nats.Conn, error) {
			nc, err := nats.Connect(cfg.NATSURL, append(opts, nats.Name("roam-meta "+s.name+" "+role))...)
			if err != nil {
				return nil, fmt.Errorf("connect to nats %s: %w", cfg.NATSURL, err)
			}
			return nc, nil
		})
	}
	host, portText, err := net.SplitHostPort(orDefault(cfg.Listen, "0.0.0.0:4222"))
	if err != nil {
		return fmt.Errorf("parse listen address %q: %w", cfg.Listen, err)
	}
	port, err := strconv.Atoi(portText)
	if err != nil || port < 0 || port > 65535 {
		return fmt.Errorf("parse listen port %q: want 0-65535", portText)
	}
	if port == 0 {
		port = server.RANDOM_PORT
	}
	storeDir := cfg.StoreDir
	if storeDir == "" {
		if s.tmpDir, err = os.MkdirTemp("", "roam-meta-js-"); err != nil {
			return fmt.Errorf("create jetstream dir: %w", err)
		}
		storeDir = s.tmpDir
	}
	opts := &server.Options{
		ServerName: "roam-meta-" + strings.ReplaceAll(s.name, ".", "-"),
		Host:       host, Port: port,
		NoSigs: true, NoLog: true,
		JetStream: true, StoreDir: storeDir,
		JetStreamMaxMemory: 256 << 20,
	}
	var inproc []nats.Option
	if cfg.Auth != nil {
		users, meta, err := cfg.Auth.users()
		if err != nil {
			return err
		}
		opts.Users = users
		inproc = append(inproc, nats.UserInfo(meta.User, meta.Password))
	}
	if cfg.TLS != nil {
		opts.TLS, opts.TLSConfig = true, cfg.TLS
		opts.TLSVerify = cfg.TLS.ClientAuth == tls.RequireAndVerifyClientCert
	}
	ns, err := server.NewServer(opts)
	if err != nil {
		return fmt.Errorf("create embedded nats: %w", err)
	}
	s.ns = ns
	go ns.Start()
	if !ns.ReadyForConnections(30 * time.Second) {
		return errors.New("start embedded nats: not ready after 30s (is the port free?)")
	}
	inproc = append(inproc, nats.InProcessServer(ns))
	return s.dial(func(role string) (*nats.Conn, error) {
		nc, err := nats.Connect("", append(inproc, nats.Name("roam-meta "+s.name+" "+role))...)
		if err != nil {
			return nil, fmt.Errorf("connect to embedded nats: %w", err)
		}
		return nc, nil
	})
}

// dial opens the MO's two connections: one for placement and JetStream,
// one for the hello flood, so a placement request never waits behind
// thousands of hellos on the same connection.
func (s *Server) dial(connect func(role string) (*nats.Conn, error)) error {
	var err error
	if s.nc, err = connect("placement"); err != nil {
		return err
	}
	if s.ncHello, err = connect("hellos"); err != nil {
		return err
	}
	return nil
}

// setupJetStream opens the registry bucket and audit stream and restores
// the registry. Without JetStream (external NATS lacking it) the MO runs
// from memory and says so.
func (s *Server) setupJetStream(ctx context.Context) error {
	js, err := jetstream.New(s.nc)
	if err != nil {
		return fmt.Errorf("open jetstream: %w", err)
	}
	s.js = js
	storage := jetstream.FileStorage
	if s.cfg.StoreDir == "" {
		storage = jetstream.MemoryStorage
	}
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	kv, err := js.CreateOrUpdateKeyValue(cctx, jetstream.KeyValueConfig{
		Bucket: KVBucket, Description: "roam cluster registry (latest hello per cluster)",
		History: 1, Storage: storage,
	})
	if err != nil {
		if s.cfg.NATSURL != "" {
			s.log.Warn("no jetstream on the external nats: registry is kept in memory only", "err", err)
			s.js = nil
			return nil
		}
		return fmt.Errorf("create registry bucket: %w", err)
	}
	s.kv = kv
	if _, err := js.CreateOrUpdateStream(cctx, jetstream.StreamConfig{
		Name: AuditStream, Description: "roam placement decisions",
		Subjects: []string{AuditSubject}, Storage: storage, MaxMsgs: 100_000, Discard: jetstream.DiscardOld,
	}); err != nil {
		return fmt.Errorf("create audit stream: %w", err)
	}
	if err := s.restore(cctx); err != nil {
		return err
	}
	s.persist.init(kv, s.cfg.HelloInterval*persistMaxAge)
	s.wg.Add(1)
	go s.persist.run(ctx, &s.wg, s.log, s.cfg.HelloInterval/2)
	return nil
}

// storedCluster is a registry entry in the KV bucket.
type storedCluster struct {
	Hello    Hello     `json:"hello"`
	LastSeen time.Time `json:"last_seen"`
}

func (s *Server) restore(ctx context.Context) error {
	w, err := s.kv.WatchAll(ctx, jetstream.IgnoreDeletes())
	if err != nil {
		return fmt.Errorf("watch registry bucket: %w", err)
	}
	defer w.Stop()
	n := 0
	for {
		select {
		case <-ctx.Done():
			return fmt.Errorf("restore registry: %w", ctx.Err())
		case e := <-w.Updates():
			if e == nil {
				if n > 0 {
					s.log.Info("registry restored", "clusters", n)
				}
				return nil
			}
			var sc storedCluster
			if err := json.Unmarshal(e.Value(), &sc); err != nil || sc.Hello.Validate() != nil {
				s.log.Warn("skip unreadable registry entry", "key", e.Key(), "err", err)
				continue
			}
			s.reg.restore(sc.Hello, sc.LastSeen)
			n++
		}
	}
}

// handleHello ingests one hello: validate, check the subject names the
// same cluster, keep it unless stale. Bad ones are dropped and counted.
func (s *Server) handleHello(m *nats.Msg) {
	h, err := DecodeHello(m.Data)
	if err != nil {
		s.metrics.hellos.WithLabelValues("malformed").Inc()
		s.limiter.log(s.log, "malformed:"+m.Subject, "dropped malformed hello", "subject", m.Subject, "err", err)
		return
	}
	if m.Subject != HelloSubject(h.ClusterID) {
		s.metrics.hellos.WithLabelValues("mismatch").Inc()
		s.limiter.log(s.log, "mismatch:"+m.Subject, "dropped hello for another cluster", "subject", m.Subject, "cluster", h.ClusterID)
		return
	}
	now := time.Now()
	res, prev := s.reg.observe(h, now)
	switch res {
	case ObserveStale:
		s.metrics.hellosStale.Inc()
		return
	case ObserveNew:
		s.log.Info("cluster registered", "cluster", h.ClusterID, "tier", h.Tier, "controller", h.ControllerURL)
	}
	s.metrics.hellosAccepted.Inc()
	if s.kv != nil {
		changed := prev == nil || !sameIdentity(prev.Hello, h)
		s.persist.mark(h, now, changed)
	}
}

// sameIdentity reports whether nothing but volatile figures changed.
func sameIdentity(a, b Hello) bool {
	if a.Tier != b.Tier || a.ControllerURL != b.ControllerURL || a.IntervalMs != b.IntervalMs ||
		len(a.Labels) != len(b.Labels) || len(a.DataAddrs) != len(b.DataAddrs) {
		return false
	}
	for k, v := range a.Labels {
		if b.Labels[k] != v {
			return false
		}
	}
	for i := range a.DataAddrs {
		if a.DataAddrs[i] != b.DataAddrs[i] {
			return false
		}
	}
	return true
}

// handlePlace answers a placement request.
func (s *Server) handlePlace(r micro.Request) {
	start := time.Now()
	req, err := DecodePlacementRequest(r.Data())
	if err != nil {
		s.metrics.placements.WithLabelValues("bad_request").Inc()
		s.limiter.log(s.log, "bad-place", "rejected malformed placement request", "err", err)
		s.respondErr(r, CodeBadRequest, err.Error())
		return
	}
	// With per-cluster users a cluster can only read replies under its
	// own inbox: a request whose reply subject is not there claims to be
	// someone else.
	if s.cfg.Auth != nil && !strings.HasPrefix(r.Reply(), InboxPrefix(req.Requester)+".") {
		s.metrics.placements.WithLabelValues("forbidden").Inc()
		s.limiter.log(s.log, "forbidden:"+req.Requester, "rejected placement request for another cluster", "requester", req.Requester)
		s.respondErr(r, CodeForbidden, "requester "+req.Requester+" does not match the reply inbox")
		return
	}
	rep := s.policy.Place(req, s.reg, start)
	rep.DecidedBy = s.name
	b, err := json.Marshal(rep)
	if err != nil {
		s.metrics.placements.WithLabelValues("error").Inc()
		s.respondErr(r, CodeInternal, "encode reply: "+err.Error())
		return
	}
	if err := r.Respond(b); err != nil {
		s.metrics.placements.WithLabelValues("error").Inc()
		s.limiter.log(s.log, "respond", "send placement reply", "err", err)
		return
	}
	result := "placed"
	if !rep.OK() {
		result = "no_placement"
	}
	s.metrics.placements.WithLabelValues(result).Inc()
	s.metrics.latency.Observe(time.Since(start).Seconds())
	s.audit(req, rep)
}

func (s *Server) respondErr(r micro.Request, code, desc string) {
	if err := r.Error(code, desc, nil); err != nil {
		s.limiter.log(s.log, "respond-err", "send error reply", "err", err)
	}
}

// auditRecord is one placement decision in the audit stream.
type auditRecord struct {
	At          time.Time `json:"at"`
	RequestID   string    `json:"request_id"`
	Requester   string    `json:"requester"`
	Home        string    `json:"home"`
	Service     string    `json:"service"`
	Reason      Reason    `json:"reason"`
	Destination string    `json:"destination,omitempty"`
	NoPlacement string    `json:"no_placement,omitempty"`
	Filtered    int       `json:"filtered"`
	DecidedBy   string    `json:"decided_by"`
}

func (s *Server) audit(req PlacementRequest, rep PlacementReply) {
	if s.js == nil {
		return
	}
	rec := auditRecord{At: time.Now().UTC(), RequestID: req.RequestID, Requester: req.Requester, Home: req.Home,
		Service: req.Service.Name, Reason: req.Reason, NoPlacement: rep.NoPlacement, Filtered: rep.FilteredTotal, DecidedBy: rep.DecidedBy}
	if rep.Destination != nil {
		rec.Destination = rep.Destination.ClusterID
	}
	b, _ := json.Marshal(rec)
	if _, err := s.js.PublishAsync(AuditSubject, b); err != nil {
		s.limiter.log(s.log, "audit", "append to audit stream", "err", err)
	}
}

// watchLiveness logs state transitions once per interval.
func (s *Server) watchLiveness(ctx context.Context) {
	defer s.wg.Done()
	t := time.NewTicker(s.cfg.HelloInterval)
	defer t.Stop()
	last := map[string]State{}
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			s.reg.Each(now, func(c *Cluster, st State) bool {
				id := c.Hello.ClusterID
				if prev, ok := last[id]; ok && prev != st {
					s.log.Info("cluster state changed", "cluster", id, "from", prev.String(), "to", st.String())
				}
				last[id] = st
				return true
			})
		}
	}
}

// ClientURL is the NATS URL clusters connect to.
func (s *Server) ClientURL() string {
	if s.ns != nil {
		return s.ns.ClientURL()
	}
	return s.cfg.NATSURL
}

// HTTPAddr is the address /metrics is served on (after NewServer).
func (s *Server) HTTPAddr() string {
	if s.httpLn == nil {
		return ""
	}
	return s.httpLn.Addr().String()
}

// Name identifies this replica.
func (s *Server) Name() string { return s.name }

// Registry is the live registry (read-only use).
func (s *Server) Registry() *Registry { return s.reg }

// Gatherer exposes the MO's metrics.
func (s *Server) Gatherer() prometheus.Gatherer { return s.promReg }

// Conn is the MO's own NATS connection.
func (s *Server) Conn() *nats.Conn { return s.nc }

// Handler serves /metrics, /healthz and /v1/clusters.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(s.promReg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		if s.nc == nil || !s.nc.IsConnected() {
			http.Error(w, "nats not connected", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/v1/clusters", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(s.reg.Snapshot(time.Now()))
	})
	return mux
}

func (s *Server) serveHTTP() error {
	ln, err := net.Listen("tcp", s.cfg.HTTPAddr)
	if err != nil {
		return fmt.Errorf("listen http %s: %w", s.cfg.HTTPAddr, err)
	}
	s.httpLn = ln
	s.httpSrv = &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := s.httpSrv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("serve http", "err", err)
		}
	}()
	return nil
}

// Close stops serving, flushes the registry to JetStream and shuts NATS
// down (the embedded server only).
func (s *Server) Close() error {
	s.closeOne.Do(func() {
		if s.httpSrv != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_ = s.httpSrv.Shutdown(ctx)
			cancel()
		}
		if s.svc != nil {
			_ = s.svc.Stop()
		}
		if s.helloSb != nil {
			_ = s.helloSb.Unsubscribe()
		}
		if s.cancel != nil {
			s.cancel()
		}
		s.wg.Wait()
		if s.kv != nil {
			s.persist.flush(context.Background(), s.log)
		}
		if s.js != nil {
			select {
			case <-s.js.PublishAsyncComplete():
			case <-time.After(5 * time.Second):
			}
		}
		for _, nc := range []*nats.Conn{s.ncHello, s.nc} {
			if nc == nil {
				continue
			}
			_ = nc.Drain()
			for i := 0; i < 500 && !nc.IsClosed(); i++ {
				time.Sleep(10 * time.Millisecond)
			}
			nc.Close()
		}
		if s.ns != nil {
			s.ns.Shutdown()
			s.ns.WaitForShutdown()
		}
		if s.tmpDir != "" {
			_ = os.RemoveAll(s.tmpDir)
		}
	})
	return nil
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}

// persister writes registry entries to the KV bucket off the hot path:
// a new or changed cluster at the next flush, an unchanged one at most
// once per maxAge.
type persister struct {
	kv     jetstream.KeyValue
	maxAge time.Duration

	mu      sync.Mutex
	dirty   map[string]storedCluster
	written map[string]time.Time
}

func (p *persister) init(kv jetstream.KeyValue, maxAge time.Duration) {
	p.kv, p.maxAge = kv, maxAge
	p.dirty, p.written = map[string]storedCluster{}, map[string]time.Time{}
}

func (p *persister) mark(h Hello, now time.Time, changed bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.dirty == nil {
		return
	}
	if !changed && now.Sub(p.written[h.ClusterID]) < p.maxAge {
		if _, pending := p.dirty[h.ClusterID]; !pending {
			return
		}
	}
	p.dirty[h.ClusterID] = storedCluster{Hello: h, LastSeen: now}
	p.written[h.ClusterID] = now
}

func (p *persister) run(ctx context.Context, wg *sync.WaitGroup, log *slog.Logger, every time.Duration) {
	defer wg.Done()
	t := time.NewTicker(max(every, 50*time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			p.flush(ctx, log)
		}
	}
}

func (p *persister) flush(ctx context.Context, log *slog.Logger) {
	p.mu.Lock()
	batch := p.dirty
	p.dirty = make(map[string]storedCluster, len(batch))
	p.mu.Unlock()
	for id, sc := range batch {
		b, err := json.Marshal(sc)
		if err != nil {
			continue
		}
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err = p.kv.Put(pctx, id, b)
		cancel()
		if err != nil {
			log.Warn("persist cluster", "cluster", id, "err", err)
		}
	}
}

// logLimiter logs a message at most once per key per interval.
type logLimiter struct {
	every time.Duration
	mu    sync.Mutex
	last  map[string]time.Time
}

func (l *logLimiter) log(log *slog.Logger, key, msg string, args ...any) {
	l.mu.Lock()
	now := time.Now()
	if l.last == nil {
		l.last = map[string]time.Time{}
	}
	if t, ok := l.last[key]; ok && now.Sub(t) < l.every {
		l.mu.Unlock()
		return
	}
	if len(l.last) > 10_000 {
		clear(l.last)
	}
	l.last[key] = now
	l.mu.Unlock()
	log.Warn(msg, args...)
}

type metrics struct {
	// Pre-resolved children for the per-hello hot path.
	hellosAccepted, hellosStale prometheus.Counter

	hellos     *prometheus.CounterVec
	placements *prometheus.CounterVec
	latency    prometheus.Histogram
}

func newMetrics(r *prometheus.Registry, reg *Registry) *metrics {
	m := &metrics{
		hellos: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "roam_meta_hellos_total", Help: "Hellos received, by result (accepted, stale, malformed, mismatch).",
		}, []string{"result"}),
		placements: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "roam_meta_placements_total", Help: "Placement requests, by result (placed, no_placement, bad_request, forbidden, error).",
		}, []string{"result"}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "roam_meta_placement_seconds", Help: "Time to decide and answer a placement request.",
			Buckets: []float64{25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 50e-3, 0.25, 1},
		}),
	}
	for _, res := range []string{"accepted", "stale", "malformed", "mismatch"} {
		m.hellos.WithLabelValues(res)
	}
	m.hellosAccepted, m.hellosStale = m.hellos.WithLabelValues("accepted"), m.hellos.WithLabelValues("stale")
	for _, res := range []string{"placed", "no_placement", "bad_request", "forbidden", "error"} {
		m.placements.WithLabelValues(res)
	}
	r.MustRegister(m.hellos, m.placements, m.latency, clusterCollector{reg: reg})
	return m
}

var clustersDesc = prometheus.NewDesc("roam_meta_clusters", "Known clusters, by liveness state.", []string{"state"}, nil)

// clusterCollector counts clusters by state at scrape time.
type clusterCollector struct{ reg *Registry }

func (c clusterCollector) Describe(ch chan<- *prometheus.Desc) { ch <- clustersDesc }

func (c clusterCollector) Collect(ch chan<- prometheus.Metric) {
	for st, n := range c.reg.Counts(time.Now()) {
		ch <- prometheus.MustNewConstMetric(clustersDesc, prometheus.GaugeValue, float64(n), st.String())
	}
}
