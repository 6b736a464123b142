// Package netprobe measures the network paths between clusters, as each
// controller sees them: round-trip time and loss by small UDP echoes sent
// every few hundred milliseconds, and available bandwidth by a short timed
// transfer (the peer sends as fast as it can for ~150 ms; the prober times
// the bytes that arrive after the shaper's burst has passed).
//
// Every controller serves both endpoints on one port (Server: UDP echo,
// TCP bulk; it sends one transfer at a time, the others waiting their
// turn, so that two controllers probing it at once do not split its
// link). A Prober probes the peers that matter (Target.Hot: peers
// hosting this cluster's services or the homes of copies it runs; the
// others: up to Config.MaxCold placement candidates, probed less often)
// and keeps one Link per peer for the hellos and for Prometheus.
//
// Why a timed transfer: a token-bucket shaper (tbf) lets its bucket (the
// burst, often tens of kilobytes) through at line rate, then holds the
// rate. Packet pairs and short trains fit inside the burst and see the
// line rate; a transfer longer than the burst sees the rate once the
// bucket is empty. The estimate uses only the second part of the transfer
// (the last half of its duration), so the burst does not count, and
// converts TCP payload to bytes on the wire (full-size segments: 1448
// bytes of payload in a 1514-byte frame), the unit a shaper counts. The
// prober caps the transfer's window at its own rate times RTT+50ms
// (BulkOptions.QueueBudget): a transfer still fills the bottleneck, so
// reads its rate, but holds at most ~50 ms of the shaper's queue, and a
// drop-tail queue is not overflowed by it (users' SYNs and answers
// sharing the path would be dropped with the probe's segments).
package netprobe

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"
	"golang.org/x/time/rate"
)

// Wire format.
var (
	echoMagic = [4]byte{'R', 'M', 'E', '1'} // UDP echo: magic, then 8-byte seq, 8-byte send time
	bulkMagic = [4]byte{'R', 'M', 'B', '1'} // TCP bulk request: magic, duration ms (u32), max bytes (u32)
)

const (
	echoLen    = 20
	bulkReqLen = 12
	// MaxBulkDuration and MaxBulkBytes cap what one bulk request can ask.
	MaxBulkDuration = time.Second
	MaxBulkBytes    = 8 << 20
)

// ServerConfig tunes a probe server.
type ServerConfig struct {
	// Addr is where to listen (TCP and UDP on the same port), e.g.
	// ":8081". Ignored when TCP and UDP are given.
	Addr string
	// TCP and UDP, when set, are used instead of listening on Addr.
	TCP net.Listener
	UDP net.PacketConn
	// MaxBulk is how many bulk transfers are sent at once (default 1).
	// Every transfer from here crosses this cluster's access link: two
	// at once share it, and each prober would read a part of the rate
	// (two controllers probing the same peer at the same moment read
	// half each). So a request waits, up to QueueWait (default 1s), for
	// the transfer under way to end; the prober times from the first
	// byte, so the wait does not count. At most MaxQueued (default 8)
	// wait; more, or one whose wait runs out, are refused (closed,
	// counted): the prober tries again at its next turn.
	MaxBulk   int
	MaxQueued int
	QueueWait time.Duration
	// EchoRate bounds echoes per second (default 2000): the echo answers
	// any source, so it must not become a reflector.
	EchoRate   float64
	Registerer prometheus.Registerer
	Logger     *slog.Logger
}

// Server answers probes: UDP echoes and TCP bulk transfers.
type Server struct {
	cfg ServerConfig
	tcp net.Listener
	udp net.PacketConn
	sem chan struct{} // a slot per transfer being sent
	// queue bounds the connections taken in: sent or waiting for a slot.
	queue chan struct{}
	lim   *rate.Limiter
	reqs  *prometheus.CounterVec
	// turn is this cluster's access link, which every transfer sent from
	// here and every one the local prober receives crosses: the server's
	// transfers share it (read side, never waiting for it), the prober
	// takes it whole (write side) for each of its own. A transfer one way
	// slows one the other way (its acks queue behind the data in the
	// shaper), so the two directions take turns too.
	turn sync.RWMutex
	// sending is how many bulk transfers are being sent; overlaps counts
	// those that began while another was being sent (both then share this
	// end's link, and each prober sees a part of it).
	sending  atomic.Int32
	overlaps prometheus.Counter
	log      *slog.Logger
	wg       sync.WaitGroup
	once     sync.Once
}

