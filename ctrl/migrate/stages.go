package migrate

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/roamnet/roam/ctrl"
	"github.com/roamnet/roam/ctrl/store"
	"github.com/roamnet/roam/dataplane/agentapi"
	"github.com/roamnet/roam/dataplane/lb"
	"github.com/roamnet/roam/meta"
)

// stageTimeout bounds one stage of a migration: every call has a deadline
// (Config.CallTimeout, DeployTimeout); none waits on the user's request.
func (e *Engine) stageTimeout(s ctrl.Stage, role ctrl.Role) time.Duration {
	call := e.cfg.CallTimeout
	switch s {
	case ctrl.StageReplication:
		return e.cfg.DeployTimeout + call
	case ctrl.StageReroute:
		if role == ctrl.RoleMover {
			// The home stages, verifies and commits before it answers.
			return 3*call + e.cfg.DrainTimeout + verifyTimeout
		}
	case ctrl.StageDrain, ctrl.StageCleanup:
		// The old copy's graceful stop runs through both.
		return e.cfg.DrainTimeout + call
	}
	return call
}

// journal writes m as about to run stage s, then gives the crash hook its
// chance.
func (e *Engine) journal(m *ctrl.Migration, s ctrl.Stage) error {
	m.Stage = s
	if err := e.st.PutMigration(*m); err != nil {
		return fmt.Errorf("journal %s at %s: %w", m.ID, s, err)
	}
	return e.crashPoint(*m)
}

// crashPoint gives the crash hook its chance to stop m right there, as a
// kill -9 would (tests).
func (e *Engine) crashPoint(m ctrl.Migration) error {
	if e.cfg.CrashHook != nil {
		if err := e.cfg.CrashHook(m); err != nil {
			return fmt.Errorf("%w: %w", ErrCrash, err)
		}
	}
	return nil
}

// step runs fn as stage s of m: it journals first, gives fn a context with
// the stage's deadline, and records the stage's duration (the one place
// stage timings are taken: the histogram and m.Stages).
func (e *Engine) step(ctx context.Context, m *ctrl.Migration, s ctrl.Stage, fn func(ctx context.Context) error) error {
	if err := e.journal(m, s); err != nil {
		return err
	}
	sctx, cancel := context.WithTimeout(ctx, e.stageTimeout(s, m.Role))
	defer cancel()
	start := time.Now()
	err := fn(sctx)
	d := time.Since(start)
	e.stageH.WithLabelValues(s.String()).Observe(d.Seconds())
	m.Stages = append(m.Stages, ctrl.StageTime{Stage: s, Ms: ms(d)})
	if err != nil {
		return fmt.Errorf("%s: %w", s, err)
	}
	return nil
}

// finish settles m as done or failed (or leaves it running when err says
// the outcome is unknown) and records it on the service.
func (e *Engine) finish(m *ctrl.Migration, err error) (ctrl.Migration, error) {
	if errors.Is(err, ErrCrash) {
		return *m, err
	}
	if errors.Is(err, ErrUnsettled) {
		m.Error = err.Error()
		if perr := e.st.PutMigration(*m); perr != nil {
			return *m, errors.Join(err, perr)
		}
		e.log.Warn("migration unsettled, will retry", "id", m.ID, "service", m.Service, "err", err)
		return *m, err
	}
	m.Finished = time.Now().UTC()
	if err != nil {
		m.State, m.Error = ctrl.StateFailed, err.Error()
		e.migs.WithLabelValues(string(m.Role), "failed").Inc()
		e.log.Warn("migration failed", "id", m.ID, "service", m.Service, "stage", m.Stage, "err", err)
	} else {
		m.State = ctrl.StateDone
		e.migs.WithLabelValues(string(m.Role), "done").Inc()
		e.log.Info("migration done", "id", m.ID, "service", m.Service, "from", m.From, "to", m.To, "stages", m.Stages)
	}
	if perr := e.st.PutMigration(*m); perr != nil {
		return *m, errors.Join(err, perr)
	}
	r, gerr := e.st.Record(m.Service)
	switch {
	case errors.Is(gerr, store.ErrNotFound):
	case gerr != nil:
		return *m, errors.Join(err, gerr)
	default:
		mc := *m
		r.LastMigration = &mc
		if perr := e.st.PutRecord(r); perr != nil {
			return *m, errors.Join(err, perr)
		}
	}
	return *m, err
}

