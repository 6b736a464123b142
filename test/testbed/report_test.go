package testbed

import (
	"bytes"
	"encoding/json"
	"math"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/roamnet/roam/ctrl"
)

func TestQuantileAndTable(t *testing.T) {
	if q := Quantile([]float64{5, 1, 3}, 0.5); q != 3 {
		t.Fatalf("median = %v", q)
	}
	if q := Quantile([]float64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21}, 0.95); q != 20 {
		t.Fatalf("p95 = %v", q)
	}
	if !math.IsNaN(Quantile(nil, 0.5)) {
		t.Fatal("quantile of nothing")
	}
	ms := []ctrl.Migration{
		{State: ctrl.StateDone, Times: ctrl.Times{PR: 2, Reroute: 1, Commit: 3, Replication: 20, Wait: 60, Deploy: 40}},
		{State: ctrl.StateDone, Times: ctrl.Times{PR: 4, Reroute: 1, Commit: 1}},
		{State: ctrl.StateFailed, Times: ctrl.Times{PR: 100}},
	}
	rows := Table(ms, []float64{7})
	byName := map[string]TableRow{}
	for _, r := range rows {
		byName[r.Stage] = r
	}
	if r := byName["PR"]; r.N != 2 || r.MedianMs != 3 || r.PaperMs != 3 {
		t.Errorf("PR row: %+v", r)
	}
	if r := byName["reroute"]; r.N != 2 || r.MedianMs != 1 || r.PaperMs != 47 {
		t.Errorf("reroute row (staging only): %+v", r)
	}
	if r := byName["commit"]; r.N != 2 || r.MedianMs != 2 {
		t.Errorf("commit row: %+v", r)
	}
	if r := byName["wait"]; r.N != 1 || r.MedianMs != 60 {
		t.Errorf("wait row: %+v", r)
	}
	if r := byName["deploy"]; r.N != 2 || r.MedianMs != 23.5 {
		t.Errorf("deploy row (the migration's and the first deployment): %+v", r)
	}
	if r := byName["cleanup"]; r.N != 0 || r.MedianMs != 0 {
		t.Errorf("cleanup row: %+v", r)
	}
}

func TestReportOutputs(t *testing.T) {
	t0 := time.Now()
	r := &Result{Service: "classifier", Frontend: "172.16.1.2:80/tcp", Started: t0}
	for i := range 200 {
		s := Sample{Sent: t0.Add(time.Duration(i) * 20 * time.Millisecond), Latency: time.Duration(500+i) * time.Microsecond, OK: i < 150 || i > 170, Cluster: "home", Phase: "good"}
		r.Samples = append(r.Samples, s)
	}
	r.Events = []Event{{Time: t0.Add(3 * time.Second), Kind: "cut", Cluster: "edge"}}
	r.Migrations = []MigrationResult{{Phase: "good", Planned: true, From: "home", To: "cloud", State: "done", End: t0.Add(time.Second), Stages: map[string]float64{"placement": 2}}}
	r.Phases = []PhaseResult{{Name: "good", Sent: 200, Failed: 20, ServedBy: map[string]int{"home": 180}}}
	r.Table = Table(nil, []float64{12})
	r.FailsafeDowntimeMs = downtime(r.Samples, r.Events, "edge")
	if r.FailsafeDowntimeMs != 420 {
		t.Errorf("downtime = %v ms, want 420", r.FailsafeDowntimeMs)
	}
	var buf bytes.Buffer
	PrintReport(&buf, r)
	for _, want := range []string{"Table I", "PR", "paper", "good", "Fail-safe downtime"} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, buf.String())
		}
	}
	jp, pp, err := WriteOutputs(t.TempDir(), r)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(jp)
	var back Result
	if err := json.Unmarshal(b, &back); err != nil || len(back.Samples) != 200 {
		t.Fatalf("result.json: %v (%d samples)", err, len(back.Samples))
	}
	png, _ := os.ReadFile(pp)
	if len(png) < 1000 || !bytes.HasPrefix(png, []byte("\x89PNG")) {
		t.Fatalf("latency.png: %d bytes", len(png))
	}
}

