package netns

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"
)

// AbroadServer answers HTTP on its listener with a body naming it, and
// relays any other TCP connection (an iperf3 client's) to Relay: one port
// serves both, so a frontend needs one target for curl and iperf3.
type AbroadServer struct {
	Name  string
	Relay string // host:port, dialled in NS; empty: close non-HTTP connections
	NS    string

	ln     net.Listener
	httpCh chan net.Conn
	srv    *http.Server
	wg     sync.WaitGroup
	done   chan struct{}
}

// StartAbroadServer listens on addr inside ns.
func StartAbroadServer(ns, addr, name, relay string) (*AbroadServer, error) {
	ln, err := Listen(ns, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s in %s: %w", addr, ns, err)
	}
	s := &AbroadServer{Name: name, Relay: relay, NS: ns, ln: ln, httpCh: make(chan net.Conn), done: make(chan struct{})}
	s.srv = &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "hello from %s (client %s)\n", s.Name, r.RemoteAddr)
		}),
		ReadHeaderTimeout: 10 * time.Second,
	}
	s.wg.Add(2)
	go func() {
		defer s.wg.Done()
		_ = s.srv.Serve(&chanListener{ch: s.httpCh, addr: ln.Addr(), done: s.done})
	}()
	go func() {
		defer s.wg.Done()
		s.accept()
	}()
	return s, nil
}

// Addr is the listening address.
func (s *AbroadServer) Addr() net.Addr { return s.ln.Addr() }

func (s *AbroadServer) accept() {
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.handle(c)
		}()
	}
}

func (s *AbroadServer) handle(c net.Conn) {
	br := bufio.NewReader(c)
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	head, err := br.Peek(4)
	_ = c.SetReadDeadline(time.Time{})
	if err != nil {
		c.Close()
		return
	}
	pc := &peekedConn{Conn: c, r: br}
	switch string(head) {
	case "GET ", "HEAD", "POST", "PUT ":
		select {
		case s.httpCh <- pc:
		case <-s.done:
			c.Close()
		}
		return
	}
	if s.Relay == "" {
		c.Close()
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	up, err := Dial(ctx, s.NS, "tcp", s.Relay)
	cancel()
	if err != nil {
		c.Close()
		return
	}
	Splice(pc, up)
}

// Splice copies both ways until both directions end, then closes both.
func Splice(a, b net.Conn) {
	var wg sync.WaitGroup
	cp := func(dst, src net.Conn) {
		defer wg.Done()
		_, _ = io.Copy(dst, src)
		if cw, ok := dst.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		} else {
			_ = dst.Close()
		}
	}
	wg.Add(2)
	go cp(a, b)
	go cp(b, a)
	wg.Wait()
	a.Close()
	b.Close()
}

// Close stops the server.
func (s *AbroadServer) Close() error {
	close(s.done)
	err := s.ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = s.srv.Shutdown(ctx)
	return err
}

type peekedConn struct {
	net.Conn
	r io.Reader
}

func (c *peekedConn) Read(b []byte) (int, error) { return c.r.Read(b) }

func (c *peekedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Conn.Close()
}

type chanListener struct {
	ch   chan net.Conn
	addr net.Addr
	done chan struct{}
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, errors.New("listener closed")
	}
}

func (l *chanListener) Close() error   { return nil }
func (l *chanListener) Addr() net.Addr { return l.addr }

// StartIperfServer runs iperf3 -s bound to addr:port inside ns and waits
// until it accepts connections.
func StartIperfServer(ctx context.Context, ns, addr string, port int) (stop func(), err error) {
	cmd := Cmd(context.Background(), ns, "iperf3", "-s", "-B", addr, "-p", fmt.Sprint(port))
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start iperf3 server: %w", err)
	}
	stop = func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}
	dial := Dialer(ns)
	for {
		c, err := dial(ctx, "tcp", net.JoinHostPort(addr, fmt.Sprint(port)))
		if err == nil {
			c.Close()
			return stop, nil
		}
		select {
		case <-ctx.Done():
			stop()
			return nil, fmt.Errorf("wait for iperf3 server on %s:%d: %w", addr, port, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// ServePackets answers each datagram that comes to pc with reply(from, p)
// (nil: no answer), in the background until pc is closed. p is valid only
// during the call.
func ServePackets(pc net.PacketConn, reply func(from net.Addr, p []byte) []byte) {
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			if b := reply(from, buf[:n]); b != nil {
				_, _ = pc.WriteTo(b, from)
			}
		}
	}()
}

// BlackHole accepts connections on ln, in the background, and never
// answers them (a peer whose host is up but whose server hangs, or a
// lossy path); ln and every connection it took are closed when the test
// ends.
func BlackHole(t testing.TB, ln net.Listener) {
	var mu sync.Mutex
	var held []net.Conn
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range held {
			_ = c.Close()
		}
	})
}

// Serve accepts connections on ln, in the background until ln is closed,
// and runs serve on each in a goroutine of its own, closing the connection
// when serve returns.
func Serve(ln net.Listener, serve func(net.Conn)) {
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				serve(c)
			}()
		}
	}()
}
