// This file holds the MO server: the embedded NATS server (alone, or one
// node of a NATS cluster) or a connection to an external one, the hello
// ingest, the placement endpoint served as a nats.go micro service in a
// queue group, liveness, the HTTP endpoints and the metrics. Joining and
// leaving the queue group is in serve.go, JetStream in store.go.

package meta

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
	"github.com/nats-io/nuid"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// ServerConfig configures an MO replica.
type ServerConfig struct {
	// Listen is the embedded NATS client address (host:port; port 0 picks
	// a free one). Ignored with NATSURL.
	Listen string
	// Cluster makes the embedded server one node of a NATS cluster.
	Cluster *ClusterConfig
	// NATSURL uses an external NATS (comma-separated URLs of its nodes)
	// instead of the embedded one, with NATSOptions (credentials, TLS)
	// for the connection.
	NATSURL     string
	NATSOptions []nats.Option
	// Replicas of the bucket and the audit stream; 0: 3 on a NATS cluster
	// (the embedded one with Cluster, or an external one that is
	// clustered), else 1.
	Replicas int
	// StoreDir holds the embedded server's JetStream data; empty keeps it
	// in memory (nothing survives a restart of every node).
	StoreDir string
	// HTTPAddr serves /metrics, /healthz, /readyz, /v1/clusters and
	// /v1/explain; empty: none.
	HTTPAddr      string
	Policy        Policy // nil: LeastLoaded
	HelloInterval time.Duration
	DownAfter     int
	// WarmUp is how long the replica listens to hellos, after starting or
	// reconnecting, before it answers placements (default 1.5 hello
	// intervals: every live cluster has been heard from by then).
	WarmUp time.Duration
	// ReservationTTL is how long a placement counts against its
	// destination unless a hello from it shows the placement first
	// (default 60s; negative: no reservations).
	ReservationTTL time.Duration
	// Auth enables per-cluster users on the embedded server.
	Auth *AuthConfig
	// TLS, when set, makes the embedded server require TLS.
	TLS *tls.Config
	// AuditSpool is a directory of this replica's own where each audit
	// record is written before its placement is answered, until the audit
	// stream acknowledges it; a replica that starts again on it first
	// publishes what the last run left (audit.go). Empty: StoreDir's
	// audit-spool, or none without StoreDir (a crash then loses the
	// unacknowledged records).
	AuditSpool string
	// AuditFlush is how long a record waits for its batch to be published
	// (default DefaultAuditFlush).
	AuditFlush time.Duration
	// Name identifies this replica in replies (DecidedBy), micro and the
	// embedded server's name.
	Name   string
	Logger *slog.Logger
}

// ClusterConfig makes the embedded NATS server a node of a cluster
// (nats-server's own clustering: routes between the nodes, JetStream
// clustered with RAFT).
type ClusterConfig struct {
	Name   string   // the cluster's name, the same on every node (default roam-meta)
	Listen string   // host:port the node accepts routes on
	Routes []string // nats://host:port of the nodes (this one may be listed)
}

// Server is a running MO replica.
type Server struct {
	cfg    ServerConfig
	log    *slog.Logger
	policy Policy
	reg    *Registry
	name   string

	ns       *server.Server // nil with an external NATS
	tmpDir   string
	nc       *nats.Conn // placement requests and replies
	ncHello  *nats.Conn // hello ingest
	ncStore  *nats.Conn // JetStream: the compact view, the audit stream
	js       jetstream.JetStream
	kv       jetstream.KeyValue // nil: no persistence
	replicas int
	// view is set by runStore once JetStream is up, while hellos and the
	// liveness sweep already read it.
	view    atomic.Pointer[viewWriter]
	helloSb *nats.Subscription
	httpSrv *http.Server
	httpLn  net.Listener

	metrics  *metrics
	promReg  *prometheus.Registry
	limiter  logLimiter
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	closeOne sync.Once

	serving servingState
	// placeMu makes a placement's decision and its reservation one step
	// for this replica: no other placement decides in between. Hello
	// ingest never takes it.
	placeMu sync.Mutex
	// req is the request being placed, replyBuf the last reply encoded
	// (placeMu).
	req      PlacementRequest
	replyBuf []byte
	auditLog *auditLog
	// Batches the audit follower was delivered: others' (applied) and
	// this process's own (skipped; its filters keep them out).
	auditFollowed, auditOwnDelivered atomic.Int64
	started                          time.Time
}

