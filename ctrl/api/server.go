// Package api is the cluster controller's REST API (JSON): the user routes
// (deploy, list, get, delete, migrate, migrations), the controller-to-
// controller routes under /v1/peer, /healthz, /readyz and /metrics; and the peer
// client other controllers use.
//
// Who calls is established once, in handle: a controller by the client
// certificate it presents (its cluster's identity, see ctrl/pki), a user by
// a bearer token of the users file (each with a role). A peer's identity
// opens only peer routes and a user's only user routes; each peer route
// then lets a peer act only as itself (authz.go). Every refusal is a 401 or
// 403 counted in roam_ctrl_auth_denied_total{reason}. A call on a service
// that runs abroad is forwarded to the cluster running it, on a peer route.
package api

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/roamnet/roam/ctrl"
	"github.com/roamnet/roam/ctrl/migrate"
	"github.com/roamnet/roam/ctrl/pki"
	"github.com/roamnet/roam/internal/httpjson"
)

// MaxBody bounds every request body.
const MaxBody = 1 << 20

// Error reasons (label of roam_ctrl_api_errors_total).
const (
	ReasonBadJSON      = "bad_json"
	ReasonInvalid      = "invalid"
	ReasonUnauthorized = "unauthorized"
	ReasonForbidden    = "forbidden"
	ReasonNotFound     = "not_found"
	ReasonConflict     = "conflict"
	ReasonUpstream     = "upstream"
	ReasonUnsettled    = "unsettled"
	ReasonRecovering   = "recovering"
	ReasonInternal     = "internal"
)

var reasons = []string{ReasonBadJSON, ReasonInvalid, ReasonUnauthorized, ReasonForbidden, ReasonNotFound, ReasonConflict,
	ReasonUpstream, ReasonUnsettled, ReasonRecovering, ReasonInternal}

func knownReason(r string) bool {
	for _, k := range reasons {
		if r == k {
			return true
		}
	}
	return false
}

// Config configures the server.
type Config struct {
	Engine *migrate.Engine
	// Users are the users and their roles (nil or empty: every user route
	// is refused).
	Users *Users
	// TLS is this cluster's identity: it verifies the certificates peers
	// present (nil: peer routes are refused).
	TLS *pki.Source
	// Peers calls other controllers (forwarding, and asking a home whether
	// a caller hosts its service); its directory also checks moved-on
	// notices.
	Peers *PeerClient
	// AllowCommand lets users deploy a service given as a command line
	// (the local backend runs it on this host). Peers never may.
	AllowCommand bool
	// Ready answers /readyz: whether the controller can serve its peers
	// and why (nil: always ready once it serves). /healthz stays the
	// liveness answer.
	Ready      func() (bool, any)
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
	denied *prometheus.CounterVec
	// unknown counts peer requests carrying fields this version does
	// not know (skipped; see decode), by route.
	unknown *prometheus.CounterVec
}

// access is who may call a route.
type access int

