// This file holds the client controllers use: publish hellos, request
// placements with timeouts and retries, and keep a cached view of every
// cluster's hellos to place locally when the MO does not answer.

package meta

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"github.com/nats-io/nuid"
)

// ErrRejected wraps an error reply from the MO (the request itself is
// wrong; retrying or placing locally would not help).
var ErrRejected = errors.New("placement request rejected by the meta-orchestrator")

// RemoteError is an error reply from the MO with its code.
type RemoteError struct {
	Code        string
	Description string
}

func (e *RemoteError) Error() string {
	return "meta-orchestrator error " + e.Code + ": " + e.Description
}

// Unwrap makes errors.Is(err, ErrRejected) true.
func (e *RemoteError) Unwrap() error { return ErrRejected }

// Client talks to the MO on behalf of one cluster. Safe for concurrent use.
type Client struct {
	nc      *nats.Conn
	id      string
	timeout time.Duration
	retries int
	backoff time.Duration
	policy  Policy
	log     *slog.Logger

	seq     atomic.Uint64
	cache   *Registry
	noCache bool
	sub     *nats.Subscription

	mu       sync.Mutex
	fallback int // local decisions made
}

// ClientOption tunes a Client.
type ClientOption func(*Client)

// WithTimeout bounds each placement attempt (default 2s).
func WithTimeout(d time.Duration) ClientOption { return func(c *Client) { c.timeout = d } }

// WithRetries sets how many times a placement is retried after the first
// attempt fails to get an answer (default 2).
func WithRetries(n int) ClientOption { return func(c *Client) { c.retries = max(n, 0) } }

// WithBackoff sets the pause before the first retry, doubled each time
// (default 100ms).
func WithBackoff(d time.Duration) ClientOption { return func(c *Client) { c.backoff = d } }

// WithPolicy sets the policy for local decisions (default LeastLoaded).
func WithPolicy(p Policy) ClientOption { return func(c *Client) { c.policy = p } }

// WithLiveness sets the hello interval and missed hellos after which the
// cache treats a cluster as down (defaults 1s, 3).
func WithLiveness(interval time.Duration, downAfter int) ClientOption {
	return func(c *Client) { c.cache = NewRegistry(interval, downAfter) }
}

// WithoutCache skips the hello subscription: no cached view, so Place
// returns the error instead of a local decision when the MO does not
// answer. For requesters that must not decode every cluster's hellos.
func WithoutCache() ClientOption { return func(c *Client) { c.noCache = true } }

// WithLogger sets the logger.
func WithLogger(l *slog.Logger) ClientOption { return func(c *Client) { c.log = l } }

// NewClient returns a client for cluster clusterID over nc and subscribes
// to every hello for its cache. On an MO with per-cluster users, nc must
// be connected with ClusterConnectOptions (its inbox prefix).
func NewClient(nc *nats.Conn, clusterID string, opts ...ClientOption) (*Client, error) {
	if err := ValidateClusterID(clusterID); err != nil {
		return nil, fmt.Errorf("new meta client: %w", err)
	}
	c := &Client{nc: nc, id: clusterID, timeout: 2 * time.Second, retries: 2, backoff: 100 * time.Millisecond,
		policy: LeastLoaded{}, log: slog.Default()}
	for _, o := range opts {
		o(c)
	}
	if c.cache == nil {
		c.cache = NewRegistry(time.Second, 3)
	}
	c.seq.Store(NewSeq())
	if c.noCache {
		return c, nil
	}
	sub, err := nc.Subscribe(SubjectHelloAll, func(m *nats.Msg) {
		h, err := DecodeHello(m.Data)
		if err != nil || m.Subject != HelloSubject(h.ClusterID) {
			return
		}
		c.cache.Observe(h, time.Now())
	})
	if err != nil {
		return nil, fmt.Errorf("subscribe hellos: %w", err)
	}
	_ = sub.SetPendingLimits(1<<20, 256<<20)
	c.sub = sub
	if err := nc.Flush(); err != nil {
		_ = sub.Unsubscribe()
		return nil, fmt.Errorf("subscribe hellos: %w", err)
	}
	return c, nil
}

// ClusterID is the cluster this client speaks for.
func (c *Client) ClusterID() string { return c.id }