// place asks the MO (or uses dest) and sets the destination's id and URL.
func (e *Engine) place(ctx context.Context, m *ctrl.Migration, r ctrl.Record, dest string) error {
	if dest != "" {
		if dest == e.cfg.ClusterID {
			m.To, m.ToURL = dest, e.cfg.URL
			return nil
		}
		if u := e.urlOf(dest, ""); u != "" {
			m.To, m.ToURL = dest, u
			return nil
		}
		if dest == r.Home && r.HomeURL != "" {
			m.To, m.ToURL = dest, r.HomeURL
			return nil
		}
		return fmt.Errorf("%w: destination %s: no controller URL known (not in the MO's view)", ErrInvalid, dest)
	}
	if e.cfg.Placer == nil {
		return fmt.Errorf("%w: no destination given and no meta-orchestrator configured", ErrInvalid)
	}
	sd := r.Service.Meta()
	sd.Constraints.ExcludeClusters = append(slices.Clone(sd.Constraints.ExcludeClusters), e.cfg.ClusterID)
	reason := meta.Reason(m.Reason)
	if reason.Validate() != nil {
		reason = meta.ReasonManual
	}
	// A move the controller decided by itself asks for the full
	// judgement, kept on the migration (see placementText).
	explain := reason == meta.ReasonNetworkChange || reason == meta.ReasonBetterPlacement
	rep, err := e.cfg.Placer.Place(ctx, meta.PlacementRequest{Version: meta.Version, RequestID: m.ID,
		Requester: e.cfg.ClusterID, Home: r.Home, Service: sd, Reason: reason, Explain: explain})
	if err != nil {
		return fmt.Errorf("placement request: %w", err)
	}
	m.Placement = placementText(rep)
	if rep.Destination == nil {
		return fmt.Errorf("no placement: %s", rep.NoPlacement)
	}
	m.To, m.LocalDecision = rep.Destination.ClusterID, rep.Local
	m.ToURL = e.urlOf(m.To, rep.Destination.ControllerURL)
	if m.To == r.Home && m.ToURL == "" {
		m.ToURL = r.HomeURL
	}
	if m.ToURL == "" {
		return fmt.Errorf("placement chose %s without a controller URL", m.To)
	}
	return nil
}

