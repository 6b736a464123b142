// Package load is the client load that roam's benchmarks, end-to-end tests
// and soak send through a frontend, the three kinds of client a migration
// must not hurt:
//
//   - Short: HTTP GET, one connection per request (the paper's camera);
//     every request is a new flow, so it follows the frontend's current
//     target.
//   - KeepAlive: HTTP GET over a pool of persistent connections, as wrk,
//     browsers and Go's http.Transport make; a connection is pinned to the
//     target it started with until the server closes it.
//   - UDP: a request/response datagram exchange, each request from a new
//     socket (a new source port, as DNS stubs do), answered by roam's demo
//     service with the cluster that served it.
//
// Per kind it counts requests, failures, the transport's retries and new
// connections, keeps latencies (HdrHistogram) and who answered, and
// attributes failures to announced outages: a failure whose request was in
// flight at any moment of an outage (sent before its end, and not timed out
// before its start) belongs to that outage; any other failure is a failure
// of the system under test.
//
//	l, err := load.Start(ctx, load.Config{Dial: netns.Dialer(ns), Timeout: 2 * time.Second,
//		Clients: []load.Client{
//			{Kind: load.Short, Addr: "172.16.1.2:80", Interval: 20 * time.Millisecond},
//			{Kind: load.KeepAlive, Addr: "172.16.1.2:80", Conns: 8},
//			{Kind: load.UDP, Addr: "172.16.1.2:5353", Interval: 20 * time.Millisecond},
//		}})
//	end := l.Outage("cut edge")  // failures from now until end() are the outage's
//	...
//	end()
//	rep := l.Stop()              // rep.Kinds[load.KeepAlive].Failed == 0 ?
package load

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
	"github.com/roamnet/roam/internal/tick"
)

// Kind is a kind of client.
type Kind string

// The kinds of client.
const (
	Short     Kind = "short"
	KeepAlive Kind = "keepalive"
	UDP       Kind = "udp"
)

// Kinds lists every kind in report order.
var Kinds = []Kind{Short, KeepAlive, UDP}

// DialFunc opens a connection (net.Dialer.DialContext's shape); the testbed
// passes netns.Dialer(ns) so the load leaves from a client's namespace.
type DialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// Client is one kind of client and its pace.
type Client struct {
	Kind Kind
	// Addr is the frontend, host:port (TCP for Short and KeepAlive, UDP
	// for UDP).
	Addr string
	// Path is the HTTP path (default "/").
	Path string
	// Conns is the number of persistent connections of a KeepAlive client
	// (default 8, as `wrk -c8`); each has one request in flight at a time.
	Conns int
	// Interval paces the client. Short and UDP send one request every
	// Interval whatever the answers (open loop; default 20ms); a KeepAlive
	// connection waits Interval between an answer and its next request
	// (0: back to back, as wrk).
	Interval time.Duration
}

// Config is the whole load.
type Config struct {
	Clients []Client
	// Dial opens every connection and UDP socket (default net.Dialer).
	Dial DialFunc
	// Timeout bounds each request (default 2s); a request not answered in
	// time fails.
	Timeout time.Duration
	// MaxInFlight bounds the requests one open-loop client has in flight
	// (default 256); a tick beyond it counts as a failed request
	// ("client overloaded").
	MaxInFlight int
}

// Sample is one failed request (successes are only counted).
type Sample struct {
	Kind    Kind          `json:"kind"`
	Sent    time.Time     `json:"sent"`
	Latency time.Duration `json:"latency_ns"`
	Err     string        `json:"err"`
	// Outage names the announced outage the failure belongs to ("" when
	// it belongs to none: a failure of the system under test).
	Outage string `json:"outage,omitempty"`
}

// outage is an announced interval; end is zero while it lasts.
type outage struct {
	name       string
	start, end time.Time
}

// counts is one kind's running tally.
type counts struct {
	sent, ok, retried, dials int
	served                   map[string]int
	hist                     *hdrhistogram.Histogram // microseconds, successes
	failures                 []Sample
	// run is the current streak of consecutive successes (in completion
	// order) answered by runBy, counting only requests sent at or after
	// runFrom.
	run     int
	runBy   string
	runFrom time.Time
}

// Load runs the clients until Stop.
type Load struct {
	cfg    Config
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	kinds   map[Kind]*counts
	outages []*outage
	stopped bool
}

