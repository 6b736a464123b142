// Package agentapi is the channel between a controller and the roam-agent on
// every node: an HTTP+JSON server that wraps the node's data plane and a
// client, plus Group, which drives several nodes' agents in two phases
// (stage everywhere, abort all on any failure; then commit everywhere).
//
// Routes (JSON in and out; errors are {"error": "...", "reason": "..."}):
//
//	GET  /v1/services                    → [Service]
//	GET  /v1/services/{frontend}         → Service   (frontend in text form, path-escaped)
//	POST /v1/stage  {frontend, target}   → {generation}
//	POST /v1/commit {frontend, generation} → Service (generation 0 = whatever is staged)
//	POST /v1/abort  {frontend, generation} → {} (generation 0 = whatever is staged)
//	POST /v1/stages {stages: [{frontend, target}]} → {generations} (all or nothing)
//	POST /v1/commits {commits: [{frontend, generation}]} → {}
//	POST /v1/reroute {stages: [{frontend, target}]} → {generations, stage_us, commit_us, agent_us,
//	                                     received_unix_ns, answered_unix_ns}
//	                                     (stages all, all or nothing, then commits all: a
//	                                     node's whole reroute in one call; an error that
//	                                     committed nothing says "outcome": "not_committed")
//	POST /v1/remove {frontend}           → {}
//	GET  /v1/flows?frontend=&target=     → {flows}
//	POST /v1/srv6/copies, /v1/srv6/returns → {} (SRv6 path mode at a location: srv6.go)
//	GET  /v1/srv6/node → {sid, locators} (the node's SRv6 setup: srv6.go)
//	GET  /healthz                        → {"status": "ok"}
package agentapi

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/roamnet/roam/ctrl/pki"
	"github.com/roamnet/roam/dataplane/lb"
	"github.com/roamnet/roam/internal/httpjson"
)

// Dataplane is what the server needs from a node's data plane;
// *dataplane.Dataplane implements it.
type Dataplane interface {
	Stage(f lb.Frontend, t lb.Target) (uint64, error)
	Commit(f lb.Frontend, gen uint64) error
	Abort(f lb.Frontend, gen uint64) error
	Remove(f lb.Frontend) error
	List() ([]lb.Service, error)
	Get(f lb.Frontend) (lb.Service, error)
	Flows(f lb.Frontend, t lb.Target) (int, error)
}

// Error reasons: the label values of roam_agent_api_errors_total and the
// "reason" field of an error reply.
const (
	ReasonBadJSON      = "bad_json"
	ReasonBadFrontend  = "bad_frontend"
	ReasonBadTarget    = "bad_target"
	ReasonUnauthorized = "unauthorized"
	ReasonNotFound     = "not_found"
	ReasonConflict     = "conflict"
	ReasonInternal     = "internal"
	ReasonBadRequest   = "bad_request"
	ReasonForbidden    = "forbidden"
	// ReasonCommitFailed: a /v1/reroute staged every frontend, then a
	// commit failed; the others' commits stand (the frontends that
	// failed are left staged, aborted when possible).
	ReasonCommitFailed = "commit_failed"
)

// OutcomeNotCommitted is the "outcome" of a /v1/reroute's error reply
// when the agent committed nothing (the call was refused, or a stage
// failed and what it staged was aborted): the old targets still serve.
// An error reply without it (ReasonCommitFailed, an agent that does not
// say, a proxy's) leaves unknown what the node committed.
const OutcomeNotCommitted = "not_committed"

// errorReply is an error's wire form: httpjson.Error's, and the outcome
// of a /v1/reroute that committed nothing.
type errorReply struct {
	Msg     string `json:"error"`
	Reason  string `json:"reason"`
	Outcome string `json:"outcome,omitempty"`
}

// uncommitted marks an error after which the call committed nothing.
type uncommitted struct{ error }

func (u uncommitted) Unwrap() error { return u.error }

// maxBody bounds a request body.
const maxBody = 64 << 10