// Migrate moves a service: a local one from here (role home), a foreign one
// on from here (role mover, with a "moved on" notice to its home); a call
// on an abroad one is forwarded to the cluster running it. Once started, a
// migration runs to its end whatever the caller does: its calls have
// deadlines of their own.
func (e *Engine) Migrate(ctx context.Context, name string, req ctrl.MigrateRequest) (ctrl.Migration, error) {
	r, err := e.Get(name)
	if err != nil {
		return ctrl.Migration{}, fmt.Errorf("migrate %s: %w", name, err)
	}
	if r.Kind == ctrl.KindAbroad {
		return e.cfg.Peers.Migrate(ctx, e.urlOf(r.Cluster, r.ClusterURL), name, req)
	}
	if req.Return != "" && req.Return != ctrl.ReturnCommitted && req.Return != ctrl.ReturnRemoved {
		return ctrl.Migration{}, fmt.Errorf("migrate %s: %w: return %q, want %q or %q", name, ErrInvalid, req.Return, ctrl.ReturnCommitted, ctrl.ReturnRemoved)
	}
	if req.Destination == e.cfg.ClusterID {
		return ctrl.Migration{}, fmt.Errorf("migrate %s: %w: it already runs at %s", name, ErrInvalid, req.Destination)
	}
	done, err := e.lockChange(ctx, name, "migrate")
	defer done()
	if err != nil {
		return ctrl.Migration{}, err
	}
	if err := e.settled(ctx, name); err != nil {
		return ctrl.Migration{}, fmt.Errorf("migrate %s: %w", name, err)
	}
	if r, err = e.Get(name); err != nil {
		return ctrl.Migration{}, fmt.Errorf("migrate %s: %w", name, err)
	}
	if req.Reason == "" {
		req.Reason = string(meta.ReasonManual)
	}
	id := newID()
	m := &ctrl.Migration{ID: id, Service: name, Reason: req.Reason, Trigger: req.Trigger, Home: r.Home, HomeURL: e.urlOf(r.Home, r.HomeURL),
		From: e.cfg.ClusterID, FromURL: e.cfg.URL, FromEndpoints: r.Endpoints, FromEpoch: r.Epoch, Epoch: r.Epoch.Next(id),
		State: ctrl.StateRunning, Started: time.Now().UTC()}
	switch r.Kind {
	case ctrl.KindLocal:
		m.Role, m.FromEndpoints, m.HomeIncarnation = ctrl.RoleHome, nil, e.Incarnation()
	case ctrl.KindForeign:
		m.Role, m.HomeIncarnation = ctrl.RoleMover, r.HomeIncarnation
	default:
		return ctrl.Migration{}, fmt.Errorf("migrate %s: %w: kind %s", name, ErrInvalid, r.Kind)
	}
	var answered ctrl.Migration
	tl := tailer{atCommit: req.Return == ctrl.ReturnCommitted, answered: &answered}
	err = e.run(context.WithoutCancel(ctx), m, r, req.Destination, tl)
	if errors.Is(err, errInTail) {
		return answered, nil
	}
	return e.finish(m, err)
}

// tailer says whether a migration's drain and cleanup run behind its
// answer (atCommit), and receives the answer then.
type tailer struct {
	atCommit bool
	answered *ctrl.Migration
}

// run performs the stages of m (its drain and cleanup in a tail when tl
// says so: errInTail).
func (e *Engine) run(ctx context.Context, m *ctrl.Migration, r ctrl.Record, dest string, tl tailer) error {
	e.warm(ctx, m)
	if err := e.step(ctx, m, ctrl.StageTrigger, func(context.Context) error { return nil }); err != nil {
		return err
	}
	if err := e.step(ctx, m, ctrl.StagePlacement, func(ctx context.Context) error { return e.place(ctx, m, r, dest) }); err != nil {
		return err
	}
	m.Times.PR = lastMs(m)
	if m.To == e.cfg.ClusterID {
		return fmt.Errorf("%w: placement chose this cluster", ErrInvalid)
	}
	incarnation := e.Incarnation()
	if m.Role == ctrl.RoleMover {
		incarnation = r.HomeIncarnation
	}
	err := e.step(ctx, m, ctrl.StageReplication, func(ctx context.Context) error {
		fs, homeSID, err := e.srv6Foreign(ctx, r)
		if err != nil {
			return err
		}
		rep, err := e.cfg.Peers.DeployForeign(ctx, m.ToURL, ctrl.ForeignRequest{Home: r.Home, HomeURL: m.HomeURL,
			HomeIncarnation: incarnation, Epoch: m.Epoch, Service: r.Service, Frontends: fs, HomeSID: homeSID})
		if err != nil {
			return err
		}
		// Wait is the whole call (until the new copy is ready); the
		// destination says how much of it was its deploy.
		m.Times.Deploy = rep.DeployMs
		if rep.Home {
			m.ToEndpoints = nil
		} else {
			if len(rep.Endpoints) == 0 {
				return fmt.Errorf("%s reported no endpoint", m.To)
			}
			m.ToEndpoints, m.ToSID = rep.Endpoints, rep.SRv6SID
		}
		return nil
	})
	m.Times.Wait = lastMs(m)
	m.Times.Replication = max(0, m.Times.Wait-m.Times.Deploy)
	if err != nil {
		return e.rollback(ctx, m, err)
	}
	if m.Role == ctrl.RoleMover {
		return e.moveOn(ctx, m, tl)
	}
	return e.rerouteHome(ctx, m, r, tl)
}