// Start checks cfg and starts every client.
func Start(ctx context.Context, cfg Config) (*Load, error) {
	if len(cfg.Clients) == 0 {
		return nil, errors.New("start load: no client")
	}
	if cfg.Dial == nil {
		cfg.Dial = (&net.Dialer{}).DialContext
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 2 * time.Second
	}
	if cfg.MaxInFlight <= 0 {
		cfg.MaxInFlight = 256
	}
	l := &Load{cfg: cfg, kinds: map[Kind]*counts{}}
	for i := range cfg.Clients {
		c := &cfg.Clients[i]
		if _, _, err := net.SplitHostPort(c.Addr); err != nil {
			return nil, fmt.Errorf("start load: %s client: address %q: %w", c.Kind, c.Addr, err)
		}
		if c.Path == "" {
			c.Path = "/"
		}
		switch c.Kind {
		case Short, UDP:
			if c.Interval <= 0 {
				c.Interval = 20 * time.Millisecond
			}
		case KeepAlive:
			if c.Conns <= 0 {
				c.Conns = 8
			}
		default:
			return nil, fmt.Errorf("start load: unknown kind %q (want short, keepalive or udp)", c.Kind)
		}
		if _, dup := l.kinds[c.Kind]; dup {
			return nil, fmt.Errorf("start load: two %s clients", c.Kind)
		}
		l.kinds[c.Kind] = &counts{served: map[string]int{}, hist: newHist()}
	}
	ctx, l.cancel = context.WithCancel(ctx)
	for _, c := range cfg.Clients {
		switch c.Kind {
		case Short:
			l.openLoop(ctx, c, newShort(l, c))
		case UDP:
			l.openLoop(ctx, c, newUDP(l, c))
		case KeepAlive:
			l.keepAlive(ctx, c)
		}
	}
	return l, nil
}

func newHist() *hdrhistogram.Histogram {
	return hdrhistogram.New(1, int64(10*time.Minute/time.Microsecond), 3)
}

// result is what one request saw.
type result struct {
	kind    Kind
	sent    time.Time
	latency time.Duration
	cluster string // who answered; "" with err
	err     error
	retried bool
}

// record adds one request's outcome; a request cut short by Stop is not
// counted (it is no failure of the system under test).
func (l *Load) record(ctx context.Context, r result) {
	if r.err != nil && ctx.Err() != nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.stopped {
		return
	}
	k := l.kinds[r.kind]
	k.sent++
	if r.retried {
		k.retried++
	}
	if r.err != nil {
		k.failures = append(k.failures, Sample{Kind: r.kind, Sent: r.sent, Latency: r.latency, Err: r.err.Error()})
		k.run = 0
		return
	}
	k.ok++
	k.served[r.cluster]++
	_ = k.hist.RecordValue(max(1, r.latency.Microseconds()))
	if r.sent.Before(k.runFrom) {
		return
	}
	if r.cluster == k.runBy {
		k.run++
	} else {
		k.run = 0
	}
}

func (l *Load) dialed(k Kind) {
	l.mu.Lock()
	l.kinds[k].dials++
	l.mu.Unlock()
}

// Outage announces that an outage starts now (a link cut, a killed
// process): every failure of a request in flight from now until the
// returned func is called belongs to it. Calling the func again does
// nothing.
func (l *Load) Outage(name string) (end func()) {
	o := &outage{name: name, start: time.Now()}
	l.mu.Lock()
	l.outages = append(l.outages, o)
	l.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			l.mu.Lock()
			o.end = time.Now()
			l.mu.Unlock()
		})
	}
}

// owner returns the outage a request sent at sent (and given up at
// sent+timeout at the latest) overlaps, or "".
func (l *Load) owner(sent time.Time) string {
	last := sent.Add(l.cfg.Timeout)
	for _, o := range l.outages {
		if last.Before(o.start) {
			continue // given up before the outage began
		}
		if !o.end.IsZero() && sent.After(o.end) {
			continue // sent after it ended
		}
		return o.name
	}
	return ""
}

