// This file holds the audit log of a replica's placements: every decision
// becomes one JSON line in a batch, and a batch is one message of the
// audit stream, published asynchronously when it is AuditFlush old (or
// auditBatchMax records or batchBytes long: a batch is sealed at that
// size even while the window is full, and sealed batches queue) with at
// most auditWindow batches waiting for their acks. Followers (every replica) skip their own batches by a
// header, before decoding them.
//
// The guarantee: a placement is answered only after its record is in
// the open batch and, with a spool directory, written to the spool
// (write(2), no fsync). A batch is published again, under the same
// Nats-Msg-Id (the stream drops a copy within its duplicate window), until
// the stream acknowledges it: a publish the stream refuses, an ack that
// does not come, a NATS server that is down all end in a retry, never in a
// lost record. A batch the connection finds too large (nats.ErrMaxPayload,
// the server's max_payload smaller than when it was sealed), or the
// stream refuses on its ack as larger than its max_msg_size, is split at
// line boundaries into pieces under derived ids (id-0, id-1, ...), never
// sent again as is; after the stream's refusal, batches are sealed under
// its limit. A cut is recorded in the spool (<id>.cut, the pieces' sizes)
// before its pieces are published, so replay publishes the same pieces
// under the same ids whatever the limits are then. While more than auditMaxPending records (or
// auditMaxPendingBytes bytes) wait, placements are refused (CodeUnavailable, not decided, nothing to record). When the
// process dies (kill -9), the batches it had not seen acknowledged are in
// its spool: the replica publishes them first thing when it starts again
// on the same spool directory, before it serves. Only a machine lost for
// good (or a replica without a spool) loses what was unacknowledged: up
// to the pending limit under a backlog; their reservations
// end anyway when the destinations' hellos list the placements or the
// reservation lifetime passes.

package meta

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
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
	// auditMaxPendingBytes bytes at most are unacknowledged.
	auditMaxPendingBytes = 32 << 20
	// auditBatchBytes is the most a batch holds before it is sealed (or
	// half the connection's max payload, if smaller).
	auditBatchBytes = 256 << 10
	// auditAckWait is how long a batch waits for its ack before it is
	// published again.
	auditAckWait = 2 * time.Second
	// DefaultAuditFlush is how long a record waits for its batch to be
	// published.
	DefaultAuditFlush = 2 * time.Millisecond
	spoolSuffix       = ".audit"
	// cutSuffix names the record of a cut next to the spool: <id>.cut
	// lists the sizes of the pieces batch id was cut into.
	cutSuffix = ".cut"
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
	segf    *os.File // the spool segment, until run closes it
	piece   bool     // data is part of another batch's buffer: not reused
}

// auditLog is the replica's open batch, its spool and its batches in
// flight.
type auditLog struct {
	s      *Server
	writer string // this process
	// subject is auditSubjectOf(writer), computed once: every batch this
	// process writes goes there (replay's segments of other writers
	// compute theirs).
	subject string
	flush   time.Duration
	dir     string // spool directory ("" for none)

	mu       sync.Mutex
	buf      []byte
	records  int
	first    time.Time // of the open batch's first record
	seg      *os.File  // the open batch's spool segment
	segName  string
	next     *os.File // the next segment, opened ahead
	nextNm   string
	seq      uint64
	pending  int   // records not acknowledged (open batch included)
	pendingB int   // their bytes
	limit    int   // batchBytes() as last seen
	spoolEr  error // the last spool write error (the record is kept in memory)
	kick     chan struct{}
	sealedQ  []*auditBatch // sealed by add at their size
	free     [][]byte

	// For tests and metrics, under mu.
	published, retried, acked, split, dropped int

	// streamLimit is streamPieceLimit's last answer (0: none yet).
	streamLimit atomic.Int64
}

func newAuditLog(s *Server, dir string, flush time.Duration) *auditLog {
	if flush <= 0 {
		flush = DefaultAuditFlush
	}
	w := nuid.Next()
	return &auditLog{s: s, writer: w, subject: auditSubjectOf(w), flush: flush, dir: dir, kick: make(chan struct{}, 1)}
}

