// Package demo is roam's built-in demo service: an HTTP server (and, on the
// UDP ports it is given, a datagram responder) that says which cluster
// answered, so the quick start and the tests need no image.
//
// It stops the way a well-behaved server does, so that a migration loses
// no request of a client that follows HTTP/1.1 (see Serve).
package demo

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"

	"github.com/roamnet/roam/internal/defaults"
)

// Handler answers every GET with "cluster <id> (<host>)\n" (headers
// X-Roam-Cluster and X-Roam-Client: the client address it sees).
func Handler(cluster string) http.Handler {
	body := answer(cluster)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("X-Roam-Cluster", cluster)
		// The client address the service sees (NAT: the home's; SRv6
		// path mode: the client's own).
		if host, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
			w.Header().Set("X-Roam-Client", host)
		}
		fmt.Fprint(w, body)
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "ok") })
	return mux
}

func answer(cluster string) string {
	host, _ := os.Hostname()
	if i := strings.IndexByte(host, '.'); i > 0 {
		host = host[:i]
	}
	return fmt.Sprintf("cluster %s (%s)\n", cluster, host)
}

// Config is one demo server.
type Config struct {
	// Listen is the HTTP address (TCP); UDP lists the addresses answered
	// over UDP (each datagram gets "cluster <id> (<host>)\n" followed by
	// the datagram itself). At least one of them.
	Listen  string
	UDP     []string
	Cluster string
	// IdleGrace is how long, once stopping, a connection may stay idle
	// before it is closed (default 500ms): a client that sends within it
	// gets its answer with "Connection: close" instead of a closed
	// connection.
	IdleGrace time.Duration
	// Linger is how long, once stopping, HTTP must have been quiet (no
	// connection open, none opened or closed) before it returns (default
	// 1.2s): a connection whose handshake began before the load
	// balancer's commit may still arrive, and if its SYN was lost, the
	// client sends it again only after its initial retransmission timeout
	// (1s on Linux); the load balancer keeps that flow pinned here. (A
	// local copy is killed sooner, as soon as its load balancer counts no
	// live flow, embryonic ones included.)
	Linger time.Duration
	// UDPLinger is how long, once stopping, UDP must have been quiet (no
	// datagram) before it returns (default 300ms): the load balancer keeps
	// a UDP flow pinned here until it has been idle for its UDP drain time
	// after the commit (roam-agent --udp-drain, 200ms by default), and a
	// client that reuses a source port within it is still sent here.
	UDPLinger time.Duration
}