// ServerConfig configures a Server.
type ServerConfig struct {
	// TLS, when set, is the node's identity (ctrl/pki): every /v1 route
	// then requires a client certificate of this installation naming this
	// node's cluster's controller (spiffe://roam/cluster/<id>); a node's or
	// another cluster's certificate is refused.
	TLS *pki.Source
	// Token, when set, is required as "Authorization: Bearer TOKEN" on every
	// /v1 route (not on /healthz): for in-process tests on loopback; a
	// deployed agent uses TLS.
	Token string
	// Registerer receives the API's metrics; nil means none are registered
	// (they are still counted).
	Registerer prometheus.Registerer
	Logger     *slog.Logger
}

// Server serves the agent API over a Dataplane.
type Server struct {
	dp     Dataplane
	tls    *pki.Source
	token  string
	log    *slog.Logger
	mux    *http.ServeMux
	errors *prometheus.CounterVec
	reqs   *prometheus.CounterVec
	dur    *prometheus.HistogramVec

	vmu      sync.Mutex
	verified map[string]verified            // by the SHA-256 of the caller's chain
	byLeaf   map[*x509.Certificate]verified // by the leaf of a connection's chain (one per connection)
	own      string                         // this node's cluster (ownCluster)
	ownLoads int                            // the identity files' version own was read from
}

// NewServer builds a Server; Handler gives its http.Handler.
func NewServer(dp Dataplane, cfg ServerConfig) (*Server, error) {
	s := &Server{
		dp:       dp,
		tls:      cfg.TLS,
		token:    cfg.Token,
		log:      cfg.Logger,
		mux:      http.NewServeMux(),
		verified: map[string]verified{},
		byLeaf:   map[*x509.Certificate]verified{},
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "roam_agent_api_errors_total",
			Help: "Agent API requests that failed, by reason.",
		}, []string{"reason"}),
		reqs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "roam_agent_api_requests_total",
			Help: "Agent API requests, by route and HTTP status code.",
		}, []string{"route", "code"}),
		dur: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "roam_agent_api_request_duration_seconds",
			Help:    "Agent API request latency, by route.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 4, 9),
		}, []string{"route"}),
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	for _, r := range []string{ReasonBadJSON, ReasonBadFrontend, ReasonBadTarget, ReasonUnauthorized,
		ReasonNotFound, ReasonConflict, ReasonInternal, ReasonBadRequest, ReasonForbidden, ReasonCommitFailed} {
		s.errors.WithLabelValues(r) // export zeros so rates work from the start
	}
	if cfg.Registerer != nil {
		for _, c := range []prometheus.Collector{s.errors, s.reqs, s.dur} {
			if err := cfg.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("register agent api metrics: %w", err)
			}
		}
	}
	s.route("GET /v1/services", "services", s.list)
	s.route("GET /v1/services/{frontend...}", "service", s.get)
	s.route("POST /v1/stage", "stage", s.stage)
	s.route("POST /v1/commit", "commit", s.commit)
	s.route("POST /v1/abort", "abort", s.abort)
	s.route("POST /v1/stages", "stages", s.stages)
	s.route("POST /v1/commits", "commits", s.commits)
	s.route("POST /v1/reroute", "reroute", s.reroute)
	s.route("POST /v1/remove", "remove", s.remove)
	s.route("GET /v1/flows", "flows", s.flows)
	s.route("POST /v1/srv6/copies", "srv6_copies", s.srv6Copies)
	s.route("POST /v1/srv6/returns", "srv6_returns", s.srv6Returns)
	s.route("GET /v1/srv6/node", "srv6_node", s.srv6Node)
	s.route("GET /healthz", "healthz", s.healthz)
	s.route("/", "other", func(w http.ResponseWriter, r *http.Request) error {
		if m, ok := methods[r.URL.Path]; ok {
			w.Header().Set("Allow", m)
			return apiErr(http.StatusMethodNotAllowed, ReasonBadRequest, "route %s: method %s not allowed, use %s", r.URL.Path, r.Method, m)
		}
		return apiErr(http.StatusNotFound, ReasonNotFound, "no route %s %s", r.Method, r.URL.Path)
	})
	return s, nil
}

// Handler returns the HTTP handler of the API.
func (s *Server) Handler() http.Handler { return s.mux }

