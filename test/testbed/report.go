package testbed

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/roamnet/roam/ctrl"
)

// TableRow is one line of the paper's Table I.
type TableRow struct {
	Stage    string  `json:"stage"`
	N        int     `json:"n"`
	MedianMs float64 `json:"median_ms"`
	P95Ms    float64 `json:"p95_ms"`
	// PaperMs is the paper's figure; 0 where we have none to compare.
	PaperMs float64 `json:"paper_ms,omitempty"`
}

// tableRows are the paper's Table I rows, read from each migration's
// Times (ctrl.Times: the paper's definitions, the same for every role):
//
//   - PR: the placement round trip (to the MO, or the local decision).
//   - replication: the API call to the abroad cluster until it accepted.
//   - reroute: the load balancer's new configuration, from the start of
//     staging on every node to the last node's commit (one call per node
//     that stages and commits when the cluster has one node; else a stage
//     call to every node, then a commit call to every node); commit (the
//     commit itself, its share: the commit calls, or the agent's own
//     commit in the one call) and verify (the check of the new copy,
//     before staging) are shown beside it.
//   - wait: from the replication call until the new copy is ready.
//   - drain: from the commit until the old copy had no live flow (it is
//     told to stop at the commit); cleanup: the drain plus removing it.
//   - deploy: bringing one copy up.
var tableRows = []struct {
	row     string
	get     func(ctrl.Times) float64
	paperMs float64
}{
	{"PR", func(t ctrl.Times) float64 { return t.PR }, 3},
	{"replication", func(t ctrl.Times) float64 { return t.Replication }, 21},
	{"reroute", func(t ctrl.Times) float64 { return t.Reroute }, 47},
	{"commit", func(t ctrl.Times) float64 { return t.Commit }, 0},
	{"verify", func(t ctrl.Times) float64 { return t.Verify }, 0},
	{"wait", func(t ctrl.Times) float64 { return t.Wait }, 0},
	{"drain", func(t ctrl.Times) float64 { return t.Drain }, 0},
	{"cleanup", func(t ctrl.Times) float64 { return t.Cleanup }, 0},
	{"deploy", func(t ctrl.Times) float64 { return t.Deploy }, 0},
}

// Table computes Table I over migrations (done ones only; a measure of 0
// is one that was not taken). deployMs adds measured first deployments to
// the deploy row.
func Table(ms []ctrl.Migration, deployMs []float64) []TableRow {
	var rows []TableRow
	for _, tr := range tableRows {
		var vals []float64
		for _, m := range ms {
			if m.State != "" && m.State != ctrl.StateDone {
				continue
			}
			if v := tr.get(m.Times); v > 0 {
				vals = append(vals, v)
			}
		}
		if tr.row == "deploy" {
			vals = append(vals, deployMs...)
		}
		row := TableRow{Stage: tr.row, N: len(vals), PaperMs: tr.paperMs}
		if len(vals) > 0 { // else 0 and printed as "—" (JSON has no NaN)
			row.MedianMs, row.P95Ms = Quantile(vals, 0.5), Quantile(vals, 0.95)
		}
		rows = append(rows, row)
	}
	return rows
}

// Quantile is the q-quantile of vals (linear interpolation); NaN when empty.
func Quantile(vals []float64, q float64) float64 {
	if len(vals) == 0 {
		return math.NaN()
	}
	v := append([]float64(nil), vals...)
	sort.Float64s(v)
	pos := q * float64(len(v)-1)
	lo := int(math.Floor(pos))
	hi := int(math.Ceil(pos))
	return v[lo] + (v[hi]-v[lo])*(pos-float64(lo))
}

func fmtMs(n int, v float64) string {
	if n == 0 || math.IsNaN(v) {
		return "—"
	}
	return fmt.Sprintf("%.1f", v)
}

// PrintTable writes Table I.
func PrintTable(w io.Writer, rows []TableRow) {
	fmt.Fprintf(w, "Table I — migration stages (ms)\n")
	fmt.Fprintf(w, "  %-12s %4s %10s %10s %10s\n", "stage", "n", "median", "p95", "paper")
	for _, r := range rows {
		paper := "—"
		if r.PaperMs > 0 {
			paper = fmt.Sprintf("%.0f", r.PaperMs)
		}
		fmt.Fprintf(w, "  %-12s %4d %10s %10s %10s\n", r.Stage, r.N, fmtMs(r.N, r.MedianMs), fmtMs(r.N, r.P95Ms), paper)
	}
}

