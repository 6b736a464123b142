// This file holds the embedded NATS server's logger: it counts what the
// server refuses (a login that fails, a publish or subscribe outside the
// user's permissions, a failed TLS handshake) in
// roam_meta_nats_denied_total{reason} and logs each kind at most once a
// minute per client address.

package meta

import (
	"fmt"
	"strings"

	"github.com/nats-io/nats-server/v2/server"
)

// Reasons the embedded NATS server refused a client.
const (
	DeniedAuthentication = "authentication" // no, unknown or wrong credentials
	DeniedPublish        = "publish"        // publish outside the user's permissions
	DeniedSubscribe      = "subscribe"      // subscribe outside the user's permissions
	DeniedTLS            = "tls"            // TLS handshake failed (or a plain connection where TLS is required)
)

// natsLogger is a server.Logger for the embedded server.
type natsLogger struct{ s *Server }

var _ server.Logger = natsLogger{}

// denied classifies a server error line; "" if it is no refusal.
func denied(line string) string {
	switch {
	case strings.Contains(line, "Publish Violation"):
		return DeniedPublish
	case strings.Contains(line, "Subscription Violation"):
		return DeniedSubscribe
	case strings.Contains(line, server.ErrAuthentication.Error()):
		return DeniedAuthentication
	case strings.Contains(line, "TLS") && strings.Contains(line, "handshake error"):
		return DeniedTLS
	}
	return ""
}

// clientOf is the "ip:port - cid:n" prefix nats-server puts on client
// lines, without the port, to rate-limit logs per address.
func clientOf(line string) string {
	addr, _, _ := strings.Cut(line, " - ")
	if i := strings.LastIndexByte(addr, ':'); i > 0 {
		addr = addr[:i]
	}
	return addr
}

func (l natsLogger) Errorf(format string, v ...any) {
	line := fmt.Sprintf(format, v...)
	if reason := denied(line); reason != "" {
		l.s.metrics.natsDenied.WithLabelValues(reason).Inc()
		l.s.limiter.log(l.s.log, "nats-denied:"+reason+":"+clientOf(line), "nats refused a client", "reason", reason, "detail", line)
		return
	}
	l.s.limiter.log(l.s.log, "nats-error:"+line, "embedded nats", "error", line)
}

func (l natsLogger) Warnf(format string, v ...any) {
	l.s.limiter.log(l.s.log, "nats-warn:"+format, "embedded nats", "warning", fmt.Sprintf(format, v...))
}

func (l natsLogger) Fatalf(format string, v ...any) {
	l.s.log.Error("embedded nats: fatal: " + fmt.Sprintf(format, v...))
}

// Debugf sees the handshake errors nats-server files as probes: a plain
// connection where TLS is required, a handshake timeout. Nothing else at
// debug level is formatted.
func (l natsLogger) Debugf(format string, v ...any) {
	if strings.Contains(format, "handshake error") {
		l.Errorf(format, v...)
	}
}

func (natsLogger) Noticef(string, ...any) {}
func (natsLogger) Tracef(string, ...any)  {}
