// Package api is the cluster controller's REST API (JSON): the user routes
// (deploy, list, get, delete, migrate, migrations), the controller-to-
// controller routes under /v1/peer, /healthz and /metrics; and the peer
// client other controllers use. Users authenticate with a bearer token;
// controllers with HMAC-signed, expiring tokens from a shared secret. A
// call on a service that runs abroad is forwarded to the cluster running it.
package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/roamnet/roam/ctrl"
	"github.com/roamnet/roam/ctrl/migrate"
)

const maxBody = 1 << 20

// Error reasons (label of roam_ctrl_api_errors_total).
const (
	ReasonBadJSON      = "bad_json"
	ReasonInvalid      = "invalid"
	ReasonUnauthorized = "unauthorized"
	ReasonNotFound     = "not_found"
	ReasonConflict     = "conflict"
	ReasonUpstream     = "upstream"
	ReasonUnsettled    = "unsettled"
	ReasonRecovering   = "recovering"
	ReasonInternal     = "internal"
)

// Config configures the server.
type Config struct {
	Engine *migrate.Engine
	// Token is the users' bearer token (empty: user routes are open).
	Token string
	// PeerSecret signs and checks controller-to-controller tokens.
	PeerSecret string
	Peers      *PeerClient
	Gatherer   prometheus.Gatherer
	Registerer prometheus.Registerer
	Logger     *slog.Logger
}

// Server serves the API.
type Server struct {
	cfg    Config
	log    *slog.Logger
	mux    *http.ServeMux
	routes []string
	errs   *prometheus.CounterVec
	reqs   *prometheus.CounterVec
}

type auth int

const (
	authNone auth = iota
	authUser      // user token or peer token
	authPeer      // peer token only
)

// NewServer builds the server and its routes.
func NewServer(cfg Config) (*Server, error) {
	if cfg.Engine == nil || cfg.Peers == nil {
		return nil, errors.New("new api server: engine and peer client are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	s := &Server{cfg: cfg, log: cfg.Logger, mux: http.NewServeMux(),
		errs: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "roam_ctrl_api_errors_total",
			Help: "Controller API requests refused or failed, by reason."}, []string{"reason"}),
		reqs: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "roam_ctrl_api_requests_total",
			Help: "Controller API requests by route and status code."}, []string{"route", "code"}),
	}
	for _, r := range []string{ReasonBadJSON, ReasonInvalid, ReasonUnauthorized, ReasonNotFound, ReasonConflict, ReasonUpstream, ReasonUnsettled, ReasonRecovering, ReasonInternal} {
		s.errs.WithLabelValues(r)
	}
	if cfg.Registerer != nil {
		for _, c := range []prometheus.Collector{s.errs, s.reqs} {
			if err := cfg.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("register api metrics: %w", err)
			}
		}
	}
	s.handle("POST /v1/services", authUser, s.deploy)
	s.handle("GET /v1/services", authUser, s.list)
	s.handle("GET /v1/services/{name}", authUser, s.get)
	s.handle("DELETE /v1/services/{name}", authUser, s.delete)
	s.handle("POST /v1/services/{name}/migrate", authUser, s.migrate)
	s.handle("GET /v1/migrations", authUser, s.migrations)
	s.handle("POST /v1/peer/foreign", authPeer, s.peerDeploy)
	s.handle("DELETE /v1/peer/foreign/{name}", authPeer, s.peerRemove)
	s.handle("POST /v1/peer/moved-on", authPeer, s.peerMovedOn)
	s.handle("GET /v1/peer/where/{name}", authPeer, s.peerWhere)
	s.handle("GET /v1/peer/health", authPeer, s.peerHealth)
	s.handle("GET /healthz", authNone, func(w http.ResponseWriter, r *http.Request) error {
		return reply(w, http.StatusOK, map[string]string{"status": "ok", "cluster": cfg.Engine.ClusterID()})
	})
	g := cfg.Gatherer
	if g == nil {
		g = prometheus.DefaultGatherer
	}
	mh := promhttp.HandlerFor(g, promhttp.HandlerOpts{})
	s.handle("GET /metrics", authNone, func(w http.ResponseWriter, r *http.Request) error { mh.ServeHTTP(w, r); return nil })
	s.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		s.fail(w, apiErr(http.StatusNotFound, ReasonNotFound, "no route %s %s", r.Method, r.URL.Path))
	})
	return s, nil
}

// Handler is the HTTP handler.
func (s *Server) Handler() http.Handler { return s.mux }

// Routes lists "METHOD /path" of every route (checked against openapi.yaml).
func (s *Server) Routes() []string { return append([]string(nil), s.routes...) }

type statusWriter struct {
	http.ResponseWriter
	code int
}

func (w *statusWriter) WriteHeader(c int) { w.code = c; w.ResponseWriter.WriteHeader(c) }

