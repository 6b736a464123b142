// This file holds the audit log of a replica's placements: every decision
// becomes one JSON line in a batch, and a batch is one message of the
// audit stream, published asynchronously when it is AuditFlush old (or
// auditBatchMax records long) with at most auditWindow batches waiting
// for their acks. Followers (every replica) skip their own batches by a
// header, before decoding them.
//
// The guarantee: a placement is answered only after its record is in
// the open batch and, with a spool directory, written to the spool
// (write(2), no fsync). A batch is published again, under the same
// Nats-Msg-Id (the stream drops a copy within its duplicate window), until
// the stream acknowledges it: a publish the stream refuses, an ack that
// does not come, a NATS server that is down all end in a retry, never in a
// lost record. While more than auditMaxPending records wait, placements
// are refused (CodeUnavailable, not decided, nothing to record). When the
// process dies (kill -9), the batches it had not seen acknowledged are in
// its spool: the replica publishes them first thing when it starts again
// on the same spool directory, before it serves. Only a machine lost for
// good (or a replica without a spool) loses what was unacknowledged: at
// most one flush interval's records plus the window; their reservations
// end anyway when the destinations' hellos list the placements or the
// reservation lifetime passes.

package meta

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
)

const (
	// AuditWriterHeader names the process that wrote an audit batch.
	AuditWriterHeader = "Roam-Audit-Writer"
	// auditBatchMax records make a batch due at once.
	auditBatchMax = 512
	// auditWindow batches at most wait for their acks.
	auditWindow = 8
	// auditMaxPending records at most are unacknowledged; beyond,
	// placements are refused.
	auditMaxPending = 64 << 10
	// auditAckWait is how long a batch waits for its ack before it is
	// published again.
	auditAckWait = 2 * time.Second
	// DefaultAuditFlush is how long a record waits for its batch to be
	// published.
	DefaultAuditFlush = 2 * time.Millisecond
	spoolSuffix       = ".audit"
)

// auditRecord is one placement decision in the audit stream. A placed one
// carries the reservation it made, which every replica applies.
type auditRecord struct {
	At           time.Time `json:"at"`
	RequestID    string    `json:"request_id"`
	Requester    string    `json:"requester"`
	Home         string    `json:"home"`
	Service      string    `json:"service"`
	Reason       Reason    `json:"reason"`
	Destination  string    `json:"destination,omitempty"`
	NoPlacement  string    `json:"no_placement,omitempty"`
	Filtered     int       `json:"filtered,omitempty"`
	DecidedBy    string    `json:"decided_by"`
	Resources    Resources `json:"resources,omitzero"`
	ReserveUntil time.Time `json:"reserve_until,omitzero"`
}

// appendAuditRecord appends rec's JSON (what json.Marshal gives) and a
// newline.
func appendAuditRecord(b []byte, rec *auditRecord) []byte {
	b = append(b, `{"at":"`...)
	b = rec.At.AppendFormat(b, time.RFC3339Nano)
	b = append(b, `","request_id":`...)
	b = appendJSONString(b, rec.RequestID)
	b = append(b, `,"requester":`...)
	b = appendJSONString(b, rec.Requester)
	b = append(b, `,"home":`...)
	b = appendJSONString(b, rec.Home)
	b = append(b, `,"service":`...)
	b = appendJSONString(b, rec.Service)
	b = append(b, `,"reason":`...)
	b = appendJSONString(b, string(rec.Reason))
	if rec.Destination != "" {
		b = append(b, `,"destination":`...)
		b = appendJSONString(b, rec.Destination)
	}
	if rec.NoPlacement != "" {
		b = append(b, `,"no_placement":`...)
		b = appendJSONString(b, rec.NoPlacement)
	}
	if rec.Filtered != 0 {
		b = append(b, `,"filtered":`...)
		b = strconv.AppendInt(b, int64(rec.Filtered), 10)
	}
	b = append(b, `,"decided_by":`...)
	b = appendJSONString(b, rec.DecidedBy)
	if rec.Resources != (Resources{}) {
		b = append(b, `,"resources":{`...)
		comma := false
		if rec.Resources.MilliCPU != 0 {
			b = append(b, `"milli_cpu":`...)
			b = strconv.AppendInt(b, rec.Resources.MilliCPU, 10)
			comma = true
		}
		if rec.Resources.MemoryMB != 0 {
			if comma {
				b = append(b, ',')
			}
			b = append(b, `"memory_mb":`...)
			b = strconv.AppendInt(b, rec.Resources.MemoryMB, 10)
		}
		b = append(b, '}')
	}
	if !rec.ReserveUntil.IsZero() {
		b = append(b, `,"reserve_until":"`...)
		b = rec.ReserveUntil.AppendFormat(b, time.RFC3339Nano)
		b = append(b, '"')
	}
	return append(b, "}\n"...)
}

