package testbed

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"time"

	"github.com/roamnet/roam/ctrl"
	"github.com/roamnet/roam/ctrl/backend"
	"github.com/roamnet/roam/dataplane/lb"
	"github.com/roamnet/roam/meta"
)

// ExperimentConfig tunes the paper's experiment.
type ExperimentConfig struct {
	Service string // default: the config's first service, else "classifier"
	Port    uint16 // default: the service's port, else 80
	// Home, Edge, Cloud and Client default to the first deep-edge cluster
	// with a client, the first edge, the first cloud and that client.
	Home, Edge, Cloud, Client string
	Interval                  time.Duration // between requests (20ms)
	Timeout                   time.Duration // per request (1s)
	Dwell                     time.Duration // time spent in each phase after the system moved (3s)
	DegradedRate              uint64        // the cloud link's rate when degraded (2mbit)
	FailsafeTimeout           time.Duration // how long the fail-safe may take (30s)
	// NeedMbps is the classifier's need toward its users (10); the
	// system moves it when the path from the home falls below.
	NeedMbps float64
	// MoveTimeout is how long the system may take to move the service
	// after a change (30s).
	MoveTimeout time.Duration
	// Progress receives one line per step as it happens.
	Progress func(string)
}

// PhaseResult counts one phase's requests.
type PhaseResult struct {
	Name     string         `json:"name"`
	Start    time.Time      `json:"start"`
	End      time.Time      `json:"end"`
	Sent     int            `json:"sent"`
	Failed   int            `json:"failed"`
	ServedBy map[string]int `json:"served_by"`
	// FailedBeforeMove and LostInMove split the failures of a phase with
	// a planned move (see Result.LostInMoves).
	FailedBeforeMove int `json:"failed_before_move"`
	LostInMove       int `json:"lost_in_move"`
}

// MigrationResult is one migration as the experiment saw it.
type MigrationResult struct {
	Phase   string             `json:"phase"`
	Planned bool               `json:"planned"`
	ID      string             `json:"id"`
	Role    string             `json:"role"`
	Reason  string             `json:"reason"`
	From    string             `json:"from"`
	To      string             `json:"to"`
	State   string             `json:"state"`
	Start   time.Time          `json:"start"`
	End     time.Time          `json:"end"`
	Stages  map[string]float64 `json:"stages_ms"`
	Times   ctrl.Times         `json:"times"`
	TotalMs float64            `json:"total_ms"`
	// Requests were in flight at some moment from its start to a second
	// after its end (sent after start less the client's timeout, before
	// end+1s); FailedReq of them failed: for a planned move, the
	// requests lost in the move (see Result.LostInMoves).
	Requests  int `json:"requests"`
	FailedReq int `json:"failed_requests"`
	// Trigger is the measurement that started it, Placement the MO's
	// judgement, Cluster the controller whose record it is.
	Trigger   string `json:"trigger,omitempty"`
	Placement string `json:"placement,omitempty"`
	Cluster   string `json:"cluster,omitempty"`
	// Change is the network change (or the deployment) that led to it;
	// ChangeToCommitMs the time from it to the commit (detection,
	// decision and migration).
	Change           string    `json:"change,omitempty"`
	ChangeAt         time.Time `json:"change_at,omitzero"`
	CommitAt         time.Time `json:"commit_at,omitzero"`
	ChangeToCommitMs float64   `json:"change_to_commit_ms,omitempty"`
}