// room reports whether a placement may be decided: its record will fit.
func (a *auditLog) room() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.pending < auditMaxPending && a.pendingB < auditMaxPendingBytes
}

// batchBytes is the size at which a batch is sealed: auditBatchBytes or
// half the store connection's max payload, whichever is smaller, and
// under the audit stream's max_msg_size once a batch was refused for it.
func (a *auditLog) batchBytes() int {
	n := auditBatchBytes
	if sl := a.streamLimit.Load(); sl > 0 {
		n = min(n, int(sl))
	}
	if a.s.ncStore != nil {
		if mp := int(a.s.ncStore.MaxPayload()); mp > 0 {
			n = min(n, mp/2)
		}
	}
	return max(n, 1)
}

// splitLines cuts JSON lines into pieces of at most limit bytes each (a
// single longer line is a piece of its own), at line boundaries.
func splitLines(data []byte, limit int) [][]byte {
	var out [][]byte
	for len(data) > 0 {
		end := 0
		for end < len(data) {
			i := bytes.IndexByte(data[end:], '\n')
			next := len(data)
			if i >= 0 {
				next = end + i + 1
			}
			if end > 0 && next > limit {
				break
			}
			end = next
		}
		out = append(out, data[:end])
		data = data[end:]
	}
	return out
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
	a.pendingB += len(a.buf) - start
	kick := a.records == 1 || a.records == auditBatchMax
	if a.records == 1 {
		a.first = time.Now()
	}
	if a.limit > 0 && len(a.buf) >= a.limit {
		// Sealed here, not by run: a batch never outgrows what one
		// message may carry, however late run comes round (then its
		// next segment is opened here too).
		if a.dir != "" && a.next == nil {
			a.seq++
			a.next, a.nextNm = a.openFile(fmt.Sprintf("%s-%016d", a.writer, a.seq))
		}
		a.sealedQ = append(a.sealedQ, a.sealLocked())
		kick = true
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
	a.mu.Lock()
	a.seq++
	name := fmt.Sprintf("%s-%016d", a.writer, a.seq)
	a.mu.Unlock()
	return a.openFile(name)
}

// openFile opens the spool segment name.
func (a *auditLog) openFile(name string) (*os.File, string) {
	f, err := os.OpenFile(filepath.Join(a.dir, name+spoolSuffix), os.O_CREATE|os.O_EXCL|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		a.s.limiter.log(a.s.log, "audit-spool", "open an audit spool segment: records are kept in memory only", "err", err)
		return nil, name
	}
	return f, name
}

// sealLocked closes the open batch (a.mu held, records > 0): the next
// segment, opened ahead, becomes the open one's; run closes the sealed
// one's file and opens the next ahead.
func (a *auditLog) sealLocked() *auditBatch {
	b := &auditBatch{writer: a.writer, data: a.buf, records: a.records, id: a.segName, segf: a.seg}
	if a.seg != nil {
		b.spool = a.seg.Name()
	}
	a.seg, a.segName = a.next, a.nextNm
	a.next, a.nextNm = nil, ""
	if n := len(a.free); n > 0 {
		a.buf, a.free = a.free[n-1][:0], a.free[:n-1]
	} else {
		a.buf = nil
	}
	a.records = 0
	if b.id == "" {
		a.seq++
		b.id = fmt.Sprintf("%s-%016d", a.writer, a.seq)
	}
	return b
}

// take closes the open batch (nil when it is empty); it goes to the
// sealed queue, which sealedBatches hands to run.
func (a *auditLog) take() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.records > 0 {
		a.sealedQ = append(a.sealedQ, a.sealLocked())
	}
}

