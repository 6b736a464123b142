// This file holds the MO's placement reply encoder: the reply of a
// request the index answers is appended as JSON straight from the search's
// top candidates into a buffer the caller reuses, with the bytes
// json.Marshal gives for the PlacementReply that Place builds (the texts
// come from the same appenders, TestEncodedReplyMatchesMarshal checks the
// bytes). A placement then allocates nothing for its reply; the replies
// the full scan gives (Explain, nothing fits) are built and marshalled as
// before.

package meta

import (
	"math"
	"strconv"
	"time"
	"unicode/utf8"
)

// PlaceEncoded decides req as Place does (without a reservation) and, when
// the index answers, appends the reply's JSON (DecidedBy set to decidedBy)
// to dst and returns the destination's id; rep is nil then. When the full
// scan answers (Explain, nothing fits) or a score is not finite, dst is
// returned unchanged and rep is the reply, to marshal.
func (r *Registry) PlaceEncoded(p Policy, req *PlacementRequest, now time.Time, dst []byte, decidedBy string) (out []byte, dest string, rep *PlacementReply) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if !req.Explain && len(req.ExplainClusters) == 0 {
		sc := r.scratch.Get().(*searchScratch)
		defer r.scratch.Put(sc)
		sc.jv, sc.tv = newJudge(p, req, now, r.getFn, r.stateFn), topK{}
		t := &sc.tv
		r.searchWith(sc, &sc.jv, t)
		if t.n > 0 && t.finite() {
			out = t.appendReply(dst, sc, req.RequestID, p.Name(), decidedBy)
			return out, t.top[0].cv.c.Hello.ClusterID, nil
		}
		if t.n > 0 {
			full := PlacementReply{Version: Version, RequestID: req.RequestID, Policy: p.Name(), DecidedBy: decidedBy}
			t.fill(&full, p.Name())
			return dst, full.Destination.ClusterID, &full
		}
	}
	full := r.explainLocked(p, req, now)
	full.DecidedBy = decidedBy
	if full.Destination != nil {
		dest = full.Destination.ClusterID
	}
	return dst, dest, &full
}

func (t *topK) finite() bool {
	for i := range t.n {
		if s := t.top[i].score; math.IsNaN(s) || math.IsInf(s, 0) {
			return false
		}
	}
	return true
}

// appendReply appends the JSON of the reply fill makes, with DecidedBy.
func (t *topK) appendReply(b []byte, sc *searchScratch, requestID, policy, decidedBy string) []byte {
	b = append(b, `{"v":`...)
	b = strconv.AppendInt(b, Version, 10)
	b = append(b, `,"request_id":`...)
	b = appendJSONString(b, requestID)
	b = append(b, `,"destination":`...)
	b = appendCandidate(b, sc, t.top[0], nil)
	sc.why = append(append(sc.why[:0], policy...), ": "...)
	sc.why = appendCandidateWhy(sc.why, t.top[0])
	b = append(b, `,"reason":`...)
	b = appendJSONString(b, sc.why)
	if t.n > 1 {
		b = append(b, `,"alternatives":[`...)
		for i := 1; i < t.n; i++ {
			if i > 1 {
				b = append(b, ',')
			}
			b = appendCandidate(b, sc, t.top[i], &t.top[0])
		}
		b = append(b, ']')
	}
	if policy != "" {
		b = append(b, `,"policy":`...)
		b = appendJSONString(b, policy)
	}
	if decidedBy != "" {
		b = append(b, `,"decided_by":`...)
		b = appendJSONString(b, decidedBy)
	}
	return append(b, '}')
}

// appendCandidate appends the JSON of candidate(r); an alternative (best
// set) says why it ranked below best.
func appendCandidate(b []byte, sc *searchScratch, r ranked, best *ranked) []byte {
	h := &r.cv.c.Hello
	b = append(b, `{"cluster_id":`...)
	b = appendJSONString(b, h.ClusterID)
	b = append(b, `,"controller_url":`...)
	b = appendJSONString(b, h.ControllerURL)
	if len(h.DataAddrs) > 0 {
		b = append(b, `,"data_addrs":[`...)
		for i, a := range h.DataAddrs {
			if i > 0 {
				b = append(b, ',')
			}
			sc.text, _ = a.AppendText(sc.text[:0])
			b = appendJSONString(b, sc.text)
		}
		b = append(b, ']')
	}
	if h.Locator != (Candidate{}).Locator {
		b = append(b, `,"locator":`...)
		sc.text, _ = h.Locator.AppendText(sc.text[:0])
		b = appendJSONString(b, sc.text)
	}
	b = append(b, `,"tier":`...)
	b = appendJSONString(b, h.Tier)
	b = append(b, `,"score":`...)
	b = appendJSONFloat(b, r.score)
	sc.why = appendCandidateWhy(sc.why[:0], r)
	if best != nil {
		sc.why = append(sc.why, "; ranked lower: "...)
		sc.why = appendLowerWhy(sc.why, *best, r)
	}
	b = append(b, `,"why":`...) // never empty
	b = appendJSONString(b, sc.why)
	return append(b, '}')
}

