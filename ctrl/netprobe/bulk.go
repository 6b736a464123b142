package netprobe

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// wireFactor converts TCP payload to bytes on the wire for full-size
// segments: 1448 bytes of payload (MSS 1460 less 12 of timestamps) travel
// in a 1514-byte Ethernet frame, which is what a shaper counts.
const wireFactor = 1514.0 / 1448.0

// arrival is the cumulative payload received at t after the first byte.
type arrival struct {
	t     time.Duration
	bytes int64
}

// minLastHalfReads is how many reads the last half of a transfer must hold
// for its rate to be judged: fewer, each a large GRO batch, and one batch
// more or less swings the figure by tens of percent.
const minLastHalfReads = 8

// lastHalfReads counts the arrivals in the last half of the transfer so far.
func lastHalfReads(a []arrival) int {
	if len(a) == 0 {
		return 0
	}
	cut := a[len(a)-1].t / 2
	n := 0
	for i := len(a) - 1; i >= 0 && a[i].t > cut; i-- {
		n++
	}
	return n
}

// estimate is the rate, in bits per second on the wire, of the last half
// of a transfer: a shaper's burst passes first, at line rate, and must not
// count. ok is false when the transfer gave too little to judge.
func estimate(a []arrival) (bps float64, ok bool) {
	if len(a) < 2 {
		return 0, false
	}
	last := a[len(a)-1]
	if last.t <= 0 {
		return 0, false
	}
	cut := last.t / 2
	i := 0
	for i+1 < len(a) && a[i+1].t <= cut {
		i++
	}
	if i == len(a)-1 {
		i = len(a) - 2
	}
	span := last.t - a[i].t
	bytes := last.bytes - a[i].bytes
	if span <= 0 || bytes <= 0 {
		return 0, false
	}
	return float64(bytes) * 8 * wireFactor / span.Seconds(), true
}

// senderLimited says whether the last half of a transfer (the part
// estimate reads) holds an arrival gap that the bytes after it do not
// make up for: the rate over that half without the longest gap (of at
// least minStall) and the read that ends it is more than 1.25 times the
// rate with them. A sender
// not scheduled for a while (a busy machine) lets its socket buffer run
// empty and the path idle: the bytes that did not come were never sent,
// and the half reads low (half, for a 230 ms stall in a 450 ms half). A
// shaper releasing segmentation-offload batches makes long gaps too, but
// each ends with the batch its tokens saved up meanwhile (the gap is that
// batch's time at the rate): without both, the rate is the same. It
// returns the longest gap and the two rates (bytes per second).
func senderLimited(a []arrival) (gap time.Duration, with, without float64, limited bool) {
	if len(a) < 3 {
		return 0, 0, 0, false
	}
	last := a[len(a)-1]
	cut := last.t / 2
	i := 0
	for i+1 < len(a) && a[i+1].t <= cut {
		i++
	}
	g := 0
	for j := i + 1; j < len(a); j++ {
		if d := a[j].t - a[j-1].t; d > gap {
			gap, g = d, j
		}
	}
	span := last.t - a[i].t
	if g == 0 || span <= gap {
		return gap, 0, 0, false
	}
	bytes := last.bytes - a[i].bytes
	with = float64(bytes) / span.Seconds()
	without = float64(bytes-(a[g].bytes-a[g-1].bytes)) / (span - gap).Seconds()
	return gap, with, without, gap >= minStall && without > 1.25*with
}

// minStall is the shortest gap senderLimited judges: shorter ones are
// a busy machine's scheduling noise in a short, fast transfer (loopback,
// Gbit/s), where a few ms weigh a lot and the figure matters little.
const minStall = 50 * time.Millisecond

// ErrSenderLimited is a transfer whose sender stalled (see senderLimited):
// its rate is not the path's, so it gives no estimate.
var ErrSenderLimited = errors.New("sender-limited: an arrival gap not made up for after it")

// ErrRefused is a bulk probe the server closed before sending anything:
// its link was busy (see ServerConfig.MaxBulk).
var ErrRefused = errors.New("refused: the server's link is busy")