const (
	accessNone    access = iota // anyone (/healthz, /readyz, /metrics)
	accessRead                  // a user with the read or operate role
	accessOperate               // a user with the operate role
	accessPeer                  // another controller, by its certificate
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
		denied: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "roam_ctrl_auth_denied_total",
			Help: "Controller API calls refused for who made them (401/403), by reason."}, []string{"reason"}),
		unknown: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "roam_ctrl_api_unknown_fields_total",
			Help: "Peer requests carrying fields this version does not know (skipped: a newer peer's), by route."}, []string{"route"}),
	}
	for _, r := range reasons {
		s.errs.WithLabelValues(r)
	}
	for _, r := range denyReasons {
		s.denied.WithLabelValues(r)
	}
	if cfg.Registerer != nil {
		for _, c := range []prometheus.Collector{s.errs, s.reqs, s.denied, s.unknown} {
			if err := cfg.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("register api metrics: %w", err)
			}
		}
	}
	s.handle("POST /v1/services", accessOperate, s.deploy)
	s.handle("GET /v1/services", accessRead, s.list)
	s.handle("GET /v1/services/{name}", accessRead, s.get)
	s.handle("DELETE /v1/services/{name}", accessOperate, s.delete)
	s.handle("POST /v1/services/{name}/migrate", accessOperate, s.migrate)
	s.handle("GET /v1/migrations", accessRead, s.migrations)
	s.handle("POST /v1/peer/foreign", accessPeer, s.peerDeploy)
	s.handle("DELETE /v1/peer/foreign/{name}", accessPeer, s.peerRemove)
	s.handle("POST /v1/peer/foreign/{name}/drained", accessPeer, s.peerDrained)
	s.handle("POST /v1/peer/srv6-gone/{name}", accessPeer, s.peerSRv6Gone)
	s.handle("POST /v1/peer/moved-on", accessPeer, s.peerMovedOn)
	s.handle("GET /v1/peer/where/{name}", accessPeer, s.peerWhere)
	s.handle("GET /v1/peer/health", accessPeer, s.peerHealth)
	s.handle("GET /v1/peer/services/{name}", accessPeer, s.peerGet)
	s.handle("POST /v1/peer/services/{name}/migrate", accessPeer, s.peerMigrate)
	s.handle("GET /healthz", accessNone, func(w http.ResponseWriter, r *http.Request) error {
		return reply(w, http.StatusOK, map[string]string{"status": "ok", "cluster": cfg.Engine.ClusterID()})
	})
	s.handle("GET /readyz", accessNone, func(w http.ResponseWriter, r *http.Request) error {
		ready, detail := true, any(nil)
		if cfg.Ready != nil {
			ready, detail = cfg.Ready()
		}
		if !ready {
			return reply(w, http.StatusServiceUnavailable, map[string]any{"status": "not ready", "cluster": cfg.Engine.ClusterID(), "detail": detail})
		}
		return reply(w, http.StatusOK, map[string]any{"status": "ready", "cluster": cfg.Engine.ClusterID(), "detail": detail})
	})
	g := cfg.Gatherer
	if g == nil {
		g = prometheus.DefaultGatherer
	}
	mh := promhttp.HandlerFor(g, promhttp.HandlerOpts{})
	s.handle("GET /metrics", accessNone, func(w http.ResponseWriter, r *http.Request) error { mh.ServeHTTP(w, r); return nil })
	s.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		s.fail(w, apiErr(http.StatusNotFound, ReasonNotFound, "no route %s %s", r.Method, r.URL.Path))
	})
	return s, nil
}

// Handler is the HTTP handler.
func (s *Server) Handler() http.Handler { return s.mux }

// Routes lists "METHOD /path" of every route (checked against openapi.yaml).
func (s *Server) Routes() []string { return append([]string(nil), s.routes...) }

func (s *Server) handle(pattern string, a access, h func(http.ResponseWriter, *http.Request) error) {
	s.routes = append(s.routes, pattern)
	s.mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		sw := httpjson.NewStatusWriter(w)
		defer func() { s.reqs.WithLabelValues(pattern, fmt.Sprint(sw.Code)).Inc() }()
		r.Body = http.MaxBytesReader(sw, r.Body, MaxBody)
		caller, err := s.authenticate(r, a)
		if err != nil {
			s.fail(sw, err)
			return
		}
		r = r.WithContext(context.WithValue(r.Context(), callerKey{}, caller))
		if err := h(sw, r); err != nil {
			s.fail(sw, err)
		}
	})
}

// callerKey holds the verified ctrl.Caller in a request's context.
type callerKey struct{}

// callerOf is who made r, as authenticate verified it.
func callerOf(r *http.Request) ctrl.Caller {
	c, _ := r.Context().Value(callerKey{}).(ctrl.Caller)
	return c
}

// authenticate establishes who made r and whether that kind of caller may
// use the route: a peer by its verified certificate (peer routes only), a
// user by its token and role (user routes only).
func (s *Server) authenticate(r *http.Request, a access) (ctrl.Caller, error) {
	if a == accessNone {
		return ctrl.Caller{}, nil
	}
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		if s.cfg.TLS == nil {
			return ctrl.Caller{}, s.deny(http.StatusUnauthorized, DenyBadCertificate, "client certificates are not accepted here (no --tls-dir)")
		}
		id, err := s.cfg.TLS.Verify(r.TLS.PeerCertificates, x509.ExtKeyUsageClientAuth)
		if err != nil {
			return ctrl.Caller{}, s.deny(http.StatusUnauthorized, DenyBadCertificate, "%v", err)
		}
		switch {
		case id.IsNode():
			return ctrl.Caller{}, s.deny(http.StatusForbidden, DenyNotController, "%s is a node, not a controller", id)
		case id.Cluster == s.cfg.Engine.ClusterID():
			return ctrl.Caller{}, s.deny(http.StatusForbidden, DenySelf, "%s is this cluster's own identity", id)
		case a != accessPeer:
			return ctrl.Caller{}, s.deny(http.StatusForbidden, DenyPeerOnUserRoute, "%s is a controller: user routes take a user's token", id)
		}
		return ctrl.Caller{Cluster: id.Cluster}, nil
	}
	if a == accessPeer {
		if s.cfg.TLS == nil {
			return ctrl.Caller{}, s.deny(http.StatusForbidden, DenyPeerDisabled, "peer calls are disabled (no --tls-dir)")
		}
		return ctrl.Caller{}, s.deny(http.StatusUnauthorized, DenyNoCertificate, "peer route: a controller's client certificate is required")
	}
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	switch {
	case !ok || tok == "":
		return ctrl.Caller{}, s.deny(http.StatusUnauthorized, DenyNoCredentials, "a bearer token is required")
	case strings.HasPrefix(tok, "roam1."):
		return ctrl.Caller{}, s.deny(http.StatusUnauthorized, DenyPeerToken, "shared-secret peer tokens are no longer accepted")
	}
	u, found := s.cfg.Users.lookup(tok)
	if !found {
		return ctrl.Caller{}, s.deny(http.StatusUnauthorized, DenyBadToken, "unknown token")
	}
	need := RoleRead
	if a == accessOperate {
		need = RoleOperate
	}
	if !u.Role.allows(need) {
		return ctrl.Caller{}, s.deny(http.StatusForbidden, DenyRole, "user %s has the %s role; this route needs %s", u.Name, u.Role, need)
	}
	return ctrl.Caller{}, nil
}