// methods names the method of each fixed route, for 405 replies.
var methods = map[string]string{
	"/v1/services": http.MethodGet, "/v1/stage": http.MethodPost, "/v1/commit": http.MethodPost,
	"/v1/abort": http.MethodPost, "/v1/stages": http.MethodPost, "/v1/commits": http.MethodPost, "/v1/reroute": http.MethodPost, "/v1/remove": http.MethodPost, "/v1/flows": http.MethodGet, "/healthz": http.MethodGet,
	"/v1/srv6/copies": http.MethodPost, "/v1/srv6/returns": http.MethodPost, "/v1/srv6/node": http.MethodGet,
}

func apiErr(status int, reason, format string, args ...any) error {
	return httpjson.Errorf(status, reason, format, args...)
}

func (s *Server) route(pattern, name string, h func(http.ResponseWriter, *http.Request) error) {
	// The route's series, looked up once (a call's own then costs no
	// label lookup: the usual answer's counter and the latency's).
	ok, dur := s.reqs.WithLabelValues(name, "200"), s.dur.WithLabelValues(name)
	s.mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		// Counted when the status is written, before the answer can
		// reach the caller (a handler may send it before its end).
		sw := &statusWriter{ResponseWriter: w, Code: http.StatusOK, start: start, head: func(code int) {
			if code == http.StatusOK {
				ok.Inc()
			} else {
				s.reqs.WithLabelValues(name, strconv.Itoa(code)).Inc()
			}
			dur.Observe(time.Since(start).Seconds())
		}}
		err := s.authorize(r, name)
		if err != nil {
			err = uncommitted{err} // refused: nothing made
		} else {
			err = h(sw, r)
		}
		if err != nil {
			var ae *httpjson.Error
			if !errors.As(err, &ae) {
				ae = &httpjson.Error{Status: http.StatusInternalServerError, Reason: ReasonInternal, Msg: err.Error()}
			}
			s.errors.WithLabelValues(ae.Reason).Inc()
			s.log.Warn("agent api request failed", "method", r.Method, "path", r.URL.Path,
				"status", ae.Status, "reason", ae.Reason, "err", ae.Msg)
			reply := errorReply{Msg: ae.Msg, Reason: ae.Reason}
			if u := (uncommitted{}); name == "reroute" && errors.As(err, &u) {
				reply.Outcome = OutcomeNotCommitted
			}
			writeJSON(sw, ae.Status, reply)
		}
		sw.counted() // a handler that wrote no status: 200
	})
}

func (s *Server) authorize(r *http.Request, route string) error {
	if route == "healthz" {
		return nil
	}
	if s.tls != nil {
		if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
			return apiErr(http.StatusUnauthorized, ReasonUnauthorized, "authorize request: a client certificate is required")
		}
		// One look at the identity files per call (Loads stats them):
		// the cached verification and this node's own cluster are
		// those of that version of the files.
		loads := s.tls.Loads()
		id, err := s.verifyCaller(r.TLS.PeerCertificates, loads)
		if err != nil {
			return apiErr(http.StatusUnauthorized, ReasonUnauthorized, "authorize request: %v", err)
		}
		if want := (pki.ID{Cluster: s.ownCluster(loads)}); id != want {
			return apiErr(http.StatusForbidden, ReasonForbidden, "authorize request: %s may not program this node (only %s)", id, want)
		}
		return nil
	}
	if s.token == "" {
		return nil
	}
	got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || !pki.Equal(got, s.token) {
		return apiErr(http.StatusUnauthorized, ReasonUnauthorized, "authorize request: missing or wrong bearer token")
	}
	return nil
}

// verifiedTTL bounds how long a caller's verified chain is reused
// without a fresh verification (besides the chain's own expiry and any
// change of the CA bundle, which end it at once).
const verifiedTTL = time.Minute

// maxVerified bounds the cache of verified chains.
const maxVerified = 64

// verified is a caller's chain that passed Verify.
type verified struct {
	id    pki.ID
	loads int       // the identity files' version it was checked against
	until time.Time // the chain's first expiry, or verifiedTTL
}

