package migrate

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/roamnet/roam/ctrl"
	"github.com/roamnet/roam/meta"
)

// beforeCommit reports whether stage comes before the commit (roll back).
func beforeCommit(stage string) bool {
	switch stage {
	case ctrl.StageCommit, ctrl.StageDrain, ctrl.StageCleanup:
		return false
	}
	return true
}

// Recover finishes or rolls back every migration the journal holds as
// running, then makes sure every copy recorded here runs. Call it before
// serving the API. A migration that cannot be settled yet (its home is
// unreachable) stays in the journal; Run retries it.
func (e *Engine) Recover(ctx context.Context) error {
	inflight, err := e.st.InFlight()
	if err != nil {
		return fmt.Errorf("recover: %w", err)
	}
	var errs []error
	for _, m := range inflight {
		if err := e.recoverOne(ctx, m); err != nil {
			errs = append(errs, fmt.Errorf("recover migration %s of %s: %w", m.ID, m.Service, err))
		}
	}
	recs, err := e.st.Records()
	if err != nil {
		return fmt.Errorf("recover: %w", err)
	}
	for _, r := range recs {
		if r.Kind == ctrl.KindAbroad {
			continue
		}
		home := r.Home
		inst, err := e.cfg.Backend.Deploy(ctx, r.Service.Spec(home, r.MigrationID))
		if err != nil {
			errs = append(errs, fmt.Errorf("recover: redeploy %s: %w", r.Service.Name, err))
			continue
		}
		r.Endpoints = inst.Endpoints
		_ = e.st.PutRecord(r)
	}
	return errors.Join(errs...)
}

func (e *Engine) recoverOne(ctx context.Context, m ctrl.Migration) error {
	defer e.lock(m.Service)()
	e.log.Info("recover migration", "id", m.ID, "service", m.Service, "role", m.Role, "stage", m.Stage)
	r, rerr := e.st.Record(m.Service)
	fail := func(why string) error {
		_, _ = e.finish(&m, errors.New("rolled back after restart at stage "+m.Stage+why))
		return nil
	}
	switch m.Role {
	case ctrl.RoleHome:
		if beforeCommit(m.Stage) {
			if rerr == nil {
				e.abort(ctx, r.Frontends)
			}
			if m.Stage != ctrl.StageTrigger && m.Stage != ctrl.StagePlacement && m.ToURL != "" {
				if err := e.cfg.Peers.RemoveForeign(ctx, m.ToURL, m.Service, m.Home, m.ID); err != nil {
					_ = e.st.PutOrphan(ctrl.Orphan{Service: m.Service, Home: m.Home, Cluster: m.To, ClusterURL: m.ToURL, MigrationID: m.ID})
				}
			}
			return fail("")
		}
		if rerr != nil {
			return fail(": record gone")
		}
		if err := e.program(ctx, r.Frontends, redirectTo(m.ToEndpoints)); err != nil {
			return fmt.Errorf("re-commit: %w", err)
		}
		if r.Kind == ctrl.KindLocal {
			if err := e.recordMoved(&m, r); err != nil {
				return err
			}
		}
		if err := e.cfg.Backend.Delete(ctx, m.Service); err != nil {
			return err
		}
		_, err := e.finish(&m, nil)
		return err
	case ctrl.RoleReroute:
		if beforeCommit(m.Stage) {
			if rerr == nil {
				e.abort(ctx, r.Frontends)
			}
			return fail("")
		}
		if rerr != nil {
			return fail(": record gone")
		}
		if err := e.program(ctx, r.Frontends, redirectTo(m.ToEndpoints)); err != nil {
			return fmt.Errorf("re-commit: %w", err)
		}
		if r.MigrationID != m.ID {
			if err := e.recordMoved(&m, r); err != nil {
				return err
			}
		}
		_, err := e.finish(&m, nil)
		return err
	case ctrl.RoleMover:
		switch m.Stage {
		case ctrl.StageTrigger, ctrl.StagePlacement:
			return fail("")
		case ctrl.StageReplication:
			if err := e.cfg.Peers.RemoveForeign(ctx, m.ToURL, m.Service, m.Home, m.ID); err != nil {
				_ = e.st.PutOrphan(ctrl.Orphan{Service: m.Service, Home: m.Home, Cluster: m.To, ClusterURL: m.ToURL, MigrationID: m.ID})
			}
			return fail("")
		case ctrl.StageReroute:
			w, err := e.cfg.Peers.Where(ctx, m.HomeURL, m.Service)
			if err != nil {
				return fmt.Errorf("ask home %s where the service is (retry later): %w", m.Home, err)
			}
			if w.Cluster != m.To {
				if err := e.cfg.Peers.RemoveForeign(ctx, m.ToURL, m.Service, m.Home, m.ID); err != nil {
					_ = e.st.PutOrphan(ctrl.Orphan{Service: m.Service, Home: m.Home, Cluster: m.To, ClusterURL: m.ToURL, MigrationID: m.ID})
				}
				return fail(": the home did not reroute")
			}
		}
		if err := e.cfg.Backend.Delete(ctx, m.Service); err != nil {
			return err
		}
		if err := e.st.DeleteRecord(m.Service); err != nil {
			return err
		}
		_, err := e.finish(&m, nil)
		return err
	case ctrl.RoleFailsafe:
		if rerr != nil {
			return fail(": record gone")
		}
		return e.takeBackSteps(ctx, &m, r)
	}
	return fail(": unknown role " + m.Role)
}

