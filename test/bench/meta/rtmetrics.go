package main

// Runtime figures per placement row, read from runtime/metrics before and
// after the row: how long the process's goroutines waited for a core
// (scheduler latency), the GC's stop-the-world pauses, GC cycles, time
// spent waiting on sync.Mutex/RWMutex, and the live heap. The MO, its
// embedded NATS, the hello simulator and the requester share the process,
// so these say what the whole process went through. perPlacement takes
// the allocations of the hello ingest (its rate in an idle window before
// the row) off a row's, for what the MO allocates per placement.

import (
	"math"
	"runtime/metrics"
	"time"
)

const (
	mSchedLat  = "/sched/latencies:seconds"
	mGCPauses  = "/sched/pauses/total/gc:seconds"
	mGCCycles  = "/gc/cycles/total:gc-cycles"
	mMutexWait = "/sync/mutex/wait/total:seconds"
	mHeapLive  = "/gc/heap/live:bytes"
	mGCCPU     = "/cpu/classes/gc/total:cpu-seconds"
	mTotalCPU  = "/cpu/classes/total:cpu-seconds"
	mAllocB    = "/gc/heap/allocs:bytes"
	mAllocObj  = "/gc/heap/allocs:objects"
)

type rtReading struct {
	s     []metrics.Sample
	hists map[string]*metrics.Float64Histogram // copies: Read reuses them
}

func readRuntime() rtReading {
	s := []metrics.Sample{{Name: mSchedLat}, {Name: mGCPauses}, {Name: mGCCycles}, {Name: mMutexWait}, {Name: mHeapLive},
		{Name: mGCCPU}, {Name: mTotalCPU}, {Name: mAllocB}, {Name: mAllocObj}}
	metrics.Read(s)
	r := rtReading{s: s, hists: map[string]*metrics.Float64Histogram{}}
	for i := range s {
		if s[i].Value.Kind() == metrics.KindFloat64Histogram {
			h := s[i].Value.Float64Histogram()
			r.hists[s[i].Name] = &metrics.Float64Histogram{Counts: append([]uint64(nil), h.Counts...), Buckets: append([]float64(nil), h.Buckets...)}
		}
	}
	return r
}

// rtStats are the runtime figures between two readings.
type rtStats struct {
	schedP99, schedMax float64 // seconds a goroutine waited to run
	gcPauseMax         float64 // seconds, longest stop-the-world pause
	gcCycles           uint64
	mutexWait          float64 // seconds, summed over goroutines
	heapLive           uint64  // bytes, at the end
	gcCPUShare         float64 // of the process's CPU time
	allocB, allocObj   uint64  // heap bytes and objects allocated
}

func rtDelta(ra, rb rtReading) rtStats {
	var st rtStats
	a, b := ra.s, rb.s
	st.schedP99, st.schedMax = histDelta(ra.hists[mSchedLat], rb.hists[mSchedLat], 0.99)
	_, st.gcPauseMax = histDelta(ra.hists[mGCPauses], rb.hists[mGCPauses], 0.99)
	for i := range b {
		switch b[i].Name {
		case mGCCycles:
			st.gcCycles = b[i].Value.Uint64() - a[i].Value.Uint64()
		case mMutexWait:
			st.mutexWait = b[i].Value.Float64() - a[i].Value.Float64()
		case mHeapLive:
			st.heapLive = b[i].Value.Uint64()
		case mAllocB:
			st.allocB = b[i].Value.Uint64() - a[i].Value.Uint64()
		case mAllocObj:
			st.allocObj = b[i].Value.Uint64() - a[i].Value.Uint64()
		}
	}
	gc := b[5].Value.Float64() - a[5].Value.Float64()
	if tot := b[6].Value.Float64() - a[6].Value.Float64(); tot > 0 {
		st.gcCPUShare = gc / tot
	}
	return st
}

// histDelta is the upper bound of the bucket holding quantile q, and of
// the highest non-empty bucket, of the samples between two readings.
func histDelta(ha, hb *metrics.Float64Histogram, q float64) (quant, maxv float64) {
	if ha == nil || hb == nil || len(ha.Counts) != len(hb.Counts) {
		return math.NaN(), math.NaN()
	}
	var total uint64
	for i := range hb.Counts {
		total += hb.Counts[i] - ha.Counts[i]
	}
	if total == 0 {
		return 0, 0
	}
	var cum uint64
	quant = math.NaN()
	for i := range hb.Counts {
		d := hb.Counts[i] - ha.Counts[i]
		cum += d
		if math.IsNaN(quant) && float64(cum) >= q*float64(total) {
			quant = hb.Buckets[i+1]
		}
		if d > 0 {
			maxv = hb.Buckets[i+1]
		}
	}
	return quant, maxv
}

// perPlacement is what the process allocated per placement in a row of
// dur, less what it allocates in as long without placements (idle, over
// idleDur): bytes and objects.
func perPlacement(row rtStats, dur time.Duration, idle rtStats, idleDur time.Duration, n int) (float64, float64) {
	if n == 0 || idleDur <= 0 {
		return math.NaN(), math.NaN()
	}
	f := dur.Seconds() / idleDur.Seconds()
	b := (float64(row.allocB) - f*float64(idle.allocB)) / float64(n)
	o := (float64(row.allocObj) - f*float64(idle.allocObj)) / float64(n)
	return max(b, 0), max(o, 0)
}