// verifyCaller is s.tls.Verify of a caller's chain, remembered: a
// controller's calls come on a kept connection with the same chain, and a
// migration's stage and commit should not each pay an x509 chain
// verification. A chain is verified again once the CA bundle or this
// node's identity files change (pki.Source reloads them), when any of its
// certificates expires, and at least every verifiedTTL.
func (s *Server) verifyCaller(chain []*x509.Certificate, loads int) (pki.ID, error) {
	// A connection's calls carry the same parsed chain (net/http keeps
	// one TLS state per connection): its leaf finds the verification
	// without hashing the chain again.
	now := time.Now()
	s.vmu.Lock()
	v, ok := s.byLeaf[chain[0]]
	s.vmu.Unlock()
	if ok && v.loads == loads && now.Before(v.until) {
		return v.id, nil
	}
	h := sha256.New()
	for _, c := range chain {
		h.Write(c.Raw)
	}
	key := string(h.Sum(nil))
	s.vmu.Lock()
	v, ok = s.verified[key]
	s.vmu.Unlock()
	if !ok || v.loads != loads || !now.Before(v.until) {
		id, err := s.tls.Verify(chain, x509.ExtKeyUsageClientAuth)
		if err != nil {
			return pki.ID{}, err
		}
		v = verified{id: id, loads: loads, until: now.Add(verifiedTTL)}
		for _, c := range chain {
			if c.NotAfter.Before(v.until) {
				v.until = c.NotAfter
			}
		}
	}
	s.vmu.Lock()
	if len(s.verified) >= maxVerified {
		clear(s.verified)
	}
	if len(s.byLeaf) >= maxVerified {
		clear(s.byLeaf)
	}
	s.verified[key], s.byLeaf[chain[0]] = v, v
	s.vmu.Unlock()
	return v.id, nil
}

// ownCluster is this node's cluster as the identity files' version loads
// names it (read again, with a look at the files, only when that version
// changed).
func (s *Server) ownCluster(loads int) string {
	s.vmu.Lock()
	own, at := s.own, s.ownLoads
	s.vmu.Unlock()
	if at == loads && own != "" {
		return own
	}
	own = s.tls.ID().Cluster
	s.vmu.Lock()
	s.own, s.ownLoads = own, loads
	s.vmu.Unlock()
	return own
}

func writeJSON(w http.ResponseWriter, status int, v any) { _ = httpjson.Reply(w, status, v) }

// statusWriter records the status a handler wrote (httpjson.StatusWriter,
// which http.ResponseController reaches through Unwrap: sendNow).
type statusWriter struct {
	http.ResponseWriter
	Code  int
	start time.Time      // when the route's handler was entered
	head  func(code int) // called once, with the status
}

func (w *statusWriter) WriteHeader(code int) {
	w.Code = code
	w.counted()
	w.ResponseWriter.WriteHeader(code)
}

// counted calls head with the status, once.
func (w *statusWriter) counted() {
	if w.head != nil {
		w.head(w.Code)
		w.head = nil
	}
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// sendNow writes v as JSON with status 200 and puts it on the wire at
// once (its length given: no chunked encoding), before the handler's
// bookkeeping after it (a log line is a write to the agent's log): the
// caller waits for the answer, not for that.
func sendNow(w http.ResponseWriter, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		writeJSON(w, http.StatusInternalServerError, errorReply{Msg: fmt.Sprintf("encode answer: %v", err), Reason: ReasonInternal})
		return
	}
	b = append(b, '\n') // as json.Encoder ends it
	h := w.Header()
	h["Content-Type"] = []string{"application/json"}
	h["Content-Length"] = []string{strconv.Itoa(len(b))}
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(b)
	_ = http.NewResponseController(w).Flush()
}

// Wire types (an error's is httpjson.Error).

type stageRequest struct {
	Frontend *lb.Frontend `json:"frontend"`
	Target   *lb.Target   `json:"target"`
}

type stageReply struct {
	Generation uint64 `json:"generation"`
}

// generationRequest names a frontend and a stage generation (commit, abort).
type generationRequest struct {
	Frontend   *lb.Frontend `json:"frontend"`
	Generation uint64       `json:"generation"`
}

// stagesRequest stages several frontends in one call (a migration's
// frontends: one round trip per node instead of one per frontend).
type stagesRequest struct {
	Stages []stageRequest `json:"stages"`
}