// sealedBatches returns the batches sealed since it last ran, their
// segment files closed, and opens the next segment ahead if none is.
func (a *auditLog) sealedBatches() []*auditBatch {
	a.mu.Lock()
	q := a.sealedQ
	a.sealedQ = nil
	need := a.dir != "" && a.next == nil
	a.mu.Unlock()
	for _, b := range q {
		if b.segf != nil {
			_ = b.segf.Close()
			b.segf = nil
		}
	}
	if need {
		f, name := a.openSegment()
		a.mu.Lock()
		if a.next == nil {
			a.next, a.nextNm = f, name
			f = nil
		}
		a.mu.Unlock()
		if f != nil {
			_ = f.Close()
			_ = os.Remove(f.Name())
		}
	}
	return q
}

// send publishes b and returns the batches now in flight for it: b, or
// its pieces when the connection finds it too large (ErrMaxPayload).
func (a *auditLog) send(b *auditBatch) []*auditBatch {
	err := a.publish(b)
	if !errors.Is(err, nats.ErrMaxPayload) {
		return []*auditBatch{b}
	}
	return a.splitBatch(b, a.batchBytes(), "the NATS max payload")
}

// splitBatch publishes b's records in pieces of at most limit bytes, cut
// at line boundaries, under derived ids (b.id-0, b.id-1, ...), and
// returns them. A piece of one record still too large cannot be published
// at all: it is dropped, loudly (records are far smaller than any
// max_payload or max_msg_size). The cut depends only on b's data and
// limit, and is recorded in the spool (writeCut) before any piece is
// published: replay cuts the segment into the same pieces.
func (a *auditLog) splitBatch(b *auditBatch, limit int, what string) []*auditBatch {
	parts := splitLines(b.data, pieceLimit(b.data, limit))
	if len(parts) <= 1 {
		a.s.log.Error("audit record larger than "+what+": dropped", "batch", b.id, "bytes", len(b.data))
		a.mu.Lock()
		a.dropped += b.records
		a.mu.Unlock()
		a.done(b)
		return nil
	}
	a.s.limiter.log(a.s.log, "audit-split", "audit batch larger than "+what+": split", "batch", b.id, "pieces", len(parts))
	if err := a.writeCut(b.id, parts); err != nil {
		a.s.limiter.log(a.s.log, "audit-spool", "record an audit batch's cut in the spool (a replay may cut it otherwise)", "batch", b.id, "err", err)
	}
	a.mu.Lock()
	a.split++
	a.mu.Unlock()
	var out []*auditBatch
	for i, d := range parts {
		p := &auditBatch{id: b.id + "-" + strconv.Itoa(i), writer: b.writer, data: d, piece: true}
		_ = decodeAuditBatch(d, func(*auditRecord) { p.records++ })
		if i == len(parts)-1 {
			// The segment goes with the last piece (acks come in order);
			// replay cuts it into the same pieces.
			p.spool = b.spool
		}
		out = append(out, a.send(p)...)
	}
	return out
}

// pieceLimit is the limit data is cut at for a message refused as too
// large under limit: limit, or half of data when data is no longer than
// limit (the refusal counted what limit leaves room for, the headers)
// and holds more than one record.
func pieceLimit(data []byte, limit int) int {
	if len(data) <= limit && bytes.Count(data, []byte{'\n'}) > 1 {
		return max(len(data)/2, 1)
	}
	return limit
}

// auditHeaderRoom is what the pieces of a batch the audit stream refuses
// as larger than its max_msg_size leave for the message's headers (the
// stream counts them; ours take about 150 bytes).
const auditHeaderRoom = 1024

// streamPieceLimit is the size of the pieces a batch the audit stream
// refused as too large is cut into: the stream's max_msg_size less
// auditHeaderRoom, read from the stream (0 when it cannot be read or is
// unlimited). It is remembered: batches are sealed under it from then
// on (batchBytes).
func (a *auditLog) streamPieceLimit(ctx context.Context) int {
	cctx, cancel := context.WithTimeout(ctx, auditAckWait)
	defer cancel()
	st, err := a.s.js.Stream(cctx, AuditStream)
	if err != nil {
		a.s.limiter.log(a.s.log, "audit-stream-info", "read the audit stream's config (a batch it refused as too large is retried)", "err", err)
		return 0
	}
	mx := int(st.CachedInfo().Config.MaxMsgSize)
	if mx <= 0 {
		return 0
	}
	limit := max(mx-auditHeaderRoom, 1)
	a.streamLimit.Store(int64(limit))
	return limit
}

