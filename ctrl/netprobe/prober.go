package netprobe

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"net"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	"github.com/roamnet/roam/meta"
)

// Target is a peer to probe.
type Target struct {
	Peer string
	Addr string // the peer's probe endpoint, host:port (TCP bulk and UDP echo)
	// Hot peers host this cluster's services, or are the homes of the
	// copies it runs: the paths users' traffic takes. They are probed
	// every EchoInterval and BulkInterval; the others (placement
	// candidates) four times less often for echoes and every
	// ColdBulkInterval for bandwidth.
	Hot bool
	// PeerMbps and PeerSamples are what the peer says, in its hello, of
	// its own direction of the path: its bandwidth estimate and how many
	// it has taken (0: nothing said). When a hot peer's figure falls by
	// more than 30%, the path may have degraded: this end measures its
	// direction at once instead of at its next turn, so that the change
	// is confirmed from both ends within a transfer or two. When any
	// peer's figure rises by more than 30%, the path may have recovered:
	// a better place waits for both directions before its hold starts,
	// so this end measures its direction at once too (a placement
	// candidate's turn may be 20 s away, a slow hot path's, bounded by
	// MaxDuty, seconds).
	PeerMbps    float64
	PeerSamples uint64
}

// Config tunes a Prober.
type Config struct {
	// Targets returns the peers to probe now; it is called every
	// TargetsEvery. The prober keeps at most MaxCold of the non-hot ones
	// (the first, in the order given: the caller ranks them).
	Targets      func() []Target
	TargetsEvery time.Duration // default 250ms
	MaxCold      int           // default 16
	// EchoInterval is the RTT probe period of hot peers (default 250ms).
	EchoInterval time.Duration
	// BulkInterval is the bandwidth probe period of hot peers (default
	// 1s), ColdBulkInterval the others' (default 20s). BulkDuration is
	// one transfer's length from its first byte (default 150ms),
	// BulkBytes its cap (default 2 MiB). Transfers run one at a time, so
	// two never share a bottleneck.
	BulkInterval, ColdBulkInterval, BulkDuration time.Duration
	BulkBytes                                    int64
	// MaxDuty bounds the share of time a hot peer's path carries this
	// prober's transfers (default 0.1): after a transfer that took t,
	// the next one waits at least t/MaxDuty. A fast path (a transfer of
	// a few ms) is measured every BulkInterval, a slow one less often;
	// the re-measure of a big change is not delayed. (The others are
	// measured every ColdBulkInterval: a slow candidate that recovers
	// is seen at its next turn.)
	MaxDuty float64
	// QueueBudget bounds how much of a path's bottleneck queue one
	// transfer fills, as time at the transfer's own rate (default 50ms;
	// see BulkOptions): a transfer with no bound fills a shaper's
	// drop-tail queue until it overflows, and the users' packets sharing
	// it are dropped with the probe's (a lost SYN waits 1 s).
	QueueBudget time.Duration
	// LossWindow is how many echoes the loss is computed over (default
	// 20); an echo unanswered after EchoTimeout (default 1s) is lost.
	LossWindow  int
	EchoTimeout time.Duration
	// OnChange is called (without locks held) when a peer's link goes up
	// or down or its bandwidth moves by more than a quarter: the caller
	// can publish a hello at once.
	OnChange func(peer string)
	// Dial opens the bulk connection (default net.Dialer); one given
	// here must apply DialControl(ctx) (see BulkWith).
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// Listen opens the echo socket (default net.ListenPacket("udp", ":0")).
	Listen func() (net.PacketConn, error)
	// Server is this cluster's probe server, if any: the prober's
	// transfers and the server's take turns on the access link (see
	// Server.turn); a transfer the other end refuses for its own turn
	// is tried again within half a second, at a random moment.
	Server     *Server
	Registerer prometheus.Registerer
	Logger     *slog.Logger
}