type stagesReply struct {
	Generations []uint64 `json:"generations"`
}

// rerouteReply is a /v1/reroute's answer: the generations committed,
// the data plane's time for the stages and for the commits, and the
// agent's own for the call (µs): from its handler's entry (the request's
// head read; reading and decoding the body are in it) until this answer
// is ready to write, taken before sendNow encodes and writes it; and
// those two moments on the agent's wall clock (Unix ns), which a caller
// on the same host (the testbed, the benchmark) sets beside its own to
// split the rest of the call into the request's way and the answer's.
type rerouteReply struct {
	Generations []uint64 `json:"generations"`
	StageUs     float64  `json:"stage_us"`
	CommitUs    float64  `json:"commit_us"`
	AgentUs     float64  `json:"agent_us,omitempty"`
	ReceivedNs  int64    `json:"received_unix_ns,omitempty"`
	AnsweredNs  int64    `json:"answered_unix_ns,omitempty"`
}

// commitsRequest commits several frontends in one call.
type commitsRequest struct {
	Commits []generationRequest `json:"commits"`
}

// maxBatch bounds the frontends of one /v1/stages or /v1/commits call.
const maxBatch = 256

type frontendRequest struct {
	Frontend *lb.Frontend `json:"frontend"`
}

type flowsReply struct {
	Flows int `json:"flows"`
}

type emptyReply struct{}

// decode reads a JSON body strictly into v.
func decode(r *http.Request, v any) error {
	if ct := r.Header.Get("Content-Type"); ct != "" && !strings.HasPrefix(ct, "application/json") {
		return apiErr(http.StatusUnsupportedMediaType, ReasonBadRequest, "decode request: content type %q, want application/json", ct)
	}
	err := httpjson.Decode(io.LimitReader(r.Body, maxBody+1), v)
	if errors.Is(err, httpjson.ErrTrailing) {
		return apiErr(http.StatusBadRequest, ReasonBadJSON, "decode request: trailing data after the JSON object")
	}
	if err != nil {
		reason := ReasonBadJSON
		var te *json.UnmarshalTypeError
		var se *json.SyntaxError
		if !errors.As(err, &te) && !errors.As(err, &se) && !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) &&
			!strings.HasPrefix(err.Error(), "json: unknown field") {
			// A Frontend or Target text that does not parse surfaces here.
			switch {
			case strings.Contains(err.Error(), "frontend"):
				reason = ReasonBadFrontend
			case strings.Contains(err.Error(), "target"):
				reason = ReasonBadTarget
			}
		}
		return apiErr(http.StatusBadRequest, reason, "decode request: %v", err)
	}
	return nil
}

func needFrontend(f *lb.Frontend) (lb.Frontend, error) {
	return need(f, ReasonBadFrontend, "frontend is required (e.g. \"10.0.0.1:80/tcp\")")
}

func needTarget(t *lb.Target) (lb.Target, error) {
	return need(t, ReasonBadTarget, "target is required (\"local\" or \"redirect:ADDR:PORT\")")
}

// need reads a request's required field p: missing (the error says so) or
// invalid, a 400 of reason.
func need[T interface{ Validate() error }](p *T, reason, missing string) (T, error) {
	var zero T
	if p == nil {
		return zero, apiErr(http.StatusBadRequest, reason, "read request: %s", missing)
	}
	if err := (*p).Validate(); err != nil {
		return zero, apiErr(http.StatusBadRequest, reason, "read request: %v", err)
	}
	return *p, nil
}

// dpErr classifies an error of the data plane.
func dpErr(verb string, f lb.Frontend, err error) error {
	status, reason := classify(err)
	return apiErr(status, reason, "%s %s: %v", verb, f, err)
}

// Handlers.

func (s *Server) list(w http.ResponseWriter, r *http.Request) error {
	svcs, err := s.dp.List()
	if err != nil {
		return fmt.Errorf("list services: %w", err)
	}
	_ = httpjson.ReplyList(w, svcs, nil)
	return nil
}