// WaitServedBy waits until every client kind in kinds (every running kind
// when none is given) has had n consecutive successful requests sent after
// this call and answered by cluster.
func (l *Load) WaitServedBy(ctx context.Context, cluster string, n int, kinds ...Kind) error {
	l.mu.Lock()
	if len(kinds) == 0 {
		for k := range l.kinds {
			kinds = append(kinds, k)
		}
	}
	now := time.Now()
	for _, k := range kinds {
		c, ok := l.kinds[k]
		if !ok {
			l.mu.Unlock()
			return fmt.Errorf("wait served by %s: no %s client", cluster, k)
		}
		c.run, c.runBy, c.runFrom = 0, cluster, now
	}
	l.mu.Unlock()
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		l.mu.Lock()
		var behind []string
		for _, k := range kinds {
			c := l.kinds[k]
			if c.runBy != cluster || c.runFrom != now {
				l.mu.Unlock()
				return fmt.Errorf("wait served by %s: another wait on %s clients started", cluster, k)
			}
			if c.run < n {
				behind = append(behind, fmt.Sprintf("%s %d/%d", k, c.run, n))
			}
		}
		l.mu.Unlock()
		if len(behind) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait served by %s (%s): %w", cluster, strings.Join(behind, ", "), ctx.Err())
		case <-t.C:
		}
	}
}

// Report returns the tallies so far (Stop returns the final one).
func (l *Load) Report() Report {
	l.mu.Lock()
	defer l.mu.Unlock()
	rep := Report{Kinds: map[Kind]KindReport{}}
	for _, o := range l.outages {
		rep.Outages = append(rep.Outages, OutageReport{Name: o.name, Start: o.start, End: o.end})
	}
	for k, c := range l.kinds {
		kr := KindReport{Kind: k, Requests: c.sent, OK: c.ok, Retried: c.retried, Dials: c.dials,
			ServedBy: map[string]int{}}
		for s, n := range c.served {
			kr.ServedBy[s] = n
		}
		if c.ok > 0 {
			kr.P50 = time.Duration(c.hist.ValueAtQuantile(50)) * time.Microsecond
			kr.P99 = time.Duration(c.hist.ValueAtQuantile(99)) * time.Microsecond
			kr.Max = time.Duration(c.hist.Max()) * time.Microsecond
		}
		for _, f := range c.failures {
			f.Outage = l.owner(f.Sent)
			if f.Outage == "" {
				kr.Failed++
			} else {
				kr.FailedOutage++
				for i := range rep.Outages {
					if rep.Outages[i].Name == f.Outage {
						rep.Outages[i].Failed++
					}
				}
			}
			kr.Failures = append(kr.Failures, f)
		}
		rep.Kinds[k] = kr
	}
	return rep
}

// Stop ends every client, waits for the requests in flight and returns the
// final report. Requests cut short by Stop are not counted.
func (l *Load) Stop() Report {
	l.cancel()
	l.wg.Wait()
	l.mu.Lock()
	l.stopped = true
	l.mu.Unlock()
	return l.Report()
}

// requester sends one request of an open-loop client.
type requester func(ctx context.Context, sent time.Time) result

// openLoop sends one request every c.Interval, each in its own goroutine,
// whatever the answers (a stalled service does not slow the client down:
// every request it would have sent is counted).
func (l *Load) openLoop(ctx context.Context, c Client, req requester) {
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		OpenLoop(ctx, c.Interval, l.cfg.MaxInFlight, &l.wg, func(sent time.Time) {
			l.record(ctx, result{kind: c.Kind, sent: sent, err: errOverloaded})
		}, func(sent time.Time) {
			l.record(ctx, req(ctx, sent))
		})
	}()
}

// errOverloaded is the error of a request an open loop did not send
// because too many were in flight.
var errOverloaded = errors.New("client overloaded: too many requests in flight")

// OpenLoop calls send every interval, each call in its own goroutine
// (counted in wg), whatever the answers: a stalled service does not slow
// the client down. With maxInFlight calls still running it calls
// overloaded instead, so every request it would have sent is counted.
// Both get the time the request is due. It returns once ctx has ended;
// wg says when the calls it started are over.
func OpenLoop(ctx context.Context, interval time.Duration, maxInFlight int, wg *sync.WaitGroup, overloaded, send func(sent time.Time)) {
	inflight := make(chan struct{}, maxInFlight)
	tick.Every(ctx, interval, func() {
		now := time.Now()
		select {
		case inflight <- struct{}{}:
		default:
			overloaded(now)
			return
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-inflight }()
			send(now)
		}()
	})
}