// Link is what the prober knows of the path to one peer.
type Link struct {
	Peer string `json:"peer"`
	// BandwidthBps is the latest available bandwidth estimate from the
	// peer to here, in bits per second on the wire (0: none yet);
	// BandwidthAt when it was taken and BandwidthN how many were taken.
	BandwidthBps float64   `json:"bandwidth_bps"`
	BandwidthAt  time.Time `json:"bandwidth_at,omitzero"`
	BandwidthN   uint64    `json:"bandwidth_n"`
	// RTT is the median of the last echoes' round trips (those not taken
	// during a bandwidth probe of the same peer, which fills its queue).
	RTT  time.Duration `json:"rtt"`
	Loss float64       `json:"loss"` // lost fraction of the last LossWindow echoes
	Up   bool          `json:"up"`   // an echo came back within 4 echo periods
	At   time.Time     `json:"at"`   // the latest measurement of any kind
	Hot  bool          `json:"hot"`
}

// Meta is l as a hello carries it.
func (l Link) Meta() meta.Link {
	return meta.Link{Peer: l.Peer, BandwidthMbps: round3(l.BandwidthBps / 1e6), RTTMs: round3(float64(l.RTT.Microseconds()) / 1000),
		LossPct: round3(100 * l.Loss), Up: l.Up, Samples: l.BandwidthN}
}

func round3(v float64) float64 { return math.Round(v*1000) / 1000 }

type peer struct {
	Link
	addr               string
	nextEcho, nextBulk time.Time
	sent               map[uint64]time.Time // outstanding echoes
	outcomes           []bool               // last LossWindow echoes: answered?
	rtts               []time.Duration
	lastEcho           time.Time
	added              time.Time
	bulking            bool
	reprobe            bool // the bandwidth probe under way re-measures a big change
	peerMbps           float64
	peerN              uint64
	probes             map[[2]string]uint64
}

// Prober probes the peers Targets names and keeps their links.
type Prober struct {
	cfg   Config
	log   *slog.Logger
	mu    sync.Mutex
	peers map[string]*peer
	seqTo map[uint64]string
	seq   uint64
	conn  net.PacketConn
	bulk  chan string
	// turnHeld: the bulk worker holds the server's turn (its own field).
	turnHeld bool
	desc     map[string]*prometheus.Desc
}

// New builds a prober; Run probes until its context ends.
func New(cfg Config) (*Prober, error) {
	if cfg.Targets == nil {
		return nil, errors.New("new prober: targets are required")
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&cfg.TargetsEvery, 250*time.Millisecond)
	def(&cfg.EchoInterval, 250*time.Millisecond)
	def(&cfg.BulkInterval, time.Second)
	def(&cfg.ColdBulkInterval, 20*time.Second)
	def(&cfg.BulkDuration, 150*time.Millisecond)
	def(&cfg.EchoTimeout, time.Second)
	def(&cfg.QueueBudget, 50*time.Millisecond)
	if cfg.BulkBytes <= 0 {
		cfg.BulkBytes = 2 << 20
	}
	if cfg.MaxDuty <= 0 || cfg.MaxDuty > 1 {
		cfg.MaxDuty = 0.1
	}
	if cfg.MaxCold <= 0 {
		cfg.MaxCold = 16
	}
	if cfg.LossWindow <= 0 {
		cfg.LossWindow = 20
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Listen == nil {
		cfg.Listen = func() (net.PacketConn, error) { return net.ListenPacket("udp", ":0") }
	}
	p := &Prober{cfg: cfg, log: cfg.Logger, peers: map[string]*peer{}, seqTo: map[uint64]string{}, bulk: make(chan string, 1)}
	lbl := []string{"peer"}
	p.desc = map[string]*prometheus.Desc{
		"rtt":    prometheus.NewDesc("roam_ctrl_link_rtt_seconds", "Round-trip time to the peer (median of the latest echoes).", lbl, nil),
		"loss":   prometheus.NewDesc("roam_ctrl_link_loss_ratio", "Lost fraction of the latest echoes to the peer.", lbl, nil),
		"bw":     prometheus.NewDesc("roam_ctrl_link_bandwidth_bits_per_second", "Available bandwidth from the peer, latest estimate (bits on the wire).", lbl, nil),
		"up":     prometheus.NewDesc("roam_ctrl_link_up", "1 when the peer answered an echo lately.", lbl, nil),
		"hot":    prometheus.NewDesc("roam_ctrl_link_hot", "1 when the peer hosts one of this cluster's services (probed often).", lbl, nil),
		"probes": prometheus.NewDesc("roam_ctrl_link_probes_total", "Probes sent to the peer by kind (echo, bulk) and result (ok, lost, error, refused: the peer's link was busy, sender_limited: the sender stalled, not taken).", []string{"peer", "kind", "result"}, nil),
	}
	if cfg.Registerer != nil {
		if err := cfg.Registerer.Register(p); err != nil {
			return nil, fmt.Errorf("register prober metrics: %w", err)
		}
	}
	return p, nil
}

// Describe implements prometheus.Collector.
func (p *Prober) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range p.desc {
		ch <- d
	}
}

