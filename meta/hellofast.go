// This file holds the hello ingest's fast path. Most hellos of a cluster
// differ from its previous one only in seq and sent_at: frameHello finds
// those two values in the JSON without decoding it and hashes every other
// byte; when the hash is the one of the hello last kept from that cluster,
// the registry takes the new seq, sent time and liveness from the frame
// (Registry.observeSame) with the same sequence checks as Observe, and
// nothing is decoded or allocated but the entry. Any other hello, and any
// the framer does not recognise (an escape or capital in a top-level key,
// seq twice, a seq that is not plain digits...), is decoded in full by
// DecodeHello, which keeps its errors and counters. The wire format does
// not change.
//
// Why it is exact: the bytes outside the two values are those of a hello
// that was decoded and validated, and the values found are plain digits
// and a string without escapes, so the message parses the same way; the
// top-level keys are plain lower-case ASCII, so encoding/json (which
// matches keys case-insensitively) maps "seq" and "sent_at" to Seq and
// SentAt and nothing else to them. FuzzFrameHello checks this against
// encoding/json.

package meta

import (
	"hash/maphash"
	"time"
)

// helloFrame is a hello's JSON as frameHello sees it.
type helloFrame struct {
	// hash covers every byte but the values of seq and sent_at (each
	// replaced by a marker of its own), with a seed drawn per process.
	hash   uint64
	seq    uint64
	sentAt time.Time
	// Where the values are (start, end); sent_at's is 0, 0 when absent.
	seqAt, sentAtAt [2]int
}

var frameSeed = maphash.MakeSeed()

// frameHello frames b; ok is false when b is not a JSON object whose
// top-level keys are plain lower-case ASCII, with one seq (plain digits,
// above 0) and at most one sent_at (a time string without escapes).
func frameHello(b []byte) (f helloFrame, ok bool) {
	if len(b) > MaxMessageSize {
		return f, false
	}
	i := skipWS(b, 0)
	if i >= len(b) || b[i] != '{' {
		return f, false
	}
	i = skipWS(b, i+1)
	seenSeq, seenSent := false, false
	for {
		if i >= len(b) || b[i] != '"' {
			return f, false
		}
		j := i + 1
		for ; j < len(b) && b[j] != '"'; j++ {
			if c := b[j]; c == '\\' || c < 0x20 || c >= 0x80 || ('A' <= c && c <= 'Z') {
				return f, false
			}
		}
		if j >= len(b) {
			return f, false
		}
		key := b[i+1 : j]
		i = skipWS(b, j+1)
		if i >= len(b) || b[i] != ':' {
			return f, false
		}
		i = skipWS(b, i+1)
		start := i
		switch string(key) {
		case "seq":
			if seenSeq {
				return f, false
			}
			seenSeq = true
			if i >= len(b) || b[i] < '1' || b[i] > '9' {
				return f, false
			}
			var n uint64
			for ; i < len(b) && '0' <= b[i] && b[i] <= '9'; i++ {
				d := uint64(b[i] - '0')
				if n > (1<<64-1-d)/10 {
					return f, false // overflows uint64
				}
				n = n*10 + d
			}
			f.seq, f.seqAt = n, [2]int{start, i}
		case "sent_at":
			if seenSent || i >= len(b) || b[i] != '"' {
				return f, false
			}
			seenSent = true
			for i++; i < len(b) && b[i] != '"'; i++ {
				if b[i] == '\\' || b[i] < 0x20 {
					return f, false
				}
			}
			if i >= len(b) {
				return f, false
			}
			i++
			if err := f.sentAt.UnmarshalJSON(b[start:i]); err != nil {
				return f, false
			}
			f.sentAtAt = [2]int{start, i}
		default:
			if i, ok = skipValue(b, i, 0); !ok {
				return f, false
			}
		}
		i = skipWS(b, i)
		if i >= len(b) {
			return f, false
		}
		if b[i] == '}' {
			break
		}
		if b[i] != ',' {
			return f, false
		}
		i = skipWS(b, i+1)
	}
	if !seenSeq || skipWS(b, i+1) != len(b) {
		return f, false
	}
	var h maphash.Hash
	h.SetSeed(frameSeed)
	first, second := f.seqAt, f.sentAtAt
	m1, m2 := byte(0), byte(1)
	if seenSent && second[0] < first[0] {
		first, second, m1, m2 = second, first, m2, m1
	}
	h.Write(b[:first[0]])
	h.WriteByte(m1)
	if seenSent {
		h.Write(b[first[1]:second[0]])
		h.WriteByte(m2)
		h.Write(b[second[1]:])
	} else {
		h.Write(b[first[1]:])
	}
	f.hash = h.Sum64()
	return f, true
}

