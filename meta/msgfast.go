// This file holds hand-written decoders for the two messages of every
// placement: the request (decoded by the MO) and the reply (decoded by the
// client). encoding/json took about 11 µs for a request and 29 µs for a
// reply with three alternatives, on the critical path of each placement.
//
// The decoders take a strict subset of JSON, the one json.Marshal and the
// MO's reply encoder write: an object whose keys are the fields' exact
// names, each at most once, strings without escapes (valid UTF-8), numbers
// of the field's kind, no null. Anything else (an unknown or differently
// cased key, an escape, null, a duplicate key, a number out of range,
// trailing data) makes them give up, and encoding/json decodes the message
// instead: so what a message decodes to, or the error it gets, is the
// same as before. FuzzFastRequest and FuzzFastReply check that whatever
// the fast path accepts, encoding/json accepts and decodes to the same
// value.

package meta

import (
	"net/netip"
	"strconv"
	"unicode/utf8"
	"unsafe"

	"github.com/roamnet/roam/dataplane/lb"
)

// jr reads the subset; ok turns false, for good, at the first thing
// outside it.
type jr struct {
	b  []byte
	i  int
	ok bool
	// s, when set, is b as a string: strings are cut from it instead of
	// each being allocated (they keep the whole message alive).
	s string
}

func (r *jr) ws() {
	for r.i < len(r.b) {
		switch r.b[r.i] {
		case ' ', '\t', '\n', '\r':
			r.i++
		default:
			return
		}
	}
}

// take consumes c (after whitespace) if it is next.
func (r *jr) take(c byte) bool {
	r.ws()
	if r.ok && r.i < len(r.b) && r.b[r.i] == c {
		r.i++
		return true
	}
	return false
}

func (r *jr) need(c byte) {
	if !r.take(c) {
		r.ok = false
	}
}

// raw is a string's bytes, without escapes.
func (r *jr) raw() []byte {
	r.ws()
	if !r.ok || r.i >= len(r.b) || r.b[r.i] != '"' {
		r.ok = false
		return nil
	}
	start, ascii := r.i+1, true
	for j := start; j < len(r.b); j++ {
		switch c := r.b[j]; {
		case c == '"':
			r.i = j + 1
			s := r.b[start:j]
			if !ascii && !utf8.Valid(s) {
				r.ok = false
				return nil
			}
			return s
		case c == '\\' || c < 0x20:
			r.ok = false
			return nil
		case c >= 0x80:
			ascii = false
		}
	}
	r.ok = false
	return nil
}

func (r *jr) str() string {
	s := r.raw()
	switch {
	case !r.ok:
		return ""
	case r.s != "":
		end := r.i - 1
		return r.s[end-len(s) : end]
	}
	return string(s)
}

// number is a JSON number's bytes; integer says it has no fraction or
// exponent.
func (r *jr) number() (s []byte, integer bool) {
	r.ws()
	b, j := r.b, r.i
	if !r.ok || j >= len(b) {
		r.ok = false
		return nil, false
	}
	if b[j] == '-' {
		j++
	}
	switch {
	case j < len(b) && b[j] == '0':
		j++
	case j < len(b) && b[j] >= '1' && b[j] <= '9':
		for j < len(b) && b[j] >= '0' && b[j] <= '9' {
			j++
		}
	default:
		r.ok = false
		return nil, false
	}
	integer = true
	if j < len(b) && b[j] == '.' {
		integer = false
		j++
		d := j
		for j < len(b) && b[j] >= '0' && b[j] <= '9' {
			j++
		}
		if j == d {
			r.ok = false
			return nil, false
		}
	}
	if j < len(b) && (b[j] == 'e' || b[j] == 'E') {
		integer = false
		j++
		if j < len(b) && (b[j] == '+' || b[j] == '-') {
			j++
		}
		d := j
		for j < len(b) && b[j] >= '0' && b[j] <= '9' {
			j++
		}
		if j == d {
			r.ok = false
			return nil, false
		}
	}
	s, r.i = b[r.i:j], j
	return s, integer
}

// int is an integer within [lo, hi].
func (r *jr) int(lo, hi int64) int64 {
	s, integer := r.number()
	if !r.ok || !integer {
		r.ok = false
		return 0
	}
	neg := s[0] == '-'
	if neg {
		s = s[1:]
	}
	var v uint64
	for _, c := range s {
		if v > (1<<63)/10 {
			r.ok = false
			return 0
		}
		v = v*10 + uint64(c-'0')
	}
	if (!neg && v > uint64(hi)) || (neg && (v > 1<<63 || -int64(v) < lo)) {
		r.ok = false
		return 0
	}
	if neg {
		return -int64(v)
	}
	return int64(v)
}

