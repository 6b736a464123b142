package agentapi

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// syncTransport is the agent client's http.RoundTripper: HTTP/1.1 over
// kept connections (TLS or plain TCP), each call written and its answer
// read on the caller's own goroutine. net/http's Transport hands every
// call to a connection's writer goroutine and back from its reader
// goroutine (HTTP/2 adds the server's per-request goroutine and its
// writer): on a loaded node each hand-off waits for a thread to be woken,
// and a stage or a commit, whose work on the agent is tens of
// microseconds, took about a millisecond. Here a call costs one write
// and one read on a connection already open (the agent's server answers
// HTTP/1.1 on the connection's own goroutine). Concurrent calls take
// different connections from the pool (a connection carries one call at
// a time); idle ones are kept up to maxIdle, for less than the agent
// server's idle timeout.
type syncTransport struct {
	addr    string // host:port
	host    string // the Host header: the URL's host
	tls     *tls.Config
	dial    func(ctx context.Context, network, addr string) (net.Conn, error)
	maxIdle int
	idleFor time.Duration

	mu   sync.Mutex
	idle []*syncConn // most recently used last
}

// syncConn is one kept connection.
type syncConn struct {
	c    net.Conn
	lr   *limitReader // under br: bounds an answer's head
	br   *bufio.Reader
	bw   *bufio.Writer
	used time.Time
}

// get takes the most recently used idle connection younger than idleFor,
// closing older ones; nil when none is kept.
func (t *syncTransport) get() *syncConn {
	t.mu.Lock()
	defer t.mu.Unlock()
	for len(t.idle) > 0 {
		sc := t.idle[len(t.idle)-1]
		t.idle = t.idle[:len(t.idle)-1]
		if time.Since(sc.used) < t.idleFor {
			return sc
		}
		_ = sc.c.Close()
	}
	return nil
}

// put keeps sc for the next call (or closes it when maxIdle are kept).
func (t *syncTransport) put(sc *syncConn) {
	sc.used = time.Now()
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.idle) >= t.maxIdle {
		_ = sc.c.Close()
		return
	}
	t.idle = append(t.idle, sc)
}

// idleConns counts the connections kept idle.
func (t *syncTransport) idleConns() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.idle)
}

