package migrate

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/roamnet/roam/ctrl"
	"github.com/roamnet/roam/ctrl/store"
)

// removeOrphans removes the copies of name remembered as orphans at
// clusters that answer again. It runs without the service's lock (the
// other cluster takes its own): the removal is fenced by the orphan's
// epoch, so a newer copy there is never touched.
func (e *Engine) removeOrphans(ctx context.Context, name string) error {
	os, err := e.st.Orphans()
	if err != nil {
		return fmt.Errorf("read orphans: %w", err)
	}
	var errs []error
	for _, o := range os {
		if o.Service != name {
			continue
		}
		home := o.Home
		if home == "" {
			home = e.cfg.ClusterID
		}
		r, err := e.st.Record(o.Service)
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			errs = append(errs, fmt.Errorf("read record of orphan %s: %w", o.Service, err))
			continue
		}
		if err == nil && r.Kind == ctrl.KindAbroad && r.Cluster == o.Cluster && (o.Epoch.IsZero() || r.Epoch == o.Epoch) {
			// It lives there again: not an orphan.
			if err := e.st.DeleteOrphan(o); err != nil {
				errs = append(errs, fmt.Errorf("forget orphan %s: %w", o.Service, err))
			}
			continue
		}
		pctx, cancel := context.WithTimeout(ctx, e.cfg.CallTimeout)
		err = e.cfg.Peers.RemoveForeign(pctx, e.urlOf(o.Cluster, o.ClusterURL), o.Service, home, o.Epoch)
		cancel()
		if err != nil {
			errs = append(errs, fmt.Errorf("remove orphan %s at %s: %w", o.Service, o.Cluster, err))
			continue
		}
		e.log.Info("removed orphan copy", "service", o.Service, "cluster", o.Cluster, "epoch", o.Epoch)
		if err := e.st.DeleteOrphan(o); err != nil {
			errs = append(errs, fmt.Errorf("forget orphan %s: %w", o.Service, err))
		}
	}
	return errors.Join(errs...)
}

// checkForeign asks the home of a foreign copy here, once its record has
// been unchanged for ForeignCheckAfter, whether it still runs the service
// here, and removes the copy when it does not (the home took it back
// while this cluster was cut off).
func (e *Engine) checkForeign(ctx context.Context, name string) error {
	r, err := e.st.Record(name)
	if errors.Is(err, store.ErrNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("check foreign %s: %w", name, err)
	}
	if r.Kind != ctrl.KindForeign || time.Since(r.Updated) < e.cfg.ForeignCheckAfter {
		return nil
	}
	pctx, cancel := context.WithTimeout(ctx, e.cfg.CallTimeout)
	w, err := e.askHome(pctx, r.Home, e.urlOf(r.Home, r.HomeURL), r.HomeIncarnation, name)
	cancel()
	if err != nil {
		// "Unknown" removes nothing.
		e.log.Debug("check foreign: no word from its home", "service", name, "home", r.Home, "err", err)
		return nil
	}
	if w.Known && w.Cluster == e.cfg.ClusterID {
		return nil
	}
	e.log.Warn("home no longer runs its service here: removing the copy", "service", name, "home", r.Home, "where", w.Cluster)
	defer e.lock(name)()
	// Fenced by the epoch read before the question: a copy deployed here
	// again meanwhile (a newer epoch) stays.
	if err := e.removeForeignLocked(ctx, name, r.Home, r.Epoch); err != nil {
		return fmt.Errorf("remove stale foreign copy %s: %w", name, err)
	}
	return nil
}