// Serve runs the demo until ctx ends, then stops gracefully and returns:
//
//  1. Keep-alives off: from then on every answer carries "Connection:
//     close", so a client with a request in flight, or that sends one on a
//     connection it holds, gets its answer and opens a new connection for
//     the next request. The listener stays open and UDP is answered: a
//     flow the load balancer pinned here before its commit is served.
//  2. After IdleGrace, connections still idle are closed, and every other
//     one after its current answer. A client whose request crossed that
//     close sees the connection closed before any answer; a client that
//     retries an idempotent request on a connection closed while idle, as
//     Go's transport and browsers do, loses nothing.
//  3. It returns once HTTP has been quiet for Linger (no connection open,
//     requests in progress answered first, none opened or closed) and
//     UDP for UDPLinger (no datagram).
//
// Migrations stop the old copy right after the load balancer's commit, so
// every new connection of steps 1 and 2 reaches the new copy.
func Serve(ctx context.Context, cfg Config) error {
	if cfg.Listen == "" && len(cfg.UDP) == 0 {
		return errors.New("demo: nothing to listen on")
	}
	defaults.Positive(&cfg.IdleGrace, 500*time.Millisecond)
	defaults.Positive(&cfg.Linger, 1200*time.Millisecond)
	defaults.Positive(&cfg.UDPLinger, 300*time.Millisecond)
	// UDP first: once HTTP answers (the backends' readiness), UDP does too.
	var pcs []net.PacketConn
	closeAll := func() {
		for _, pc := range pcs {
			_ = pc.Close()
		}
	}
	for _, a := range cfg.UDP {
		ps, err := listenUDP(a)
		if err != nil {
			closeAll()
			return err
		}
		pcs = append(pcs, ps...)
	}
	var ln net.Listener
	if cfg.Listen != "" {
		var err error
		if ln, err = net.Listen("tcp", cfg.Listen); err != nil {
			closeAll()
			return fmt.Errorf("listen demo %s: %w", cfg.Listen, err)
		}
	}
	var (
		draining atomic.Bool
		open     atomic.Int64 // HTTP connections not closed yet
		last     atomic.Int64 // unix nanoseconds of the last HTTP activity
		lastUDP  atomic.Int64 // and of the last datagram
		wg       sync.WaitGroup
	)
	touch := func() { last.Store(time.Now().UnixNano()) }
	touchUDP := func() { lastUDP.Store(time.Now().UnixNano()) }
	body := []byte(answer(cfg.Cluster))
	for _, pc := range pcs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			serveUDP(pc, body, touchUDP)
		}()
	}
	h := Handler(cfg.Cluster)
	srv := &http.Server{
		ReadHeaderTimeout: 5 * time.Second,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if draining.Load() {
				w.Header().Set("Connection", "close")
			}
			h.ServeHTTP(w, r)
		}),
		ConnState: func(_ net.Conn, s http.ConnState) {
			switch s {
			case http.StateNew:
				open.Add(1)
				touch()
			case http.StateClosed, http.StateHijacked:
				open.Add(-1)
				touch()
			}
		},
	}
	serveErr := make(chan error, 1)
	if ln != nil {
		go func() { serveErr <- srv.Serve(ln) }()
	}
	select {
	case err := <-serveErr:
		closeAll()
		wg.Wait()
		return fmt.Errorf("serve demo: %w", err)
	case <-ctx.Done():
	}

	// 1. Keep-alives off (the handler's "Connection: close").
	draining.Store(true)
	touch()
	touchUDP()
	quiet := func() bool {
		return open.Load() == 0 && time.Since(time.Unix(0, last.Load())) >= cfg.Linger &&
			(len(pcs) == 0 || time.Since(time.Unix(0, lastUDP.Load())) >= cfg.UDPLinger)
	}
	grace := time.After(cfg.IdleGrace)
	poll := time.NewTicker(2 * time.Millisecond)
	defer poll.Stop()
	for !quiet() {
		select {
		case <-grace:
			// 2. Close the idle connections, and the others after their
			// current answer.
			srv.SetKeepAlivesEnabled(false)
		case <-poll.C:
		}
	}
	// 3. Quiet.
	var err error
	if ln != nil {
		if err = srv.Close(); err != nil {
			err = fmt.Errorf("stop demo: %w", err)
		}
	}
	closeAll()
	wg.Wait()
	return err
}

// serveUDP answers every datagram with body followed by the datagram, from
// the address the datagram was sent to: a socket bound to the unspecified
// address on a node with several addresses (a frontend address, an access
// link's) would otherwise answer from the route's source, and the client's
// connected socket would drop the answer.
func serveUDP(pc net.PacketConn, body []byte, touch func()) {
	buf := make([]byte, 2048)
	out := make([]byte, 0, len(body)+len(buf))
	rw := replyFromDst(pc)
	for {
		n, from, dst, err := rw.read(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue // a transient error (an ICMP error queued on the socket)
		}
		touch()
		out = append(append(out[:0], body...), buf[:n]...)
		_ = rw.write(out, from, dst)
	}
}

// listenUDP opens one socket per address family: an IPv4 address gets an
// IPv4 socket, an IPv6 one an IPv6-only socket, and no host both (rather
// than one dual-stack socket, on which the source of an answer to IPv4
// cannot be chosen with IPV6_PKTINFO).
func listenUDP(addr string) ([]net.PacketConn, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("listen demo udp %s: %w", addr, err)
	}
	type try struct{ network, addr string }
	var tries []try
	switch ip := net.ParseIP(host); {
	case host == "":
		tries = []try{{"udp4", net.JoinHostPort("0.0.0.0", port)}, {"udp6", net.JoinHostPort("::", port)}}
	case ip == nil:
		tries = []try{{"udp", addr}}
	case ip.To4() != nil:
		tries = []try{{"udp4", addr}}
	default:
		tries = []try{{"udp6", addr}}
	}
	var pcs []net.PacketConn
	var errs []error
	for _, tr := range tries {
		pc, err := net.ListenPacket(tr.network, tr.addr)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		pcs = append(pcs, pc)
	}
	if len(pcs) == 0 || (len(tries) == 1 && len(errs) > 0) {
		return nil, fmt.Errorf("listen demo udp %s: %w", addr, errors.Join(errs...))
	}
	return pcs, nil
}