// fill opens connections until n are kept idle, making the call probe
// returns on each new one (a health check: the agent then keeps it as a
// connection between calls, for its idle timeout, and the call says it
// answers): calls made at once (a stage beside another service's drain
// count) then find one open.
func (t *syncTransport) fill(ctx context.Context, timeout time.Duration, n int, probe func() (*http.Request, error)) error {
	for t.idleConns() < n {
		sc, err := t.open(ctx, timeout)
		if err != nil {
			return err
		}
		req, err := probe()
		if err != nil {
			_ = sc.c.Close()
			return err
		}
		resp, err := t.send(ctx, sc, req)
		if err != nil {
			_ = sc.c.Close()
			return err
		}
		_, err = io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close() // keeps sc
		if err == nil && resp.StatusCode/100 != 2 {
			err = fmt.Errorf("%s: %s", req.URL.Path, resp.Status)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// CloseIdleConnections closes every kept connection (http.Client calls it).
func (t *syncTransport) CloseIdleConnections() {
	t.mu.Lock()
	idle := t.idle
	t.idle = nil
	t.mu.Unlock()
	for _, sc := range idle {
		_ = sc.c.Close()
	}
}

// open dials a new connection (and makes its TLS handshake), within
// timeout when it is not 0 (the client's: a caller's context may have no
// deadline, and an agent that accepts the connection and never answers
// the handshake would hold the call for ever).
func (t *syncTransport) open(ctx context.Context, timeout time.Duration) (*syncConn, error) {
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	c, err := t.dial(ctx, "tcp", t.addr)
	if err != nil {
		return nil, err
	}
	if t.tls != nil {
		tc := tls.Client(c, t.tls)
		if err := tc.HandshakeContext(ctx); err != nil {
			_ = c.Close()
			return nil, fmt.Errorf("tls handshake with %s: %w", t.addr, err)
		}
		c = tc
	}
	lr := &limitReader{r: c, n: math.MaxInt64}
	return &syncConn{c: c, lr: lr, br: bufio.NewReaderSize(lr, 16<<10), bw: bufio.NewWriterSize(c, 8<<10)}, nil
}

// maxAnswerHead bounds the bytes read from the connection for an
// answer's head (http.Transport's MaxResponseHeaderBytes; the agent's
// heads are a few hundred bytes).
const maxAnswerHead = 64 << 10

// max1xx bounds the informational answers (1xx) read before a call's
// answer (http.Transport's rule).
const max1xx = 5

// limitReader reads from r at most n bytes more.
type limitReader struct {
	r io.Reader
	n int64
}

func (l *limitReader) Read(p []byte) (int, error) {
	if l.n <= 0 {
		return 0, fmt.Errorf("answer's head longer than %d bytes", maxAnswerHead)
	}
	if int64(len(p)) > l.n {
		p = p[:l.n]
	}
	n, err := l.r.Read(p)
	l.n -= int64(n)
	return n, err
}

// readAnswer reads the answer to req on sc: its head, at most
// maxAnswerHead bytes, after any informational (1xx) ones, which are
// skipped (a 101, switching protocols, is an error: no call asks for
// it). headCame says that an answer's head, even a 1xx one, was read.
func (sc *syncConn) readAnswer(req *http.Request) (resp *http.Response, headCame bool, err error) {
	for n := 0; ; n++ {
		sc.lr.n = maxAnswerHead
		resp, err := http.ReadResponse(sc.br, req)
		sc.lr.n = math.MaxInt64
		if err != nil {
			return nil, n > 0, err
		}
		switch {
		case resp.StatusCode == http.StatusSwitchingProtocols:
			_ = resp.Body.Close()
			return nil, true, fmt.Errorf("%s %s: the agent switched protocols (101), not asked for", req.Method, req.URL.Path)
		case resp.StatusCode/100 == 1:
			_ = resp.Body.Close()
			if n >= max1xx {
				return nil, true, fmt.Errorf("%s %s: more than %d informational (1xx) answers", req.Method, req.URL.Path, max1xx)
			}
			continue
		}
		return resp, true, nil
	}
}

// RoundTrip sends req on a kept connection (a new one when none is idle)
// and reads its answer's head; the body is read by the caller, and the
// connection is kept again once it has been read to its end and closed.
// A kept connection the agent closed while it was idle (nothing of an
// answer came) is given up and the call sent once more on a new one, if
// the call may be made twice (replayable): the EOF or reset may also
// mean that the agent read and made the call and died, or closed the
// connection, before it answered.
func (t *syncTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	ctx := req.Context()
	sc := t.get()
	reused := sc != nil
	for {
		if sc == nil {
			var err error
			if sc, err = t.open(ctx, 0); err != nil { // the http.Client's timeout is ctx's deadline
				return nil, err
			}
		}
		resp, err := t.send(ctx, sc, req)
		if err == nil {
			return resp, nil
		}
		_ = sc.c.Close()
		if !reused || !closedIdle(err) || ctx.Err() != nil || !replayable(req) {
			return nil, err
		}
		// Sent again: the agent closed that connection before reading
		// the call (its idle timeout), so the call was not made there.
		if req.Body != nil && req.GetBody == nil {
			return nil, err
		}
		if req.GetBody != nil {
			body, gerr := req.GetBody()
			if gerr != nil {
				return nil, errors.Join(err, gerr)
			}
			req = req.Clone(ctx)
			req.Body = body
		}
		sc, reused = nil, false
	}
}

// replayable reports whether req may be sent again after an error that
// leaves unknown whether the agent made it, net/http's rule: a GET, HEAD,
// OPTIONS or TRACE, or a request carrying an Idempotency-Key header (the
// client sets one on the calls whose second making changes nothing the
// first did not: see Client.do).
func replayable(req *http.Request) bool {
	if readOnly(req.Method) {
		return true
	}
	_, ok := req.Header[idempotencyKey]
	return ok
}

// readOnly reports whether a call of this method changes nothing on the
// agent, so that it may always be sent again (net/http's rule, which
// replayable applies to RoundTrip's requests).
func readOnly(method string) bool {
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
		return true
	}
	return false
}

// idempotencyKey is the header that marks a call replayable (its value
// is not sent: the agent does not read it).
const idempotencyKey = "Idempotency-Key"

// closedIdle reports whether err says the peer had closed the connection
// before any answer came: EOF or a reset on a kept connection.
func closedIdle(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.EPIPE)
}

// send writes req on sc and reads the answer's head, within ctx.
func (t *syncTransport) send(ctx context.Context, sc *syncConn, req *http.Request) (*http.Response, error) {
	_ = sc.c.SetDeadline(time.Time{})
	// A call whose context ends (cancelled, or past its deadline)
	// unblocks at once: its connection is then closed.
	stop := context.AfterFunc(ctx, func() { _ = sc.c.SetDeadline(time.Unix(1, 0)) })
	if err := req.Write(sc.bw); err != nil {
		stop()
		return nil, ctxErr(ctx, err)
	}
	if err := sc.bw.Flush(); err != nil {
		stop()
		return nil, ctxErr(ctx, err)
	}
	resp, _, err := sc.readAnswer(req)
	if err != nil {
		stop()
		return nil, ctxErr(ctx, err)
	}
	resp.Body = &syncBody{rc: resp.Body, t: t, sc: sc, stop: stop, keep: !resp.Close}
	return resp, nil
}

// ctxErr is err, or the context's error when that is why the call failed.
func ctxErr(ctx context.Context, err error) error {
	if cerr := ctx.Err(); cerr != nil {
		return fmt.Errorf("%w (%w)", cerr, err)
	}
	return err
}

// syncBody is an answer's body: its connection is kept again once the
// body has been read to its end and closed, and closed otherwise.
type syncBody struct {
	rc   io.ReadCloser
	t    *syncTransport
	sc   *syncConn
	stop func() bool
	keep bool
	eof  bool
	once sync.Once
}

func (b *syncBody) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	if errors.Is(err, io.EOF) {
		b.eof = true
	}
	return n, err
}