// tooLargeForStream reports an ack (or publish) error saying the message
// is larger than the audit stream's max_msg_size.
func tooLargeForStream(err error) bool {
	var apiErr *jetstream.APIError
	return errors.Is(err, jetstream.ErrStreamMessageExceedsMaximum) ||
		errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamMessageExceedsMaximum
}

func (a *auditLog) publish(b *auditBatch) error {
	s := a.s
	subject := a.subject
	if b.writer != a.writer {
		subject = auditSubjectOf(b.writer)
	}
	msg := nats.NewMsg(subject)
	msg.Data = b.data
	msg.Header.Set(jetstream.MsgIDHeader, "roam-audit-"+b.id)
	msg.Header.Set(AuditWriterHeader, b.writer)
	b.tries++
	b.sent = time.Now()
	ack, err := s.js.PublishMsgAsync(msg, jetstream.WithExpectStream(AuditStream))
	if err != nil {
		b.ack = nil
		if !errors.Is(err, nats.ErrMaxPayload) {
			s.limiter.log(s.log, "audit", "append to the audit stream (retried)", "err", err)
		}
		return err
	}
	b.ack = ack
	a.mu.Lock()
	a.published++
	if b.tries > 1 {
		a.retried++
	}
	a.mu.Unlock()
	return nil
}

// writeCut records, before its pieces are published, that batch id was
// cut into parts: <id>.cut in the spool lists their sizes, one a line.
// It is written to a temporary file and renamed, so a crash leaves the
// whole record or none (none: no piece was published).
func (a *auditLog) writeCut(id string, parts [][]byte) error {
	if a.dir == "" {
		return nil
	}
	var b []byte
	for _, p := range parts {
		b = strconv.AppendInt(b, int64(len(p)), 10)
		b = append(b, '\n')
	}
	path := filepath.Join(a.dir, id+cutSuffix)
	if err := os.WriteFile(path+".tmp", b, 0o600); err != nil {
		return err
	}
	return os.Rename(path+".tmp", path)
}

// readCut returns the piece sizes recorded for batch id (nil when it was
// not cut, or the record cannot be read).
func (a *auditLog) readCut(id string) []int {
	b, err := os.ReadFile(filepath.Join(a.dir, id+cutSuffix))
	if err != nil {
		if !os.IsNotExist(err) {
			a.s.log.Error("read an audit batch's cut: the segment is published whole", "batch", id, "err", err)
		}
		return nil
	}
	var sizes []int
	for _, f := range strings.Fields(string(b)) {
		n, err := strconv.Atoi(f)
		if err != nil || n <= 0 {
			a.s.log.Error("malformed audit cut record: the segment is published whole", "batch", id)
			return nil
		}
		sizes = append(sizes, n)
	}
	return sizes
}

// cutPieces cuts data into pieces of the recorded sizes. A segment
// shorter than the cut (its spool writes failed) gives the pieces it
// holds; one longer gives a further piece for the rest.
func cutPieces(data []byte, sizes []int) [][]byte {
	var out [][]byte
	for _, n := range sizes {
		n = min(n, len(data))
		out = append(out, data[:n])
		data = data[n:]
	}
	if len(data) > 0 {
		out = append(out, data)
	}
	return out
}

// removeCuts removes the cut records of segment name and of its pieces.
func (a *auditLog) removeCuts(name string) {
	_ = os.Remove(filepath.Join(a.dir, name+cutSuffix))
	nested, _ := filepath.Glob(filepath.Join(a.dir, name+"-*"+cutSuffix))
	for _, p := range nested {
		_ = os.Remove(p)
	}
}