// Bulk asks the probe server at addr for a transfer of at most d (from
// the first byte) and maxBytes, and returns the estimated available
// bandwidth from addr to here, in bits per second on the wire.
func Bulk(ctx context.Context, dial func(ctx context.Context, network, addr string) (net.Conn, error), addr string, d time.Duration, maxBytes int64) (float64, error) {
	return BulkWith(ctx, dial, addr, d, maxBytes, BulkOptions{})
}

// BulkOptions tunes one transfer.
type BulkOptions struct {
	// QueueBudget, when above 0, bounds how much of the path's
	// bottleneck queue the transfer fills, as time at its own rate: its
	// bytes in flight are capped by the receive window this end
	// advertises (TCP_WINDOW_CLAMP) at the transfer's rate so far (after
	// the shaper's burst) times RTT+QueueBudget, and at least minWindow. On a path faster than the
	// window allows, the window grows (the rate so far is the window per
	// RTT, and RTT+QueueBudget is more than one RTT); on a path slower,
	// it settles at the path's rate times RTT+QueueBudget: the transfer
	// still fills the bottleneck, so
	// reads its rate, but a drop-tail queue (a tbf's, ~150 ms on the
	// testbed at 2 Mbit/s) never overflows because of it. Without the
	// cap a loss-based transfer fills such a queue until it drops
	// packets, and the users' packets sharing it are dropped with the
	// probe's: a lost SYN or SYN-ACK waits 1 s to be sent again.
	QueueBudget time.Duration
	// RTT is the path's round trip without a queue (0: unknown).
	RTT time.Duration
}

// minWindow is a capped transfer's first window: it must pass a
// shaper's queue whole (16 KiB is 64 ms at 2 Mbit/s).
const minWindow = 16 << 10