// Run watches abroad clusters (fail-safe), removes orphans, reconciles
// foreign copies with their homes, retries unsettled migrations and applies
// the bandwidth policy, until ctx ends.
func (e *Engine) Run(ctx context.Context) {
	t := time.NewTicker(e.cfg.ProbeInterval)
	defer t.Stop()
	slow := time.NewTicker(e.cfg.PolicyInterval)
	defer slow.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			e.failsafeTick(ctx)
			e.orphansTick(ctx)
		case <-slow.C:
			e.retryInFlight(ctx)
			e.reconcileForeign(ctx)
			e.policyTick(ctx)
		}
	}
}

func (e *Engine) retryInFlight(ctx context.Context) {
	inflight, err := e.st.InFlight()
	if err != nil {
		return
	}
	for _, m := range inflight {
		// A live migration holds its service's lock for its whole run:
		// a running entry whose lock is free was left unsettled.
		v, _ := e.locks.LoadOrStore(m.Service, &sync.Mutex{})
		mu := v.(*sync.Mutex)
		if !mu.TryLock() {
			continue
		}
		mu.Unlock()
		if err := e.recoverOne(ctx, m); err != nil {
			e.log.Warn("settle migration", "id", m.ID, "err", err)
		}
	}
}

// probe records a health probe of a cluster and says whether it counts as
// lost (unreachable for FailsafeAfter, or unreachable and down in the MO's
// view).
func (e *Engine) probe(ctx context.Context, cluster, url string) bool {
	pctx, cancel := context.WithTimeout(ctx, min(e.cfg.ProbeInterval*2, 2*time.Second))
	err := e.cfg.Peers.Health(pctx, url)
	cancel()
	now := time.Now()
	e.probeMu.Lock()
	defer e.probeMu.Unlock()
	last, seen := e.lastOK[cluster]
	if err == nil || !seen {
		e.lastOK[cluster] = now
		return false
	}
	if now.Sub(last) >= e.cfg.FailsafeAfter {
		return true
	}
	if e.cfg.Hellos != nil && now.Sub(last) >= e.cfg.ProbeInterval*2 {
		if hs := e.cfg.Hellos(); len(hs) > 0 {
			for _, h := range hs {
				if h.ClusterID == cluster {
					return false
				}
			}
			return true // the MO no longer lists it either
		}
	}
	return false
}

func (e *Engine) failsafeTick(ctx context.Context) {
	recs, err := e.st.Records()
	if err != nil {
		return
	}
	lost := map[string]bool{}
	probed := map[string]bool{}
	for _, r := range recs {
		if r.Kind != ctrl.KindAbroad {
			continue
		}
		if !probed[r.Cluster] {
			probed[r.Cluster] = true
			lost[r.Cluster] = e.probe(ctx, r.Cluster, r.ClusterURL)
		}
		if lost[r.Cluster] {
			if _, err := e.TakeBack(ctx, r.Service.Name, r.Cluster); err != nil {
				e.log.Error("fail-safe: take service home", "service", r.Service.Name, "cluster", r.Cluster, "err", err)
			}
		}
	}
}

// TakeBack redeploys a service at home from a lost cluster and commits the
// load balancer back to local (the fail-safe). The copy at the lost cluster
// becomes an orphan, removed when that cluster returns.
func (e *Engine) TakeBack(ctx context.Context, name, from string) (ctrl.Migration, error) {
	defer e.lock(name)()
	r, err := e.st.Record(name)
	if err != nil || r.Kind != ctrl.KindAbroad || r.Cluster != from {
		return ctrl.Migration{}, nil // settled meanwhile
	}
	m := &ctrl.Migration{ID: newID(), Service: name, Role: ctrl.RoleFailsafe, Reason: string(meta.ReasonFailover),
		Home: e.cfg.ClusterID, HomeURL: e.cfg.URL, From: r.Cluster, FromURL: r.ClusterURL, FromEndpoints: r.Endpoints,
		To: e.cfg.ClusterID, ToURL: e.cfg.URL, State: ctrl.StateRunning, Started: time.Now().UTC()}
	e.log.Warn("fail-safe: cluster lost, taking service home", "service", name, "cluster", from)
	if err := e.timed(m, ctrl.StageTrigger, func() error { return nil }); err != nil {
		return e.finish(m, err)
	}
	return *m, e.takeBackSteps(ctx, m, r)
}