// Error is an API error: its status, reason and message.
type Error = httpjson.Error

func apiErr(status int, reason, format string, args ...any) *Error {
	return httpjson.Errorf(status, reason, format, args...)
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

func reply(w http.ResponseWriter, status int, v any) error { return httpjson.Reply(w, status, v) }

// decode reads the request body into v (its size is bounded in handle).
// A peer's body (a controller's, by its certificate) may carry fields this
// version does not know: another domain's cluster may run a newer roam
// (clusters of different domains upgrade at different times), so they are
// skipped, logged and counted (roam_ctrl_api_unknown_fields_total).
// Everything else stays strict for peers too: size, malformed JSON, a
// value of the wrong type, trailing data. A user's body stays strict: its
// client is the operator's, of this installation, where an unknown field
// is a typo to report (a misspelt "destination" must not move a service
// to where the MO likes).
func (s *Server) decode(r *http.Request, v any) error {
	if callerOf(r).Cluster == "" {
		if err := httpjson.Decode(r.Body, v); err != nil {
			return apiErr(http.StatusBadRequest, ReasonBadJSON, "decode request body: %v", err)
		}
		return nil
	}
	unknown, err := httpjson.DecodeTolerant(r.Body, v)
	if err != nil {
		return apiErr(http.StatusBadRequest, ReasonBadJSON, "decode request body: %v", err)
	}
	if unknown != "" {
		s.unknown.WithLabelValues(r.Pattern).Inc()
		s.log.Info("peer request with a field this version does not know, skipped",
			"route", r.Pattern, "peer", callerOf(r).Cluster, "field", unknown)
	}
	return nil
}

// forwarded reports whether the request came from another controller
// (forwarded calls are never forwarded again).
func forwarded(r *http.Request) bool { return r.Header.Get(headerForwarded) != "" }

func (s *Server) deploy(w http.ResponseWriter, r *http.Request) error {
	var d ctrl.Descriptor
	if err := s.decode(r, &d); err != nil {
		return err
	}
	if len(d.Command) > 0 && !s.cfg.AllowCommand {
		return s.deny(http.StatusForbidden, DenyCommand, "a service given as a command runs on this host: roam-ctrl --allow-command enables it")
	}
	rec, err := s.cfg.Engine.Deploy(r.Context(), d)
	if err != nil {
		return err
	}
	return reply(w, http.StatusCreated, rec)
}

func (s *Server) list(w http.ResponseWriter, r *http.Request) error {
	recs, err := s.cfg.Engine.List()
	return httpjson.ReplyList(w, recs, err)
}

func (s *Server) get(w http.ResponseWriter, r *http.Request) error {
	rec, err := s.cfg.Engine.Get(r.PathValue("name"))
	if err != nil {
		return err
	}
	if rec.Kind == ctrl.KindAbroad && !forwarded(r) && r.URL.Query().Get("local") == "" {
		// Answer as the cluster running it does.
		base, _ := s.cfg.Peers.Dir.ControllerURL(rec.Cluster)
		if out, err := s.cfg.Peers.get(r.Context(), base, rec.Service.Name); err == nil {
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
		if err := s.decode(r, &req); err != nil {
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
	return httpjson.ReplyList(w, ms, err)
}