// PrintReport writes the experiment's summary: Table I, the migrations,
// the requests per phase and the fail-safe downtime.
func PrintReport(w io.Writer, r *Result) {
	fmt.Fprintln(w)
	PrintTable(w, r.Table)
	fmt.Fprintln(w, "\nMigrations")
	for _, m := range r.Migrations {
		kind := "planned"
		if !m.Planned {
			kind = m.Role
		}
		var st []string
		for _, stage := range ctrl.Stages() {
			if v, ok := m.Stages[stage.String()]; ok {
				st = append(st, fmt.Sprintf("%s=%.1f", stage, v))
			}
		}
		fmt.Fprintf(w, "  %-10s %-9s %s -> %s  %8.1f ms  %s  requests %d, failed %d\n",
			m.Phase, kind, m.From, m.To, m.TotalMs, m.State, m.Requests, m.FailedReq)
		if len(st) > 0 {
			fmt.Fprintf(w, "             stages: %s\n", strings.Join(st, " "))
		}
		if m.Planned {
			fmt.Fprintf(w, "             reason %s, decided at %s: %s\n", m.Reason, m.Cluster, m.Trigger)
			fmt.Fprintf(w, "             placement (PR %.1f ms): %s\n", m.Times.PR, m.Placement)
			fmt.Fprintf(w, "             %s -> commit: %.0f ms\n", m.Change, m.ChangeToCommitMs)
		}
	}
	fmt.Fprintf(w, "\nZero-touch: %d migrations asked by hand; network change -> commit (ms): %v; the service ends at %s\n",
		r.ManualMigrations, fmtList(r.DetectMs), r.FinalCluster)
	fmt.Fprintf(w, "\nRequests lost in the planned moves: %d (failed while in flight during a move or the second after it)\n", r.LostInMoves)
	fmt.Fprintf(w, "Requests failed before roam acted: %d (deadline passed before the phase's move started)\n", r.FailedBeforeMoves)
	fmt.Fprintln(w, "\nRequests per phase")
	fmt.Fprintf(w, "  %-10s %6s %6s %7s %7s  %s\n", "phase", "sent", "failed", "before", "in move", "answered by")
	for _, p := range r.Phases {
		var by []string
		for c, n := range p.ServedBy {
			by = append(by, fmt.Sprintf("%s:%d", c, n))
		}
		sort.Strings(by)
		fmt.Fprintf(w, "  %-10s %6d %6d %7d %7d  %s\n", p.Name, p.Sent, p.Failed, p.FailedBeforeMove, p.LostInMove, strings.Join(by, " "))
	}
	fmt.Fprintf(w, "  %-10s %6d %6d %7d %7d\n", "total", r.Sent, r.Failed, r.FailedBeforeMoves, r.LostInMoves)
	switch {
	case r.FailsafeDowntimeMs < 0:
		fmt.Fprintln(w, "\nFail-safe: service NOT restored")
	default:
		fmt.Fprintf(w, "\nFail-safe downtime: %.0f ms (restored: %v; orphan removed after recovery: %v)\n",
			r.FailsafeDowntimeMs, r.FailsafeRestored, r.OrphanRemoved)
	}
}

func fmtList(v []float64) string {
	s := make([]string, len(v))
	for i, x := range v {
		s[i] = fmt.Sprintf("%.0f", x)
	}
	return "[" + strings.Join(s, " ") + "]"
}

// WriteOutputs writes result.json and latency.png into dir and returns
// their paths.
func WriteOutputs(dir string, r *Result) (jsonPath, pngPath string, err error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", "", fmt.Errorf("create output dir: %w", err)
	}
	jsonPath = filepath.Join(dir, "result.json")
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return "", "", fmt.Errorf("encode result: %w", err)
	}
	if err := os.WriteFile(jsonPath, b, 0o644); err != nil {
		return "", "", fmt.Errorf("write result: %w", err)
	}
	pngPath = filepath.Join(dir, "latency.png")
	if err := Plot(r, pngPath); err != nil {
		return jsonPath, "", err
	}
	return jsonPath, pngPath, nil
}