// Collect implements prometheus.Collector: one series per probed peer,
// read at scrape time.
func (p *Prober) Collect(ch chan<- prometheus.Metric) {
	p.mu.Lock()
	defer p.mu.Unlock()
	b := func(v bool) float64 {
		if v {
			return 1
		}
		return 0
	}
	for id, pr := range p.peers {
		if !pr.At.IsZero() {
			ch <- prometheus.MustNewConstMetric(p.desc["up"], prometheus.GaugeValue, b(pr.Up), id)
			ch <- prometheus.MustNewConstMetric(p.desc["loss"], prometheus.GaugeValue, pr.Loss, id)
		}
		ch <- prometheus.MustNewConstMetric(p.desc["hot"], prometheus.GaugeValue, b(pr.Hot), id)
		if pr.RTT > 0 {
			ch <- prometheus.MustNewConstMetric(p.desc["rtt"], prometheus.GaugeValue, pr.RTT.Seconds(), id)
		}
		if pr.BandwidthN > 0 {
			ch <- prometheus.MustNewConstMetric(p.desc["bw"], prometheus.GaugeValue, pr.BandwidthBps, id)
		}
		for k, n := range pr.probes {
			ch <- prometheus.MustNewConstMetric(p.desc["probes"], prometheus.CounterValue, float64(n), id, k[0], k[1])
		}
	}
}

// Links returns what is known of every probed peer, sorted by peer (those
// not measured yet are left out).
func (p *Prober) Links() []Link {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]Link, 0, len(p.peers))
	for _, pr := range p.peers {
		if !pr.At.IsZero() {
			out = append(out, pr.Link)
		}
	}
	slices.SortFunc(out, func(a, b Link) int { return strings.Compare(a.Peer, b.Peer) })
	return out
}

// LinkTo returns the link to one peer.
func (p *Prober) LinkTo(id string) (Link, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	pr, ok := p.peers[id]
	if !ok || pr.At.IsZero() {
		return Link{}, false
	}
	return pr.Link, true
}

// Run probes until ctx ends.
func (p *Prober) Run(ctx context.Context) error {
	conn, err := p.cfg.Listen()
	if err != nil {
		return fmt.Errorf("prober: open echo socket: %w", err)
	}
	p.conn = conn
	keepTimestamps(conn)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer conn.Close()
	wg.Go(func() { p.receive() })
	wg.Go(func() { p.bulkWorker(ctx) })
	p.refresh(time.Now())
	lastTargets := time.Now()
	t := time.NewTicker(25 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case now := <-t.C:
			if now.Sub(lastTargets) >= p.cfg.TargetsEvery {
				p.refresh(now)
				lastTargets = now
			}
			p.tick(now)
		}
	}
}