func skipWS(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// maxFrameDepth bounds the nesting skipValue follows.
const maxFrameDepth = 32

// skipValue returns the end of the JSON value at b[i]. It only needs to
// find where the value ends: the bytes are compared, not interpreted.
func skipValue(b []byte, i, depth int) (int, bool) {
	if i >= len(b) || depth > maxFrameDepth {
		return i, false
	}
	switch c := b[i]; {
	case c == '"':
		for i++; i < len(b); i++ {
			switch b[i] {
			case '\\':
				i++
			case '"':
				return i + 1, true
			}
		}
		return i, false
	case c == '{' || c == '[':
		closing := byte('}')
		if c == '[' {
			closing = ']'
		}
		i = skipWS(b, i+1)
		if i < len(b) && b[i] == closing {
			return i + 1, true
		}
		for {
			if c == '{' {
				var ok bool
				if i, ok = skipValue(b, i, depth+1); !ok || i >= len(b) || b[i-1] != '"' {
					return i, false // a key is a string
				}
				if i = skipWS(b, i); i >= len(b) || b[i] != ':' {
					return i, false
				}
				i = skipWS(b, i+1)
			}
			var ok bool
			if i, ok = skipValue(b, i, depth+1); !ok {
				return i, false
			}
			i = skipWS(b, i)
			if i >= len(b) {
				return i, false
			}
			if b[i] == closing {
				return i + 1, true
			}
			if b[i] != ',' {
				return i, false
			}
			i = skipWS(b, i+1)
		}
	default: // number, true, false, null
		start := i
		for i < len(b) && (b[i] == '-' || b[i] == '+' || b[i] == '.' || ('0' <= b[i] && b[i] <= '9') || ('a' <= b[i] && b[i] <= 'z') || ('A' <= b[i] && b[i] <= 'Z')) {
			i++
		}
		return i, i > start
	}
}

// observeSame is Observe for a hello framed as f whose frame hash is that
// of the hello last kept from cluster id: it checks the sequence as
// Observe does (the incarnation is the same: it is in the hashed bytes)
// and keeps the new seq, sent time and LastSeen in a copy of the entry.
// same is false when the registry has no such hello (decode it); c is the
// entry after the hello. It runs under the read lock, swapping the entry
// in (compare-and-swap), unless the hello ends a reservation or puts a
// down cluster back in the index: then under the write lock.
func (r *Registry) observeSame(id string, f *helloFrame, now time.Time) (res ObserveResult, c *Cluster, same bool) {
	r.mu.RLock()
	s := r.byID[id]
	if s == nil {
		r.mu.RUnlock()
		return 0, nil, false
	}
	for s.indexed {
		old := s.c()
		if old.frame == 0 || old.frame != f.hash || old.fromView {
			r.mu.RUnlock()
			return 0, nil, false
		}
		if endsReservation(r, old, id) {
			break
		}
		res, nc := sameNext(old, f, now)
		if nc == nil {
			r.mu.RUnlock()
			return res, old, true
		}
		if s.cp.CompareAndSwap(old, nc) {
			r.mu.RUnlock()
			return ObserveUpdated, nc, true
		}
	}
	r.mu.RUnlock()
	return r.observeSameLocked(id, f, now)
}

// endsReservation reports whether a hello listing c's placements ends a
// reservation at id (read or write lock held).
func endsReservation(r *Registry, c *Cluster, id string) bool {
	for _, pid := range c.Hello.Placed {
		if rv := r.resv[pid]; rv != nil && rv.dest == id {
			return true
		}
	}
	return false
}

// sameNext is old with the frame's seq and sent time, seen at now; nil
// with the result when the seq is stale or too far ahead.
func sameNext(old *Cluster, f *helloFrame, now time.Time) (ObserveResult, *Cluster) {
	if f.seq <= old.Hello.Seq {
		return ObserveStale, nil
	}
	if f.seq-old.Hello.Seq > seqAllowance(now.Sub(old.LastSeen)) {
		return ObserveAhead, nil
	}
	nc := *old
	nc.Hello.Seq, nc.Hello.SentAt, nc.LastSeen = f.seq, f.sentAt, now
	return ObserveUpdated, &nc
}

func (r *Registry) observeSameLocked(id string, f *helloFrame, now time.Time) (res ObserveResult, c *Cluster, same bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.byID[id]
	if s == nil || s.c().frame == 0 || s.c().frame != f.hash || s.c().fromView {
		return 0, nil, false
	}
	if l := s.c().Hello.Locator; !s.indexed && l.IsValid() && r.locatorHolder(id, l) != "" {
		return 0, nil, false // back from down, its locator taken meanwhile: Observe refuses it
	}
	res, nc := sameNext(s.c(), f, now)
	if nc == nil {
		return res, s.c(), true
	}
	if len(nc.Hello.Placed) > 0 {
		// As Observe: the placements the hello lists end their
		// reservations (one may have been made since the last hello).
		for _, pid := range nc.Hello.Placed {
			if rv := r.resv[pid]; rv != nil && rv.dest == id {
				r.dropReservation(rv)
			}
		}
		nc.setReserved(r.reservedAt(id))
	}
	if s.indexed && s.key == nc.load {
		s.cp.Store(nc) // same place in the index, same links and labels
	} else {
		if s.indexed {
			r.treeRemove(s)
		}
		s.cp.Store(nc)
		r.treeAdd(s)
	}
	return ObserveUpdated, nc, true
}