func (s *Server) handle(pattern string, a auth, h func(http.ResponseWriter, *http.Request) error) {
	s.routes = append(s.routes, pattern)
	s.mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		sw := &statusWriter{ResponseWriter: w, code: http.StatusOK}
		defer func() { s.reqs.WithLabelValues(pattern, fmt.Sprint(sw.code)).Inc() }()
		caller, err := s.authorize(r, a)
		if err != nil {
			s.fail(sw, err)
			return
		}
		r = r.WithContext(context.WithValue(r.Context(), callerKey{}, caller))
		r.Body = http.MaxBytesReader(sw, r.Body, maxBody)
		if err := h(sw, r); err != nil {
			s.fail(sw, err)
		}
	})
}

// callerKey holds the verified ctrl.Caller in a request's context.
type callerKey struct{}

// callerOf is who made r, as authorize verified it.
func callerOf(r *http.Request) ctrl.Caller {
	c, _ := r.Context().Value(callerKey{}).(ctrl.Caller)
	return c
}

// authorize checks r's credentials and returns who made it (the cluster a
// peer token names; the zero Caller for a user).
func (s *Server) authorize(r *http.Request, a auth) (ctrl.Caller, error) {
	if a == authNone {
		return ctrl.Caller{}, nil
	}
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if s.cfg.PeerSecret != "" && ok && strings.HasPrefix(tok, peerTokenPrefix) {
		cluster, err := VerifyPeerToken(s.cfg.PeerSecret, tok, time.Now())
		if err != nil {
			return ctrl.Caller{}, apiErr(http.StatusUnauthorized, ReasonUnauthorized, "peer token: %v", err)
		}
		return ctrl.Caller{Cluster: cluster}, nil
	}
	if a == authPeer {
		if s.cfg.PeerSecret == "" {
			return ctrl.Caller{}, apiErr(http.StatusForbidden, ReasonUnauthorized, "peer calls are disabled (no --peer-secret)")
		}
		return ctrl.Caller{}, apiErr(http.StatusUnauthorized, ReasonUnauthorized, "peer route: a signed controller token is required")
	}
	if s.cfg.Token == "" {
		return ctrl.Caller{}, nil
	}
	if !ok || !constantEq(tok, s.cfg.Token) {
		return ctrl.Caller{}, apiErr(http.StatusUnauthorized, ReasonUnauthorized, "missing or wrong bearer token")
	}
	return ctrl.Caller{}, nil
}

// Error is an API error: its status, reason and message.
type Error struct {
	Status int    `json:"-"`
	Reason string `json:"reason"`
	Msg    string `json:"error"`
}

func (e *Error) Error() string { return e.Msg }

func apiErr(status int, reason, format string, args ...any) *Error {
	return &Error{Status: status, Reason: reason, Msg: fmt.Sprintf(format, args...)}
}

// classify maps engine errors to HTTP.
func classify(err error) *Error {
	var ae *Error
	switch {
	case errors.As(err, &ae):
		return ae
	case errors.Is(err, migrate.ErrInvalid):
		return apiErr(http.StatusBadRequest, ReasonInvalid, "%v", err)
	case errors.Is(err, migrate.ErrNotFound):
		return apiErr(http.StatusNotFound, ReasonNotFound, "%v", err)
	case errors.Is(err, migrate.ErrRecovering):
		return apiErr(http.StatusServiceUnavailable, ReasonRecovering, "%v", err)
	case errors.Is(err, migrate.ErrUnsettled):
		return apiErr(http.StatusServiceUnavailable, ReasonUnsettled, "%v", err)
	case errors.Is(err, migrate.ErrConflict):
		return apiErr(http.StatusConflict, ReasonConflict, "%v", err)
	}
	var pe *PeerError
	if errors.As(err, &pe) {
		if pe.Status >= 400 && pe.Status < 500 {
			return apiErr(pe.Status, pe.Reason, "%v", err)
		}
		return apiErr(http.StatusBadGateway, ReasonUpstream, "%v", err)
	}
	return apiErr(http.StatusInternalServerError, ReasonInternal, "%v", err)
}

func (s *Server) fail(w http.ResponseWriter, err error) {
	e := classify(err)
	s.errs.WithLabelValues(e.Reason).Inc()
	if e.Status == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", "1") // being recovered or settled: ask again shortly
	}
	if e.Status >= 500 {
		s.log.Warn("api error", "err", err)
	}
	_ = reply(w, e.Status, e)
}

func reply(w http.ResponseWriter, status int, v any) error {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	return json.NewEncoder(w).Encode(v)
}

func decode(r *http.Request, v any) error {
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return apiErr(http.StatusBadRequest, ReasonBadJSON, "decode request body: %v", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return apiErr(http.StatusBadRequest, ReasonBadJSON, "decode request body: trailing data")
	}
	return nil
}

// forwarded reports whether the request came from another controller
// (forwarded calls are never forwarded again).
func forwarded(r *http.Request) bool { return r.Header.Get(headerForwarded) != "" }

