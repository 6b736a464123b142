// This file holds the client controllers use: publish hellos, request
// placements with timeouts and retries, and follow the MO's compact view
// (a KV watch of one summary per cluster, not every hello) to place
// locally when the MO does not answer.

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
	"github.com/nats-io/nats.go/jetstream"
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
	reserve time.Duration

	seq atomic.Uint64
	// incarnation names this client's run in its hellos; seq counts them.
	incarnation string
	cache       *Registry
	noCache     bool
	cancel      context.CancelFunc
	done        chan struct{}
	synced      chan struct{} // closed once the view's initial values are in

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

// WithLiveness sets how long the cached view trusts the MO's verdict on a
// cluster that the MO no longer rewrites (interval × downAfter; it is
// trusted at least three of the MO's refresh periods in any case).
func WithLiveness(interval time.Duration, downAfter int) ClientOption {
	return func(c *Client) { c.cache = NewRegistry(interval, downAfter) }
}

// WithoutCache skips the compact view: Place returns the error instead of
// a local decision when the MO does not answer.
func WithoutCache() ClientOption { return func(c *Client) { c.noCache = true } }

// WithLogger sets the logger.
func WithLogger(l *slog.Logger) ClientOption { return func(c *Client) { c.log = l } }

// NewClient returns a client for cluster clusterID over nc and, unless
// WithoutCache, follows the MO's compact view in the background (the
// bucket may not exist yet: it is retried). On an MO with per-cluster
// users, nc must be connected with ClusterConnectOptions (its inbox prefix
// and the view's permissions).
func NewClient(nc *nats.Conn, clusterID string, opts ...ClientOption) (*Client, error) {
	if err := ValidateClusterID(clusterID); err != nil {
		return nil, fmt.Errorf("new meta client: %w", err)
	}
	c := &Client{nc: nc, id: clusterID, timeout: 2 * time.Second, retries: 2, backoff: 100 * time.Millisecond,
		policy: LeastLoaded{}, log: slog.Default(), reserve: time.Minute, synced: make(chan struct{})}
	for _, o := range opts {
		o(c)
	}
	if c.cache == nil {
		c.cache = NewRegistry(time.Second, 3)
	}
	c.incarnation = NewIncarnation()
	if c.noCache {
		return c, nil
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("new meta client: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	c.cancel, c.done = cancel, make(chan struct{})
	go c.followView(ctx, js)
	return c, nil
}

// followView keeps the cache equal to the compact view: every summary, as
// it is written; a deleted key forgets its cluster.
func (c *Client) followView(ctx context.Context, js jetstream.JetStream) {
	defer close(c.done)
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		err := c.watchView(ctx, js)
		if ctx.Err() != nil {
			return
		}
		c.log.Debug("compact view not available, retrying", "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

func (c *Client) watchView(ctx context.Context, js jetstream.JetStream) error {
	kv, err := js.KeyValue(ctx, KVBucket)
	if err != nil {
		return fmt.Errorf("open bucket %s: %w", KVBucket, err)
	}
	w, err := kv.WatchAll(ctx)
	if err != nil {
		return fmt.Errorf("watch bucket %s: %w", KVBucket, err)
	}
	defer func() { _ = w.Stop() }()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case e, ok := <-w.Updates():
			if !ok {
				return errors.New("watch stopped")
			}
			if e == nil {
				select {
				case <-c.synced:
				default:
					close(c.synced)
				}
				continue
			}
			if e.Operation() != jetstream.KeyValuePut {
				c.cache.Forget(e.Key())
				continue
			}
			sum, err := DecodeSummary(e.Value())
			if err != nil || sum.Hello.ClusterID != e.Key() {
				continue
			}
			c.cache.applySummary(sum)
		}
	}
}

// Synced is closed once the cached view holds the compact view's initial
// values (never, WithoutCache).
func (c *Client) Synced() <-chan struct{} { return c.synced }

// ClusterID is the cluster this client speaks for.
func (c *Client) ClusterID() string { return c.id }

// PublishHello fills in Version, ClusterID, Incarnation and Seq (when
// empty: this client's run and its next number) and SentAt,
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
	if h.Incarnation == "" {
		h.Incarnation = c.incarnation
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
	// The request is encoded into a pooled buffer (reqenc.go): nats
	// copies it out before a request returns.
	bp := requestBufs.Get().(*[]byte)
	b := appendRequest((*bp)[:0], &req)
	defer func() {
		if cap(b) <= 64<<10 {
			*bp = b[:0]
			requestBufs.Put(bp)
		}
	}()
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
		// A refusal is final, except "unavailable" (a replica whose audit
		// stream is behind): another replica may answer the retry.
		var re *RemoteError
		if errors.As(err, &re) && re.Code != CodeUnavailable {
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
	// Reserve locally too, so concurrent local decisions spread.
	rep := c.cache.Place(c.policy, req, time.Now(), c.reserve)
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
	var m *nats.Msg
	var err error
	if ctx.Done() == nil {
		// Nothing can cancel ctx: nats times the request out with a
		// pooled timer, where a context would allocate its own.
		m, err = c.nc.Request(SubjectPlace, b, c.timeout)
	} else {
		actx, cancel := context.WithTimeout(ctx, c.timeout)
		m, err = c.nc.RequestWithContext(actx, SubjectPlace, b)
		cancel()
	}
	if err != nil {
		return PlacementReply{}, fmt.Errorf("request placement: %w", err)
	}
	if code := m.Header.Get(micro.ErrorCodeHeader); code != "" {
		return PlacementReply{}, &RemoteError{Code: code, Description: m.Header.Get(micro.ErrorHeader)}
	}
	// nats gave the message its own copy of the data, which nothing else
	// reads or writes: the reply's strings are cut from it.
	return decodePlacementReply(m.Data, true)
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

// Close stops following the compact view (the connection stays the
// caller's).
func (c *Client) Close() error {
	if c.cancel == nil {
		return nil
	}
	c.cancel()
	<-c.done
	return nil
}