// refresh applies the caller's current targets.
func (p *Prober) refresh(now time.Time) {
	ts := p.cfg.Targets()
	want := map[string]Target{}
	cold := 0
	for _, t := range ts {
		if t.Peer == "" || t.Addr == "" {
			continue
		}
		if prev, dup := want[t.Peer]; dup {
			prev.Hot = prev.Hot || t.Hot
			want[t.Peer] = prev
			continue
		}
		if !t.Hot {
			if cold >= p.cfg.MaxCold {
				continue
			}
			cold++
		}
		want[t.Peer] = t
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for id, pr := range p.peers {
		if _, ok := want[id]; !ok {
			for s := range pr.sent {
				delete(p.seqTo, s)
			}
			delete(p.peers, id)
		}
	}
	for id, t := range want {
		pr, ok := p.peers[id]
		if !ok || pr.addr != t.Addr {
			// Spread the first probes so that peers do not go in step.
			jitter := time.Duration(len(p.peers)) * 37 * time.Millisecond
			pr = &peer{Link: Link{Peer: id}, addr: t.Addr, sent: map[uint64]time.Time{}, added: now,
				nextEcho: now, nextBulk: now.Add(jitter % p.cfg.BulkInterval), probes: map[[2]string]uint64{}}
			p.peers[id] = pr
		}
		if t.Hot && !pr.Hot {
			// Newly hot: measure it soon.
			p.log.Debug("probe: peer now hot", "peer", id, "bulk_due_in", pr.nextBulk.Sub(now), "bulking", pr.bulking)
			if pr.nextBulk.After(now) {
				pr.nextBulk = now
			}
			pr.nextEcho = now
		}
		if t.PeerMbps != pr.peerMbps || t.PeerSamples != pr.peerN {
			// The other end measured anew: a big fall of its figure is
			// a change of the path, to be measured from here too.
			if t.Hot && pr.peerMbps > 0 && t.PeerMbps > 0 && t.PeerMbps < 0.7*pr.peerMbps && pr.nextBulk.After(now) {
				p.log.Debug("probe: the peer's figure fell: measuring now", "peer", id, "peer_mbps", t.PeerMbps, "was", pr.peerMbps, "bulk_due_in", pr.nextBulk.Sub(now))
				pr.nextBulk = now
			}
			// A rise, of any peer: at once too. Not held by MaxDuty: the
			// path is likely fast again, so the transfer short, and this
			// happens once per the other end's sample (itself bounded).
			if pr.peerMbps > 0 && t.PeerMbps > 1.3*pr.peerMbps && pr.nextBulk.After(now) {
				p.log.Debug("probe: the peer's figure rose: measuring now", "peer", id, "peer_mbps", t.PeerMbps, "was", pr.peerMbps, "bulk_due_in", pr.nextBulk.Sub(now))
				pr.nextBulk = now
			}
			pr.peerMbps, pr.peerN = t.PeerMbps, t.PeerSamples
		}
		pr.Hot = t.Hot
	}
}

// keepTimestamps asks receive timestamps on the echo socket, which lives
// as long as the prober: the kernel turns its timestamping on for the
// first socket that wants it only some time later (deferred work), and
// off after the last; kept on, a bulk transfer's first segments are
// timestamped too (see rxTimestamps).
func keepTimestamps(c net.PacketConn) {
	if sc, ok := c.(syscall.Conn); ok {
		if rc, err := sc.SyscallConn(); err == nil {
			rc.Control(func(fd uintptr) { _ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1) })
		}
	}
}

func (p *Prober) echoEvery(pr *peer) time.Duration {
	if pr.Hot {
		return p.cfg.EchoInterval
	}
	return 4 * p.cfg.EchoInterval
}

func (p *Prober) bulkEvery(pr *peer) time.Duration {
	if pr.Hot {
		return p.cfg.BulkInterval
	}
	return p.cfg.ColdBulkInterval
}