func (b *syncBody) Close() error {
	b.once.Do(func() {
		err := b.rc.Close()
		// stop reports false when the call's context ended first: the
		// connection's deadline was then set in the past.
		// Bytes already read past the answer (a second answer) would be
		// read by the next call as its own: the connection is not kept.
		if b.stop() && b.keep && b.eof && err == nil && b.sc.br.Buffered() == 0 {
			b.t.put(b.sc)
			return
		}
		_ = b.sc.c.Close()
	})
	return nil
}

// call makes one call of the agent API on a kept connection (a new one
// when none is idle) and returns the answer's status and body (at most
// limit bytes), like RoundTrip but without an http.Request or an
// http.Client on the way: the request's head is written by hand
// (HTTP/1.1: its line, Host, the body's type and length, the token), the
// timeout is the connection's deadline, and ctx's end unblocks it at
// once. An http.Client with a timeout
// starts a goroutine and a timer per call around a RoundTripper that is
// not its own, and http.NewRequest and Request.Write parse and build
// what is here a few appends: on a loaded node every one of those
// steps is paid again while a reroute waits. A kept connection the agent
// closed while it was idle is given up and the call sent once more on a
// new one when replay says it may be made twice (RoundTrip's rule).
func (t *syncTransport) call(ctx context.Context, timeout time.Duration, method, path, token string, body []byte, replay bool, limit int64) (int, []byte, error) {
	if strings.ContainsAny(path, " \r\n") || strings.ContainsAny(token, "\r\n") {
		return 0, nil, fmt.Errorf("call %s %q: path or token holds a space or a line break", method, path)
	}
	sc := t.get()
	reused := sc != nil
	for {
		if sc == nil {
			var err error
			if sc, err = t.open(ctx, timeout); err != nil {
				return 0, nil, err
			}
		}
		status, ans, sent, err := t.exchange(ctx, sc, timeout, method, path, token, body, limit)
		if err == nil || sent {
			return status, ans, err
		}
		if !reused || !closedIdle(err) || ctx.Err() != nil || !(replay || readOnly(method)) {
			return 0, nil, err
		}
		// Sent again: the agent closed that connection before reading
		// the call (its idle timeout), so the call was not made there.
		sc, reused = nil, false
	}
}