// Result is the experiment's outcome.
type Result struct {
	Service            string            `json:"service"`
	Frontend           string            `json:"frontend"`
	Phases             []PhaseResult     `json:"phases"`
	Migrations         []MigrationResult `json:"migrations"`
	Table              []TableRow        `json:"table"`
	DeployMs           []float64         `json:"deploy_ms"`
	FailsafeDowntimeMs float64           `json:"failsafe_downtime_ms"`
	FailsafeRestored   bool              `json:"failsafe_restored"`
	OrphanRemoved      bool              `json:"orphan_removed"`
	Events             []Event           `json:"events"`
	Sent               int               `json:"requests"`
	Failed             int               `json:"failed"`
	Samples            []Sample          `json:"samples"`
	Started            time.Time         `json:"started"`
	NeedMbps           float64           `json:"need_mbps"`
	// DetectMs are the network-change moves' times from the change to
	// the commit; ManualMigrations counts migrations asked by hand (0:
	// the system moved the service by itself); FinalCluster answered the
	// last request.
	DetectMs         []float64 `json:"detect_ms"`
	ManualMigrations int       `json:"manual_migrations"`
	FinalCluster     string    `json:"final_cluster"`
	// LostInMoves counts the requests lost in the planned moves: failed
	// while a move could touch them, i.e. in flight at some moment from
	// the move's start (the trigger's decision) to a second after its end
	// (the old copy's linger): sent after start less the client's
	// timeout. A request in flight when the move started counts, even if
	// the network lost it before. FailedBeforeMoves counts, apart, the
	// failed requests of a phase with a planned move whose deadline had
	// passed before the move started (sent at least a timeout before):
	// the move cannot have touched them; they failed before roam acted
	// (in the degraded phase, on the degraded path). Both are listed in
	// Samples and counted in their phase's Failed.
	LostInMoves       int `json:"lost_in_moves"`
	FailedBeforeMoves int `json:"failed_before_moves"`
}

func (ec *ExperimentConfig) resolve(tb *Testbed) error {
	cfg := tb.State().Config
	if ec.Service == "" {
		ec.Service = "classifier"
		if len(cfg.Services) > 0 {
			ec.Service = cfg.Services[0].Name
		}
	}
	if ec.Port == 0 {
		ec.Port = 80
		for _, s := range cfg.Services {
			if s.Name == ec.Service {
				ec.Port = s.Port
				if ec.Home == "" {
					ec.Home = s.Home
				}
			}
		}
	}
	for _, c := range cfg.Clusters {
		switch {
		case c.Tier == "deep-edge" && ec.Home == "" && len(c.Clients) > 0:
			ec.Home = c.Name
		case c.Tier == "edge" && ec.Edge == "":
			ec.Edge = c.Name
		case c.Tier == "cloud" && ec.Cloud == "":
			ec.Cloud = c.Name
		}
	}
	if ec.Client == "" {
		for _, c := range cfg.Clusters {
			if c.Name == ec.Home && len(c.Clients) > 0 {
				ec.Client = c.Clients[0]
			}
		}
	}
	if ec.Home == "" || ec.Edge == "" || ec.Cloud == "" || ec.Client == "" {
		return fmt.Errorf("experiment: the topology needs a deep-edge cluster with a client, an edge and a cloud cluster (got home=%q edge=%q cloud=%q client=%q)",
			ec.Home, ec.Edge, ec.Cloud, ec.Client)
	}
	if ec.Interval == 0 {
		ec.Interval = 20 * time.Millisecond
	}
	if ec.Timeout == 0 {
		ec.Timeout = time.Second
	}
	if ec.Dwell == 0 {
		ec.Dwell = 3 * time.Second
	}
	if ec.DegradedRate == 0 {
		ec.DegradedRate = 2_000_000
	}
	if ec.FailsafeTimeout == 0 {
		ec.FailsafeTimeout = 30 * time.Second
	}
	if ec.NeedMbps == 0 {
		ec.NeedMbps = 10
	}
	if ec.MoveTimeout == 0 {
		ec.MoveTimeout = 30 * time.Second
	}
	if ec.Progress == nil {
		ec.Progress = func(string) {}
	}
	return nil
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}