// decodeAuditBatch calls f with every record of a batch (JSON lines; a
// message of one record, as older replicas wrote, is a batch of one).
func decodeAuditBatch(data []byte, f func(*auditRecord)) error {
	var bad error
	for len(data) > 0 {
		line := data
		if i := slices.Index(data, '\n'); i >= 0 {
			line, data = data[:i], data[i+1:]
		} else {
			data = nil
		}
		if len(line) == 0 {
			continue
		}
		var rec auditRecord
		if err := json.Unmarshal(line, &rec); err != nil {
			bad = errors.Join(bad, err)
			continue
		}
		f(&rec)
	}
	return bad
}

// auditBatch is a batch taken from the open one: published, waiting for
// its ack.
type auditBatch struct {
	id      string // Nats-Msg-Id: the spool segment's name
	writer  string
	data    []byte
	records int
	spool   string // the segment's path ("" without a spool)
	ack     jetstream.PubAckFuture
	sent    time.Time
	tries   int
}

// auditLog is the replica's open batch, its spool and its batches in
// flight.
type auditLog struct {
	s      *Server
	writer string // this process
	flush  time.Duration
	dir    string // spool directory ("" for none)

	mu      sync.Mutex
	buf     []byte
	records int
	first   time.Time // of the open batch's first record
	seg     *os.File  // the open batch's spool segment
	segName string
	next    *os.File // the next segment, opened ahead
	nextNm  string
	seq     uint64
	pending int   // records not acknowledged (open batch included)
	spoolEr error // the last spool write error (the record is kept in memory)
	kick    chan struct{}
	free    [][]byte

	// For tests and metrics, under mu.
	published, retried, acked int
}

func newAuditLog(s *Server, dir string, flush time.Duration) *auditLog {
	if flush <= 0 {
		flush = DefaultAuditFlush
	}
	return &auditLog{s: s, writer: nuid.Next(), flush: flush, dir: dir, kick: make(chan struct{}, 1)}
}

// room reports whether a placement may be decided: its record will fit.
func (a *auditLog) room() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.pending < auditMaxPending
}

// add appends rec to the open batch (and its spool segment).
func (a *auditLog) add(rec *auditRecord) {
	a.mu.Lock()
	start := len(a.buf)
	a.buf = appendAuditRecord(a.buf, rec)
	if a.seg != nil {
		if _, err := a.seg.Write(a.buf[start:]); err != nil && a.spoolEr == nil {
			a.spoolEr = err
			a.s.limiter.log(a.s.log, "audit-spool", "write the audit spool: records are kept in memory only", "err", err)
		}
	}
	a.records++
	a.pending++
	kick := a.records == 1 || a.records == auditBatchMax
	if a.records == 1 {
		a.first = time.Now()
	}
	a.mu.Unlock()
	if kick {
		select {
		case a.kick <- struct{}{}:
		default:
		}
	}
}

// openSegment opens a new spool segment (nil without a spool).
func (a *auditLog) openSegment() (*os.File, string) {
	if a.dir == "" {
		return nil, ""
	}
	a.seq++
	name := fmt.Sprintf("%s-%016d", a.writer, a.seq)
	f, err := os.OpenFile(filepath.Join(a.dir, name+spoolSuffix), os.O_CREATE|os.O_EXCL|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		a.s.limiter.log(a.s.log, "audit-spool", "open an audit spool segment: records are kept in memory only", "err", err)
		return nil, name
	}
	return f, name
}

// take closes the open batch and opens the next (nil when it is empty).
func (a *auditLog) take() *auditBatch {
	a.mu.Lock()
	if a.records == 0 {
		a.mu.Unlock()
		return nil
	}
	b := &auditBatch{writer: a.writer, data: a.buf, records: a.records, id: a.segName}
	seg := a.seg
	if seg != nil {
		b.spool = seg.Name()
	}
	a.seg, a.segName = a.next, a.nextNm
	a.next = nil
	if n := len(a.free); n > 0 {
		a.buf, a.free = a.free[n-1][:0], a.free[:n-1]
	} else {
		a.buf = nil
	}
	a.records = 0
	a.mu.Unlock()
	if seg != nil {
		_ = seg.Close()
	}
	if b.id == "" {
		a.mu.Lock()
		a.seq++
		b.id = fmt.Sprintf("%s-%016d", a.writer, a.seq)
		a.mu.Unlock()
	}
	f, name := a.openSegment()
	a.mu.Lock()
	a.next, a.nextNm = f, name
	a.mu.Unlock()
	return b
}

func (a *auditLog) publish(b *auditBatch) {
	s := a.s
	msg := nats.NewMsg(AuditSubject)
	msg.Data = b.data
	msg.Header.Set(jetstream.MsgIDHeader, "roam-audit-"+b.id)
	msg.Header.Set(AuditWriterHeader, b.writer)
	b.tries++
	b.sent = time.Now()
	ack, err := s.js.PublishMsgAsync(msg, jetstream.WithExpectStream(AuditStream))
	if err != nil {
		s.limiter.log(s.log, "audit", "append to the audit stream (retried)", "err", err)
		b.ack = nil
		return
	}
	b.ack = ack
	a.mu.Lock()
	a.published++
	if b.tries > 1 {
		a.retried++
	}
	a.mu.Unlock()
}