// appendCandidateWhy appends "tier T, load after N%, link L".
func appendCandidateWhy(b []byte, r ranked) []byte {
	b = append(b, "tier "...)
	b = append(b, r.cv.c.Hello.Tier...)
	b = append(b, ", load after "...)
	b = strconv.AppendFloat(b, 100*r.cv.loadAfter, 'f', 0, 64)
	b = append(b, "%, link "...)
	return r.cv.appendLinkText(b)
}

// appendLinkText appends the link's text: unknown, local, or its figures.
func (cv candView) appendLinkText(b []byte) []byte {
	switch {
	case !cv.hasLink:
		return append(b, "unknown"...)
	case cv.local:
		return append(b, "local"...)
	}
	b = strconv.AppendFloat(b, cv.link.BandwidthMbps, 'f', 1, 64)
	b = append(b, " Mbit/s "...)
	b = strconv.AppendFloat(b, cv.link.RTTMs, 'f', 1, 64)
	b = append(b, " ms"...)
	if cv.link.LossPct > 0 {
		b = append(b, " loss "...)
		b = strconv.AppendFloat(b, cv.link.LossPct, 'f', 0, 64)
		b = append(b, '%')
	}
	return b
}

// appendLowerWhy appends why r ranks below best: the first term of the
// score that separates them.
func appendLowerWhy(b []byte, best, r ranked) []byte {
	bc, c := best.cv, r.cv
	bid := bc.c.Hello.ClusterID
	switch {
	case c.rank != bc.rank:
		b = append(b, "tier "...)
		b = append(b, c.c.Hello.Tier...)
		b = append(b, " ranks below "...)
		b = append(b, bid...)
		b = append(b, "'s "...)
		return append(b, bc.c.Hello.Tier...)
	case c.loadAfter != bc.loadAfter && (1-c.loadAfter) < (1-bc.loadAfter):
		b = append(b, "load after "...)
		b = strconv.AppendFloat(b, 100*c.loadAfter, 'f', 0, 64)
		b = append(b, "%, "...)
		b = append(b, bid...)
		b = append(b, "'s "...)
		b = strconv.AppendFloat(b, 100*bc.loadAfter, 'f', 0, 64)
		return append(b, '%')
	case r.score < best.score:
		b = append(b, "path "...)
		b = c.appendLinkText(b)
		b = append(b, ", "...)
		b = append(b, bid...)
		b = append(b, "'s "...)
		return bc.appendLinkText(b)
	}
	b = append(b, "same score, "...)
	b = append(b, bid...)
	return append(b, " first by id"...)
}

// appendJSONFloat appends f as encoding/json writes a float64 (f finite).
func appendJSONFloat(b []byte, f float64) []byte {
	abs := math.Abs(f)
	format := byte('f')
	if abs != 0 && (abs < 1e-6 || abs >= 1e21) {
		format = 'e'
	}
	b = strconv.AppendFloat(b, f, format, -1, 64)
	if format == 'e' {
		// e-09 to e-9, as encoding/json does.
		if n := len(b); n >= 4 && b[n-4] == 'e' && b[n-3] == '-' && b[n-2] == '0' {
			b[n-2] = b[n-1]
			b = b[:n-1]
		}
	}
	return b
}

const hexDigits = "0123456789abcdef"

// appendJSONString appends s quoted as encoding/json quotes a string (HTML
// characters escaped, invalid UTF-8 as U+FFFD, U+2028 and U+2029 escaped).
func appendJSONString[S string | []byte](b []byte, s S) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		if c := s[i]; c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '\\', '"':
				b = append(b, '\\', c)
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xF])
			}
			i++
			start = i
			continue
		}
		n := min(len(s)-i, utf8.UTFMax)
		r, size := utf8.DecodeRuneInString(string(s[i : i+n]))
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xF])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
