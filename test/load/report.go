package load

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"time"
)

// Report is the load's outcome so far.
type Report struct {
	Kinds   map[Kind]KindReport `json:"kinds"`
	Outages []OutageReport      `json:"outages,omitempty"`
}

// KindReport is one kind of client's outcome.
type KindReport struct {
	Kind Kind `json:"kind"`
	// Requests counts every request sent and finished (answered, failed
	// or timed out); OK those answered with success.
	Requests int `json:"requests"`
	OK       int `json:"ok"`
	// Failed counts failures outside every announced outage: failures of
	// the system under test. FailedOutage counts those inside one.
	Failed       int `json:"failed"`
	FailedOutage int `json:"failed_outage"`
	// Retried counts requests the HTTP transport sent a second time on a
	// new connection because the server closed the one it had picked
	// while idle (they count once, as answered or failed).
	Retried int `json:"retried"`
	// Dials counts connections opened (UDP: sockets).
	Dials int `json:"dials"`
	// Latency quantiles of the successful requests.
	P50 time.Duration `json:"p50_ns"`
	P99 time.Duration `json:"p99_ns"`
	Max time.Duration `json:"max_ns"`
	// ServedBy counts successful answers per cluster.
	ServedBy map[string]int `json:"served_by"`
	// Failures are the failed requests, each with the outage it belongs
	// to, if any.
	Failures []Sample `json:"failures,omitempty"`
}

// OutageReport is one announced outage and the failures it owns.
type OutageReport struct {
	Name   string    `json:"name"`
	Start  time.Time `json:"start"`
	End    time.Time `json:"end"` // zero: not ended
	Failed int       `json:"failed"`
}

// Requests is the number of requests of every kind.
func (r Report) Requests() int {
	n := 0
	for _, k := range r.Kinds {
		n += k.Requests
	}
	return n
}

// Failed is the number of failures outside the outages, every kind.
func (r Report) Failed() int {
	n := 0
	for _, k := range r.Kinds {
		n += k.Failed
	}
	return n
}

// FailedOutage is the number of failures inside the outages, every kind.
func (r Report) FailedOutage() int {
	n := 0
	for _, k := range r.Kinds {
		n += k.FailedOutage
	}
	return n
}

func fmtDur(d time.Duration) string {
	return fmt.Sprintf("%.2f", float64(d.Microseconds())/1000)
}

// Print writes one line per kind (requests, failed, failed in outages,
// retried, connections, p50/p99/max latency in ms, who answered), then up
// to maxFailures failures per kind.
func (r Report) Print(w io.Writer, maxFailures int) {
	fmt.Fprintf(w, "  %-10s %9s %7s %8s %8s %8s %9s %9s %9s  %s\n",
		"client", "requests", "failed", "outage", "retried", "conns", "p50 ms", "p99 ms", "max ms", "answered by")
	for _, k := range Kinds {
		kr, ok := r.Kinds[k]
		if !ok {
			continue
		}
		var by []string
		for c, n := range kr.ServedBy {
			by = append(by, fmt.Sprintf("%s:%d", c, n))
		}
		sort.Strings(by)
		fmt.Fprintf(w, "  %-10s %9d %7d %8d %8d %8d %9s %9s %9s  %s\n", k, kr.Requests, kr.Failed, kr.FailedOutage,
			kr.Retried, kr.Dials, fmtDur(kr.P50), fmtDur(kr.P99), fmtDur(kr.Max), strings.Join(by, " "))
	}
	for _, k := range Kinds {
		kr := r.Kinds[k]
		for i, f := range kr.Failures {
			if i == maxFailures {
				fmt.Fprintf(w, "    %s: %d more failures\n", k, len(kr.Failures)-i)
				break
			}
			where := "not in an outage"
			if f.Outage != "" {
				where = "in outage " + f.Outage
			}
			fmt.Fprintf(w, "    %s failed, sent %s, %s: %s\n", k, f.Sent.Format("15:04:05.000"), where, f.Err)
		}
	}
}