func TestBlameCut(t *testing.T) {
	t0 := time.Now()
	cut := t0.Add(10 * time.Second)
	samples := []Sample{
		{Sent: cut.Add(-2 * time.Millisecond), Phase: "degraded"},           // in flight at the cut: the outage's
		{Sent: cut.Add(-3 * time.Second), Phase: "degraded"},                // failed long before: degraded's
		{Sent: cut.Add(-2 * time.Millisecond), Phase: "degraded", OK: true}, // answered
	}
	blameCut(samples, []Event{{Time: cut, Kind: "cut", Cluster: "edge"}, {Time: cut, Kind: "cut", Cluster: "cloud"}}, "edge", time.Second)
	if samples[0].Phase != "partition" || samples[1].Phase != "degraded" || samples[2].Phase != "degraded" {
		t.Errorf("phases %q %q %q", samples[0].Phase, samples[1].Phase, samples[2].Phase)
	}
}

// TestCountRequestsSplitsMoveLosses: in a phase with a planned move, a
// failed request whose deadline passed before the move started counts as
// failed before roam acted; one in flight at the start, one sent during
// the move and one sent within a second after its end count as lost in
// the move; one sent later counts in neither (only in its phase's
// failures). Every failure stays in the phase's Failed.
func TestCountRequestsSplitsMoveLosses(t *testing.T) {
	const timeout = time.Second
	t0 := time.Now()
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	start, end := at(3000), at(3500) // the move
	samples := []Sample{
		{Sent: at(1000), OK: true, Cluster: "cloud", Phase: "degraded"},
		{Sent: at(1500), Phase: "degraded"}, // deadline 2500 < start: before roam acted
		{Sent: at(2000), Phase: "degraded"}, // deadline 3000 = start: before roam acted
		{Sent: at(2100), Phase: "degraded"}, // in flight at the start: lost in the move
		{Sent: at(3200), Phase: "degraded"}, // during the move: lost in it
		{Sent: at(4400), Phase: "degraded"}, // within end+1s: lost in it
		{Sent: at(4600), Phase: "degraded"}, // after end+1s: neither
		{Sent: at(3300), OK: true, Cluster: "edge", Phase: "degraded"},
		{Sent: at(9000), Phase: "partition"}, // another phase's
	}
	migs := []MigrationResult{{Phase: "degraded", Planned: true, Start: start, End: end}}
	phases := []PhaseResult{{Name: "degraded"}, {Name: "partition"}}
	var r Result
	countRequests(&r, migs, phases, samples, timeout)
	m, p := r.Migrations[0], r.Phases[0]
	if m.Requests != 4 || m.FailedReq != 3 {
		t.Errorf("move: %d requests in flight during it, %d failed; want 4 and 3", m.Requests, m.FailedReq)
	}
	if p.Sent != 8 || p.Failed != 6 || p.FailedBeforeMove != 2 || p.LostInMove != 3 {
		t.Errorf("phase degraded: sent %d failed %d, before the move %d, in it %d; want 8, 6, 2, 3", p.Sent, p.Failed, p.FailedBeforeMove, p.LostInMove)
	}
	if q := r.Phases[1]; q.Failed != 1 || q.FailedBeforeMove != 0 || q.LostInMove != 0 {
		t.Errorf("phase partition (no planned move): %+v", q)
	}
	if r.LostInMoves != 3 || r.FailedBeforeMoves != 2 || r.Failed != 7 {
		t.Errorf("totals: lost in moves %d, failed before %d, failed %d; want 3, 2, 7", r.LostInMoves, r.FailedBeforeMoves, r.Failed)
	}
	var buf bytes.Buffer
	PrintReport(&buf, &r)
	if !strings.Contains(buf.String(), "Requests lost in the planned moves: 3") || !strings.Contains(buf.String(), "Requests failed before roam acted: 2") {
		t.Errorf("report does not print the split:\n%s", buf.String())
	}
}
