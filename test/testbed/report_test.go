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