// tick sends the echoes that are due, expires the unanswered ones, and
// hands the most urgent due bandwidth probe to the worker.
func (p *Prober) tick(now time.Time) {
	var changed []string
	type send struct {
		addr string
		b    [echoLen]byte
	}
	var sends []send
	p.mu.Lock()
	var due *peer
	for id, pr := range p.peers {
		for s, at := range pr.sent {
			if now.Sub(at) > p.cfg.EchoTimeout {
				delete(pr.sent, s)
				delete(p.seqTo, s)
				p.outcome(pr, false)
				pr.probes[[2]string{"echo", "lost"}]++
			}
		}
		if !now.Before(pr.nextEcho) {
			p.seq++
			var b [echoLen]byte
			copy(b[:4], echoMagic[:])
			binary.BigEndian.PutUint64(b[4:12], p.seq)
			binary.BigEndian.PutUint64(b[12:20], uint64(now.UnixNano()))
			pr.sent[p.seq] = now
			p.seqTo[p.seq] = id
			sends = append(sends, send{pr.addr, b})
			pr.nextEcho = now.Add(p.echoEvery(pr))
		}
		up := !pr.lastEcho.IsZero() && now.Sub(pr.lastEcho) <= 4*p.echoEvery(pr)
		if !up && pr.lastEcho.IsZero() && now.Sub(pr.added) < 4*p.echoEvery(pr) {
			up = pr.Up // nothing known yet
		} else if pr.At.IsZero() && !up {
			pr.At = now // a peer that never answered is known to be down
		}
		if up != pr.Up {
			pr.Up = up
			pr.At = now
			changed = append(changed, id)
		}
		if pr.Up && !pr.bulking && !now.Before(pr.nextBulk) {
			if due == nil || (pr.Hot && !due.Hot) || (pr.Hot == due.Hot && pr.nextBulk.Before(due.nextBulk)) {
				due = pr
			}
		}
	}
	if due != nil {
		select {
		case p.bulk <- due.Peer:
			due.bulking = true
		default: // the worker is busy
		}
	}
	p.mu.Unlock()
	for _, s := range sends {
		ua, err := net.ResolveUDPAddr("udp", s.addr)
		if err == nil {
			_, err = p.conn.WriteTo(s.b[:], ua)
		}
		if err != nil {
			p.log.Debug("probe echo", "addr", s.addr, "err", err)
		}
	}
	p.notify(changed)
}

func (p *Prober) notify(ids []string) {
	if p.cfg.OnChange == nil {
		return
	}
	for _, id := range ids {
		p.cfg.OnChange(id)
	}
}

// outcome records one echo's fate and recomputes the loss.
func (p *Prober) outcome(pr *peer, ok bool) {
	pr.outcomes = append(pr.outcomes, ok)
	if len(pr.outcomes) > p.cfg.LossWindow {
		pr.outcomes = pr.outcomes[len(pr.outcomes)-p.cfg.LossWindow:]
	}
	lost := 0
	for _, o := range pr.outcomes {
		if !o {
			lost++
		}
	}
	pr.Loss = float64(lost) / float64(len(pr.outcomes))
}

func (p *Prober) receive() {
	readEchoes(p.conn, func(_ net.Addr, b []byte, valid bool) {
		now := time.Now()
		if !valid {
			return
		}
		seq := binary.BigEndian.Uint64(b[4:12])
		var changed []string
		p.mu.Lock()
		id, ok := p.seqTo[seq]
		if pr := p.peers[id]; ok && pr != nil {
			sentAt := pr.sent[seq]
			delete(pr.sent, seq)
			delete(p.seqTo, seq)
			p.outcome(pr, true)
			pr.probes[[2]string{"echo", "ok"}]++
			pr.lastEcho, pr.At = now, now
			if !pr.bulking {
				pr.rtts = append(pr.rtts, now.Sub(sentAt))
				if len(pr.rtts) > 5 {
					pr.rtts = pr.rtts[len(pr.rtts)-5:]
				}
				s := slices.Clone(pr.rtts)
				sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
				pr.RTT = s[len(s)/2]
			}
			if !pr.Up {
				pr.Up = true
				changed = append(changed, id)
			}
		}
		p.mu.Unlock()
		p.notify(changed)
	})
}