// BulkWith is Bulk with options. The window cap (QueueBudget) must be set
// before the connection is opened: the window of the handshake (64 KiB)
// cannot be taken back afterwards, and a first flight that large
// overflows a slow shaper's queue all the same. So a dial given here
// must apply DialControl(ctx), as the default dial (nil) does; one that
// does not is caught after connecting (the clamp is read back) and the
// probe fails.
func BulkWith(ctx context.Context, dial func(ctx context.Context, network, addr string) (net.Conn, error), addr string, d time.Duration, maxBytes int64, opt BulkOptions) (float64, error) {
	if dial == nil {
		dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
			return (&net.Dialer{Control: DialControl(ctx)}).DialContext(ctx, network, addr)
		}
	}
	capped := opt.QueueBudget > 0
	if capped {
		ctx = context.WithValue(ctx, windowKey{}, minWindow)
	}
	// Longer than the kernel's first SYN retransmission (1 s): on a
	// saturated, shaped link the SYN or SYN-ACK may be dropped once.
	dctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	c, err := dial(dctx, "tcp", addr)
	cancel()
	if err != nil {
		return 0, fmt.Errorf("bulk probe %s: %w", addr, err)
	}
	defer c.Close()
	if capped {
		if err := checkClamp(c, minWindow); err != nil {
			return 0, fmt.Errorf("bulk probe %s: cap the window: %w", addr, err)
		}
	}
	var req [bulkReqLen]byte
	copy(req[:4], bulkMagic[:])
	// The server's own bound is a little longer than ours: we stop
	// reading first and hang up.
	// A slow link delivers few, large reads (GRO) in d: then the transfer
	// goes on, up to 4d, until its last half holds enough of them.
	maxD := 4 * d
	binary.BigEndian.PutUint32(req[4:8], uint32((maxD + d/2 + 500*time.Millisecond).Milliseconds()))
	binary.BigEndian.PutUint32(req[8:12], uint32(min(maxBytes, MaxBulkBytes)))
	c.SetDeadline(time.Now().Add(maxD + 2*time.Second))
	if _, err := c.Write(req[:]); err != nil {
		return 0, fmt.Errorf("bulk probe %s: send request: %w", addr, err)
	}
	// One read takes all that has arrived (up to the whole transfer): a
	// read delayed on a busy machine then still counts every byte by its
	// time, where a small buffer would leave bytes behind and read low.
	// Each read is timed by the kernel's receive timestamp of its last
	// segment when the socket gives it (rxTimestamps), else by the clock
	// when it returns: a reader descheduled for 100 ms would otherwise
	// stretch the transfer by as much (and, once the server stopped,
	// count time in which nothing could arrive).
	buf := make([]byte, min(maxBytes, MaxBulkBytes, 4<<20))
	read := rxTimestamps(c)
	var (
		clamp    func(int, bool)
		span     = opt.RTT + opt.QueueBudget
		burstEnd = 2*opt.RTT + 5*time.Millisecond
		base     int // the last arrival of the burst
	)
	if capped {
		clamp = reclamp(c)
	}
	var (
		first, firstK time.Time
		total         int64
		arr           = make([]arrival, 0, 256) // by the clock when each read returns
		arrK          = make([]arrival, 0, 256) // by the kernel's timestamps
		allK          = true
	)
	for total < maxBytes {
		n, at, err := read(buf)
		now := time.Now()
		if n > 0 {
			if first.IsZero() {
				first, firstK = now, at
			}
			total += int64(n)
			arr = append(arr, arrival{now.Sub(first), total})
			if allK = allK && !at.IsZero() && !firstK.IsZero(); allK {
				arrK = append(arrK, arrival{at.Sub(firstK), total})
			}
			if clamp != nil {
				// The window: the rate since the shaper's burst (the
				// tokens saved while idle, passed at line rate within the
				// first round trips) times RTT+budget; minWindow until
				// then (a fast path's short transfer is held back only
				// that long). Over the whole transfer
				// since, not its last RTT+budget: a shaper releases a
				// segmentation-offload batch (up to 64 KiB) at a time
				// once it has the tokens, so a short span holds zero,
				// one or two batches.
				a := arr
				if allK {
					a = arrK
				}
				for base+1 < len(a) && a[base+1].t <= burstEnd {
					base++
				}
				w := minWindow
				if last := a[len(a)-1]; last.t > burstEnd && last.t > a[base].t {
					rate := float64(last.bytes-a[base].bytes) / (last.t - a[base].t).Seconds()
					w = int(min(max(rate*span.Seconds(), minWindow), math.MaxInt32))
				}
				clamp(w, len(a) == 1)
			}
			if el := now.Sub(first); el >= maxD || el >= d && lastHalfReads(arr) >= minLastHalfReads {
				break
			}
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			return 0, fmt.Errorf("bulk probe %s: read: %w", addr, err)
		}
		if ctx.Err() != nil {
			return 0, ctx.Err()
		}
	}
	if allK {
		arr = arrK
	}
	if total == 0 {
		// Closed before the first byte: a server busy with its link.
		return 0, fmt.Errorf("bulk probe %s: %w", addr, ErrRefused)
	}
	bps, ok := estimate(arr)
	if !ok {
		return 0, fmt.Errorf("bulk probe %s: %d bytes in %d reads: too little to estimate", addr, total, len(arr))
	}
	if gap, with, without, lim := senderLimited(arr); lim {
		return 0, fmt.Errorf("bulk probe %s: %w (nothing for %s, then no catching up: %.2f Mbit/s with the gap, %.2f without)", addr, ErrSenderLimited,
			gap.Round(time.Millisecond), with*8*wireFactor/1e6, without*8*wireFactor/1e6)
	}
	return bps, nil
}