// warm opens, in the background while the placement and the new copy's
// deploy run, the connections the reroute will use: to every node's agent
// at the home (the home stages and commits), to the home's controller at
// a mover (its "moved on" notice). The stage and the commit then pay no
// TCP or TLS handshake: their time is the agents' map writes. A failure
// here is only logged: the call that needs the connection dials again.
func (e *Engine) warm(ctx context.Context, m *ctrl.Migration) {
	wctx, cancel := detached(ctx, e.cfg.CallTimeout)
	home, url, name := m.Role == ctrl.RoleHome, m.HomeURL, m.Service
	if home && e.cfg.Agents == nil {
		cancel()
		return
	}
	go func() {
		defer cancel()
		var err error
		if home {
			err = e.cfg.Agents.Warm(wctx)
		} else {
			_, err = e.cfg.Peers.Health(wctx, url)
		}
		if err != nil {
			e.log.Debug("warm connections for the reroute", "service", name, "err", err)
		}
	}()
}

// moveOn is the mover's end of a multi-hop move: the home stages,
// verifies and commits (stage 4 and 5 there) and answers; then the mover
// stops its own copy gracefully, which is the drain of the flows the
// home's load balancer still sends it (the home sees those flows but
// cannot stop a copy it does not run), and drops it.
func (e *Engine) moveOn(ctx context.Context, m *ctrl.Migration, tl tailer) error {
	// Listen for the home's "drained" before it can say it.
	drained, forget := e.expectDrained(m.Service, m.FromEpoch)
	inTail := false
	defer func() {
		if !inTail {
			forget()
		}
	}()
	err := e.step(ctx, m, ctrl.StageReroute, func(ctx context.Context) error {
		hm, err := e.cfg.Peers.MovedOn(ctx, m.HomeURL, ctrl.MovedOn{Service: m.Service, Epoch: m.Epoch, FromEpoch: m.FromEpoch,
			From: e.cfg.ClusterID, To: m.To, ToURL: m.ToURL, Endpoints: m.ToEndpoints, SRv6SID: m.ToSID})
		if err == nil {
			// The load balancer's steps ran at the home: report its
			// figures, as the home role does.
			m.Times.Reroute, m.Times.Verify, m.Times.Commit = hm.Times.Reroute, hm.Times.Verify, hm.Times.Commit
		}
		return err
	})
	if errors.Is(err, ErrCrash) {
		return err
	}
	if err != nil {
		// Did the home commit before the error reached us? If it
		// cannot say, removing the new copy could leave its LB
		// pointing at nothing: keep both copies until it answers.
		wctx, cancel := detached(ctx, e.cfg.CallTimeout)
		w, werr := e.askHome(wctx, m.Home, m.HomeURL, m.HomeIncarnation, m.Service)
		cancel()
		if werr != nil {
			return fmt.Errorf("%w: %w (and ask home: %w)", ErrUnsettled, err, werr)
		}
		if w.Cluster != m.To || w.Epoch != m.Epoch {
			return e.rollback(ctx, m, err)
		}
	}
	rest := func(ctx context.Context) error {
		defer forget()
		err := e.step(ctx, m, ctrl.StageCleanup, func(ctx context.Context) error {
			// A copy that has not stopped by the drain timeout is killed; so
			// is one whose home said its load balancer has no live flow left
			// to it (Drained). Without that word (a home that cannot reach
			// us, or answers late) the graceful stop runs its course.
			dctx, cancel := context.WithTimeout(ctx, e.cfg.DrainTimeout)
			defer cancel()
			kctx, kill := context.WithCancel(dctx)
			defer kill()
			stop := make(chan struct{})
			go func() {
				select {
				case <-drained:
					kill()
				case <-stop:
				}
			}()
			t0 := time.Now()
			fr, _ := e.st.Record(m.Service)
			err := e.srv6Depart(kctx, fr, func(ctx context.Context) error { return e.cfg.Backend.Delete(ctx, m.Service) })
			close(stop)
			if err != nil && kctx.Err() != nil && dctx.Err() == nil {
				// Drained while the backend was still at it: a backend that
				// talks to an API fails its calls on a cancelled context.
				// Nothing is left to drain: delete with what remains.
				err = e.cfg.Backend.Delete(dctx, m.Service)
			}
			m.Times.Drain = msSince(t0)
			if err != nil {
				return err
			}
			return e.st.DeleteRecord(m.Service)
		})
		m.Times.Cleanup = lastMs(m)
		return err
	}
	err = e.later(ctx, m, tl.atCommit, tl.answered, rest)
	inTail = errors.Is(err, errInTail)
	return err
}