func (e *Engine) takeBackSteps(ctx context.Context, m *ctrl.Migration, r ctrl.Record) error {
	// Remember the orphan first: whatever happens next, the copy at the
	// lost cluster must go when it returns.
	_ = e.st.PutOrphan(ctrl.Orphan{Service: m.Service, Home: e.cfg.ClusterID, Cluster: m.From, ClusterURL: m.FromURL})
	err := e.timed(m, ctrl.StageReplication, func() error {
		_, err := e.cfg.Backend.Deploy(ctx, r.Service.Spec(e.cfg.ClusterID, m.ID))
		return err
	})
	if err == nil {
		err = e.timed(m, ctrl.StageCommit, func() error {
			if err := e.program(ctx, r.Frontends, redirectTo(nil)); err != nil {
				return err
			}
			return e.recordMoved(m, r)
		})
	}
	_, err = e.finish(m, err)
	return err
}

func (e *Engine) orphansTick(ctx context.Context) {
	os, err := e.st.Orphans()
	if err != nil {
		return
	}
	for _, o := range os {
		home := o.Home
		if home == "" {
			home = e.cfg.ClusterID
		}
		if r, err := e.st.Record(o.Service); err == nil && r.Kind == ctrl.KindAbroad && r.Cluster == o.Cluster {
			_ = e.st.DeleteOrphan(o) // it lives there again: not an orphan
			continue
		}
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := e.cfg.Peers.RemoveForeign(pctx, o.ClusterURL, o.Service, home, o.MigrationID)
		cancel()
		if err == nil {
			e.log.Info("removed orphan copy", "service", o.Service, "cluster", o.Cluster)
			_ = e.st.DeleteOrphan(o)
		}
	}
}

// reconcileForeign removes foreign copies whose home says the service is no
// longer here (the home took it back while this cluster was cut off).
func (e *Engine) reconcileForeign(ctx context.Context) {
	recs, err := e.st.Records()
	if err != nil {
		return
	}
	for _, r := range recs {
		if r.Kind != ctrl.KindForeign || time.Since(r.Updated) < e.cfg.DrainTimeout+30*time.Second {
			continue
		}
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		w, err := e.cfg.Peers.Where(pctx, r.HomeURL, r.Service.Name)
		cancel()
		if err != nil || (w.Known && w.Cluster == e.cfg.ClusterID) {
			continue
		}
		e.log.Warn("home no longer runs its service here: removing the copy", "service", r.Service.Name, "home", r.Home, "where", w.Cluster)
		if err := e.RemoveForeign(ctx, r.Service.Name, r.Home, ""); err != nil {
			e.log.Warn("remove stale foreign copy", "service", r.Service.Name, "err", err)
		}
	}
}

// policyTick moves abroad services whose link from here fell below their
// need (from the hellos' measured links).
func (e *Engine) policyTick(ctx context.Context) {
	if e.cfg.Hellos == nil {
		return
	}
	hs := e.cfg.Hellos()
	recs, err := e.st.Records()
	if err != nil {
		return
	}
	for _, r := range recs {
		if r.Kind != ctrl.KindAbroad || r.Service.NeedMbps <= 0 {
			continue
		}
		bw, ok := linkBandwidth(hs, e.cfg.ClusterID, r.Cluster)
		if !ok || bw >= r.Service.NeedMbps {
			continue
		}
		if r.LastMigration != nil && time.Since(r.LastMigration.Started) < e.cfg.PolicyCooldown {
			continue
		}
		e.log.Info("policy: link below the service's need, moving it", "service", r.Service.Name, "cluster", r.Cluster, "mbps", bw, "need", r.Service.NeedMbps)
		if _, err := e.Migrate(ctx, r.Service.Name, ctrl.MigrateRequest{Reason: string(meta.ReasonNetworkChange)}); err != nil {
			e.log.Warn("policy migration", "service", r.Service.Name, "err", err)
		}
	}
}

func linkBandwidth(hs []meta.Hello, a, b string) (float64, bool) {
	for _, h := range hs {
		var peer string
		switch h.ClusterID {
		case a:
			peer = b
		case b:
			peer = a
		default:
			continue
		}
		if l, ok := h.LinkTo(peer); ok && l.Up {
			return l.BandwidthMbps, true
		}
	}
	return 0, false
}