// NewServer starts an MO replica: NATS (embedded unless cfg.NATSURL), the
// hello subscription, then in the background JetStream (the compact view
// restored into the registry, the audit stream followed for reservations)
// and, once the view is warm, the placement endpoint. WaitServing waits
// for that; Close stops it.
func NewServer(cfg ServerConfig) (_ *Server, err error) {
	if cfg.HelloInterval <= 0 {
		cfg.HelloInterval = time.Second
	}
	if cfg.DownAfter <= 0 {
		cfg.DownAfter = 3
	}
	if cfg.WarmUp <= 0 {
		cfg.WarmUp = cfg.HelloInterval * 3 / 2
	}
	if cfg.ReservationTTL == 0 {
		cfg.ReservationTTL = time.Minute
	}
	if cfg.Policy == nil {
		cfg.Policy = LeastLoaded{}
	}
	if cfg.AuditSpool == "" && cfg.StoreDir != "" {
		cfg.AuditSpool = filepath.Join(cfg.StoreDir, "audit-spool")
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
		reg:     NewRegistry(cfg.HelloInterval, cfg.DownAfter),
		started: time.Now(),
	}
	s.auditLog = newAuditLog(s, cfg.AuditSpool, cfg.AuditFlush)
	s.limiter.every = time.Minute
	s.serving.init()
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	s.promReg = prometheus.NewRegistry()
	s.metrics = newMetrics(s.promReg, s.reg, &s.serving)
	if err := s.connect(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	s.helloSb, err = s.ncHello.Subscribe(SubjectHelloAll, s.handleHello)
	if err != nil {
		return nil, fmt.Errorf("subscribe hellos: %w", err)
	}
	// Bursts of 10,000 hellos must not make the MO a slow consumer.
	if err := s.helloSb.SetPendingLimits(1<<20, 256<<20); err != nil {
		return nil, fmt.Errorf("set hello pending limits: %w", err)
	}
	if err := s.ncHello.Flush(); err != nil {
		return nil, fmt.Errorf("subscribe hellos: %w", err)
	}
	s.connChanged()
	if cfg.HTTPAddr != "" {
		if err := s.serveHTTP(); err != nil {
			return nil, err
		}
	}
	s.wg.Add(3)
	go func() { defer s.wg.Done(); s.runStore(ctx) }()
	go func() { defer s.wg.Done(); s.serveLoop(ctx) }()
	go func() { defer s.wg.Done(); s.watchLiveness(ctx) }()
	s.log.Info("meta-orchestrator started", "nats", s.ClientURL(), "policy", s.policy.Name(),
		"cluster", cfg.Cluster != nil, "auth", cfg.Auth != nil, "warm_up", cfg.WarmUp)
	return s, nil
}

// connChanged tells the serving state whether the connections are up:
// the hello one, and the placement one with the store one (without it the
// replica would miss the other replicas' reservations).
func (s *Server) connChanged() {
	if s.nc != nil && s.ncHello != nil && s.ncStore != nil {
		s.serving.connected(s.ncHello.IsConnected(), s.nc.IsConnected() && s.ncStore.IsConnected(), time.Now())
	}
}

// connOptions are the options of the MO's connections: reconnect for
// ever, and tell the serving state about every change.
func (s *Server) connOptions(role string) []nats.Option {
	changed := s.connChanged
	return []nats.Option{
		nats.Name("roam-meta " + s.name + " " + role),
		nats.MaxReconnects(-1), nats.ReconnectWait(100 * time.Millisecond),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				s.log.Warn("nats disconnected: leaving the queue group", "conn", role, "err", err)
			}
			changed()
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			s.log.Info("nats reconnected: warming up again", "conn", role, "server", nc.ConnectedUrlRedacted())
			changed()
		}),
		nats.ClosedHandler(func(*nats.Conn) { changed() }),
	}
}