// rerouteHome is stages 4 and 5 at the home cluster: verify the new
// copy, reroute (stage the new target and commit it on every node), record,
// drain the old target, clean up.
func (e *Engine) rerouteHome(ctx context.Context, m *ctrl.Migration, r ctrl.Record, tl tailer) error {
	fs := r.Frontends
	// The new copy is checked before any node is touched (nothing is
	// staged while it is): the stage and the commit then follow each
	// other at once, in one call per node when the cluster has one node.
	err := e.step(ctx, m, ctrl.StageVerify, func(ctx context.Context) error {
		eps := m.ToEndpoints
		if len(eps) == 0 { // the new copy runs here
			eps = e.localEndpoints(ctx, r)
		}
		return e.cfg.Verify(ctx, r.Service, eps)
	})
	m.Times.Verify = lastMs(m)
	if err != nil {
		return e.rollback(ctx, m, err)
	}
	target, err := e.rerouteTarget(m, r)
	if err != nil {
		return e.rollback(ctx, m, fmt.Errorf("%s: %w", ctrl.StageReroute, err))
	}
	// The journal says "reroute" (nothing staged yet: a crash there is
	// rolled back), then "commit" before any agent is called: a node may
	// commit from the first byte of the call on, and a crash from then on
	// is rolled forward (recoverLocked stages and commits every node
	// again and writes the record), until the agents answer that nothing
	// was committed: the journal then says "reroute" again before the
	// new copy is removed. The record is written after the agents'
	// commit either way.
	if err := e.journal(m, ctrl.StageReroute); err != nil {
		return err
	}
	if err := e.journal(m, ctrl.StageCommit); err != nil {
		return err
	}
	times, d, err := e.reroute(ctx, m, fs, target)
	// Reroute: from the start of staging to the last node's commit (the
	// calls' wall time; the journal writes come before). Commit: the
	// commit itself, its share of that (the commit calls on every node,
	// or the agent's own commit when one call per node staged and
	// committed). m.Stages splits the wall time in those two.
	m.Times.Reroute, m.Times.Commit = ms(d), ms(min(times.Commit, d))
	for _, st := range []ctrl.StageTime{{Stage: ctrl.StageReroute, Ms: m.Times.Reroute - m.Times.Commit}, {Stage: ctrl.StageCommit, Ms: m.Times.Commit}} {
		e.stageH.WithLabelValues(st.Stage.String()).Observe(st.Ms / 1000)
		m.Stages = append(m.Stages, st)
	}
	if err != nil && errors.Is(err, agentapi.ErrNotCommitted) {
		// A node failed to stage, or refused: nothing was committed and
		// nothing stays staged anywhere. The journal goes back to
		// "reroute" before the new copy is removed: a crash after the
		// removal must be rolled back by recovery, not rolled forward
		// onto a removed copy. Should that write fail, the new copy is
		// kept (the journal still says "commit": recovery rolls forward
		// onto it).
		cause := fmt.Errorf("%s: %w", ctrl.StageReroute, err)
		if jerr := e.journal(m, ctrl.StageReroute); jerr != nil {
			return errors.Join(cause, jerr)
		}
		err = e.rollback(ctx, m, cause)
		// The new copy is gone and the journal says "reroute": a crash
		// before finish is rolled back.
		if cerr := e.crashPoint(*m); cerr != nil {
			return cerr
		}
		return err
	}
	if err != nil {
		err = fmt.Errorf("%s: %w", ctrl.StageCommit, err)
	}
	if err == nil {
		err = e.crashPoint(*m)
	}
	if err == nil {
		err = e.recordMoved(ctx, m, r)
	}
	if err != nil {
		if errors.Is(err, ErrCrash) {
			return err
		}
		return e.rollForward(ctx, m, r, err)
	}
	if m.Role == ctrl.RoleReroute {
		// The mover stops and drops its own copy once we answer: its
		// graceful stop is the drain. Only we see the flows our load
		// balancer still sends that copy: once none is left, we tell
		// the mover, which then stops it at once. (By SRv6 the old
		// location keeps its flows itself: srv6Moved.)
		if !e.srv6Moved(ctx, m, r, fs) {
			e.drainForMover(ctx, m, fs)
		}
		return nil
	}
	// The old copy is told to stop now (SIGTERM; a pod's termination):
	// a keep-alive client gets "Connection: close" and reconnects, to the
	// new copy. The drain watches the old target's flows meanwhile; once
	// none is left (or at the drain timeout) the copy is removed,
	// whatever it still does. Behind the answer when it is given at the
	// commit (tail.go).
	return e.later(ctx, m, tl.atCommit, tl.answered, func(ctx context.Context) error { return e.drainAndCleanup(ctx, m, fs) })
}