// rxTimestamps returns a read of c that also says when the bytes read
// arrived: the kernel's software receive timestamp of the last segment
// read (SO_TIMESTAMPNS, which TCP reports per read; zero where the socket
// gives none: not TCP, an old kernel, a segment received before the
// kernel turned timestamps on).
func rxTimestamps(c net.Conn) func([]byte) (int, time.Time, error) {
	plain := func(b []byte) (int, time.Time, error) {
		n, err := c.Read(b)
		return n, time.Time{}, err
	}
	rc, _ := tcpSocket(c)
	if rc == nil {
		return plain
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1) }); err != nil || serr != nil {
		return plain
	}
	oob := make([]byte, unix.CmsgSpace(16))
	return func(b []byte) (int, time.Time, error) {
		var (
			n, oobn int
			rerr    error
		)
		err := rc.Read(func(fd uintptr) bool {
			for {
				n, oobn, _, _, rerr = unix.Recvmsg(int(fd), b, oob, 0)
				if rerr != unix.EINTR {
					return rerr != unix.EAGAIN
				}
			}
		})
		if err == nil {
			err = rerr
		}
		if err != nil {
			return 0, time.Time{}, err
		}
		if n == 0 {
			return 0, time.Time{}, io.EOF
		}
		msgs, perr := unix.ParseSocketControlMessage(oob[:oobn])
		if perr != nil {
			return n, time.Time{}, nil
		}
		for _, m := range msgs {
			if m.Header.Level == unix.SOL_SOCKET && m.Header.Type == unix.SCM_TIMESTAMPNS && len(m.Data) >= 16 {
				sec, nsec := int64(binary.NativeEndian.Uint64(m.Data[0:8])), int64(binary.NativeEndian.Uint64(m.Data[8:16]))
				if sec > 0 {
					return n, time.Unix(sec, nsec), nil
				}
			}
		}
		return n, time.Time{}, nil
	}
}

type windowKey struct{}

// DialControl is the net.Dialer Control a bulk probe's dial must use (a
// custom Config.Dial or Bulk dial too): it sets, before the connection
// opens, the first window of a capped transfer (BulkOptions.QueueBudget)
// that ctx carries (nil when none).
func DialControl(ctx context.Context) func(network, address string, c syscall.RawConn) error {
	window, _ := ctx.Value(windowKey{}).(int)
	if window <= 0 {
		return nil
	}
	return func(network, address string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			// A receive buffer set by hand: the kernel's auto-tuning
			// would otherwise raise the clamp as it grows the buffer.
			// Small until the first read: the kernel resets the clamp
			// from the buffer when the first full-size segment arrives
			// (it re-estimates the buffer's overhead), and until the
			// first read sets it again, the window it advertises then
			// must stay small too (see reclamp).
			if serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, window); serr != nil {
				serr = fmt.Errorf("SO_RCVBUF: %w", serr)
				return
			}
			if serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_WINDOW_CLAMP, window); serr != nil {
				serr = fmt.Errorf("TCP_WINDOW_CLAMP %d: %w", window, serr)
			}
		})
		return errors.Join(err, serr)
	}
}

// checkClamp says whether c's receive window is capped at window bytes
// (at most: the kernel raises a tiny clamp to its minimum). A connection
// that is not TCP (a test's pipe) has no window: nothing to check.
func checkClamp(c net.Conn, window int) error {
	rc, err := tcpSocket(c)
	if rc == nil {
		return err
	}
	var (
		got  int
		gerr error
	)
	if err := rc.Control(func(fd uintptr) { got, gerr = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_WINDOW_CLAMP) }); err != nil {
		return err
	}
	if gerr != nil {
		return gerr
	}
	if got <= 0 || got > max(window, minClamp) {
		return fmt.Errorf("the dial did not apply DialControl: window clamp %d", got)
	}
	return nil
}

// reclamp returns a function that sets c's window clamp (see
// DialControl), and, after the first read, a large receive buffer (so
// that a late reader does not close the window; the kernel caps it at
// net.core.rmem_max). The kernel resets the clamp from the receive buffer
// whenever it re-estimates the buffer's overhead (when a segment larger
// than those seen so far arrives: the first full-size one), so it is set
// after every read. Nil when c is not TCP.
func reclamp(c net.Conn) func(window int, firstRead bool) {
	rc, _ := tcpSocket(c)
	if rc == nil {
		return nil
	}
	return func(window int, firstRead bool) {
		rc.Control(func(fd uintptr) {
			if firstRead {
				_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, 4<<20)
			}
			_ = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_WINDOW_CLAMP, window)
		})
	}
}

// tcpSocket is c's socket when c is TCP, for its socket options: nil and
// no error when c is not TCP (a test's pipe), nil and the error when its
// socket cannot be had (c is closed).
func tcpSocket(c net.Conn) (syscall.RawConn, error) {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return nil, nil
	}
	return tc.SyscallConn()
}

// minClamp is the smallest window clamp the kernel keeps (SOCK_MIN_RCVBUF/2).
const minClamp = 2304