func (r *jr) float() float64 {
	s, _ := r.number()
	if !r.ok {
		return 0
	}
	f, err := strconv.ParseFloat(string(s), 64)
	if err != nil {
		r.ok = false
		return 0
	}
	return f
}

func (r *jr) bool() bool {
	r.ws()
	switch {
	case !r.ok:
	case len(r.b)-r.i >= 4 && string(r.b[r.i:r.i+4]) == "true":
		r.i += 4
		return true
	case len(r.b)-r.i >= 5 && string(r.b[r.i:r.i+5]) == "false":
		r.i += 5
		return false
	}
	r.ok = false
	return false
}

// text decodes a string with u's UnmarshalText, as encoding/json does.
func (r *jr) text(u interface{ UnmarshalText([]byte) error }) {
	s := r.raw()
	if r.ok && u.UnmarshalText(s) != nil {
		r.ok = false
	}
}

// parsed reads a string into *dst by parse, as the UnmarshalText of
// netip's types does ("" is the zero value), without copying the string
// when it is cut from r.s.
func parsed[T any](r *jr, dst *T, parse func(string) (T, error)) {
	s := r.str()
	if !r.ok {
		return
	}
	var v T
	if s != "" {
		var err error
		if v, err = parse(s); err != nil {
			r.ok = false
			return
		}
	}
	*dst = v
}

// object reads an object, calling field for each key (its value next);
// field gives the key's bit, and a key seen twice or unknown (bit 0)
// ends the fast path.
func (r *jr) object(field func(key []byte) uint32) {
	r.need('{')
	if r.take('}') {
		return
	}
	var seen uint32
	for r.ok {
		k := r.raw()
		r.need(':')
		if !r.ok {
			return
		}
		bit := field(k)
		if bit == 0 || seen&bit != 0 {
			r.ok = false
			return
		}
		seen |= bit
		if r.take(',') {
			continue
		}
		r.need('}')
		return
	}
}

// array reads an array, calling elem for each element.
func (r *jr) array(elem func()) {
	r.need('[')
	if r.take(']') {
		return
	}
	for r.ok {
		elem()
		if r.take(',') {
			continue
		}
		r.need(']')
		return
	}
}

// mapOf reads an object of any keys into a map, each value by val; a key
// given twice keeps its last value, as encoding/json does.
func mapOf[V any](r *jr, val func() V) map[string]V {
	m := map[string]V{}
	r.need('{')
	if r.take('}') {
		return m
	}
	for r.ok {
		k := r.str()
		r.need(':')
		m[k] = val()
		if r.take(',') {
			continue
		}
		r.need('}')
		break
	}
	return m
}

func (r *jr) strings() []string {
	out := []string{}
	r.array(func() { out = append(out, r.str()) })
	return out
}

// end checks that only whitespace follows the value.
func (r *jr) end() bool {
	r.ws()
	return r.ok && r.i == len(r.b)
}

// fastRequest decodes b into the zeroed *q; false means it left the
// subset (*q is then partly filled: the caller zeroes it again).
func fastRequest(b []byte, q *PlacementRequest) bool {
	r := &jr{b: b, ok: true}
	r.object(func(k []byte) uint32 {
		switch string(k) {
		case "v":
			q.Version = int(r.int(minInt, maxInt))
			return 1 << 0
		case "request_id":
			q.RequestID = r.str()
			return 1 << 1
		case "requester":
			q.Requester = r.str()
			return 1 << 2
		case "home":
			q.Home = r.str()
			return 1 << 3
		case "service":
			r.service(&q.Service)
			return 1 << 4
		case "reason":
			q.Reason = Reason(r.str())
			return 1 << 5
		case "explain":
			q.Explain = r.bool()
			return 1 << 6
		case "explain_clusters":
			q.ExplainClusters = r.strings()
			return 1 << 7
		}
		return 0
	})
	return r.end()
}

const (
	maxInt = int64(^uint(0) >> 1)
	minInt = -maxInt - 1
)

func (r *jr) service(s *ServiceDescriptor) {
	r.object(func(k []byte) uint32 {
		switch string(k) {
		case "name":
			s.Name = r.str()
			return 1 << 0
		case "ports":
			s.Ports = []lb.Port{}
			r.array(func() {
				s.Ports = append(s.Ports, lb.Port{})
				p := &s.Ports[len(s.Ports)-1]
				r.object(func(k []byte) uint32 {
					switch string(k) {
					case "name":
						p.Name = r.str()
						return 1 << 0
					case "port":
						p.Port = uint16(r.int(0, 1<<16-1))
						return 1 << 1
					case "protocol":
						r.text(&p.Protocol)
						return 1 << 2
					}
					return 0
				})
			})
			return 1 << 1
		case "resources":
			r.object(func(k []byte) uint32 {
				switch string(k) {
				case "milli_cpu":
					s.Resources.MilliCPU = r.int(minInt, maxInt)
					return 1 << 0
				case "memory_mb":
					s.Resources.MemoryMB = r.int(minInt, maxInt)
					return 1 << 1
				}
				return 0
			})
			return 1 << 2
		case "constraints":
			r.constraints(&s.Constraints)
			return 1 << 3
		}
		return 0
	})
}

