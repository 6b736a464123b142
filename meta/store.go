// This file holds what the MO keeps in JetStream: the compact view bucket
// (restored at start, followed to know what is written, rewritten when a
// cluster changes materially, by compare-and-set so that replicas do not
// write the same change twice) and the audit stream, which every replica
// also follows to share reservations.

package meta

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// JetStream names.
const (
	KVBucket     = "roam_meta_clusters"
	AuditStream  = "ROAM_META_AUDIT"
	AuditSubject = "roam.audit.place"
)

// errCodeReplicasNotSupported: "replicas > 1 not supported in
// non-clustered mode".
const errCodeReplicasNotSupported jetstream.ErrorCode = 10074

// openJetStream creates (or updates) the bucket and the audit stream at
// the wanted replicas, retrying while a clustered JetStream elects its
// leaders. ok is false when the server has no JetStream at all.
func (s *Server) openJetStream(ctx context.Context) (ok bool, err error) {
	js, err := jetstream.New(s.ncStore)
	if err != nil {
		return false, fmt.Errorf("open jetstream: %w", err)
	}
	storage := jetstream.FileStorage
	if s.cfg.StoreDir == "" && s.cfg.NATSURL == "" {
		storage = jetstream.MemoryStorage
	}
	replicas := s.cfg.Replicas
	if replicas <= 0 {
		replicas = 1
		if s.cfg.NATSURL != "" || s.cfg.Cluster != nil {
			replicas = 3
		}
	}
	backoff := 100 * time.Millisecond
	for {
		err = s.createStreams(ctx, js, storage, replicas)
		var apiErr *jetstream.APIError
		switch {
		case err == nil:
			s.js, s.replicas = js, replicas
			return true, nil
		case errors.As(err, &apiErr) && apiErr.ErrorCode == errCodeReplicasNotSupported && s.cfg.Replicas <= 0:
			s.log.Info("jetstream is not clustered: bucket and audit stream at one replica")
			replicas = 1
			continue
		case errors.Is(err, jetstream.ErrJetStreamNotEnabled), errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount):
			return false, nil
		}
		s.limiter.log(s.log, "jetstream-setup", "jetstream not ready, retrying", "replicas", replicas, "err", err)
		select {
		case <-ctx.Done():
			return false, fmt.Errorf("open jetstream: %w (last error: %v)", ctx.Err(), err)
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}

// createStreams creates the bucket and the audit stream, or updates them
// to the wanted replicas; a stream that exists keeps its storage (another
// replica chose it).
func (s *Server) createStreams(ctx context.Context, js jetstream.JetStream, storage jetstream.StorageType, replicas int) error {
	// A clustered JetStream does not answer before it has a leader: keep
	// each attempt short.
	cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	kv, err := js.CreateOrUpdateKeyValue(cctx, jetstream.KeyValueConfig{
		Bucket: KVBucket, Description: "roam compact view: one summary per cluster",
		History: 1, Storage: existingStorage(cctx, js, viewStream, storage), Replicas: replicas,
	})
	if err != nil {
		return fmt.Errorf("create bucket %s: %w", KVBucket, err)
	}
	if _, err := js.CreateOrUpdateStream(cctx, jetstream.StreamConfig{
		Name: AuditStream, Description: "roam placement decisions (and the reservations they make)",
		Subjects: []string{AuditSubject, AuditSubject + ".>"}, Storage: existingStorage(cctx, js, AuditStream, storage), Replicas: replicas,
		MaxMsgs: 100_000, Discard: jetstream.DiscardOld,
	}); err != nil {
		return fmt.Errorf("create stream %s: %w", AuditStream, err)
	}
	s.kv = kv
	return nil
}

func existingStorage(ctx context.Context, js jetstream.JetStream, stream string, def jetstream.StorageType) jetstream.StorageType {
	st, err := js.Stream(ctx, stream)
	if err != nil {
		return def
	}
	return st.CachedInfo().Config.Storage
}

// viewWriter keeps the compact view in step with the registry.
//
// One writer per cluster: every replica takes every hello, so every
// replica sees a cluster's summary due at about the same moment. The
// replica that wrote the summary in the bucket last (its By) is the
// cluster's writer and writes it as soon as it is due; the others defer:
// a cluster due for them is checked again ownerGrace later and written
// only if the bucket still lacks what they see (the writer is gone, or
// sees otherwise), the writer then being them. So the bucket's writes do
// not grow with the replicas: only a cluster no replica wrote yet (its
// first summary) or whose writer stays silent for ownerGrace is written
// by several, and compare-and-set keeps one of those writes
// (lost_race).
type viewWriter struct {
	s       *Server
	refresh time.Duration
	// ownerGrace is how long a replica that is not a cluster's writer
	// leaves the writer to write a due summary.
	ownerGrace time.Duration

	mu    sync.Mutex
	marks map[string]viewMark // what the bucket holds, from the watch
	dirty map[string]bool
	// deferred are the clusters due at this replica whose writer is
	// another, in the order they came due (at), each once (deferredSet).
	deferred    []deferredWrite
	deferredSet map[string]bool
}

// deferredWrite is a cluster due since at whose writer is another replica.
type deferredWrite struct {
	id string
	at time.Time
}

func newViewWriter(s *Server, refresh, ownerGrace time.Duration) *viewWriter {
	return &viewWriter{s: s, refresh: refresh, ownerGrace: ownerGrace, marks: map[string]viewMark{}, dirty: map[string]bool{},
		deferredSet: map[string]bool{}}
}

// follow watches the bucket: the initial values restore the registry
// (restored is closed after them), later ones keep the marks current. It
// runs until ctx ends; the ordered consumer behind the watch survives
// server and leader changes.
func (w *viewWriter) follow(ctx context.Context, restored chan<- struct{}) {
	s := w.s
	watch, err := s.kv.WatchAll(ctx)
	if err != nil {
		s.log.Error("watch the compact view", "err", err)
		close(restored)
		return
	}
	defer func() { _ = watch.Stop() }()
	n, initial := 0, true
	for {
		select {
		case <-ctx.Done():
			if initial {
				close(restored)
			}
			return
		case e := <-watch.Updates():
			if e == nil {
				if initial {
					initial = false
					s.log.Info("registry restored from the compact view", "clusters", n)
					close(restored)
				}
				continue
			}
			if e.Operation() != jetstream.KeyValuePut {
				w.mu.Lock()
				delete(w.marks, e.Key())
				w.mu.Unlock()
				continue
			}
			w.mu.Lock()
			m, known := w.marks[e.Key()]
			w.mu.Unlock()
			if known && m.rev >= e.Revision() {
				continue // this replica's own write, its ack already noted: nothing to decode
			}
			sum, err := DecodeSummary(e.Value())
			if err != nil || sum.Hello.ClusterID != e.Key() {
				s.limiter.log(s.log, "bad-summary", "skip unreadable summary", "key", e.Key(), "err", err)
				continue
			}
			if initial {
				s.reg.restore(sum.Hello, sum.LastSeen)
				n++
			}
			w.mu.Lock()
			if m, ok := w.marks[e.Key()]; !ok || m.rev < e.Revision() {
				w.marks[e.Key()] = markOf(sum, e.Revision())
			}
			w.mu.Unlock()
		}
	}
}

// refreshOf is the longest an unchanged cluster's summary goes unwritten:
// summaryRefresh of its own hello intervals when it says hello less often
// than the MO expects (100,000 clusters every 30 s are not rewritten
// every 30 s), else the MO's.
func (w *viewWriter) refreshOf(c *Cluster) time.Duration {
	return max(w.refresh, time.Duration(c.Hello.IntervalMs)*time.Millisecond*summaryRefresh)
}

// check marks c dirty when the bucket's summary differs materially; or,
// when another replica is its writer, defers it (viewWriter).
func (w *viewWriter) check(c *Cluster, st State, now time.Time) {
	id := c.Hello.ClusterID
	w.mu.Lock()
	defer w.mu.Unlock()
	m, ok := w.marks[id]
	if ok && !m.stale(st, c.load, c.ident, now, w.refreshOf(c)) {
		return
	}
	if !ok || m.by == "" || m.by == w.s.name {
		w.dirty[id] = true
		return
	}
	if !w.deferredSet[id] && !w.dirty[id] {
		w.deferredSet[id] = true
		w.deferred = append(w.deferred, deferredWrite{id, now})
	}
}

// dueDeferred moves the deferred clusters whose grace has passed at now
// to the dirty ones (flushIDs checks each again against the bucket).
func (w *viewWriter) dueDeferred(now time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for n < len(w.deferred) && now.Sub(w.deferred[n].at) >= w.ownerGrace {
		id := w.deferred[n].id
		delete(w.deferredSet, id)
		w.dirty[id] = true
		n++
	}
	if n > 0 {
		w.deferred = append(w.deferred[:0], w.deferred[n:]...)
	}
}

// viewFlushEvery is how often the dirty summaries are written (half a
// hello interval if shorter). The clusters' hellos mark them dirty spread
// over the interval, so a short period writes them as they come, a few at
// a time: at 10,000 clusters the refreshes alone are 333 writes a second,
// which every 500 ms made a burst of ~170 writes, their acks and their
// echoes on the watch, for placements to wait behind.
const viewFlushEvery = 20 * time.Millisecond

// flushBatch is how many summary writes flush pipelines before it waits
// for their acks (the JetStream client stalls beyond 4,000 in flight).
const flushBatch = 1024

// flush writes the dirty clusters that still differ, pipelined by
// flushBatch; each write expects the revision the replica last saw, so
// when several replicas see the same change only the first write lands.
func (w *viewWriter) flush(ctx context.Context) {
	w.dueDeferred(time.Now())
	w.mu.Lock()
	ids := w.dirty
	w.dirty = map[string]bool{}
	w.mu.Unlock()
	batch := make([]string, 0, min(len(ids), flushBatch))
	for id := range ids {
		if batch = append(batch, id); len(batch) == flushBatch {
			w.flushIDs(ctx, batch)
			batch = batch[:0]
		}
	}
	if len(batch) > 0 {
		w.flushIDs(ctx, batch)
	}
}

func (w *viewWriter) flushIDs(ctx context.Context, ids []string) {
	s := w.s
	now := time.Now()
	type pending struct {
		id   string
		mark viewMark
		ack  jetstream.PubAckFuture
	}
	acks := make([]pending, 0, len(ids))
	for _, id := range ids {
		c, st, ok := s.reg.Get(now, id)
		if !ok {
			continue
		}
		w.mu.Lock()
		m, known := w.marks[id]
		w.mu.Unlock()
		refresh := w.refreshOf(c)
		if known && !m.stale(st, c.load, c.ident, now, refresh) {
			continue // another replica wrote it meanwhile
		}
		sum := summaryOf(c, st, now, refresh, s.name)
		msg := nats.NewMsg("$KV." + KVBucket + "." + id)
		msg.Data = encodeSummary(sum)
		msg.Header.Set(jetstream.ExpectedLastSubjSeqHeader, strconv.FormatUint(m.rev, 10))
		ack, err := s.js.PublishMsgAsync(msg)
		if err != nil {
			s.limiter.log(s.log, "view-write", "write the compact view", "cluster", id, "err", err)
			continue
		}
		// The mark of what was written (markOf(sum, rev) without hashing
		// the hello again).
		mark := viewMark{state: st, written: sum.Written, load: c.load, ident: c.ident, by: s.name}
		acks = append(acks, pending{id, mark, ack})
	}
	timeout := time.NewTimer(10 * time.Second)
	defer timeout.Stop()
	for i, p := range acks {
		select {
		case pa := <-p.ack.Ok():
			s.metrics.viewWrites.WithLabelValues("written").Inc()
			w.mu.Lock()
			if m, ok := w.marks[p.id]; !ok || m.rev < pa.Sequence {
				p.mark.rev = pa.Sequence
				w.marks[p.id] = p.mark
			}
			w.mu.Unlock()
		case err := <-p.ack.Err():
			var apiErr *jetstream.APIError
			if errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
				apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant) {
				s.metrics.viewWrites.WithLabelValues("lost_race").Inc()
				continue
			}
			s.metrics.viewWrites.WithLabelValues("error").Inc()
			s.limiter.log(s.log, "view-write", "write the compact view", "cluster", p.id, "err", err)
		case <-ctx.Done():
			return
		case <-timeout.C:
			// Unacknowledged: written again at the next flush.
			s.metrics.viewWrites.WithLabelValues("error").Inc()
			w.mu.Lock()
			for _, p := range acks[i:] {
				w.dirty[p.id] = true
			}
			w.mu.Unlock()
			return
		}
	}
}

