package migrate

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"time"

	"github.com/roamnet/roam/ctrl"
	"github.com/roamnet/roam/ctrl/backend"
	"github.com/roamnet/roam/ctrl/store"
	"github.com/roamnet/roam/dataplane/lb"
)

// Level-triggered reconciliation, the way Kubernetes controllers work: the
// records are the desired state; the backend's copies and every node's
// agent are observed and corrected. The controller runs Reconcile for one
// service at a time from a work queue (ctrl/controller), for every service
// at each resync, so a missed event heals at the next one.

// ErrRecovering is returned for a service this controller has not
// reconciled since it started: ask again shortly (the API answers 503 with
// Retry-After).
var ErrRecovering = errors.New("service still being recovered after a restart")

// Keys lists every service this controller must reconcile: those it holds
// a record of, those with a migration in flight, those with an orphan copy
// to remove.
func (e *Engine) Keys() ([]string, error) {
	seen := map[string]bool{}
	recs, err := e.st.Records()
	if err != nil {
		return nil, fmt.Errorf("list keys: %w", err)
	}
	for _, r := range recs {
		seen[r.Service.Name] = true
	}
	inflight, err := e.st.InFlight()
	if err != nil {
		return nil, fmt.Errorf("list keys: %w", err)
	}
	for _, m := range inflight {
		seen[m.Service] = true
	}
	os, err := e.st.Orphans()
	if err != nil {
		return nil, fmt.Errorf("list keys: %w", err)
	}
	for _, o := range os {
		seen[o.Service] = true
	}
	keys := make([]string, 0, len(seen))
	for k := range seen {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys, nil
}

// MarkRecovering marks every key as not yet reconciled since this
// controller started: calls about them get ErrRecovering until their first
// Reconcile succeeds. The controller calls it before it serves.
func (e *Engine) MarkRecovering() ([]string, error) {
	keys, err := e.Keys()
	if err != nil {
		return nil, err
	}
	for _, k := range keys {
		e.recovering.Store(k, true)
	}
	return keys, nil
}

// recovered fails with ErrRecovering while name waits for its first
// reconcile.
func (e *Engine) recovered(name string) error {
	if _, ok := e.recovering.Load(name); ok {
		return fmt.Errorf("%s: %w", name, ErrRecovering)
	}
	return nil
}

// Recovering counts the services still waiting for their first reconcile.
func (e *Engine) Recovering() int {
	n := 0
	e.recovering.Range(func(any, any) bool { n++; return true })
	return n
}

// SetNotify sets the function told about every service the engine changed
// or wants looked at again (the controller's work queue). Set it before
// serving.
func (e *Engine) SetNotify(f func(name string)) { e.notify = f }

func (e *Engine) changed(name string) {
	if e.notify != nil {
		e.notify(name)
	}
}

// Reconcile brings one service to what its records say: migrations the
// journal holds as running are settled (each re-read under the service's
// lock), the copy a local or foreign record names runs, every node's
// frontends point where the record says, a foreign copy its home no longer
// wants goes, a service at a lost cluster is taken home, orphan copies are
// removed. It returns how soon the service wants another look (0: at the
// next resync) and an error when something is still to be done (the
// controller then retries with backoff).
func (e *Engine) Reconcile(ctx context.Context, name string) (time.Duration, error) {
	again, err := e.reconcileLocked(ctx, name)
	// Calls that need the lock of another cluster's service are made
	// without ours.
	if oerr := e.removeOrphans(ctx, name); oerr != nil {
		err = errors.Join(err, oerr)
	}
	if ferr := e.checkForeign(ctx, name); ferr != nil {
		err = errors.Join(err, ferr)
	}
	if err != nil {
		return again, err
	}
	e.recovering.Delete(name)
	return again, nil
}

func (e *Engine) reconcileLocked(ctx context.Context, name string) (time.Duration, error) {
	defer e.lock(name)()
	// A live migration holds the lock for its whole run: with the lock,
	// every running entry of this service was left unsettled.
	unsettled, err := e.settle(ctx, name)
	if err != nil {
		return 0, err
	}
	r, err := e.st.Record(name)
	if errors.Is(err, store.ErrNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("reconcile %s: %w", name, err)
	}
	var errs []error
	switch r.Kind {
	case ctrl.KindLocal, ctrl.KindForeign:
		if err := e.ensureCopy(ctx, &r); err != nil {
			errs = append(errs, err)
		}
	case ctrl.KindAbroad:
		if e.lost(name, r.Epoch) && !unsettled {
			return e.takeBack(ctx, r)
		}
	}
	if !unsettled && r.Kind != ctrl.KindForeign {
		if err := e.ensureFrontends(ctx, r); err != nil {
			errs = append(errs, err)
		}
	}
	if unsettled {
		errs = append(errs, fmt.Errorf("reconcile %s: a migration is still unsettled", name))
	}
	return 0, errors.Join(errs...)
}

// settle settles every migration of name the journal holds as running. It
// reports whether one is still unsettled (its outcome needs a cluster that
// does not answer).
func (e *Engine) settle(ctx context.Context, name string) (bool, error) {
	inflight, err := e.st.InFlight()
	if err != nil {
		return false, fmt.Errorf("settle %s: %w", name, err)
	}
	unsettled := false
	var errs []error
	for _, m := range inflight {
		if m.Service != name {
			continue
		}
		if err := e.recoverLocked(ctx, m.ID); err != nil {
			unsettled = true
			errs = append(errs, fmt.Errorf("settle migration %s of %s: %w", m.ID, name, err))
		}
	}
	return unsettled, errors.Join(errs...)
}

// ensureCopy makes sure the copy r names runs here (a controller that
// restarted without its copies, a copy someone deleted), with r's epoch.
func (e *Engine) ensureCopy(ctx context.Context, r *ctrl.Record) error {
	name := r.Service.Name
	inst, err := e.cfg.Backend.Get(ctx, name)
	if err == nil && inst.Ready && ctrl.EpochOf(inst) == r.Epoch {
		return nil
	}
	if err != nil && !errors.Is(err, backend.ErrNotFound) {
		return fmt.Errorf("reconcile %s: look at the copy: %w", name, err)
	}
	if err == nil && ctrl.EpochOf(inst) == r.Epoch {
		return fmt.Errorf("reconcile %s: the copy is not ready", name)
	}
	if err != nil && r.Kind == ctrl.KindForeign {
		// The copy is gone (this controller restarted without it):
		// start it again only if its home says it still runs here, at
		// this epoch. Two copies must not serve after a partition.
		wctx, cancel := context.WithTimeout(ctx, e.cfg.CallTimeout)
		w, werr := e.askHome(wctx, r.Home, e.urlOf(r.Home, r.HomeURL), r.HomeIncarnation, name)
		cancel()
		if werr != nil {
			return fmt.Errorf("reconcile %s: the foreign copy is gone and its home cannot say whether it wants it (retry later): %w", name, werr)
		}
		if !w.Known || w.Cluster != e.cfg.ClusterID || w.Epoch != r.Epoch {
			e.log.Warn("reconcile: the foreign copy is gone and its home runs the service elsewhere: dropping the record",
				"service", name, "home", r.Home, "where", w.Cluster, "epoch", w.Epoch)
			return e.st.DeleteRecord(name)
		}
	}
	if err == nil {
		// A copy of another epoch (an older copy adopted after a
		// restart, a move back here): relabel it with the record's.
		e.log.Warn("reconcile: the copy carries another epoch, relabelling", "service", name, "copy", ctrl.EpochOf(inst), "record", r.Epoch)
	} else {
		e.log.Warn("reconcile: the recorded copy does not run, starting it", "service", name, "kind", r.Kind, "epoch", r.Epoch)
	}
	dctx, cancel := context.WithTimeout(ctx, e.cfg.DeployTimeout)
	defer cancel()
	inst, err = e.cfg.Backend.Deploy(dctx, e.spec(*r, r.Home, r.Epoch))
	if err != nil {
		return fmt.Errorf("reconcile %s: start the copy: %w", name, err)
	}
	if !slices.Equal(inst.Endpoints, r.Endpoints) {
		r.Endpoints = inst.Endpoints
		if err := e.st.PutRecord(*r); err != nil {
			return fmt.Errorf("reconcile %s: %w", name, err)
		}
	}
	return nil
}

// spec is the backend spec of a copy of r's service with its fence.
func (e *Engine) spec(r ctrl.Record, home string, epoch ctrl.Epoch) backend.Spec {
	s := r.Service.Spec(home, epoch.MigrationID)
	s.Epoch = epoch.N
	return s
}

// target is where r's frontend i must point.
func target(r ctrl.Record) func(int) lb.Target {
	if r.Kind == ctrl.KindAbroad {
		return redirectTo(r.Endpoints)
	}
	return redirectTo(nil)
}

// ensureFrontends compares every node's entry for r's frontends with the
// record and re-programs those that differ (a node that rebooted and lost
// its pins, a slot left staged by a crash).
func (e *Engine) ensureFrontends(ctx context.Context, r ctrl.Record) error {
	if e.cfg.Agents == nil || len(r.Frontends) == 0 {
		return nil
	}
	lctx, cancel := context.WithTimeout(ctx, e.cfg.CallTimeout)
	nodes, err := e.cfg.Agents.List(lctx)
	cancel()
	if err != nil {
		return fmt.Errorf("reconcile %s: list every node's frontends: %w", r.Service.Name, err)
	}
	want, ok := e.recordTarget(r)
	if !ok {
		return nil
	}
	var fs []lb.Frontend
	var ts []lb.Target
	for i, f := range r.Frontends {
		for _, svcs := range nodes {
			j := slices.IndexFunc(svcs, func(s lb.Service) bool { return s.Frontend == f })
			if j < 0 || !agrees(svcs[j].Active, want(i)) || svcs[j].Staged.Kind != lb.TargetNone {
				fs, ts = append(fs, f), append(ts, want(i))
				break
			}
		}
	}
	if len(fs) == 0 {
		return nil
	}
	e.log.Warn("reconcile: nodes disagree with the record, re-programming", "service", r.Service.Name, "frontends", fs)
	pctx, cancel := context.WithTimeout(ctx, e.cfg.CallTimeout)
	defer cancel()
	if err := e.program(pctx, fs, func(i int) lb.Target { return ts[i] }); err != nil {
		return fmt.Errorf("reconcile %s: re-program: %w", r.Service.Name, err)
	}
	return nil
}

// Collect removes what no record owns: backend copies and frontends on
// this cluster's address, each once it has been unowned for CollectAfter
// (a copy started for a move that has not committed yet is owned by
// nothing here for a while). Ownership is checked again under the
// service's lock before anything is removed.
func (e *Engine) Collect(ctx context.Context) error {
	now := time.Now()
	var errs []error
	lctx, cancel := context.WithTimeout(ctx, e.cfg.CallTimeout)
	insts, err := e.cfg.Backend.List(lctx)
	cancel()
	if err != nil {
		errs = append(errs, fmt.Errorf("collect: list copies: %w", err))
	}
	seen := map[string]bool{}
	for _, inst := range insts {
		key := "copy/" + inst.Name
		seen[key] = true
		owned, err := e.ownsCopy(inst.Name)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if owned || !e.unownedFor(key, now) {
			continue
		}
		if err := e.collectCopy(ctx, inst); err != nil {
			errs = append(errs, err)
		}
	}
	if e.cfg.Agents != nil {
		lctx, cancel := context.WithTimeout(ctx, e.cfg.CallTimeout)
		nodes, err := e.cfg.Agents.List(lctx)
		cancel()
		if err != nil {
			errs = append(errs, fmt.Errorf("collect: list frontends: %w", err))
		}
		done := map[lb.Frontend]bool{}
		for _, svcs := range nodes {
			for _, s := range svcs {
				f := s.Frontend
				if done[f] || f.Addr != e.cfg.FrontendAddr {
					continue
				}
				done[f] = true
				key := "frontend/" + f.String()
				seen[key] = true
				owned, err := e.ownsFrontend(f)
				if err != nil {
					errs = append(errs, err)
					continue
				}
				if owned || !e.unownedFor(key, now) {
					continue
				}
				e.log.Warn("collect: removing a frontend no record owns", "frontend", f)
				rctx, cancel := context.WithTimeout(ctx, e.cfg.CallTimeout)
				if err := e.cfg.Agents.Remove(rctx, f); err != nil {
					errs = append(errs, fmt.Errorf("collect: remove frontend %s: %w", f, err))
				}
				cancel()
			}
		}
	}
	e.collectMu.Lock()
	for k := range e.unowned {
		if !seen[k] {
			delete(e.unowned, k)
		}
	}
	e.collectMu.Unlock()
	return errors.Join(errs...)
}

// unownedFor records key as unowned (from now, if it was not) and reports
// whether it has been for CollectAfter.
func (e *Engine) unownedFor(key string, now time.Time) bool {
	e.collectMu.Lock()
	defer e.collectMu.Unlock()
	since, ok := e.unowned[key]
	if !ok {
		e.unowned[key] = now
		return false
	}
	return now.Sub(since) >= e.cfg.CollectAfter
}

// ownsCopy reports whether a record or a migration in flight accounts for
// a copy of name running here.
func (e *Engine) ownsCopy(name string) (bool, error) {
	r, err := e.st.Record(name)
	if err == nil && r.Kind != ctrl.KindAbroad {
		return true, nil
	}
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return false, fmt.Errorf("collect: %w", err)
	}
	inflight, err := e.st.InFlight()
	if err != nil {
		return false, fmt.Errorf("collect: %w", err)
	}
	return slices.ContainsFunc(inflight, func(m ctrl.Migration) bool { return m.Service == name }), nil
}