func (s *Server) find(f lb.Frontend) (lb.Service, error) {
	svc, err := s.dp.Get(f)
	if err != nil {
		status, reason := classify(err)
		return lb.Service{}, apiErr(status, reason, "get service %s: %v", f, err)
	}
	return svc, nil
}

func (s *Server) get(w http.ResponseWriter, r *http.Request) error {
	f, err := lb.ParseFrontend(r.PathValue("frontend"))
	if err != nil {
		return apiErr(http.StatusBadRequest, ReasonBadFrontend, "read path: %v", err)
	}
	svc, err := s.find(f)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, svc)
	return nil
}

func (s *Server) stage(w http.ResponseWriter, r *http.Request) error {
	var req stageRequest
	if err := decode(r, &req); err != nil {
		return err
	}
	f, err := needFrontend(req.Frontend)
	if err != nil {
		return err
	}
	t, err := needTarget(req.Target)
	if err != nil {
		return err
	}
	gen, err := s.dp.Stage(f, t)
	if err != nil {
		return dpErr("stage", f, err)
	}
	s.log.Info("staged", "frontend", f, "target", t, "generation", gen)
	writeJSON(w, http.StatusOK, stageReply{Generation: gen})
	return nil
}

func (s *Server) commit(w http.ResponseWriter, r *http.Request) error {
	f, err := s.generationOp(r, "commit", "committed", s.dp.Commit)
	if err != nil {
		return err
	}
	svc, err := s.find(f)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, svc)
	return nil
}

// batchFrontends checks a batch's frontends: 1 to maxBatch, each valid,
// none twice.
func batchFrontends(n int, at func(i int) *lb.Frontend) ([]lb.Frontend, error) {
	if n == 0 || n > maxBatch {
		return nil, apiErr(http.StatusBadRequest, ReasonBadRequest, "read request: %d frontends, want 1 to %d", n, maxBatch)
	}
	fs := make([]lb.Frontend, n)
	seen := make(map[lb.Frontend]bool, n)
	for i := range n {
		f, err := needFrontend(at(i))
		if err != nil {
			return nil, err
		}
		if seen[f] {
			return nil, apiErr(http.StatusBadRequest, ReasonBadFrontend, "read request: frontend %s given twice", f)
		}
		seen[f], fs[i] = true, f
	}
	return fs, nil
}

// stages stages every frontend of the request, all or nothing: when one
// fails, those staged before it in this call are aborted (their
// generations named) and the error is that frontend's.
func (s *Server) stages(w http.ResponseWriter, r *http.Request) error {
	var req stagesRequest
	if err := decode(r, &req); err != nil {
		return err
	}
	fs, gens, err := s.stageAll(req)
	if err != nil {
		return err
	}
	s.log.Info("staged", "frontends", fs, "generations", gens)
	writeJSON(w, http.StatusOK, stagesReply{Generations: gens})
	return nil
}

// reroute is a node's whole reroute in one call, for a controller whose
// cluster has this node alone (its make-before-break across nodes is then
// this call's: nothing is committed unless every frontend staged): it
// stages every frontend, all or nothing (an error then is the stage's,
// and nothing changed), then commits each at the generation it staged.
// Every error before the commits (a refusal, a request that does not
// read, a stage that failed) is answered with OutcomeNotCommitted. A
// commit that fails is answered ReasonCommitFailed, without it (the
// others' commits stand; the failed ones' staged slots are aborted when
// possible). The reply says how long the data plane took for each half.
func (s *Server) reroute(w http.ResponseWriter, r *http.Request) error {
	logged, gens, times, err := s.rerouteAll(r)
	if err != nil {
		return err
	}
	reply := rerouteReply{Generations: gens, StageUs: us(times[0]), CommitUs: us(times[1])}
	if sw, ok := w.(*statusWriter); ok {
		now := time.Now()
		reply.AgentUs = us(now.Sub(sw.start))
		reply.ReceivedNs, reply.AnsweredNs = sw.start.UnixNano(), now.UnixNano()
	}
	sendNow(w, reply)
	logged()
	return nil
}

