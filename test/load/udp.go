package load

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"
)

// UDP requests are "roam-load <seq>\n"; roam's demo service answers
// "cluster <id> (<host>)\n" followed by the request, so an answer is
// matched to its request and says who served it.

// errNoEcho is an answer that does not end with its request.
var errNoEcho = errors.New("answer does not echo the request")

// newUDP is the UDP client: each request from a new socket (a new flow),
// one datagram out, one expected back within the timeout.
func newUDP(l *Load, c Client) requester {
	var seq atomic.Uint64
	return func(ctx context.Context, sent time.Time) result {
		r := result{kind: UDP, sent: sent}
		ctx, cancel := context.WithTimeout(ctx, l.cfg.Timeout)
		defer cancel()
		l.dialed(UDP)
		conn, err := l.cfg.Dial(ctx, "udp", c.Addr)
		if err != nil {
			r.err, r.latency = fmt.Errorf("open udp socket: %w", err), time.Since(sent)
			return r
		}
		defer conn.Close()
		stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Now()) })
		defer stop()
		if dl, ok := ctx.Deadline(); ok {
			_ = conn.SetDeadline(dl)
		}
		req := fmt.Appendf(nil, "roam-load %d\n", seq.Add(1))
		if _, err := conn.Write(req); err != nil {
			r.err, r.latency = fmt.Errorf("send: %w", err), time.Since(sent)
			return r
		}
		buf := make([]byte, 2048)
		n, err := conn.Read(buf)
		r.latency = time.Since(sent)
		switch {
		case err != nil:
			r.err = fmt.Errorf("receive: %w", err)
		case !bytes.HasSuffix(buf[:n], req):
			r.err = errNoEcho
		default:
			r.cluster = ServedBy(string(buf[:n]))
		}
		return r
	}
}
