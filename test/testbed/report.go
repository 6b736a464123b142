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

// tableStages maps the paper's Table I rows to the controller's stage names
// (the sum of those present).
var tableStages = []struct {
	row     string
	stages  []string
	paperMs float64
}{
	{"PR", []string{ctrl.StagePlacement}, 3},
	{"replication", []string{ctrl.StageReplication}, 21},
	{"reroute", []string{ctrl.StageReroute, ctrl.StageVerify, ctrl.StageCommit}, 47},
	{"wait", []string{ctrl.StageDrain, "wait"}, 0},
	{"cleanup", []string{ctrl.StageCleanup}, 0},
	{"deploy", []string{"deploy"}, 0},
}

// Table computes Table I over migrations (done ones only). deployMs adds
// measured first deployments to the deploy row when the controller's
// stages hold no "deploy".
func Table(ms []ctrl.Migration, deployMs []float64) []TableRow {
	var rows []TableRow
	for _, ts := range tableStages {
		var vals []float64
		for _, m := range ms {
			if m.State != "" && m.State != ctrl.StateDone {
				continue
			}
			sum, any := 0.0, false
			for _, s := range m.Stages {
				for _, name := range ts.stages {
					if s.Stage == name {
						sum += s.Ms
						any = true
					}
				}
			}
			if any {
				vals = append(vals, sum)
			}
		}
		if ts.row == "deploy" && len(vals) == 0 {
			vals = append(vals, deployMs...)
		}
		row := TableRow{Stage: ts.row, N: len(vals), PaperMs: ts.paperMs}
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
		for _, ts := range tableStages {
			for _, n := range ts.stages {
				if v, ok := m.Stages[n]; ok {
					st = append(st, fmt.Sprintf("%s=%.1f", n, v))
				}
			}
		}
		fmt.Fprintf(w, "  %-10s %-9s %s -> %s  %8.1f ms  %s  requests %d, failed %d\n",
			m.Phase, kind, m.From, m.To, m.TotalMs, m.State, m.Requests, m.FailedReq)
		if len(st) > 0 {
			fmt.Fprintf(w, "             stages: %s\n", strings.Join(st, " "))
		}
	}
	fmt.Fprintln(w, "\nRequests per phase")
	fmt.Fprintf(w, "  %-10s %6s %6s  %s\n", "phase", "sent", "failed", "answered by")
	for _, p := range r.Phases {
		var by []string
		for c, n := range p.ServedBy {
			by = append(by, fmt.Sprintf("%s:%d", c, n))
		}
		sort.Strings(by)
		fmt.Fprintf(w, "  %-10s %6d %6d  %s\n", p.Name, p.Sent, p.Failed, strings.Join(by, " "))
	}
	fmt.Fprintf(w, "  %-10s %6d %6d\n", "total", r.Sent, r.Failed)
	switch {
	case r.FailsafeDowntimeMs < 0:
		fmt.Fprintln(w, "\nFail-safe: service NOT restored")
	default:
		fmt.Fprintf(w, "\nFail-safe downtime: %.0f ms (restored: %v; orphan removed after recovery: %v)\n",
			r.FailsafeDowntimeMs, r.FailsafeRestored, r.OrphanRemoved)
	}
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