// rerouteAll is reroute's work: the generations of the request's
// frontends, in its order, the data plane's time for the stages and for
// the commits, and its log line, to write once the answer is sent. Its
// errors before the commits are uncommitted.
func (s *Server) rerouteAll(r *http.Request) (logged func(), _ []uint64, _ [2]time.Duration, err error) {
	committing := false
	defer func() {
		if err != nil && !committing {
			err = uncommitted{err}
		}
	}()
	var req stagesRequest
	if err := decode(r, &req); err != nil {
		return nil, nil, [2]time.Duration{}, err
	}
	t0 := time.Now()
	// A frontend whose active target already is the one asked for, with
	// nothing staged, is left alone: that is this call made again (its
	// answer lost) and must change nothing. Staging it again would
	// overwrite the other slot, which may still hold an SRv6 previous
	// path, and its commit would end that path's hold.
	all, err := batchFrontends(len(req.Stages), func(i int) *lb.Frontend { return req.Stages[i].Frontend })
	if err != nil {
		return nil, nil, [2]time.Duration{}, err
	}
	todo := stagesRequest{Stages: make([]stageRequest, 0, len(req.Stages))}
	var done []lb.Frontend
	var doneGens []uint64
	for i, it := range req.Stages {
		t, err := needTarget(it.Target)
		if err != nil {
			return nil, nil, [2]time.Duration{}, err
		}
		if sv, err := s.dp.Get(all[i]); err == nil && sv.Active == t && sv.Staged.Kind == lb.TargetNone {
			done, doneGens = append(done, all[i]), append(doneGens, sv.Generation)
			continue
		}
		todo.Stages = append(todo.Stages, stageRequest{Frontend: &all[i], Target: &t})
	}
	var fs []lb.Frontend
	var gens []uint64
	if len(todo.Stages) > 0 || len(done) == 0 {
		if fs, gens, err = s.stageAll(todo); err != nil {
			return nil, nil, [2]time.Duration{}, err
		}
	}
	t1 := time.Now()
	committing = true
	var msgs []string
	for i, f := range fs {
		if err := s.dp.Commit(f, gens[i]); err != nil {
			msgs = append(msgs, fmt.Sprintf("commit %s: %v", f, err))
			if aerr := s.dp.Abort(f, gens[i]); aerr != nil {
				s.log.Error("abort a reroute's stage that did not commit", "frontend", f, "generation", gens[i], "err", aerr)
			}
		}
	}
	t2 := time.Now()
	if msgs != nil {
		return nil, nil, [2]time.Duration{}, apiErr(http.StatusInternalServerError, ReasonCommitFailed, "reroute: every frontend staged, then: %s", strings.Join(msgs, "; "))
	}
	// Logged once the answer is sent (a log line is a write).
	logged = func() { s.log.Info("rerouted", "frontends", fs, "generations", gens, "already", done) }
	return logged, inOrder(all, fs, gens, done, doneGens), [2]time.Duration{t1.Sub(t0), t2.Sub(t1)}, nil
}

// inOrder gives the generations of the request's frontends (all) in its order, from
// those rerouted (fs, gens) and those already at their target (done).
func inOrder(all, fs []lb.Frontend, gens []uint64, done []lb.Frontend, doneGens []uint64) []uint64 {
	by := make(map[lb.Frontend]uint64, len(fs)+len(done))
	for i, f := range fs {
		by[f] = gens[i]
	}
	for i, f := range done {
		by[f] = doneGens[i]
	}
	out := make([]uint64, len(all))
	for i, f := range all {
		out[i] = by[f]
	}
	return out
}

func us(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }

// stageAll checks and stages every frontend of req, all or nothing.
func (s *Server) stageAll(req stagesRequest) ([]lb.Frontend, []uint64, error) {
	fs, err := batchFrontends(len(req.Stages), func(i int) *lb.Frontend { return req.Stages[i].Frontend })
	if err != nil {
		return nil, nil, err
	}
	ts := make([]lb.Target, len(fs))
	for i, it := range req.Stages {
		if ts[i], err = needTarget(it.Target); err != nil {
			return nil, nil, err
		}
	}
	gens := make([]uint64, len(fs))
	for i, f := range fs {
		if gens[i], err = s.dp.Stage(f, ts[i]); err != nil {
			for j := range i {
				if aerr := s.dp.Abort(fs[j], gens[j]); aerr != nil {
					s.log.Error("roll back a batch's stage", "frontend", fs[j], "generation", gens[j], "err", aerr)
				}
			}
			err = dpErr("stage", f, err)
			if i > 0 {
				err.(*httpjson.Error).Msg += fmt.Sprintf(" (aborted the %d staged before it in this call)", i)
			}
			return nil, nil, err
		}
	}
	return fs, gens, nil
}