func (s *Server) deploy(w http.ResponseWriter, r *http.Request) error {
	var d ctrl.Descriptor
	if err := decode(r, &d); err != nil {
		return err
	}
	rec, err := s.cfg.Engine.Deploy(r.Context(), d)
	if err != nil {
		return err
	}
	return reply(w, http.StatusCreated, rec)
}

func (s *Server) list(w http.ResponseWriter, r *http.Request) error {
	recs, err := s.cfg.Engine.List()
	if err != nil {
		return err
	}
	if recs == nil {
		recs = []ctrl.Record{}
	}
	return reply(w, http.StatusOK, recs)
}

func (s *Server) get(w http.ResponseWriter, r *http.Request) error {
	rec, err := s.cfg.Engine.Get(r.PathValue("name"))
	if err != nil {
		return err
	}
	if rec.Kind == ctrl.KindAbroad && !forwarded(r) && r.URL.Query().Get("local") == "" {
		// Answer as the cluster running it does.
		var out ctrl.Record
		if err := s.cfg.Peers.do(r.Context(), http.MethodGet, rec.ClusterURL, "/v1/services/"+rec.Service.Name, nil, &out); err == nil {
			w.Header().Set("X-Roam-Served-By", rec.Cluster)
			return reply(w, http.StatusOK, out)
		} else {
			s.log.Warn("forward get, answering from the home record", "service", rec.Service.Name, "cluster", rec.Cluster, "err", err)
		}
	}
	return reply(w, http.StatusOK, rec)
}

func (s *Server) delete(w http.ResponseWriter, r *http.Request) error {
	if err := s.cfg.Engine.Delete(r.Context(), r.PathValue("name")); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *Server) migrate(w http.ResponseWriter, r *http.Request) error {
	var req ctrl.MigrateRequest
	if r.ContentLength != 0 {
		if err := decode(r, &req); err != nil {
			return err
		}
	}
	if req.Destination != "" {
		if err := validID(req.Destination); err != nil {
			return apiErr(http.StatusBadRequest, ReasonInvalid, "destination: %v", err)
		}
	}
	m, err := s.cfg.Engine.Migrate(r.Context(), r.PathValue("name"), req)
	if errors.Is(err, migrate.ErrUnsettled) {
		return reply(w, http.StatusAccepted, m) // settled later, see GET /v1/migrations
	}
	if err != nil {
		if m.ID != "" && !errors.Is(err, migrate.ErrInvalid) && !errors.Is(err, migrate.ErrNotFound) {
			// The migration ran and failed (rolled back): report it.
			return reply(w, http.StatusConflict, m)
		}
		return err
	}
	return reply(w, http.StatusOK, m)
}

func (s *Server) migrations(w http.ResponseWriter, r *http.Request) error {
	ms, err := s.cfg.Engine.Migrations()
	if err != nil {
		return err
	}
	if ms == nil {
		ms = []ctrl.Migration{}
	}
	return reply(w, http.StatusOK, ms)
}

func (s *Server) peerDeploy(w http.ResponseWriter, r *http.Request) error {
	var req ctrl.ForeignRequest
	if err := decode(r, &req); err != nil {
		return err
	}
	rep, err := s.cfg.Engine.DeployForeign(r.Context(), callerOf(r), req)
	if err != nil {
		return err
	}
	return reply(w, http.StatusOK, rep)
}

func (s *Server) peerRemove(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	if q.Get("home") == "" {
		return apiErr(http.StatusBadRequest, ReasonInvalid, "query parameter home is required")
	}
	epoch := ctrl.Epoch{MigrationID: q.Get("migration_id")}
	if v := q.Get("epoch"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return apiErr(http.StatusBadRequest, ReasonInvalid, "query parameter epoch: %v", err)
		}
		epoch.N = n
	}
	if err := s.cfg.Engine.RemoveForeign(r.Context(), callerOf(r), r.PathValue("name"), q.Get("home"), epoch); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *Server) peerMovedOn(w http.ResponseWriter, r *http.Request) error {
	var n ctrl.MovedOn
	if err := decode(r, &n); err != nil {
		return err
	}
	if n.Service == "" || n.Epoch.MigrationID == "" || validID(n.From) != nil || validID(n.To) != nil {
		return apiErr(http.StatusBadRequest, ReasonInvalid, "moved-on: service, epoch.migration_id, from and to are required")
	}
	m, err := s.cfg.Engine.MovedOn(r.Context(), callerOf(r), n)
	if errors.Is(err, migrate.ErrCrash) {
		panic(http.ErrAbortHandler) // the test hook: drop the connection as a killed process would
	}
	if err != nil {
		return err
	}
	return reply(w, http.StatusOK, m)
}

func (s *Server) peerWhere(w http.ResponseWriter, r *http.Request) error {
	wh, err := s.cfg.Engine.Where(r.Context(), callerOf(r), r.PathValue("name"))
	if err != nil {
		return err
	}
	return reply(w, http.StatusOK, wh)
}

func (s *Server) peerHealth(w http.ResponseWriter, r *http.Request) error {
	return reply(w, http.StatusOK, s.cfg.Engine.Health())
}