// done ends an acknowledged batch: its spool segment goes (and the
// records of its cuts, which the last piece carries the segment for).
func (a *auditLog) done(b *auditBatch) {
	if b.spool != "" {
		_ = os.Remove(b.spool)
		if b.piece {
			a.removeCuts(strings.TrimSuffix(filepath.Base(b.spool), spoolSuffix))
		}
	}
	a.mu.Lock()
	a.pending -= b.records
	a.pendingB -= len(b.data)
	a.acked++
	if !b.piece && cap(b.data) <= 1<<20 && len(a.free) < auditWindow {
		a.free = append(a.free, b.data[:0])
	}
	a.mu.Unlock()
}

// run publishes batches until ctx ends, then what is open and in flight
// (for at most drain).
func (a *auditLog) run(ctx context.Context, drain time.Duration) {
	f, name := a.openSegment()
	nf, nname := a.openSegment()
	a.mu.Lock()
	a.seg, a.segName = f, name
	a.next, a.nextNm = nf, nname
	a.limit = a.batchBytes()
	a.mu.Unlock()
	var inflight, sealed []*auditBatch
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	stopping := false
	var deadline <-chan time.Time
	done := ctx.Done()
	for {
		limit := a.batchBytes()
		a.mu.Lock()
		a.limit = limit
		records, size, first := a.records, len(a.buf), a.first
		a.mu.Unlock()
		sealed = append(sealed, a.sealedBatches()...)
		now := time.Now()
		room := len(inflight) < auditWindow && len(sealed) == 0
		full := records >= auditBatchMax || size >= limit
		if records > 0 && (stopping || full || room && now.Sub(first) >= a.flush) {
			// Sealed at its size even while the window is full: a batch
			// never outgrows what one message may carry.
			a.take()
			continue // sealedBatches closes its file, opens the next
		}
		if len(sealed) > 0 && len(inflight) < auditWindow {
			b := sealed[0]
			sealed = sealed[1:]
			inflight = append(inflight, a.send(b)...)
			continue
		}
		if stopping && (records == 0 && len(inflight) == 0 && len(sealed) == 0 || a.s.ncStore.IsClosed()) {
			return // done, or killed: what is left is in the spool
		}
		wait := time.Hour
		if records > 0 && room {
			wait = a.flush - now.Sub(first)
		}
		var okc <-chan *jetstream.PubAck
		var errc <-chan error
		if len(inflight) > 0 {
			b := inflight[0]
			if b.ack == nil || now.Sub(b.sent) >= auditAckWait {
				// Refused or unacknowledged: publish it again (the
				// stream drops a copy by its Nats-Msg-Id), or its pieces
				// if it no longer fits in a message.
				if b.ack != nil {
					a.s.limiter.log(a.s.log, "audit-ack", "no ack from the audit stream: publishing the batch again", "batch", b.id)
				}
				inflight = slices.Concat(a.send(b), inflight[1:])
				if len(inflight) == 0 {
					continue
				}
				b = inflight[0]
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
			if tooLargeForStream(err) {
				// Sent again as is, it would be refused for ever: cut
				// into pieces the stream takes.
				if limit := a.streamPieceLimit(context.Background()); limit > 0 {
					inflight = slices.Concat(a.splitBatch(inflight[0], limit, "the audit stream's max_msg_size"), inflight[1:])
					continue
				}
			}
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
		if err := a.replayPiece(ctx, name, writer, data); err != nil {
			return n, err
		}
		_ = os.Remove(path)
		a.removeCuts(name)
		n += records
	}
	// Cut records whose segment went before they did (a crash between).
	orphans, _ := filepath.Glob(filepath.Join(a.dir, "*"+cutSuffix+"*"))
	for _, p := range orphans {
		_ = os.Remove(p)
	}
	return n, nil
}

// replayPiece publishes one spool segment (or a piece of one) under id:
// cut as the live run recorded it (<id>.cut), each piece under its
// derived id (id-0, id-1, ...) as the live run published it, so the
// stream's dedupe drops what it already holds; else whole under id, as
// send publishes a batch, and cut (the cut recorded first) only when the
// connection or the stream refuses it as too large, as run cuts it.
func (a *auditLog) replayPiece(ctx context.Context, id, writer string, data []byte) error {
	if sizes := a.readCut(id); sizes != nil {
		return a.replayParts(ctx, id, writer, cutPieces(data, sizes))
	}
	for {
		msg := nats.NewMsg(auditSubjectOf(writer))
		msg.Data = data
		msg.Header.Set(jetstream.MsgIDHeader, "roam-audit-"+id)
		msg.Header.Set(AuditWriterHeader, writer)
		pctx, cancel := context.WithTimeout(ctx, auditAckWait)
		_, err := a.s.js.PublishMsg(pctx, msg, jetstream.WithExpectStream(AuditStream))
		cancel()
		if err == nil {
			return nil
		}
		limit, what := 0, ""
		switch {
		case errors.Is(err, nats.ErrMaxPayload):
			limit, what = a.batchBytes(), "the NATS max payload"
		case tooLargeForStream(err):
			limit, what = a.streamPieceLimit(ctx), "the audit stream's max_msg_size"
		}
		if limit > 0 {
			parts := splitLines(data, pieceLimit(data, limit))
			if len(parts) <= 1 {
				a.s.log.Error("audit record larger than "+what+": dropped", "segment", id, "bytes", len(data))
				return nil
			}
			if err := a.writeCut(id, parts); err != nil {
				a.s.limiter.log(a.s.log, "audit-spool", "record an audit segment's cut in the spool (a replay may cut it otherwise)", "segment", id, "err", err)
			}
			return a.replayParts(ctx, id, writer, parts)
		}
		a.s.limiter.log(a.s.log, "audit-replay", "republish the audit spool (retried)", "segment", id, "err", err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// replayParts publishes the pieces of segment (or piece) id under id-0,
// id-1, ...
func (a *auditLog) replayParts(ctx context.Context, id, writer string, parts [][]byte) error {
	for i, d := range parts {
		if len(d) == 0 {
			continue
		}
		if err := a.replayPiece(ctx, id+"-"+strconv.Itoa(i), writer, d); err != nil {
			return err
		}
	}
	return nil
}

// auditWriterBits is how many bits of a writer's hash its audit subject
// spells out.
const auditWriterBits = 64

// auditSubjectOf is the subject a writer's batches go to: AuditSubject
// followed by the FNV-1a hash of the writer, one token per bit ("0" or
// "1"), most significant first. JetStream filters cannot say "all but
// this subject", but they can say "differs from it in bit i" for each i:
// auditFollowFilters.
func auditSubjectOf(writer string) string {
	h := fnv.New64a()
	h.Write([]byte(writer))
	return auditSubjectBits(h.Sum64(), auditWriterBits)
}

// auditSubjectBits is AuditSubject and the first n bits of v (most
// significant first), one token each.
func auditSubjectBits(v uint64, n int) string {
	b := make([]byte, 0, len(AuditSubject)+2*n)
	b = append(b, AuditSubject...)
	for i := 0; i < n; i++ {
		b = append(b, '.', '0'+byte(v>>(63-i)&1))
	}
	return string(b)
}

// auditFollowFilters are the filter subjects of a replica's audit
// follower: the plain AuditSubject (batches of replicas that did not put
// their writer in the subject), and for each bit i of the writer's hash
// every subject that agrees with the writer's on the bits before i and
// differs at i. Together they take every writer's subject but this
// writer's (and a writer whose hash equals it, 2^-64 for a pair, which
// the writer header would then skip), and no two of them overlap, as
// JetStream requires.
func auditFollowFilters(writer string) []string {
	h := fnv.New64a()
	h.Write([]byte(writer))
	v := h.Sum64()
	out := make([]string, 0, 1+auditWriterBits)
	out = append(out, AuditSubject)
	for i := 0; i < auditWriterBits; i++ {
		f := auditSubjectBits(v^(1<<(63-i)), i+1)
		if i < auditWriterBits-1 {
			f += ".>"
		}
		out = append(out, f)
	}
	return out
}
