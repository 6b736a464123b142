package agentapi

import (
	"context"
	"io"
	"log"
	"net"
	"net/http"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/roamnet/roam/ctrl/pki"
	"github.com/roamnet/roam/dataplane/lb"
)

// callStamps are the moments of one call, as both ends' sockets and the
// agent's handler see them (one process: one clock).
type callStamps struct {
	mu                           sync.Mutex
	clientWrote, serverRead      time.Time // the call's last byte written; its first byte read
	handlerStart                 time.Time
	serverWrote, clientRead      time.Time // the answer's first byte written; its first byte read
	clientWriting, serverWriting time.Time // the call's last write started; the answer's first
}

func (s *callStamps) reset() {
	s.mu.Lock()
	for _, t := range []*time.Time{&s.clientWrote, &s.serverRead, &s.handlerStart, &s.serverWrote, &s.clientRead, &s.clientWriting, &s.serverWriting} {
		*t = time.Time{}
	}
	s.mu.Unlock()
}

func (s *callStamps) set(at *time.Time, first bool) {
	now := time.Now()
	s.mu.Lock()
	if !first || at.IsZero() {
		*at = now
	}
	s.mu.Unlock()
}

// stampConn stamps a socket's reads and writes (below TLS).
type stampConn struct {
	net.Conn
	s      *callStamps
	server bool
}

func (c *stampConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		if c.server {
			c.s.set(&c.s.serverRead, true)
		} else {
			c.s.set(&c.s.clientRead, true)
		}
	}
	return n, err
}

func (c *stampConn) Write(p []byte) (int, error) {
	if c.server {
		c.s.set(&c.s.serverWriting, true)
	} else {
		c.s.set(&c.s.clientWriting, false)
	}
	n, err := c.Conn.Write(p)
	if c.server {
		c.s.set(&c.s.serverWrote, true)
	} else {
		c.s.set(&c.s.clientWrote, false)
	}
	return n, err
}

type stampListener struct {
	net.Listener
	s *callStamps
}

func (l stampListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &stampConn{Conn: c, s: l.s, server: true}, nil
}

// BenchmarkRerouteParts: one /v1/reroute call of 2 frontends over mutual
// TLS on loopback (a real data plane), cut into its parts by the sockets'
// and the handler's timestamps, calls back to back (gap=0) and 20 ms
// apart (as a migration's come: the path is cold); each part's median is
// reported (µs):
//
//	send:    call made -> its last byte written (the client's encoding, TLS, the write)
//	wire:    -> the agent's first read of it (loopback, the agent's wake-up)
//	parse:   -> handler start (TLS, the HTTP request's head)
//	handler: -> the answer's first write starts (authorize, JSON, stage + commit, encoding)
//	ssyscall: -> that write returned
//	back:    -> the client's first read of it (loopback, the client's wake-up)
//	recv:    -> the call returns (TLS, the answer's head and JSON)
//
// beside them the data plane's stage and commit (from the answer), the
// client's write system call (csyscall, in send) and the total.
// Needs root.
func BenchmarkRerouteParts(b *testing.B) {
	ca := newCA(b)
	node := identity(b, ca, pki.ID{Cluster: "home", Node: "n1"})
	st := &callStamps{}
	a := newAgent(b, ServerConfig{TLS: node})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	h := a.srv.Handler()
	hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		st.set(&st.handlerStart, false)
		h.ServeHTTP(w, r)
	}), ReadHeaderTimeout: 10 * time.Second, TLSConfig: node.ServerConfig(), ErrorLog: log.New(io.Discard, "", 0)}
	go func() { _ = hs.ServeTLS(stampListener{Listener: ln, s: st}, "", "") }()
	b.Cleanup(func() { _ = hs.Close() })

	c := homeController(b, ca, "https://"+ln.Addr().String())
	d := &net.Dialer{}
	c.SetDialer(func(ctx context.Context, network, addr string) (net.Conn, error) {
		conn, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return &stampConn{Conn: conn, s: st}, nil
	})
	g := Group{c}
	if err := g.Warm(b.Context()); err != nil {
		b.Fatal(err)
	}
	for _, gap := range []time.Duration{0, 20 * time.Millisecond} {
		b.Run("gap="+gap.String(), func(b *testing.B) { rerouteParts(b, g, st, gap) })
	}
}

func rerouteParts(b *testing.B, g Group, st *callStamps, gap time.Duration) {
	fs := []lb.Frontend{fe, mustFrontend("10.0.0.1:81/tcp")}
	x := b.Context()
	names := []string{"send", "wire", "parse", "handler", "ssyscall", "back", "recv", "total", "stage", "commit", "csyscall"}
	parts := make([][]float64, len(names))
	for i := 0; b.Loop(); i++ {
		if gap > 0 {
			b.StopTimer()
			time.Sleep(gap)
			b.StartTimer()
		}
		ts := []lb.Target{t1, t1}
		if i%2 == 1 {
			ts = []lb.Target{t2, t2}
		}
		st.reset()
		t0 := time.Now()
		rt, err := g.Reroute(x, fs, ts)
		if err != nil {
			b.Fatal(err)
		}
		t9 := time.Now()
		st.mu.Lock()
		at := []time.Time{t0, st.clientWrote, st.serverRead, st.handlerStart, st.serverWriting, st.serverWrote, st.clientRead, t9}
		cw := st.clientWrote.Sub(st.clientWriting)
		st.mu.Unlock()
		for j := range len(at) - 1 {
			parts[j] = append(parts[j], float64(at[j+1].Sub(at[j]).Nanoseconds())/1e3)
		}
		parts[7] = append(parts[7], float64(t9.Sub(t0).Nanoseconds())/1e3)
		parts[8] = append(parts[8], float64(rt.Stage.Nanoseconds())/1e3)
		parts[9] = append(parts[9], float64(rt.Commit.Nanoseconds())/1e3)
		parts[10] = append(parts[10], float64(cw.Nanoseconds())/1e3)
	}
	for j, n := range names {
		b.ReportMetric(median(parts[j]), n+"-µs")
	}
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	return s[len(s)/2]
}