// RunExperiment runs the paper's use case on a launched testbed, playing
// only the network: the classifier is deployed at the deep edge with its
// need (NeedMbps toward its users); with every link good the system moves
// it to the cloud by itself (better placement); the home-cloud path is
// shaped to DegradedRate and the system moves it to the edge (network
// change); the edge is cut and the home's fail-safe takes it back; the
// links are restored and the system moves it back to the best place. No
// call names a destination or asks for a migration. The camera streams
// requests to the home frontend throughout.
func RunExperiment(ctx context.Context, tb *Testbed, ec ExperimentConfig) (*Result, error) {
	if err := ec.resolve(tb); err != nil {
		return nil, err
	}
	home, err := tb.Cluster(ec.Home)
	if err != nil {
		return nil, err
	}
	client, err := tb.Client(ec.Client)
	if err != nil {
		return nil, err
	}
	hc, err := tb.Ctrl(ec.Home)
	if err != nil {
		return nil, err
	}
	ec2, err := tb.Ctrl(ec.Edge)
	if err != nil {
		return nil, err
	}
	say := func(format string, a ...any) {
		ec.Progress(time.Now().Format("15:04:05.000") + "  " + fmt.Sprintf(format, a...))
	}
	res := &Result{Service: ec.Service, Started: time.Now(), NeedMbps: ec.NeedMbps}
	fe := lb.Frontend{Addr: home.Frontend4(tb.Mode()), Port: ec.Port, Proto: lb.TCP}
	res.Frontend = fe.String()
	url := fmt.Sprintf("http://%s/", netip.AddrPortFrom(fe.Addr, ec.Port))

	// Phase deploy.
	say("deploy: %s at %s (%s), frontend %s, need %.0f Mbit/s toward its users", ec.Service, ec.Home, home.Tier, fe, ec.NeedMbps)
	t0 := time.Now()
	if _, err := hc.Deploy(ctx, ctrl.Descriptor{Name: ec.Service, Demo: true, NeedMbps: ec.NeedMbps,
		Ports: []backend.Port{{Name: "http", Port: ec.Port, Protocol: lb.TCP}}}); err != nil {
		return nil, fmt.Errorf("deploy %s at %s: %w", ec.Service, ec.Home, err)
	}
	deployed := time.Now()
	res.DeployMs = append(res.DeployMs, ms(deployed.Sub(t0)))
	say("deploy: ready in %.1f ms; camera (%s) streams GET %s every %s", ms(deployed.Sub(t0)), client.Addr4, url, ec.Interval)

	st := StartStream(ctx, client.NS, url, ec.Interval, ec.Timeout)
	var phases []PhaseResult
	phase := func(name string) {
		now := time.Now()
		if n := len(phases); n > 0 {
			phases[n-1].End = now
		}
		phases = append(phases, PhaseResult{Name: name, Start: now})
		st.SetPhase(name)
	}
	var migs []MigrationResult
	// moved waits until the camera is answered by dest, then finds the
	// migration that moved the service there (at the cluster that ran
	// it: the home, or the abroad cluster that moved it on) and times it
	// from the network change.
	moved := func(phaseName, dest, change string, changeAt time.Time) error {
		wctx, cancel := context.WithTimeout(ctx, ec.MoveTimeout)
		defer cancel()
		if err := st.WaitServedBy(wctx, dest, 5); err != nil {
			return fmt.Errorf("%s: the system did not move %s to %s within %s: %w", phaseName, ec.Service, dest, ec.MoveTimeout, err)
		}
		m, at, err := FindMove(context.WithoutCancel(ctx), tb, ec.Service, dest, changeAt)
		if err != nil {
			return fmt.Errorf("%s: %w", phaseName, err)
		}
		mr := toResult(phaseName, true, m, m.Started, m.Finished)
		mr.Cluster, mr.Change, mr.ChangeAt, mr.CommitAt = at, change, changeAt, CommitAt(m)
		mr.ChangeToCommitMs = ms(mr.CommitAt.Sub(changeAt))
		migs = append(migs, mr)
		say("%s: %s moved %s -> %s by itself (%s, decided at %s)", phaseName, ec.Service, mr.From, mr.To, mr.Reason, at)
		say("%s:   trigger: %s", phaseName, mr.Trigger)
		say("%s:   placement (PR %.1f ms): %s", phaseName, mr.Times.PR, mr.Placement)
		say("%s:   %s -> commit: %.0f ms (%s)", phaseName, change, mr.ChangeToCommitMs, stagesLine(m.Stages))
		return nil
	}
	run := func() error {
		phase("deploy")
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		if err := st.WaitServedBy(wctx, ec.Home, 5); err != nil {
			return fmt.Errorf("requests to %s not answered by %s: %w", url, ec.Home, err)
		}
		say("deploy: camera requests answered by %s", ec.Home)

		phase("good")
		say("good: every link unshaped: waiting for the system to move %s to the best place", ec.Service)
		if err := moved("good", ec.Cloud, "deployed at "+ec.Home, deployed); err != nil {
			return err
		}
		if err := sleepCtx(ctx, ec.Dwell); err != nil {
			return err
		}

		phase("degraded")
		e, err := tb.Shape(ec.Cloud, ec.DegradedRate)
		if err != nil {
			return err
		}
		say("degraded: %s", e.Detail)
		if err := moved("degraded", ec.Edge, fmt.Sprintf("%s shaped to %s", ec.Cloud, FormatRate(ec.DegradedRate)), e.Time); err != nil {
			return err
		}
		if err := sleepCtx(ctx, ec.Dwell); err != nil {
			return err
		}

		phase("partition")
		e, err = tb.Cut(ec.Edge)
		if err != nil {
			return err
		}
		say("partition: %s; waiting for the fail-safe", e.Detail)
		fctx, fcancel := context.WithTimeout(ctx, ec.FailsafeTimeout)
		defer fcancel()
		if err := st.WaitServedBy(fctx, ec.Home, 5); err != nil {
			say("partition: fail-safe did not bring %s home within %s", ec.Service, ec.FailsafeTimeout)
		} else {
			res.FailsafeRestored = true
			say("partition: fail-safe: requests answered by %s again", ec.Home)
		}
		if err := sleepCtx(ctx, ec.Dwell); err != nil {
			return err
		}

		phase("recovery")
		if e, err = tb.Restore(ec.Edge); err != nil {
			return err
		}
		say("recovery: %s", e.Detail)
		if e, err = tb.Unshape(ec.Cloud); err != nil {
			return err
		}
		say("recovery: %s", e.Detail)
		if err := moved("recovery", ec.Cloud, "links restored", e.Time); err != nil {
			return err
		}
		deadline := time.Now().Add(30 * time.Second)
		for time.Now().Before(deadline) {
			_, err := ec2.Get(ctx, ec.Service)
			var he *HTTPError
			if errors.As(err, &he) && he.Status == 404 {
				res.OrphanRemoved = true
				break
			}
			if err := sleepCtx(ctx, 200*time.Millisecond); err != nil {
				return err
			}
		}
		if res.OrphanRemoved {
			say("recovery: the orphan copy at %s is gone", ec.Edge)
		} else {
			say("recovery: %s still reports a copy of %s after 30s", ec.Edge, ec.Service)
		}
		return sleepCtx(ctx, ec.Dwell)
	}
	runErr := run()
	samples := st.Stop()
	if n := len(phases); n > 0 {
		phases[n-1].End = time.Now()
	}
	sort.Slice(samples, func(i, j int) bool { return samples[i].Sent.Before(samples[j].Sent) })
	res.Events = tb.Events()
	blameCut(samples, res.Events, ec.Edge, ec.Timeout)
	res.Samples = samples

	// The home controller's view adds the fail-safe migration; every
	// controller's, the migrations asked by hand (none in this scenario).
	for _, c := range []string{ec.Home, ec.Edge, ec.Cloud} {
		cc, err := tb.Ctrl(c)
		if err != nil {
			continue
		}
		all, err := cc.Migrations(context.WithoutCancel(ctx))
		if err != nil {
			continue
		}
		for _, m := range all {
			if m.Service != ec.Service || m.Started.Before(res.Started) {
				continue
			}
			if m.Reason == string(meta.ReasonManual) {
				res.ManualMigrations++
			}
			if c == ec.Home && m.Role == ctrl.RoleFailsafe {
				end := m.Finished
				if end.IsZero() {
					end = time.Now()
				}
				mr := toResult("partition", false, m, m.Started, end)
				mr.Cluster = c
				migs = append(migs, mr)
			}
		}
	}
	countRequests(res, migs, phases, samples, ec.Timeout)
	res.FailsafeDowntimeMs = downtime(samples, res.Events, ec.Edge)
	var planned []ctrl.Migration
	for _, m := range migs {
		if m.Planned {
			planned = append(planned, fromResult(m))
		}
		if m.Planned && m.Reason == string(meta.ReasonNetworkChange) {
			res.DetectMs = append(res.DetectMs, m.ChangeToCommitMs)
		}
	}
	res.Table = Table(planned, res.DeployMs)
	if n := len(samples); n > 0 {
		for i := n - 1; i >= 0; i-- {
			if samples[i].OK {
				res.FinalCluster = samples[i].Cluster
				break
			}
		}
	}
	return res, runErr
}

