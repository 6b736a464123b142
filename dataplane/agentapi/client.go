package agentapi

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"github.com/roamnet/roam/dataplane/lb"
	"github.com/roamnet/roam/internal/httpjson"
)

// Client talks to one node's agent. It keeps its connections to the agent
// open between calls and writes each call and reads its answer on the
// caller's goroutine (syncTransport: HTTP/1.1, one call per connection at
// a time), so a migration's stage and commit pay no handshake once Warm
// has run, and no hand-off between goroutines.
type Client struct {
	base  string
	token string
	// HTTP is the client used for requests; New sets one with a 10 s timeout.
	HTTP  *http.Client
	sync  *syncTransport
	dials atomic.Int64
}

// New returns a client of the agent API at baseURL (e.g.
// "http://127.0.0.1:9701"); token, when not empty, is sent as a bearer token.
func New(baseURL, token string) *Client {
	c := &Client{base: strings.TrimRight(baseURL, "/"), token: token}
	c.HTTP = &http.Client{Timeout: 10 * time.Second, Transport: c.transport(nil)}
	return c
}

// NewTLS returns a client of the agent API at an https baseURL that
// presents and checks certificates as tc says (pki.Source.ClientConfig
// with pki.ExpectNodeOf the controller's cluster).
func NewTLS(baseURL string, tc *tls.Config) *Client {
	c := &Client{base: strings.TrimRight(baseURL, "/")}
	c.HTTP = &http.Client{Timeout: 10 * time.Second, Transport: c.transport(tc)}
	return c
}

// keepIdle bounds how long a connection is kept idle: less than the
// agent server's idle timeout (a minute), so that the agent does not
// close it under a call.
const keepIdle = 45 * time.Second

// transport keeps up to 4 idle connections for keepIdle and counts the
// connections it opens (Dials).
func (c *Client) transport(tc *tls.Config) *syncTransport {
	d := &net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}
	if tc != nil {
		tc = tc.Clone()
		tc.NextProtos = []string{"http/1.1"}
	}
	c.sync = &syncTransport{addr: hostPort(c.base), host: hostOf(c.base), tls: tc, maxIdle: 4, idleFor: keepIdle}
	c.SetDialer(d.DialContext)
	return c.sync
}

// SetDialer makes the client open its connections with dial (e.g. inside
// a network namespace); the connections already kept stay.
func (c *Client) SetDialer(dial func(ctx context.Context, network, addr string) (net.Conn, error)) {
	c.sync.dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c.dials.Add(1)
		return dial(ctx, network, addr)
	}
}

// hostPort is the host:port of base (its scheme's port when it names none).
func hostPort(base string) string {
	u, err := url.Parse(base)
	if err != nil || u.Host == "" {
		return base
	}
	if u.Port() != "" {
		return u.Host
	}
	if u.Scheme == "https" {
		return net.JoinHostPort(u.Hostname(), "443")
	}
	return net.JoinHostPort(u.Hostname(), "80")
}

// hostOf is the host (and port, when it names one) of base, for the Host
// header.
func hostOf(base string) string {
	u, err := url.Parse(base)
	if err != nil || u.Host == "" {
		return base
	}
	return u.Host
}

// Dials counts the connections this client has opened to its agent (each
// one a TLS handshake with an https agent).
func (c *Client) Dials() int64 { return c.dials.Load() }

// URL is the base URL of the agent.
func (c *Client) URL() string { return c.base }

// Error is an error reply of the agent.
type Error struct {
	Status  int    // HTTP status
	Reason  string // one of the Reason* constants
	Msg     string
	Outcome string // OutcomeNotCommitted when a /v1/reroute said it committed nothing
}

func (e *Error) Error() string {
	return fmt.Sprintf("agent: %s (%d %s)", e.Msg, e.Status, e.Reason)
}

// IsNotFound reports whether err is an agent's "no such frontend".
func IsNotFound(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Status == http.StatusNotFound
}

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	return c.call(ctx, method, path, in, out, false)
}