// PublishHello fills in Version, ClusterID, Seq (when zero) and SentAt,
// validates h and publishes it on roam.hello.<id>.
func (c *Client) PublishHello(ctx context.Context, h Hello) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("publish hello: %w", err)
	}
	h.Version = Version
	if h.ClusterID == "" {
		h.ClusterID = c.id
	}
	if h.ClusterID != c.id {
		return fmt.Errorf("publish hello: cluster id %q, client is %q", h.ClusterID, c.id)
	}
	if h.Seq == 0 {
		h.Seq = c.seq.Add(1)
	}
	if h.SentAt.IsZero() {
		h.SentAt = time.Now().UTC()
	}
	if err := h.Validate(); err != nil {
		return fmt.Errorf("publish hello: %w", err)
	}
	b, err := json.Marshal(h)
	if err != nil {
		return fmt.Errorf("encode hello: %w", err)
	}
	if err := c.nc.Publish(HelloSubject(c.id), b); err != nil {
		return fmt.Errorf("publish hello: %w", err)
	}
	return nil
}

// Place asks the MO where req's service should go. Version, RequestID and
// Requester are filled in when empty. Each attempt waits up to the client
// timeout; unanswered attempts are retried with backoff; if the MO never
// answers, the client places from its cached hellos with the same policy
// and returns that reply with Local set. An error reply from the MO is
// returned as a *RemoteError (wrapping ErrRejected), without fallback.
func (c *Client) Place(ctx context.Context, req PlacementRequest) (PlacementReply, error) {
	req.Version = Version
	if req.RequestID == "" {
		req.RequestID = nuid.Next()
	}
	if req.Requester == "" {
		req.Requester = c.id
	}
	if err := req.Validate(); err != nil {
		return PlacementReply{}, fmt.Errorf("place: %w", err)
	}
	b, err := json.Marshal(req)
	if err != nil {
		return PlacementReply{}, fmt.Errorf("encode placement request: %w", err)
	}
	var lastErr error
	backoff := c.backoff
	for attempt := 0; attempt <= c.retries; attempt++ {
		if attempt > 0 {
			select {
			case <-ctx.Done():
				return PlacementReply{}, fmt.Errorf("place %s: %w (last error: %v)", req.RequestID, ctx.Err(), lastErr)
			case <-time.After(backoff):
			}
			backoff *= 2
		}
		rep, err := c.request(ctx, b)
		if err == nil {
			if rep.RequestID != req.RequestID {
				lastErr = fmt.Errorf("reply for request %s, want %s", rep.RequestID, req.RequestID)
				continue
			}
			return rep, nil
		}
		var re *RemoteError
		if errors.As(err, &re) {
			return PlacementReply{}, fmt.Errorf("place %s: %w", req.RequestID, err)
		}
		if ctx.Err() != nil {
			return PlacementReply{}, fmt.Errorf("place %s: %w", req.RequestID, ctx.Err())
		}
		lastErr = err
	}
	if c.noCache {
		return PlacementReply{}, fmt.Errorf("place %s: no answer from the meta-orchestrator and no cache: %w", req.RequestID, lastErr)
	}
	rep := c.policy.Place(req, c.cache, time.Now())
	rep.Local = true
	rep.DecidedBy = c.id
	c.mu.Lock()
	c.fallback++
	c.mu.Unlock()
	c.log.Warn("meta-orchestrator unreachable, placed from cached hellos",
		"request", req.RequestID, "service", req.Service.Name, "err", lastErr, "destination", destID(rep))
	return rep, nil
}

func destID(r PlacementReply) string {
	if r.Destination == nil {
		return ""
	}
	return r.Destination.ClusterID
}

func (c *Client) request(ctx context.Context, b []byte) (PlacementReply, error) {
	actx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	m, err := c.nc.RequestWithContext(actx, SubjectPlace, b)
	if err != nil {
		return PlacementReply{}, fmt.Errorf("request placement: %w", err)
	}
	if code := m.Header.Get(micro.ErrorCodeHeader); code != "" {
		return PlacementReply{}, &RemoteError{Code: code, Description: m.Header.Get(micro.ErrorHeader)}
	}
	rep, err := DecodePlacementReply(m.Data)
	if err != nil {
		return PlacementReply{}, err
	}
	return rep, nil
}

// Clusters returns the cached latest hello of every cluster, sorted by id.
func (c *Client) Clusters() []Hello {
	st := c.cache.Snapshot(time.Now())
	out := make([]Hello, len(st))
	for i, s := range st {
		out[i] = s.Hello
	}
	return out
}

// ClusterStates returns the cached clusters with their liveness.
func (c *Client) ClusterStates() []ClusterStatus { return c.cache.Snapshot(time.Now()) }

// LocalDecisions counts placements decided from the cache.
func (c *Client) LocalDecisions() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.fallback
}

// Close stops the hello subscription (the connection stays the caller's).
func (c *Client) Close() error {
	if c.sub == nil {
		return nil
	}
	if err := c.sub.Unsubscribe(); err != nil && !errors.Is(err, nats.ErrConnectionClosed) {
		return fmt.Errorf("unsubscribe hellos: %w", err)
	}
	return nil
}
