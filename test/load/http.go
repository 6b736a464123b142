package load

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"strings"
	"time"
)

// ServedBy reads the cluster id from an answer of roam's demo service
// ("cluster <id> (<host>)", possibly followed by more lines).
func ServedBy(body string) string {
	for _, line := range strings.Split(body, "\n") {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(line), "cluster "); ok {
			if f := strings.Fields(rest); len(f) > 0 {
				return f[0]
			}
		}
	}
	return ""
}

// transport returns an HTTP transport whose connections are dialed by
// l.cfg.Dial and counted as kind's.
func (l *Load) transport(kind Kind) *http.Transport {
	return &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			l.dialed(kind)
			return l.cfg.Dial(ctx, network, addr)
		},
		DisableCompression: true,
		Proxy:              nil,
	}
}

// get sends one GET and reads the answer; retried says whether the
// transport had to send it again on a new connection (Go retries an
// idempotent request whose reused connection was closed by the server
// before any answer).
func get(ctx context.Context, hc *http.Client, url string, kind Kind, timeout time.Duration) result {
	sent := time.Now()
	r := result{kind: kind, sent: sent}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	conns := 0
	ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{GotConn: func(httptrace.GotConnInfo) { conns++ }})
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		r.err = err
		return r
	}
	resp, err := hc.Do(req)
	r.retried = conns > 1
	if err != nil {
		r.err, r.latency = err, time.Since(sent)
		return r
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4096))
	resp.Body.Close()
	r.latency = time.Since(sent)
	switch {
	case err != nil:
		r.err = fmt.Errorf("read body: %w", err)
	case resp.StatusCode != http.StatusOK:
		r.err = fmt.Errorf("status %s", resp.Status)
	default:
		r.cluster = resp.Header.Get("X-Roam-Cluster")
		if r.cluster == "" {
			r.cluster = ServedBy(string(body))
		}
	}
	return r
}

// newShort is the Short client: a new connection per request.
func newShort(l *Load, c Client) requester {
	tr := l.transport(Short)
	tr.DisableKeepAlives = true
	hc := &http.Client{Transport: tr}
	url := "http://" + c.Addr + c.Path
	return func(ctx context.Context, _ time.Time) result {
		return get(ctx, hc, url, Short, l.cfg.Timeout)
	}
}

// keepAlive runs c.Conns workers over one transport that holds at most
// c.Conns connections: each worker has one request in flight at a time, so
// each keeps one persistent connection busy, as wrk does. A connection the
// server closes (Connection: close, or closed while idle) is replaced by a
// new one, which follows the frontend's current target.
func (l *Load) keepAlive(ctx context.Context, c Client) {
	tr := l.transport(KeepAlive)
	tr.MaxConnsPerHost, tr.MaxIdleConnsPerHost, tr.MaxIdleConns = c.Conns, c.Conns, c.Conns
	tr.IdleConnTimeout = 5 * time.Minute
	hc := &http.Client{Transport: tr}
	url := "http://" + c.Addr + c.Path
	for range c.Conns {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for ctx.Err() == nil {
				l.record(ctx, get(ctx, hc, url, KeepAlive, l.cfg.Timeout))
				if c.Interval > 0 {
					select {
					case <-ctx.Done():
					case <-time.After(c.Interval):
					}
				}
			}
		}()
	}
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		<-ctx.Done()
		tr.CloseIdleConnections()
	}()
}