// drainAndCleanup is stage 5's end at the home: the old copy stops and
// drains, then goes.
func (e *Engine) drainAndCleanup(ctx context.Context, m *ctrl.Migration, fs []lb.Frontend) error {
	var removed *removal
	err := e.step(ctx, m, ctrl.StageDrain, func(sctx context.Context) error {
		removed = e.removeOld(ctx, m) // journalled as draining first
		old := redirectTo(m.FromEndpoints)
		if len(m.FromEndpoints) == 0 || m.From == e.cfg.ClusterID {
			old = redirectTo(nil)
		}
		m.DrainedFlows = e.drain(sctx, fs, old)
		return nil
	})
	m.Times.Drain = lastMs(m)
	if err != nil {
		if removed != nil {
			removed.cancel()
		}
		return err
	}
	err = e.step(ctx, m, ctrl.StageCleanup, func(ctx context.Context) error {
		removed.drained()
		return removed.wait(ctx)
	})
	m.Times.Cleanup = m.Times.Drain + lastMs(m)
	return err
}

// rollForward is what a commit that failed does. Some nodes may point at
// the new copy already, and the old target cannot be restored everywhere
// (staging needs every node), so nothing is undone and no copy removed:
// the record says where the service is now, and the migration stays in
// the journal at its commit stage, where the next reconcile commits every
// node again and finishes it. No node's load balancer is left pointing at
// a deleted copy.
func (e *Engine) rollForward(ctx context.Context, m *ctrl.Migration, r ctrl.Record, cause error) error {
	wctx, cancel := detached(ctx, e.cfg.CallTimeout)
	defer cancel()
	if err := e.recordMoved(wctx, m, r); err != nil {
		cause = errors.Join(cause, err)
	}
	e.log.Warn("commit failed on some node: rolling forward", "id", m.ID, "service", m.Service, "err", cause)
	return fmt.Errorf("%w: commit failed on some node, rolling forward: %w", ErrUnsettled, cause)
}

// removal is the old copy's removal, started at the commit.
type removal struct {
	done    chan struct{}
	err     error
	drained func() // no live flow left: a local copy still running is killed
	cancel  func() // give up (the migration stops here)
}