// commits commits every frontend of the request with its generation. Each
// frontend's commit is its own atomic swap: one that fails does not stop
// the others; the error names every one that failed (the first one's
// status).
func (s *Server) commits(w http.ResponseWriter, r *http.Request) error {
	var req commitsRequest
	if err := decode(r, &req); err != nil {
		return err
	}
	fs, err := batchFrontends(len(req.Commits), func(i int) *lb.Frontend { return req.Commits[i].Frontend })
	if err != nil {
		return err
	}
	var first *httpjson.Error
	var msgs []string
	for i, f := range fs {
		if err := s.dp.Commit(f, req.Commits[i].Generation); err != nil {
			ae := dpErr("commit", f, err).(*httpjson.Error)
			if first == nil {
				first = ae
			}
			msgs = append(msgs, ae.Msg)
		}
	}
	if first != nil {
		return apiErr(first.Status, first.Reason, "%s", strings.Join(msgs, "; "))
	}
	s.log.Info("committed", "frontends", fs, "generations", generations(req.Commits))
	writeJSON(w, http.StatusOK, emptyReply{})
	return nil
}

func generations(rs []generationRequest) []uint64 {
	out := make([]uint64, len(rs))
	for i, r := range rs {
		out[i] = r.Generation
	}
	return out
}

func (s *Server) abort(w http.ResponseWriter, r *http.Request) error {
	if _, err := s.generationOp(r, "abort", "aborted", s.dp.Abort); err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, emptyReply{})
	return nil
}

// generationOp reads a generationRequest and applies op (the data plane's
// Commit or Abort, named what) to its frontend and generation, logging
// done; it returns the frontend.
func (s *Server) generationOp(r *http.Request, what, done string, op func(lb.Frontend, uint64) error) (lb.Frontend, error) {
	var req generationRequest
	f, err := decodeFrontend(r, &req, &req.Frontend)
	if err != nil {
		return f, err
	}
	if err := op(f, req.Generation); err != nil {
		return f, dpErr(what, f, err)
	}
	s.log.Info(done, "frontend", f, "generation", req.Generation)
	return f, nil
}

func (s *Server) remove(w http.ResponseWriter, r *http.Request) error {
	var req frontendRequest
	f, err := decodeFrontend(r, &req, &req.Frontend)
	if err != nil {
		return err
	}
	if err := s.dp.Remove(f); err != nil {
		return dpErr("remove", f, err)
	}
	s.log.Info("removed", "frontend", f)
	writeJSON(w, http.StatusOK, emptyReply{})
	return nil
}

// decodeFrontend decodes the request body into req and returns the valid
// frontend it names in *field.
func decodeFrontend(r *http.Request, req any, field **lb.Frontend) (lb.Frontend, error) {
	if err := decode(r, req); err != nil {
		return lb.Frontend{}, err
	}
	return needFrontend(*field)
}

func (s *Server) flows(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	f, err := lb.ParseFrontend(q.Get("frontend"))
	if err != nil {
		return apiErr(http.StatusBadRequest, ReasonBadFrontend, "read query: %v", err)
	}
	t, err := lb.ParseTarget(q.Get("target"))
	if err == nil {
		err = t.Validate()
	}
	if err != nil {
		return apiErr(http.StatusBadRequest, ReasonBadTarget, "read query: %v", err)
	}
	n, err := s.dp.Flows(f, t)
	if err != nil {
		return dpErr("count flows of", f, err)
	}
	writeJSON(w, http.StatusOK, flowsReply{Flows: n})
	return nil
}

func (s *Server) healthz(w http.ResponseWriter, r *http.Request) error {
	if _, err := s.dp.List(); err != nil {
		return apiErr(http.StatusServiceUnavailable, ReasonInternal, "check health: %v", err)
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	return nil
}