func (r *jr) constraints(c *Constraints) {
	r.object(func(k []byte) uint32 {
		switch string(k) {
		case "want_tiers":
			c.WantTiers = r.strings()
			return 1 << 0
		case "forbid_tiers":
			c.ForbidTiers = r.strings()
			return 1 << 1
		case "want_labels":
			c.WantLabels = mapOf(r, r.str)
			return 1 << 2
		case "exclude_clusters":
			c.ExcludeClusters = r.strings()
			return 1 << 3
		case "min_bandwidth_mbps":
			c.MinBandwidthMbps = r.float()
			return 1 << 4
		case "max_rtt_ms":
			c.MaxRTTMs = r.float()
			return 1 << 5
		case "link_from":
			c.LinkFrom = LinkFrom(r.str())
			return 1 << 6
		}
		return 0
	})
}

// fastReply decodes b into the zeroed *p; false means it left the subset.
// The reply's strings are cut from one copy of b, or, when b is owned
// (never written again), from b itself.
func fastReply(b []byte, p *PlacementReply, owned bool) bool {
	r := &jr{b: b, ok: true}
	if owned {
		r.s = unsafe.String(unsafe.SliceData(b), len(b))
	} else {
		r.s = string(b)
	}
	// The destination and the alternatives after it share one array.
	var spare []Candidate
	r.object(func(k []byte) uint32 {
		switch string(k) {
		case "v":
			p.Version = int(r.int(minInt, maxInt))
			return 1 << 0
		case "request_id":
			p.RequestID = r.str()
			return 1 << 1
		case "destination":
			cands := make([]Candidate, 1, 1+MaxAlternatives)
			p.Destination, spare = &cands[0], cands[1:1]
			r.candidate(p.Destination)
			return 1 << 2
		case "reason":
			p.Reason = r.str()
			return 1 << 3
		case "alternatives":
			p.Alternatives = spare
			if p.Alternatives == nil {
				p.Alternatives = make([]Candidate, 0, MaxAlternatives)
			}
			r.array(func() {
				p.Alternatives = append(p.Alternatives, Candidate{})
				r.candidate(&p.Alternatives[len(p.Alternatives)-1])
			})
			return 1 << 4
		case "no_placement":
			p.NoPlacement = r.str()
			return 1 << 5
		case "explain":
			p.Explain = r.bool()
			return 1 << 6
		case "filtered":
			p.Filtered = r.filtered()
			return 1 << 7
		case "filtered_total":
			p.FilteredTotal = int(r.int(minInt, maxInt))
			return 1 << 8
		case "filtered_by_reason":
			p.FilteredByReason = mapOf(r, func() int { return int(r.int(minInt, maxInt)) })
			return 1 << 9
		case "explained":
			p.Explained = r.filtered()
			return 1 << 10
		case "policy":
			p.Policy = r.str()
			return 1 << 11
		case "local":
			p.Local = r.bool()
			return 1 << 12
		case "decided_by":
			p.DecidedBy = r.str()
			return 1 << 13
		}
		return 0
	})
	return r.end()
}

func (r *jr) candidate(c *Candidate) {
	r.object(func(k []byte) uint32 {
		switch string(k) {
		case "cluster_id":
			c.ClusterID = r.str()
			return 1 << 0
		case "controller_url":
			c.ControllerURL = r.str()
			return 1 << 1
		case "data_addrs":
			c.DataAddrs = []netip.Addr{}
			r.array(func() {
				c.DataAddrs = append(c.DataAddrs, netip.Addr{})
				parsed(r, &c.DataAddrs[len(c.DataAddrs)-1], netip.ParseAddr)
			})
			return 1 << 2
		case "locator":
			parsed(r, &c.Locator, netip.ParsePrefix)
			return 1 << 3
		case "tier":
			c.Tier = r.str()
			return 1 << 4
		case "score":
			c.Score = r.float()
			return 1 << 5
		case "why":
			c.Why = r.str()
			return 1 << 6
		}
		return 0
	})
}

func (r *jr) filtered() []Filtered {
	out := []Filtered{}
	r.array(func() {
		out = append(out, Filtered{})
		f := &out[len(out)-1]
		r.object(func(k []byte) uint32 {
			switch string(k) {
			case "cluster_id":
				f.ClusterID = r.str()
				return 1 << 0
			case "why":
				f.Why = r.str()
				return 1 << 1
			}
			return 0
		})
	})
	return out
}