// udpRW reads a datagram with the address it was sent to and answers from
// that address (IP_PKTINFO / IPV6_PKTINFO).
type udpRW struct {
	read  func(b []byte) (n int, from net.Addr, dst net.IP, err error)
	write func(b []byte, to net.Addr, src net.IP) error
}

func replyFromDst(pc net.PacketConn) udpRW {
	if ua, ok := pc.LocalAddr().(*net.UDPAddr); ok && ua.IP.To4() != nil {
		if p := ipv4.NewPacketConn(pc); p.SetControlMessage(ipv4.FlagDst, true) == nil {
			return pktinfoRW(p,
				func(cm *ipv4.ControlMessage) net.IP { return cm.Dst },
				func(src net.IP) *ipv4.ControlMessage { return &ipv4.ControlMessage{Src: src} })
		}
	} else if p := ipv6.NewPacketConn(pc); p.SetControlMessage(ipv6.FlagDst, true) == nil {
		return pktinfoRW(p,
			func(cm *ipv6.ControlMessage) net.IP {
				if cm.Dst.To4() == nil {
					return cm.Dst
				}
				return nil
			},
			func(src net.IP) *ipv6.ControlMessage {
				if src == nil {
					return nil
				}
				return &ipv6.ControlMessage{Src: src}
			})
	}
	return udpRW{
		read: func(b []byte) (int, net.Addr, net.IP, error) {
			n, from, err := pc.ReadFrom(b)
			return n, from, nil, err
		},
		write: func(b []byte, to net.Addr, _ net.IP) error {
			_, err := pc.WriteTo(b, to)
			return err
		},
	}
}

// pktinfoRW is a udpRW over an ipv4 or ipv6 PacketConn p with FlagDst set:
// dst is the address a datagram's control message says it was sent to (nil:
// none to answer from), withSrc the control message that sends from src.
func pktinfoRW[CM any](p interface {
	ReadFrom([]byte) (int, *CM, net.Addr, error)
	WriteTo([]byte, *CM, net.Addr) (int, error)
}, dst func(*CM) net.IP, withSrc func(src net.IP) *CM) udpRW {
	return udpRW{
		read: func(b []byte) (int, net.Addr, net.IP, error) {
			n, cm, from, err := p.ReadFrom(b)
			var to net.IP
			if cm != nil {
				to = dst(cm)
			}
			return n, from, to, err
		},
		write: func(b []byte, to net.Addr, src net.IP) error {
			_, err := p.WriteTo(b, withSrc(src), to)
			return err
		},
	}
}

// udpFlag collects repeated --udp addresses.
type udpFlag []string

func (u *udpFlag) String() string     { return strings.Join(*u, ",") }
func (u *udpFlag) Set(s string) error { *u = append(*u, s); return nil }

// Main parses `demo --listen ADDR:PORT [--udp ADDR:PORT]... --cluster ID`
// arguments and serves until ctx ends (SIGTERM), then stops gracefully.
func Main(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	var cfg Config
	fs.StringVar(&cfg.Listen, "listen", os.Getenv("ROAM_LISTEN"), "address:port to serve HTTP on")
	fs.Var((*udpFlag)(&cfg.UDP), "udp", "address:port to answer UDP on (repeat for more)")
	fs.StringVar(&cfg.Cluster, "cluster", os.Getenv("ROAM_CLUSTER"), "cluster id to report")
	fs.DurationVar(&cfg.IdleGrace, "idle-grace", 500*time.Millisecond, "when stopping: how long an idle connection is kept before it is closed")
	fs.DurationVar(&cfg.Linger, "linger", 1200*time.Millisecond, "when stopping: how long HTTP must have been quiet before it exits (longer than a SYN's first retransmission, 1s)")
	fs.DurationVar(&cfg.UDPLinger, "udp-linger", 300*time.Millisecond, "when stopping: how long UDP must have been quiet before it exits (at least the load balancer's UDP drain time)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if cfg.Listen == "" && len(cfg.UDP) == 0 {
		return errors.New("demo: --listen or --udp is required")
	}
	return Serve(ctx, cfg)
}