// countRequests counts samples (each request's outcome; timeout is the
// client's) into the migrations (Requests, FailedReq: in flight during
// each), the phases (Sent, Failed, ServedBy; for a phase with a planned
// move, FailedBeforeMove and LostInMove) and res's totals, and sets
// res.Migrations and res.Phases (see Result.LostInMoves).
func countRequests(res *Result, migs []MigrationResult, phases []PhaseResult, samples []Sample, timeout time.Duration) {
	for i := range migs {
		from := migs[i].Start.Add(-timeout)
		for _, s := range samples {
			if s.Sent.After(from) && s.Sent.Before(migs[i].End.Add(time.Second)) {
				migs[i].Requests++
				if !s.OK {
					migs[i].FailedReq++
				}
			}
		}
	}
	res.Migrations = migs
	for i := range phases {
		phases[i].ServedBy = map[string]int{}
		for _, s := range samples {
			if s.Phase != phases[i].Name {
				continue
			}
			phases[i].Sent++
			if !s.OK {
				phases[i].Failed++
			} else {
				phases[i].ServedBy[s.Cluster]++
			}
		}
		for _, m := range migs {
			if !m.Planned || m.Phase != phases[i].Name {
				continue
			}
			phases[i].LostInMove += m.FailedReq
			for _, s := range samples {
				if s.Phase == phases[i].Name && !s.OK && !s.Sent.Add(timeout).After(m.Start) {
					phases[i].FailedBeforeMove++
				}
			}
		}
		res.Sent += phases[i].Sent
		res.Failed += phases[i].Failed
		res.LostInMoves += phases[i].LostInMove
		res.FailedBeforeMoves += phases[i].FailedBeforeMove
	}
	res.Phases = phases
}