// exchange writes one call on sc and reads its answer; sc is kept again
// when the answer was read to its end, closed otherwise. answered says
// that an answer's head came (the call is not to be sent again).
func (t *syncTransport) exchange(ctx context.Context, sc *syncConn, timeout time.Duration, method, path, token string, body []byte, limit int64) (status int, ans []byte, answered bool, err error) {
	deadline := time.Time{}
	if timeout > 0 {
		deadline = time.Now().Add(timeout)
	}
	_ = sc.c.SetDeadline(deadline)
	// A call whose context ends (cancelled, or past its deadline)
	// unblocks at once, with the context's error: its connection is
	// then closed.
	stop := context.AfterFunc(ctx, func() { _ = sc.c.SetDeadline(time.Unix(1, 0)) })
	keep := false
	defer func() {
		if stopped := stop(); stopped && keep {
			t.put(sc)
			return
		}
		_ = sc.c.Close()
	}()
	writeHead(sc.bw, method, t.host, path, token, body)
	if _, err := sc.bw.Write(body); err != nil {
		return 0, nil, false, ctxErr(ctx, err)
	}
	if err := sc.bw.Flush(); err != nil {
		return 0, nil, false, ctxErr(ctx, err)
	}
	resp, headCame, err := sc.readAnswer(&http.Request{Method: method, URL: &url.URL{Path: path}})
	if err != nil {
		return 0, nil, headCame, ctxErr(ctx, err)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, limit))
	if err != nil {
		_ = resp.Body.Close()
		return 0, nil, true, fmt.Errorf("read answer: %w", ctxErr(ctx, err))
	}
	// Kept when the body was read to its end (shorter than limit: the
	// read stopped at its EOF) and the agent keeps the connection.
	// Bytes already read past the answer (a second answer) would be
	// read by the next call as its own: the connection is not kept.
	keep = int64(len(b)) < limit && !resp.Close && resp.Body.Close() == nil && sc.br.Buffered() == 0
	return resp.StatusCode, b, true, nil
}

// writeHead writes an HTTP/1.1 request's head into bw (its errors are
// the Flush's).
func writeHead(bw *bufio.Writer, method, host, path, token string, body []byte) {
	_, _ = bw.WriteString(method)
	_ = bw.WriteByte(' ')
	_, _ = bw.WriteString(path)
	_, _ = bw.WriteString(" HTTP/1.1\r\nHost: ")
	_, _ = bw.WriteString(host)
	_, _ = bw.WriteString("\r\nUser-Agent: roam-agentapi\r\n")
	if body != nil {
		_, _ = bw.WriteString("Content-Type: application/json\r\nContent-Length: ")
		var n [20]byte
		_, _ = bw.Write(strconv.AppendInt(n[:0], int64(len(body)), 10))
		_, _ = bw.WriteString("\r\n")
	}
	if token != "" {
		_, _ = bw.WriteString("Authorization: Bearer ")
		_, _ = bw.WriteString(token)
		_, _ = bw.WriteString("\r\n")
	}
	_, _ = bw.WriteString("\r\n")
}