// done ends an acknowledged batch: its spool segment goes.
func (a *auditLog) done(b *auditBatch) {
	if b.spool != "" {
		_ = os.Remove(b.spool)
	}
	a.mu.Lock()
	a.pending -= b.records
	a.acked++
	if cap(b.data) <= 1<<20 && len(a.free) < auditWindow {
		a.free = append(a.free, b.data[:0])
	}
	a.mu.Unlock()
}

// run publishes batches until ctx ends, then what is open and in flight
// (for at most drain).
func (a *auditLog) run(ctx context.Context, drain time.Duration) {
	f, name := a.openSegment()
	a.mu.Lock()
	a.seg, a.segName = f, name
	a.mu.Unlock()
	a.next, a.nextNm = a.openSegment()
	var inflight []*auditBatch
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	stopping := false
	var deadline <-chan time.Time
	done := ctx.Done()
	for {
		a.mu.Lock()
		records, first := a.records, a.first
		a.mu.Unlock()
		now := time.Now()
		if records > 0 && len(inflight) < auditWindow && (stopping || records >= auditBatchMax || now.Sub(first) >= a.flush) {
			if b := a.take(); b != nil {
				a.publish(b)
				inflight = append(inflight, b)
			}
			continue
		}
		if stopping && (records == 0 && len(inflight) == 0 || a.s.ncStore.IsClosed()) {
			return // done, or killed: what is left is in the spool
		}
		wait := time.Hour
		if records > 0 && len(inflight) < auditWindow {
			wait = a.flush - now.Sub(first)
		}
		var okc <-chan *jetstream.PubAck
		var errc <-chan error
		if len(inflight) > 0 {
			b := inflight[0]
			if b.ack == nil || now.Sub(b.sent) >= auditAckWait {
				// Refused or unacknowledged: publish it again (the
				// stream drops a copy by its Nats-Msg-Id).
				if b.ack != nil {
					a.s.limiter.log(a.s.log, "audit-ack", "no ack from the audit stream: publishing the batch again", "batch", b.id)
				}
				a.publish(b)
				if b.ack == nil {
					wait = min(wait, 100*time.Millisecond)
				}
			}
			if b.ack != nil {
				okc, errc = b.ack.Ok(), b.ack.Err()
				wait = min(wait, auditAckWait-time.Since(b.sent))
			}
		}
		timer.Reset(max(wait, 0))
		select {
		case <-a.kick:
		case <-timer.C:
		case <-okc:
			a.done(inflight[0])
			inflight = inflight[1:]
		case err := <-errc:
			a.s.limiter.log(a.s.log, "audit", "the audit stream refused a batch (retried)", "batch", inflight[0].id, "err", err)
			inflight[0].ack = nil
			// Published again after a pause (the loop sees ack == nil).
			time.Sleep(50 * time.Millisecond)
		case <-done:
			stopping, done = true, nil
			deadline = time.After(drain)
		case <-deadline:
			a.s.log.Warn("audit records not acknowledged at close: left in the spool", "records", a.pendingRecords(), "spool", a.dir)
			return
		}
	}
}

func (a *auditLog) pendingRecords() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.pending
}

// replay publishes the segments a previous run of this replica left in
// the spool, each under its own Nats-Msg-Id and writer (so this run, which
// never reserved them, applies their reservations), and removes each once
// acknowledged. It returns how many records it republished.
func (a *auditLog) replay(ctx context.Context) (int, error) {
	if a.dir == "" {
		return 0, nil
	}
	if err := os.MkdirAll(a.dir, 0o700); err != nil {
		return 0, fmt.Errorf("create audit spool %s: %w", a.dir, err)
	}
	names, err := filepath.Glob(filepath.Join(a.dir, "*"+spoolSuffix))
	if err != nil {
		return 0, err
	}
	slices.Sort(names)
	n := 0
	for _, path := range names {
		data, err := os.ReadFile(path)
		if err != nil {
			return n, fmt.Errorf("read audit spool: %w", err)
		}
		name := strings.TrimSuffix(filepath.Base(path), spoolSuffix)
		if len(data) == 0 {
			_ = os.Remove(path)
			continue
		}
		// A record cut short by the crash is dropped: its placement was
		// not answered (the reply follows the whole write).
		data = data[:bytes.LastIndexByte(data, '\n')+1]
		writer, _, _ := strings.Cut(name, "-")
		records := 0
		_ = decodeAuditBatch(data, func(*auditRecord) { records++ })
		for {
			msg := nats.NewMsg(AuditSubject)
			msg.Data = data
			msg.Header.Set(jetstream.MsgIDHeader, "roam-audit-"+name)
			msg.Header.Set(AuditWriterHeader, writer)
			pctx, cancel := context.WithTimeout(ctx, auditAckWait)
			_, err := a.s.js.PublishMsg(pctx, msg, jetstream.WithExpectStream(AuditStream))
			cancel()
			if err == nil {
				break
			}
			a.s.limiter.log(a.s.log, "audit-replay", "republish the audit spool (retried)", "segment", name, "err", err)
			select {
			case <-ctx.Done():
				return n, ctx.Err()
			case <-time.After(100 * time.Millisecond):
			}
		}
		_ = os.Remove(path)
		n += records
	}
	return n, nil
}