// turnDial is the bulk dial, which takes the access link's turn (see
// Config.Server) once connected: a dial to a peer that does not answer
// (up to 3 s) must not keep the local server refusing everyone.
// turnDone gives the turn back, if taken.
func (p *Prober) turnDial() func(ctx context.Context, network, addr string) (net.Conn, error) {
	dial := p.cfg.Dial
	if dial == nil {
		dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
			return (&net.Dialer{Control: DialControl(ctx)}).DialContext(ctx, network, addr)
		}
	}
	srv := p.cfg.Server
	if srv == nil {
		return dial
	}
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if err == nil {
			srv.turn.Lock() // the server's transfers under way are bounded
			p.turnHeld = true
		}
		return c, err
	}
}

func (p *Prober) turnDone() {
	if p.turnHeld {
		p.turnHeld = false
		p.cfg.Server.turn.Unlock()
	}
}

func (p *Prober) bulkWorker(ctx context.Context) {
	for {
		var id string
		select {
		case <-ctx.Done():
			return
		case id = <-p.bulk:
		}
		p.mu.Lock()
		pr := p.peers[id]
		var (
			addr string
			rtt  time.Duration
		)
		if pr != nil {
			addr, rtt = pr.addr, pr.RTT
		}
		p.mu.Unlock()
		if pr == nil {
			continue
		}
		start := time.Now()
		bps, err := BulkWith(ctx, p.turnDial(), addr, p.cfg.BulkDuration, p.cfg.BulkBytes, BulkOptions{QueueBudget: p.cfg.QueueBudget, RTT: rtt})
		now := time.Now()
		p.turnDone()
		var changed []string
		p.mu.Lock()
		pr.bulking = false
		reprobe := pr.reprobe
		pr.reprobe = false
		took := now.Sub(start)
		next := p.bulkEvery(pr)
		if err == nil && pr.Hot {
			next = max(next, time.Duration(float64(took)/p.cfg.MaxDuty))
		}
		if errors.Is(err, ErrRefused) {
			// The other end's turn: again soon, at a random moment so
			// that two ends refusing each other fall out of step.
			pr.probes[[2]string{"bulk", "refused"}]++
			next = 100*time.Millisecond + rand.N(400*time.Millisecond)
			p.log.Debug("bandwidth probe refused: the peer's link is busy", "peer", id, "retry_in", next)
		} else if errors.Is(err, ErrSenderLimited) {
			// Not the path's rate: again soon (the stall was this
			// end's or the peer's machine, not the path).
			pr.probes[[2]string{"bulk", "sender_limited"}]++
			pr.reprobe = reprobe // the retry is the re-measure, if this was
			next = 100*time.Millisecond + rand.N(400*time.Millisecond)
			p.log.Debug("bandwidth probe: sender-limited, not taken", "peer", id, "err", err, "retry_in", next)
		} else if err != nil {
			pr.probes[[2]string{"bulk", "error"}]++
			p.log.Debug("bandwidth probe", "peer", id, "err", err)
		} else {
			pr.probes[[2]string{"bulk", "ok"}]++
			prev := pr.BandwidthBps
			big := prev > 0 && math.Abs(bps-prev) > 0.3*prev
			if big && !reprobe {
				// A big change: measure again at once, so that a
				// trigger sees it confirmed within a few hundred ms.
				// Only the re-measure itself is not re-measured: a
				// big change after noisy samples is one all the same.
				next, pr.reprobe = 0, true
			}
			// The peers hear of a new figure at once when it moved, and
			// of the re-measure of a big change whatever it found: it
			// is what confirms (or not) the change at the other end.
			if prev == 0 || math.Abs(bps-prev) > 0.25*prev || reprobe {
				changed = append(changed, id)
			}
			pr.BandwidthBps, pr.BandwidthAt, pr.At = bps, now, now
			pr.BandwidthN++
		}
		pr.nextBulk = now.Add(next)
		p.log.Debug("probe: bandwidth sample", "peer", id, "mbps", round3(bps/1e6), "err", err, "took", took, "hot", pr.Hot, "reprobe", reprobe, "rtt", rtt, "next", next)
		p.mu.Unlock()
		p.notify(changed)
	}
}