func (s *Server) connect() error {
	cfg := s.cfg
	if cfg.NATSURL != "" {
		opts := cfg.NATSOptions
		if cfg.Auth != nil && cfg.Auth.Meta.User != "" {
			opts = append(opts, nats.UserInfo(cfg.Auth.Meta.User, cfg.Auth.Meta.Password))
		}
		return s.dial(func(role string) (*nats.Conn, error) {
			nc, err := nats.Connect(cfg.NATSURL, append(s.connOptions(role), opts...)...)
			if err != nil {
				return nil, fmt.Errorf("connect to nats %s: %w", cfg.NATSURL, err)
			}
			return nc, nil
		})
	}
	host, port, err := splitHostPort(orDefault(cfg.Listen, "0.0.0.0:4222"))
	if err != nil {
		return fmt.Errorf("parse listen address: %w", err)
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
	if cl := cfg.Cluster; cl != nil {
		chost, cport, err := splitHostPort(cl.Listen)
		if err != nil {
			return fmt.Errorf("parse cluster listen address: %w", err)
		}
		opts.Cluster = server.ClusterOpts{Name: orDefault(cl.Name, "roam-meta"), Host: chost, Port: cport}
		opts.Routes = server.RoutesFromStr(strings.Join(cl.Routes, ","))
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
	// Debug on, so that the refusals nats-server logs at debug level
	// (handshake "probes") reach the logger, which formats nothing else.
	ns.SetLoggerV2(natsLogger{s}, true, false, false)
	go ns.Start()
	if !ns.ReadyForConnections(30 * time.Second) {
		return errors.New("start embedded nats: not ready after 30s (is the port free?)")
	}
	inproc = append(inproc, nats.InProcessServer(ns))
	return s.dial(func(role string) (*nats.Conn, error) {
		nc, err := nats.Connect("", append(s.connOptions(role), inproc...)...)
		if err != nil {
			return nil, fmt.Errorf("connect to embedded nats: %w", err)
		}
		return nc, nil
	})
}

// splitHostPort parses host:port; port 0 means any free port.
func splitHostPort(addr string) (string, int, error) {
	host, portText, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, fmt.Errorf("%q: %w", addr, err)
	}
	port, err := strconv.Atoi(portText)
	if err != nil || port < 0 || port > 65535 {
		return "", 0, fmt.Errorf("%q: port must be 0-65535", addr)
	}
	if port == 0 {
		port = server.RANDOM_PORT
	}
	return host, port, nil
}

// dial opens the MO's three connections, each read by its own goroutine:
// one for placements, one for the hello flood and one for JetStream (the
// compact view's writes, acks and watch, the audit stream), so a
// placement request never waits behind thousands of hellos or summary
// writes on the same connection.
func (s *Server) dial(connect func(role string) (*nats.Conn, error)) error {
	var conns []*nats.Conn
	for _, role := range []string{"placement", "hellos", "store"} {
		nc, err := connect(role)
		if err != nil {
			for _, c := range conns {
				c.Close()
			}
			return err
		}
		conns = append(conns, nc)
	}
	s.nc, s.ncHello, s.ncStore = conns[0], conns[1], conns[2]
	return nil
}

// runStore opens JetStream, restores the registry from the compact view
// and keeps the view written and the audit stream followed. The replica
// may serve once the restore is done (or JetStream is absent or has not
// come up within a minute: then hellos alone make the view).
func (s *Server) runStore(ctx context.Context) {
	octx, cancel := context.WithTimeout(ctx, time.Minute)
	ok, err := s.openJetStream(octx)
	cancel()
	if !ok {
		if err != nil && ctx.Err() == nil {
			s.log.Error("no jetstream: the registry is kept in memory, reservations are not shared", "err", err)
		} else if ctx.Err() == nil {
			s.log.Warn("the nats has no jetstream: the registry is kept in memory, reservations are not shared")
		}
		s.serving.restoredNow()
		return
	}
	s.log.Info("jetstream ready", "replicas", s.replicas)
	// What a crash left in the spool is in the stream before this replica
	// serves (and before it follows the stream, which applies it).
	if n, err := s.auditLog.replay(ctx); err != nil {
		s.log.Error("republish the audit spool", "spool", s.cfg.AuditSpool, "err", err)
	} else if n > 0 {
		s.log.Info("republished the audit records a previous run left in the spool", "records", n, "spool", s.cfg.AuditSpool)
	}
	view := newViewWriter(s, s.cfg.HelloInterval*summaryRefresh, s.cfg.HelloInterval)
	s.view.Store(view)
	restored := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(3)
	go func() { defer wg.Done(); view.follow(ctx, restored) }()
	go func() { defer wg.Done(); s.followAudit(ctx) }()
	go func() { defer wg.Done(); s.auditLog.run(ctx, 5*time.Second) }()
	select {
	case <-restored:
	case <-ctx.Done():
	}
	s.serving.restoredNow()
	view.run(ctx, min(s.cfg.HelloInterval/2, viewFlushEvery))
	wg.Wait()
}

// handleHello ingests one hello: validate, check the subject names the
// same cluster, keep it unless stale. Bad ones are dropped and counted. A
// hello that differs from the cluster's last one only in seq and sent_at
// is not decoded (hellofast.go).
func (s *Server) handleHello(m *nats.Msg) {
	now := time.Now()
	f, framed := frameHello(m.Data)
	if framed {
		id := strings.TrimPrefix(m.Subject, SubjectHelloPrefix)
		if res, c, same := s.reg.observeSame(id, &f, now); same {
			if res == ObserveUpdated {
				s.metrics.hellosUnchanged.Inc()
			}
			s.observed(m.Subject, res, c, c.Hello.Incarnation, f.seq, now)
			return
		}
	}
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
	var frame uint64
	if framed {
		frame = f.hash
	}
	res, _ := s.reg.observe(h, now, frame)
	if res == ObserveLocatorTaken {
		s.metrics.hellos.WithLabelValues("locator_taken").Inc()
		s.limiter.log(s.log, "locator:"+m.Subject, "refused hello: its SRv6 locator overlaps another live cluster's (the first holder keeps it)",
			"cluster", h.ClusterID, "locator", h.Locator, "holder", s.reg.LocatorHolder(h.ClusterID, h.Locator))
		return
	}
	if res == ObserveNew {
		s.log.Info("cluster registered", "cluster", h.ClusterID, "tier", h.Tier, "controller", h.ControllerURL)
	}
	var c *Cluster
	if res == ObserveNew || res == ObserveUpdated {
		c, _, _ = s.reg.Get(now, h.ClusterID)
	}
	s.observed(m.Subject, res, c, h.Incarnation, h.Seq, now)
}

// observed counts what the registry did with a hello and marks its
// summary for the compact view; c is the cluster's entry after it.
func (s *Server) observed(subject string, res ObserveResult, c *Cluster, incarnation string, seq uint64, now time.Time) {
	switch res {
	case ObserveStale:
		s.metrics.hellosStale.Inc()
		return
	case ObserveAhead:
		s.metrics.hellos.WithLabelValues("ahead").Inc()
		s.limiter.log(s.log, "ahead:"+subject, "rejected hello far ahead of the cluster's sequence",
			"cluster", strings.TrimPrefix(subject, SubjectHelloPrefix), "incarnation", incarnation, "seq", seq)
		return
	}
	s.metrics.hellosAccepted.Inc()
	if v := s.view.Load(); v != nil && c != nil {
		v.check(c, StateAlive, now)
	}
}

// handlePlace answers a placement request and reserves the destination.
func (s *Server) handlePlace(r micro.Request) {
	start := time.Now()
	// placeMu makes the decision and its reservation one step, and lets
	// the request be decoded into the one the server keeps (micro calls
	// the handler for one request at a time anyway).
	s.placeMu.Lock()
	defer s.placeMu.Unlock()
	req := &s.req
	err := decodePlacementRequestInto(r.Data(), req)
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
	if s.js != nil && !s.auditLog.room() {
		s.metrics.placements.WithLabelValues("unavailable").Inc()
		s.limiter.log(s.log, "audit-backlog", "refused a placement: the audit stream has not acknowledged the records before it", "pending", auditMaxPending)
		s.respondErr(r, CodeUnavailable, "audit stream backlog: try another replica")
		return
	}
	ttl := max(s.cfg.ReservationTTL, 0)
	// The decision reads the index under the registry's read lock, which
	// hello ingest shares (hellos that move a cluster in the index take
	// the write lock); the reservation, which moves the destination in
	// the index, is made once the reply is sent, before the next
	// placement decides (placeMu).
	// The index's reply is encoded into a buffer kept for the next
	// placement (NATS copies it out); the full scan's is marshalled.
	b, dest, rep := s.reg.PlaceEncoded(s.policy, req, start, s.replyBuf[:0], s.name)
	placed := dest != ""
	var noPlacement string
	var filtered int
	if rep != nil {
		if b, err = json.Marshal(rep); err != nil {
			s.metrics.placements.WithLabelValues("error").Inc()
			s.respondErr(r, CodeInternal, "encode reply: "+err.Error())
			return
		}
		noPlacement, filtered = rep.NoPlacement, rep.FilteredTotal
	} else {
		s.replyBuf = b
	}
	var until time.Time
	if ttl > 0 {
		until = start.Add(ttl)
	}
	// The record is in the audit log (and its spool) before the reply
	// goes: audit.go says what that guarantees.
	s.audit(req, dest, noPlacement, filtered, until)
	err = r.Respond(b)
	took := time.Since(start)
	if ttl > 0 && placed {
		s.reg.Reserve(req.RequestID, dest, req.Service.Resources, until)
	}
	if err != nil {
		s.metrics.placements.WithLabelValues("error").Inc()
		s.limiter.log(s.log, "respond", "send placement reply", "err", err)
		return
	}
	if placed {
		s.metrics.placed.Inc()
	} else {
		s.metrics.placements.WithLabelValues("no_placement").Inc()
	}
	s.metrics.latency.Observe(took.Seconds())
}

func (s *Server) respondErr(r micro.Request, code, desc string) {
	if err := r.Error(code, desc, nil); err != nil {
		s.limiter.log(s.log, "respond-err", "send error reply", "err", err)
	}
}

// watchLiveness, once per interval, ends expired reservations, takes down
// clusters out of the index, logs state changes and marks in the compact
// view the clusters whose state changed or whose summary is due.
func (s *Server) watchLiveness(ctx context.Context) {
	t := time.NewTicker(s.cfg.HelloInterval)
	defer t.Stop()
	last := map[string]State{}
	first := true // the registry restored: no change to log yet
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			s.reg.ExpireReservations(now)
			v := s.view.Load()
			// last holds the clusters that are not alive (a cluster not
			// in it is alive), so a sweep of 100,000 live clusters writes
			// no map; the summaries of live clusters are checked by their
			// hellos, so the sweep checks only the others and changes.
			s.reg.Sweep(now, func(c *Cluster, st State) {
				id := c.Hello.ClusterID
				prev, ok := last[id]
				if !ok {
					prev = StateAlive
				}
				if prev != st {
					if !first {
						s.log.Info("cluster state changed", "cluster", id, "from", prev.String(), "to", st.String())
					}
					if st == StateAlive {
						delete(last, id)
					} else {
						last[id] = st
					}
				}
				if v != nil && (st != StateAlive || prev != st) {
					v.check(c, st, now)
				}
			})
			first = false
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

// ClusterURL is the embedded node's route URL (empty without Cluster).
func (s *Server) ClusterURL() string {
	if s.ns == nil || s.cfg.Cluster == nil {
		return ""
	}
	if a := s.ns.ClusterAddr(); a != nil {
		return "nats://" + a.String()
	}
	return ""
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

// Replicas is how many replicas the bucket and the audit stream have (0
// until JetStream is up, or without it).
func (s *Server) Replicas() int { return s.replicas }

// Handler serves /metrics, /healthz, /readyz, /v1/clusters and
// POST /v1/explain.
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
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !s.Serving() {
			http.Error(w, "not serving placements: "+s.serving.why(time.Now(), s.cfg.WarmUp), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "serving")
	})
	mux.HandleFunc("/v1/clusters", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(s.reg.Snapshot(time.Now()))
	})
	mux.HandleFunc("POST /v1/explain", s.serveExplain)
	return mux
}