// FindMove finds the migration that moved service to dest, started after
// since (less a second of clock slack): at the home (role home) or at an
// abroad cluster that moved it on (role mover). It returns it and the
// cluster whose record it is.
// The camera sees the new copy at the commit; the migration is done
// after the drain and the cleanup, so it waits for that (up to 30s).
func FindMove(ctx context.Context, tb *Testbed, service, dest string, since time.Time) (ctrl.Migration, string, error) {
	deadline := time.Now().Add(30 * time.Second)
	for {
		m, at, err := findMove(ctx, tb, service, dest, since)
		if err == nil || time.Now().After(deadline) {
			return m, at, err
		}
		if err := sleepCtx(ctx, 100*time.Millisecond); err != nil {
			return m, at, err
		}
	}
}

func findMove(ctx context.Context, tb *Testbed, service, dest string, since time.Time) (ctrl.Migration, string, error) {
	var best ctrl.Migration
	var at string
	for _, c := range tb.Clusters() {
		cc, err := tb.Ctrl(c.Name)
		if err != nil {
			continue
		}
		all, err := cc.Migrations(ctx)
		if err != nil {
			continue
		}
		for _, m := range all {
			if m.Service != service || m.To != dest || m.State != ctrl.StateDone || m.Started.Before(since.Add(-time.Second)) {
				continue
			}
			if m.Role != ctrl.RoleHome && m.Role != ctrl.RoleMover {
				continue
			}
			if at == "" || m.Started.Before(best.Started) {
				best, at = m, c.Name
			}
		}
	}
	if at == "" {
		return ctrl.Migration{}, "", fmt.Errorf("no finished migration of %s to %s since %s", service, dest, since.Format("15:04:05.000"))
	}
	return best, at, nil
}