// ownsFrontend reports whether a local or abroad record holds f.
func (e *Engine) ownsFrontend(f lb.Frontend) (bool, error) {
	recs, err := e.st.Records()
	if err != nil {
		return false, fmt.Errorf("collect: %w", err)
	}
	return slices.ContainsFunc(recs, func(r ctrl.Record) bool {
		return r.Kind != ctrl.KindForeign && slices.Contains(r.Frontends, f)
	}), nil
}

func (e *Engine) collectCopy(ctx context.Context, inst backend.Instance) error {
	defer e.lock(inst.Name)()
	if owned, err := e.ownsCopy(inst.Name); err != nil || owned {
		return err
	}
	e.log.Warn("collect: removing a copy no record owns", "name", inst.Name, "home", inst.Home, "epoch", ctrl.EpochOf(inst))
	dctx, cancel := context.WithTimeout(ctx, e.cfg.CallTimeout)
	defer cancel()
	if err := e.cfg.Backend.Delete(dctx, inst.Name); err != nil {
		return fmt.Errorf("collect: remove copy %s: %w", inst.Name, err)
	}
	return nil
}

// settled settles name's migrations in flight (the caller holds its lock)
// and fails with ErrUnsettled while one still is: a new move must not
// start on a service whose last one may yet roll forward.
func (e *Engine) settled(ctx context.Context, name string) error {
	unsettled, err := e.settle(ctx, name)
	if unsettled {
		return fmt.Errorf("%w: an earlier migration is not settled yet: %w", ErrUnsettled, err)
	}
	return err
}