// NewServer listens (or takes the given sockets) and starts serving.
func NewServer(cfg ServerConfig) (*Server, error) {
	if cfg.MaxBulk <= 0 {
		cfg.MaxBulk = 1
	}
	if cfg.MaxQueued <= 0 {
		cfg.MaxQueued = 8
	}
	if cfg.QueueWait <= 0 {
		cfg.QueueWait = time.Second
	}
	if cfg.EchoRate <= 0 {
		cfg.EchoRate = 2000
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	s := &Server{cfg: cfg, tcp: cfg.TCP, udp: cfg.UDP, sem: make(chan struct{}, cfg.MaxBulk),
		queue: make(chan struct{}, cfg.MaxBulk+cfg.MaxQueued),
		lim:   rate.NewLimiter(rate.Limit(cfg.EchoRate), int(cfg.EchoRate)/10+1), log: cfg.Logger}
	s.reqs = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "roam_ctrl_probe_requests_total",
		Help: "Probes this controller answered (kind echo or bulk) by result: served, refused (over the limit), bad (malformed).",
	}, []string{"kind", "result"})
	for _, k := range []string{"echo", "bulk"} {
		for _, r := range []string{"served", "refused", "bad"} {
			s.reqs.WithLabelValues(k, r)
		}
	}
	s.overlaps = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "roam_ctrl_probe_bulk_overlaps_total",
		Help: "Bulk transfers that began while another was being sent: they shared this controller's link, and each read a part of it.",
	})
	if cfg.Registerer != nil {
		for _, c := range []prometheus.Collector{s.reqs, s.overlaps} {
			if err := cfg.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("register probe server metrics: %w", err)
			}
		}
	}
	var err error
	if s.tcp == nil {
		if s.tcp, err = net.Listen("tcp", cfg.Addr); err != nil {
			return nil, fmt.Errorf("listen probe tcp %s: %w", cfg.Addr, err)
		}
	}
	if s.udp == nil {
		// The same port as the TCP listener, so one address names both.
		port := s.tcp.Addr().(*net.TCPAddr).Port
		host, _, _ := net.SplitHostPort(cfg.Addr)
		if s.udp, err = net.ListenPacket("udp", net.JoinHostPort(host, fmt.Sprint(port))); err != nil {
			s.tcp.Close()
			return nil, fmt.Errorf("listen probe udp %s: %w", cfg.Addr, err)
		}
	}
	s.wg.Add(2)
	go func() { defer s.wg.Done(); s.serveUDP() }()
	go func() { defer s.wg.Done(); s.serveTCP() }()
	return s, nil
}

// Addr is the TCP listener's address (the UDP echo shares its port when
// the server listened itself).
func (s *Server) Addr() net.Addr { return s.tcp.Addr() }

// Close stops serving and waits for the transfers under way.
func (s *Server) Close() error {
	var err error
	s.once.Do(func() {
		err = errors.Join(s.tcp.Close(), s.udp.Close())
		s.wg.Wait()
	})
	return err
}

// readEchoes reads datagrams from pc until it is closed (other read
// errors are passed over) and calls echo with each: its sender, its bytes
// (valid during the call) and whether it is a well-formed echo (echoLen
// bytes that start with echoMagic). The server and the prober read so.
func readEchoes(pc net.PacketConn, echo func(from net.Addr, b []byte, valid bool)) {
	buf := make([]byte, 512)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		echo(from, buf[:n], n == echoLen && [4]byte(buf[:4]) == echoMagic)
	}
}