// doReplayable is do for a call the agent may make twice with nothing
// changed by the second making that the first did not change: the
// transport may then send it again when a kept connection breaks before
// any answer came (replayable). A stage (the second supersedes the first,
// whose generation nobody learnt), a commit or an abort naming its
// generation (a second commit or abort of it is a no-op). Not a remove (a
// second one fails, or would remove a frontend staged again in between),
// nor a commit or an abort of "whatever is staged" (generation 0).
func (c *Client) doReplayable(ctx context.Context, method, path string, in, out any) error {
	return c.call(ctx, method, path, in, out, true)
}

func (c *Client) call(ctx context.Context, method, path string, in, out any, replay bool) error {
	if c.sync != nil && c.HTTP != nil && c.HTTP.Transport == http.RoundTripper(c.sync) && c.HTTP.Jar == nil {
		return c.callSync(ctx, method, path, in, out, replay)
	}
	req, err := httpjson.NewRequest(ctx, method, c.base+path, in)
	if err != nil {
		return fmt.Errorf("build request: %w", err)
	}
	if replay {
		req.Header[idempotencyKey] = nil
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	ans, err := httpjson.Do(c.HTTP, req, 16<<20)
	if err != nil {
		return fmt.Errorf("call agent %s: %w", c.base, err)
	}
	return c.answer(ans, out)
}

// callSync is call on the client's own transport, without the
// http.Client (syncTransport.call); the timeout is the http.Client's.
func (c *Client) callSync(ctx context.Context, method, path string, in, out any, replay bool) error {
	var body []byte
	if in != nil {
		var err error
		if body, err = json.Marshal(in); err != nil {
			return fmt.Errorf("build request: encode request: %w", err)
		}
	}
	status, b, err := c.sync.call(ctx, c.HTTP.Timeout, method, path, c.token, body, replay, 16<<20)
	if err != nil {
		return fmt.Errorf("call agent %s: %s %s: %w", c.base, method, path, err)
	}
	return c.answer(httpjson.Answer{Status: status, Body: b}, out)
}

// answer reads an agent's answer into out, or its error.
func (c *Client) answer(ans httpjson.Answer, out any) error {
	if !ans.OK() {
		var e errorReply // httpjson.Error's form, and a reroute's outcome
		if json.Unmarshal(ans.Body, &e) != nil || e.Msg == "" {
			e = errorReply{Msg: strings.TrimSpace(string(ans.Body))}
		}
		return &Error{Status: ans.Status, Reason: e.Reason, Msg: e.Msg, Outcome: e.Outcome}
	}
	if out != nil {
		if err := json.Unmarshal(ans.Body, out); err != nil {
			return fmt.Errorf("decode reply of agent %s: %w", c.base, err)
		}
	}
	return nil
}

// Stage writes t into f's inactive slot on the agent's node (invisible to
// traffic) and returns the generation to commit.
func (c *Client) Stage(ctx context.Context, f lb.Frontend, t lb.Target) (uint64, error) {
	var out stageReply
	if err := c.doReplayable(ctx, http.MethodPost, "/v1/stage", stageRequest{Frontend: &f, Target: &t}, &out); err != nil {
		return 0, fmt.Errorf("stage %s -> %s: %w", f, t, err)
	}
	return out.Generation, nil
}

// Commit makes the staged target of f active; gen names the stage (0 =
// whatever is staged).
func (c *Client) Commit(ctx context.Context, f lb.Frontend, gen uint64) error {
	return c.generationCall(ctx, "commit", f, gen)
}

// generationCall calls /v1/<op> (commit or abort) for f's generation gen;
// a call that names its generation is sent again after a kept connection
// broke (making it twice changes nothing).
func (c *Client) generationCall(ctx context.Context, op string, f lb.Frontend, gen uint64) error {
	do := c.do
	if gen != 0 {
		do = c.doReplayable
	}
	if err := do(ctx, http.MethodPost, "/v1/"+op, generationRequest{Frontend: &f, Generation: gen}, nil); err != nil {
		return fmt.Errorf("%s %s generation %d: %w", op, f, gen, err)
	}
	return nil
}

// StageAll stages ts[i] for fs[i] on the agent's node in one call, all or
// nothing (the agent aborts what it staged of the call when one fails) and
// returns the generation of each.
func (c *Client) StageAll(ctx context.Context, fs []lb.Frontend, ts []lb.Target) ([]uint64, error) {
	if len(fs) != len(ts) {
		return nil, fmt.Errorf("stage %d frontends: %d targets", len(fs), len(ts))
	}
	req := stagesRequest{Stages: make([]stageRequest, len(fs))}
	for i := range fs {
		req.Stages[i] = stageRequest{Frontend: &fs[i], Target: &ts[i]}
	}
	var out stagesReply
	if err := c.doReplayable(ctx, http.MethodPost, "/v1/stages", req, &out); err != nil {
		return nil, fmt.Errorf("stage %v: %w", fs, err)
	}
	if len(out.Generations) != len(fs) {
		return nil, fmt.Errorf("stage %v: %d generations in the reply", fs, len(out.Generations))
	}
	return out.Generations, nil
}

// ErrNotCommitted marks a reroute's error after which nothing was
// committed on any node (a stage failed, or was refused, and what staged
// was aborted): the old target still serves everywhere.
var ErrNotCommitted = errors.New("nothing committed")

// Reroute stages ts[i] for fs[i] and commits them on the agent's node in
// one call (/v1/reroute): the whole reroute of a node that is its
// cluster's only one. The error wraps ErrNotCommitted when the agent
// answered that it committed nothing (OutcomeNotCommitted: it refused the
// call, or a stage failed); any other error (a failed commit, an error
// reply that does not say, no answer) leaves unknown whether the node
// committed. The times are the data plane's.
func (c *Client) Reroute(ctx context.Context, fs []lb.Frontend, ts []lb.Target) (RerouteTimes, error) {
	if len(fs) != len(ts) {
		return RerouteTimes{}, fmt.Errorf("reroute %d frontends: %d targets: %w", len(fs), len(ts), ErrNotCommitted)
	}
	req := stagesRequest{Stages: make([]stageRequest, len(fs))}
	for i := range fs {
		req.Stages[i] = stageRequest{Frontend: &fs[i], Target: &ts[i]}
	}
	var out rerouteReply
	// Replayable: made twice, the second finds every frontend at its
	// target with nothing staged and leaves it alone (no stage into the
	// other slot, no commit): the server's reroute.
	err := c.doReplayable(ctx, http.MethodPost, "/v1/reroute", req, &out)
	var ae *Error
	if errors.As(err, &ae) && ae.Outcome == OutcomeNotCommitted {
		return RerouteTimes{}, fmt.Errorf("reroute %v: %w (%w)", fs, err, ErrNotCommitted)
	}
	if err != nil {
		return RerouteTimes{}, fmt.Errorf("reroute %v: %w", fs, err)
	}
	if len(out.Generations) != len(fs) {
		return RerouteTimes{}, fmt.Errorf("reroute %v: %d generations in the reply", fs, len(out.Generations))
	}
	t := RerouteTimes{Stage: usDur(out.StageUs), Commit: usDur(out.CommitUs), Agent: usDur(out.AgentUs), OneCall: true}
	if out.ReceivedNs != 0 && out.AnsweredNs != 0 {
		t.Received, t.Answered = time.Unix(0, out.ReceivedNs), time.Unix(0, out.AnsweredNs)
	}
	return t, nil
}

// RerouteTimes is how long a reroute's halves took: the data plane's own
// time when one call per node made both (OneCall), else the stage calls'
// and the commit calls' wall time on every node. Agent is, for one call,
// the agent's own time in it (its handler, from the request read until
// the answer is ready to write; 0 from an agent that does not say): the
// rest of the call's wall time is the wire, both ends' wake-ups and the
// caller. Received and Answered are those two moments on the agent's
// wall clock (zero from an agent that does not say): beside the caller's
// own on the same host they split that rest into the request's way and
// the answer's.
type RerouteTimes struct {
	Stage, Commit, Agent time.Duration
	OneCall              bool
	Received, Answered   time.Time
}

func usDur(us float64) time.Duration { return time.Duration(us * 1e3) }

// CommitAll commits fs[i] at generation gens[i] on the agent's node in one
// call; each frontend's commit is its own, and the error names those that
// failed.
func (c *Client) CommitAll(ctx context.Context, fs []lb.Frontend, gens []uint64) error {
	if len(fs) != len(gens) {
		return fmt.Errorf("commit %d frontends: %d generations", len(fs), len(gens))
	}
	req := commitsRequest{Commits: make([]generationRequest, len(fs))}
	do := c.doReplayable
	for i := range fs {
		req.Commits[i] = generationRequest{Frontend: &fs[i], Generation: gens[i]}
		if gens[i] == 0 {
			do = c.do
		}
	}
	if err := do(ctx, http.MethodPost, "/v1/commits", req, nil); err != nil {
		return fmt.Errorf("commit %v generations %v: %w", fs, gens, err)
	}
	return nil
}

// Abort clears f's staged slot if it holds generation gen (0 = whatever is
// staged). Aborting a generation again is a no-op; aborting a committed or
// superseded one is refused (409), and a Commit of an aborted generation
// fails.
func (c *Client) Abort(ctx context.Context, f lb.Frontend, gen uint64) error {
	return c.generationCall(ctx, "abort", f, gen)
}

// Remove deletes f from the node's data plane.
func (c *Client) Remove(ctx context.Context, f lb.Frontend) error {
	if err := c.do(ctx, http.MethodPost, "/v1/remove", frontendRequest{Frontend: &f}, nil); err != nil {
		return fmt.Errorf("remove %s: %w", f, err)
	}
	return nil
}

// List returns every frontend the node's data plane holds.
func (c *Client) List(ctx context.Context) ([]lb.Service, error) {
	var out []lb.Service
	if err := c.do(ctx, http.MethodGet, "/v1/services", nil, &out); err != nil {
		return nil, fmt.Errorf("list services: %w", err)
	}
	return out, nil
}

// Get returns f's entry; IsNotFound(err) when the node does not know f.
func (c *Client) Get(ctx context.Context, f lb.Frontend) (lb.Service, error) {
	var out lb.Service
	if err := c.do(ctx, http.MethodGet, "/v1/services/"+url.PathEscape(f.String()), nil, &out); err != nil {
		return lb.Service{}, fmt.Errorf("get service %s: %w", f, err)
	}
	return out, nil
}

// Flows counts the live flows of f still pinned to t on the node.
func (c *Client) Flows(ctx context.Context, f lb.Frontend, t lb.Target) (int, error) {
	q := url.Values{"frontend": {f.String()}, "target": {t.String()}}
	var out flowsReply
	if err := c.do(ctx, http.MethodGet, "/v1/flows?"+q.Encode(), nil, &out); err != nil {
		return 0, fmt.Errorf("count flows of %s to %s: %w", f, t, err)
	}
	return out.Flows, nil
}

// warmConns is how many connections Warm keeps open: one for the
// migration's stage and commit, one for a call made beside them (another
// service's drain count, the reconciler).
const warmConns = 2

// Warm makes sure warmConns connections to the agent are open and idle,
// ready for the next calls, and that the agent answers on them (a health
// check; a new connection only when fewer are kept). A migration warms
// its agents when it starts, so that its stage and commit, later, pay no
// TCP or TLS handshake.
func (c *Client) Warm(ctx context.Context) error {
	if err := c.Health(ctx); err != nil {
		return fmt.Errorf("warm connection: %w", err)
	}
	if c.sync == nil || c.HTTP == nil || c.HTTP.Transport != http.RoundTripper(c.sync) {
		return nil // a transport of the caller's: it keeps its own connections
	}
	probe := func() (*http.Request, error) { return httpjson.NewRequest(ctx, http.MethodGet, c.base+"/healthz", nil) }
	if err := c.sync.fill(ctx, c.HTTP.Timeout, warmConns, probe); err != nil {
		return fmt.Errorf("warm connections: %w", err)
	}
	return nil
}

// Health checks that the agent answers and its data plane is readable.
func (c *Client) Health(ctx context.Context) error {
	if err := c.do(ctx, http.MethodGet, "/healthz", nil, nil); err != nil {
		return fmt.Errorf("check health: %w", err)
	}
	return nil
}
