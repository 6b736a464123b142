package netprobe

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
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

// ErrRefused is a bulk probe the server closed before sending anything:
// its link was busy (see ServerConfig.MaxBulk).
var ErrRefused = errors.New("refused: the server's link is busy")

// Bulk asks the probe server at addr for a transfer of at most d (from
// the first byte) and maxBytes, and returns the estimated available
// bandwidth from addr to here, in bits per second on the wire.
func Bulk(ctx context.Context, dial func(ctx context.Context, network, addr string) (net.Conn, error), addr string, d time.Duration, maxBytes int64) (float64, error) {
	if dial == nil {
		var nd net.Dialer
		dial = nd.DialContext
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
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return plain
	}
	rc, err := tc.SyscallConn()
	if err != nil {
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