func (r *removal) wait(ctx context.Context) error {
	select {
	case <-r.done:
		return r.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// removeOld starts removing m's old copy: a local one with the backend's
// graceful stop (it ends at once when drained is called: no flow is left
// for it to finish), one at another cluster through its controller (which
// stops it the same way).
func (e *Engine) removeOld(ctx context.Context, m *ctrl.Migration) *removal {
	r := &removal{done: make(chan struct{})}
	rctx, cancel := detached(ctx, e.cfg.DrainTimeout+e.cfg.CallTimeout)
	kctx, kill := context.WithCancel(rctx)
	r.cancel = cancel
	if m.From == e.cfg.ClusterID {
		r.drained = kill
	} else {
		r.drained = func() {}
	}
	go func() {
		defer close(r.done)
		defer cancel()
		defer kill()
		if m.From == e.cfg.ClusterID {
			r.err = e.cfg.Backend.Delete(kctx, m.Service)
			if r.err != nil && kctx.Err() != nil && rctx.Err() == nil {
				// Drained while the backend was still at it: the local
				// backend takes the end of kctx as "kill now", but one
				// that talks to an API (Kubernetes) fails its calls on a
				// cancelled context. Nothing is left to drain: delete
				// with what remains of the budget.
				r.err = e.cfg.Backend.Delete(rctx, m.Service)
			}
			return
		}
		r.err = e.cfg.Peers.RemoveForeign(rctx, m.FromURL, m.Service, e.cfg.ClusterID, m.FromEpoch)
	}()
	return r
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func msSince(t time.Time) float64 { return ms(time.Since(t)) }

// lastMs is the duration of m's last stage.
func lastMs(m *ctrl.Migration) float64 {
	if len(m.Stages) == 0 {
		return 0
	}
	return m.Stages[len(m.Stages)-1].Ms
}

// localEndpoints are the endpoints of the copy of r running here, if any.
func (e *Engine) localEndpoints(ctx context.Context, r ctrl.Record) []netip.AddrPort {
	if inst, err := e.cfg.Backend.Get(ctx, r.Service.Name); err == nil {
		return inst.Endpoints
	}
	return nil
}

// recordMoved writes the home record after a commit.
func (e *Engine) recordMoved(ctx context.Context, m *ctrl.Migration, r ctrl.Record) error {
	if m.To == e.cfg.ClusterID {
		r.Kind, r.Cluster, r.ClusterURL, r.Endpoints, r.SRv6SID = ctrl.KindLocal, e.cfg.ClusterID, e.cfg.URL, e.localEndpoints(ctx, r), netip.Addr{}
	} else {
		r.Kind, r.Cluster, r.ClusterURL, r.Endpoints, r.SRv6SID = ctrl.KindAbroad, m.To, m.ToURL, m.ToEndpoints, m.ToSID
	}
	r.Epoch = m.Epoch
	return e.st.PutRecord(r)
}

// rollback undoes what a migration did before its commit: the copy at the
// destination goes (or is remembered as an orphan), nothing staged stays.
func (e *Engine) rollback(ctx context.Context, m *ctrl.Migration, cause error) error {
	if errors.Is(cause, ErrCrash) {
		return cause
	}
	if m.ToURL == "" || m.To == "" || !m.Stage.After(ctrl.StageReplication) {
		return cause
	}
	rctx, cancel := detached(ctx, e.cfg.CallTimeout)
	defer cancel()
	if err := e.cfg.Peers.RemoveForeign(rctx, m.ToURL, m.Service, m.Home, m.Epoch); err != nil {
		e.log.Warn("roll back: remove new copy, will retry", "service", m.Service, "cluster", m.To, "err", err)
		o := ctrl.Orphan{Service: m.Service, Home: m.Home, Cluster: m.To, ClusterURL: m.ToURL, Epoch: m.Epoch}
		if perr := e.st.PutOrphan(o); perr != nil {
			return errors.Join(cause, fmt.Errorf("remember the new copy at %s: %w", m.To, perr))
		}
	}
	return cause
}