// serveExplain judges every cluster for the placement request in the body
// and streams one Verdict per line (JSON lines), sorted by cluster id.
func (s *Server) serveExplain(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, MaxMessageSize+1))
	if err != nil {
		http.Error(w, "read body: "+err.Error(), http.StatusBadRequest)
		return
	}
	req, err := DecodePlacementRequest(body)
	if err != nil {
		s.metrics.placements.WithLabelValues("bad_request").Inc()
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Type", "application/jsonl")
	enc := json.NewEncoder(w)
	for _, v := range s.reg.Verdicts(s.policy, req, time.Now()) {
		if err := enc.Encode(v); err != nil {
			return // the client went away
		}
	}
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

// Close leaves the queue group, writes what the compact view lacks and
// shuts NATS down (the embedded server only).
func (s *Server) Close() error {
	s.closeOne.Do(func() {
		if s.httpSrv != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_ = s.httpSrv.Shutdown(ctx)
			cancel()
		}
		s.serving.closing()
		if s.helloSb != nil {
			_ = s.helloSb.Unsubscribe()
		}
		if s.cancel != nil {
			s.cancel()
		}
		s.wg.Wait()
		if v := s.view.Load(); v != nil && s.ncStore.IsConnected() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			v.flush(ctx)
			cancel()
		}
		if s.js != nil && s.ncStore.IsConnected() {
			select {
			case <-s.js.PublishAsyncComplete():
			case <-time.After(5 * time.Second):
			}
		}
		for _, nc := range []*nats.Conn{s.ncHello, s.nc, s.ncStore} {
			if nc == nil {
				continue
			}
			if nc.IsConnected() {
				_ = nc.Drain()
				for i := 0; i < 500 && !nc.IsClosed(); i++ {
					time.Sleep(10 * time.Millisecond)
				}
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

// kill stops the replica as a crash would: the embedded server (and with
// it every client connection) or the replica's connections go at once,
// nothing is flushed; then the goroutines are stopped. For tests.
func (s *Server) kill() {
	if s.ns != nil {
		s.ns.Shutdown()
	}
	for _, nc := range []*nats.Conn{s.ncHello, s.nc, s.ncStore} {
		if nc != nil {
			nc.Close()
		}
	}
	s.Close()
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
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
	// hellosUnchanged counts the accepted hellos taken without decoding.
	hellosUnchanged prometheus.Counter
	placed          prometheus.Counter

	hellos     *prometheus.CounterVec
	placements *prometheus.CounterVec
	viewWrites *prometheus.CounterVec
	natsDenied *prometheus.CounterVec
	latency    prometheus.Histogram
}

func newMetrics(r *prometheus.Registry, reg *Registry, sv *servingState) *metrics {
	m := &metrics{
		hellos: counterVec("roam_meta_hellos_total",
			"Hellos received, by result (accepted, stale, ahead: seq too far ahead, malformed, mismatch, locator_taken: its SRv6 locator overlaps another live cluster's).",
			"result", "accepted", "stale", "ahead", "malformed", "mismatch", "locator_taken"),
		placements: counterVec("roam_meta_placements_total",
			"Placement requests, by result (placed, no_placement, bad_request, forbidden, unavailable: the audit stream is behind, error).",
			"result", "placed", "no_placement", "bad_request", "forbidden", "unavailable", "error"),
		viewWrites: counterVec("roam_meta_view_writes_total",
			"Summaries written to the compact view, by result (written, lost_race: another replica wrote first, error).",
			"result", "written", "lost_race", "error"),
		natsDenied: counterVec("roam_meta_nats_denied_total",
			"Clients the embedded NATS server refused, by reason (authentication, publish or subscribe outside the user's permissions, tls).",
			"reason", DeniedAuthentication, DeniedPublish, DeniedSubscribe, DeniedTLS),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "roam_meta_placement_seconds", Help: "Time to decide and answer a placement request.",
			Buckets: []float64{25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 50e-3, 0.25, 1},
		}),
		hellosUnchanged: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "roam_meta_hellos_unchanged_total",
			Help: "Accepted hellos that differed from the cluster's last one only in seq and sent_at: taken without decoding (also counted in roam_meta_hellos_total{result=\"accepted\"}).",
		}),
	}
	m.hellosAccepted, m.hellosStale = m.hellos.WithLabelValues("accepted"), m.hellos.WithLabelValues("stale")
	m.placed = m.placements.WithLabelValues("placed")
	r.MustRegister(m.hellos, m.hellosUnchanged, m.placements, m.viewWrites, m.natsDenied, m.latency, clusterCollector{reg: reg},
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "roam_meta_reservations", Help: "Placements counted against their destination until its hellos show them.",
		}, func() float64 { return float64(reg.Reservations()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "roam_meta_serving", Help: "1 while this replica answers placements (in the queue group), 0 while it warms up or is disconnected.",
		}, func() float64 {
			if sv.isServing() {
				return 1
			}
			return 0
		}))
	return m
}

// counterVec is a counter by one label, each of values exported from the
// start (at 0).
func counterVec(name, help, label string, values ...string) *prometheus.CounterVec {
	v := prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, []string{label})
	for _, x := range values {
		v.WithLabelValues(x)
	}
	return v
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
