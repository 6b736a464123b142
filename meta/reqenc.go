// This file holds the client's placement request encoder: the request is
// appended as JSON into a buffer the client reuses, with the bytes
// json.Marshal gives (FuzzFastRequest and TestAppendRequestMatchesMarshal
// check the bytes). encoding/json allocated the message and boxed a copy
// of the request at every placement.

package meta

import (
	"slices"
	"strconv"
	"sync"
)

// appendRequest appends q's JSON, as json.Marshal writes it, to b. Its
// floats must be finite (Validate checks them; json.Marshal refuses the
// others).
func appendRequest(b []byte, q *PlacementRequest) []byte {
	b = append(b, `{"v":`...)
	b = strconv.AppendInt(b, int64(q.Version), 10)
	b = appendJSONField(b, "request_id", q.RequestID)
	b = appendJSONField(b, "requester", q.Requester)
	b = appendJSONField(b, "home", q.Home)
	s := &q.Service
	b = append(b, `,"service":{"name":`...)
	b = appendJSONString(b, s.Name)
	b = append(b, `,"ports":`...)
	if s.Ports == nil {
		b = append(b, "null"...)
	} else {
		b = append(b, '[')
		for i, p := range s.Ports {
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, '{')
			if p.Name != "" {
				b = append(b, `"name":`...)
				b = appendJSONString(b, p.Name)
				b = append(b, ',')
			}
			b = append(b, `"port":`...)
			b = strconv.AppendUint(b, uint64(p.Port), 10)
			b = appendJSONField(b, "protocol", p.Protocol.String())
			b = append(b, '}')
		}
		b = append(b, ']')
	}
	b = append(b, `,"resources":{`...)
	sep := byte(0)
	b, sep = appendJSONInt(b, sep, "milli_cpu", s.Resources.MilliCPU)
	b, _ = appendJSONInt(b, sep, "memory_mb", s.Resources.MemoryMB)
	b = append(b, `},"constraints":`...)
	b = appendConstraints(b, &s.Constraints)
	b = append(b, '}')
	b = appendJSONField(b, "reason", string(q.Reason))
	if q.Explain {
		b = append(b, `,"explain":true`...)
	}
	if len(q.ExplainClusters) > 0 {
		b = append(b, `,"explain_clusters":`...)
		b = appendJSONStrings(b, q.ExplainClusters)
	}
	return append(b, '}')
}

// appendConstraints appends c's JSON object (every field omitempty).
func appendConstraints(b []byte, c *Constraints) []byte {
	b = append(b, '{')
	sep := byte(0)
	for _, f := range [...]struct {
		name string
		v    []string
	}{{"want_tiers", c.WantTiers}, {"forbid_tiers", c.ForbidTiers}} {
		if len(f.v) > 0 {
			b = appendJSONKey(b, sep, f.name)
			b, sep = appendJSONStrings(b, f.v), ','
		}
	}
	if len(c.WantLabels) > 0 {
		b = appendJSONKey(b, sep, "want_labels")
		b, sep = appendJSONStringMap(b, c.WantLabels), ','
	}
	if len(c.ExcludeClusters) > 0 {
		b = appendJSONKey(b, sep, "exclude_clusters")
		b, sep = appendJSONStrings(b, c.ExcludeClusters), ','
	}
	for _, f := range [...]struct {
		name string
		v    float64
	}{{"min_bandwidth_mbps", c.MinBandwidthMbps}, {"max_rtt_ms", c.MaxRTTMs}} {
		if f.v != 0 {
			b = appendJSONKey(b, sep, f.name)
			b, sep = appendJSONFloat(b, f.v), ','
		}
	}
	if c.LinkFrom != "" {
		b = appendJSONKey(b, sep, "link_from")
		b = appendJSONString(b, string(c.LinkFrom))
	}
	return append(b, '}')
}

// appendJSONField appends `,"name":` and v quoted.
func appendJSONField(b []byte, name, v string) []byte {
	b = appendJSONKey(b, ',', name)
	return appendJSONString(b, v)
}

// appendJSONKey appends sep (none when 0) and `"name":`.
func appendJSONKey(b []byte, sep byte, name string) []byte {
	if sep != 0 {
		b = append(b, sep)
	}
	b = append(b, '"')
	b = append(b, name...)
	return append(b, '"', ':')
}

// appendJSONInt appends an omitempty integer field; it returns the
// separator of the next field.
func appendJSONInt(b []byte, sep byte, name string, v int64) ([]byte, byte) {
	if v == 0 {
		return b, sep
	}
	b = appendJSONKey(b, sep, name)
	return strconv.AppendInt(b, v, 10), ','
}

func appendJSONStrings(b []byte, ss []string) []byte {
	b = append(b, '[')
	for i, s := range ss {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendJSONString(b, s)
	}
	return append(b, ']')
}

// appendJSONStringMap appends m with its keys sorted, as json.Marshal does.
func appendJSONStringMap(b []byte, m map[string]string) []byte {
	var small [8]string
	keys := small[:0]
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	b = append(b, '{')
	for i, k := range keys {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendJSONString(b, k)
		b = append(b, ':')
		b = appendJSONString(b, m[k])
	}
	return append(b, '}')
}

// requestBufs are the client's request buffers (nats copies a request
// out before Request returns).
var requestBufs = sync.Pool{New: func() any { b := make([]byte, 0, 512); return &b }}