func (s *Server) serveUDP() {
	readEchoes(s.udp, func(from net.Addr, b []byte, valid bool) {
		switch {
		case !valid:
			s.reqs.WithLabelValues("echo", "bad").Inc()
		case !s.lim.Allow():
			s.reqs.WithLabelValues("echo", "refused").Inc()
		default:
			if _, err := s.udp.WriteTo(b, from); err == nil {
				s.reqs.WithLabelValues("echo", "served").Inc()
			}
		}
	})
}

func (s *Server) serveTCP() {
	for {
		c, err := s.tcp.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			time.Sleep(10 * time.Millisecond)
			continue
		}
		select {
		case s.queue <- struct{}{}:
		default:
			s.reqs.WithLabelValues("bulk", "refused").Inc()
			c.Close()
			continue
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer func() { <-s.queue }()
			defer c.Close()
			if err := s.bulk(c); err != nil {
				result := "bad"
				if errors.Is(err, errBusy) {
					result = "refused"
				}
				s.reqs.WithLabelValues("bulk", result).Inc()
				s.log.Debug("probe bulk", "peer", c.RemoteAddr(), "err", err)
				return
			}
			s.reqs.WithLabelValues("bulk", "served").Inc()
		}()
	}
}

var errBusy = errors.New("busy: another transfer held the link (sent for the whole wait, or received by this cluster's prober)")

// congestion is the congestion control of bulk transfers (see
// setCongestion).
var congestion = "cubic"

// setCongestion sets the connection's congestion control when the kernel
// has it. A model-based one (BBR, often the system default) overshoots a
// shaper's short queue at the start, loses a window and stalls for a
// retransmission: over 150 ms that stall, not the rate, is what a probe
// would see. A loss-based one (cubic) fills the queue and holds the rate.
func setCongestion(c net.Conn, name string) {
	if rc, _ := tcpSocket(c); rc != nil {
		rc.Control(func(fd uintptr) { _ = unix.SetsockoptString(int(fd), unix.IPPROTO_TCP, unix.TCP_CONGESTION, name) })
	}
}

var zeros = make([]byte, 64<<10)

// bulk reads one request and sends zeros for its duration or bytes,
// whichever ends first (both capped). The prober closes the connection
// when it has seen enough; the write then fails and the transfer ends.
func (s *Server) bulk(c net.Conn) error {
	setCongestion(c, congestion)
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	var req [bulkReqLen]byte
	if _, err := io.ReadFull(c, req[:]); err != nil {
		return fmt.Errorf("read request: %w", err)
	}
	if [4]byte(req[:4]) != bulkMagic {
		return errors.New("read request: bad magic")
	}
	d := min(time.Duration(binary.BigEndian.Uint32(req[4:8]))*time.Millisecond, MaxBulkDuration)
	left := min(int64(binary.BigEndian.Uint32(req[8:12])), MaxBulkBytes)
	if d <= 0 || left <= 0 {
		return errors.New("read request: zero duration or bytes")
	}
	// Wait for the link (see ServerConfig.MaxBulk).
	t := time.NewTimer(s.cfg.QueueWait)
	defer t.Stop()
	select {
	case s.sem <- struct{}{}:
	case <-t.C:
		return errBusy
	}
	defer func() { <-s.sem }()
	// The local prober receiving: refused at once, not queued (the
	// prober waits for a remote server while it holds the link: a
	// server waiting for its prober could close a cycle of waits).
	if !s.turn.TryRLock() {
		return errBusy
	}
	defer s.turn.RUnlock()
	if s.sending.Add(1) > 1 {
		s.overlaps.Inc()
		s.log.Debug("probe bulk: another transfer is being sent", "peer", c.RemoteAddr())
	}
	defer s.sending.Add(-1)
	end := time.Now().Add(d)
	c.SetWriteDeadline(end.Add(time.Second))
	for left > 0 && time.Now().Before(end) {
		n, err := c.Write(zeros[:min(int64(len(zeros)), left)])
		left -= int64(n)
		if err != nil {
			return nil // the prober hung up: it had enough
		}
	}
	// All is written, but part of it may still be in the socket's send
	// buffer: the link is free when the prober has read it and hung up.
	c.SetReadDeadline(end.Add(time.Second))
	_, _ = io.Copy(io.Discard, c)
	return nil
}