// CommitAt is when m's commit was done: its start plus its stages up to
// the commit (a mover's reroute includes the home's commit).
func CommitAt(m ctrl.Migration) time.Time {
	t := m.Started
	for _, s := range m.Stages {
		t = t.Add(time.Duration(s.Ms * float64(time.Millisecond)))
		if s.Stage == ctrl.StageCommit || (m.Role == ctrl.RoleMover && s.Stage == ctrl.StageReroute) {
			break
		}
	}
	return t
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func toResult(phase string, planned bool, m ctrl.Migration, start, end time.Time) MigrationResult {
	mr := MigrationResult{Phase: phase, Planned: planned, ID: m.ID, Role: string(m.Role), Reason: m.Reason, Trigger: m.Trigger, Placement: m.Placement,
		From: m.From, To: m.To, State: string(m.State), Start: start, End: end, Stages: map[string]float64{}, Times: m.Times}
	for _, s := range m.Stages {
		mr.Stages[s.Stage.String()] += s.Ms
		mr.TotalMs += s.Ms
	}
	return mr
}

func fromResult(mr MigrationResult) ctrl.Migration {
	m := ctrl.Migration{ID: mr.ID, Role: ctrl.Role(mr.Role), From: mr.From, To: mr.To, State: ctrl.State(mr.State), Times: mr.Times}
	for k, v := range mr.Stages {
		var st ctrl.Stage
		if st.UnmarshalText([]byte(k)) != nil {
			continue // not one of the controller's stages
		}
		m.Stages = append(m.Stages, ctrl.StageTime{Stage: st, Ms: v})
	}
	return m
}

func stagesLine(st []ctrl.StageTime) string {
	s := ""
	for i, x := range st {
		if i > 0 {
			s += " "
		}
		s += fmt.Sprintf("%s=%.1fms", x.Stage, x.Ms)
	}
	return s
}

// blameCut gives the partition phase a failed request sent before the cut
// of cluster's link but still in flight when it came (its answer, due
// within timeout, was lost to the cut): it belongs to the outage, not to
// the phase it was sent in (as test/load attributes failures to outages).
func blameCut(samples []Sample, events []Event, cluster string, timeout time.Duration) {
	for _, e := range events {
		if e.Kind != "cut" || e.Cluster != cluster {
			continue
		}
		for i := range samples {
			s := &samples[i]
			if !s.OK && s.Sent.Before(e.Time) && s.Sent.Add(timeout).After(e.Time) {
				s.Phase = "partition"
			}
		}
	}
}

// downtime is the fail-safe's outage: from the first failed request sent
// after the cut of cluster's link to the first successful one after it.
func downtime(samples []Sample, events []Event, cluster string) float64 {
	var cut time.Time
	for _, e := range events {
		if e.Kind == "cut" && e.Cluster == cluster {
			cut = e.Time
		}
	}
	if cut.IsZero() {
		return 0
	}
	var firstFail time.Time
	for _, s := range samples {
		if s.Sent.Before(cut) {
			continue
		}
		if !s.OK && firstFail.IsZero() {
			firstFail = s.Sent
		}
		if s.OK && !firstFail.IsZero() {
			return ms(s.Sent.Sub(firstFail))
		}
	}
	if firstFail.IsZero() {
		return 0
	}
	return -1 // never restored
}