func (w *viewWriter) run(ctx context.Context, every time.Duration) {
	t := time.NewTicker(max(every, 20*time.Millisecond))
	defer t.Stop()
	for ctx.Err() == nil {
		select {
		case <-t.C:
			w.flush(ctx)
		case <-ctx.Done():
		}
	}
}

// audit adds the record of a placement to the audit log (audit.go).
func (s *Server) audit(req *PlacementRequest, dest, noPlacement string, filtered int, reserveUntil time.Time) {
	if s.js == nil {
		return
	}
	rec := auditRecord{At: time.Now().UTC(), RequestID: req.RequestID, Requester: req.Requester, Home: req.Home,
		Service: req.Service.Name, Reason: req.Reason, NoPlacement: noPlacement, Filtered: filtered, DecidedBy: s.name}
	if dest != "" {
		rec.Destination, rec.Resources, rec.ReserveUntil = dest, req.Service.Resources, reserveUntil.UTC()
	}
	s.auditLog.add(&rec)
}

// followAudit applies every replica's reservations from the audit stream,
// starting one reservation lifetime back (so a new replica knows what is
// still reserved). The consumer's filters leave out this process's own
// subject (auditFollowFilters), so the server does not deliver its own
// batches at all; one that comes anyway (a batch under the plain subject,
// or another writer whose subject hash is this one's) is skipped by its
// writer header.
func (s *Server) followAudit(ctx context.Context) {
	start := time.Now().Add(-s.cfg.ReservationTTL)
	cons, err := s.js.OrderedConsumer(ctx, AuditStream, jetstream.OrderedConsumerConfig{
		FilterSubjects: auditFollowFilters(s.auditLog.writer), DeliverPolicy: jetstream.DeliverByStartTimePolicy, OptStartTime: &start,
	})
	if err != nil {
		s.log.Error("follow the audit stream: reservations are not shared", "err", err)
		return
	}
	cc, err := cons.Consume(func(m jetstream.Msg) {
		// This process's own batches: it reserved them when it placed.
		// The header is read before anything is decoded.
		if h := m.Headers(); h != nil && h.Get(AuditWriterHeader) == s.auditLog.writer {
			s.auditOwnDelivered.Add(1)
			return
		}
		s.auditFollowed.Add(1)
		now := time.Now()
		err := decodeAuditBatch(m.Data(), func(rec *auditRecord) {
			if rec.Destination == "" || rec.RequestID == "" {
				return
			}
			if rec.DecidedBy == s.name && !rec.At.Before(s.started) {
				return // this replica reserved it when it placed it (a record without the header)
			}
			if now.Before(rec.ReserveUntil) {
				s.reg.Reserve(rec.RequestID, rec.Destination, rec.Resources, rec.ReserveUntil)
			}
		})
		if err != nil {
			s.limiter.log(s.log, "bad-audit", "skip unreadable audit records", "err", err)
		}
	})
	if err != nil {
		s.log.Error("follow the audit stream: reservations are not shared", "err", err)
		return
	}
	<-ctx.Done()
	cc.Stop()
}
