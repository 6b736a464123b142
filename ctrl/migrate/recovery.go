package migrate

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	"github.com/roamnet/roam/ctrl"
	"github.com/roamnet/roam/ctrl/store"
	"github.com/roamnet/roam/dataplane/lb"
)

// remember records a copy at another cluster that must go once that
// cluster answers.
func (e *Engine) remember(o ctrl.Orphan) error {
	if err := e.st.PutOrphan(o); err != nil {
		return fmt.Errorf("remember orphan %s at %s: %w", o.Service, o.Cluster, err)
	}
	return nil
}

// removeNewCopy removes the copy m started at its destination, or
// remembers it as an orphan.
func (e *Engine) removeNewCopy(ctx context.Context, m ctrl.Migration) error {
	if err := e.cfg.Peers.RemoveForeign(ctx, m.ToURL, m.Service, m.Home, m.Epoch); err != nil {
		return e.remember(ctrl.Orphan{Service: m.Service, Home: m.Home, Cluster: m.To, ClusterURL: m.ToURL, Epoch: m.Epoch})
	}
	return nil
}

// superseded settles m, which the record has moved past (its epoch is
// neither m's old nor its new one): acting on m would undo a later move.
func (e *Engine) superseded(m *ctrl.Migration, r ctrl.Record) error {
	e.log.Warn("migration superseded by a later move: settling it without acting", "id", m.ID, "service", m.Service,
		"epoch", m.Epoch, "record", r.Epoch)
	_, err := e.finish(m, fmt.Errorf("superseded: the record is at epoch %s", r.Epoch))
	if errors.Is(err, ErrCrash) {
		return err
	}
	return nil
}

// recoverOne settles a migration the journal held as running when m was
// read (it takes the service's lock).
func (e *Engine) recoverOne(ctx context.Context, m ctrl.Migration) error {
	defer e.lock(m.Service)()
	return e.recoverLocked(ctx, m.ID)
}

// recoverLocked settles migration id, read afresh under its service's lock
// (which the caller holds): a copy of the entry read before the lock may be
// stale (the migration committed and finished meanwhile), and acting on it
// would undo a finished move.
func (e *Engine) recoverLocked(ctx context.Context, id string) error {
	m, err := e.st.Migration(id)
	if err != nil {
		return fmt.Errorf("re-read migration %s: %w", id, err)
	}
	if m.State != ctrl.StateRunning {
		return nil // settled meanwhile
	}
	e.log.Info("recover migration", "id", m.ID, "service", m.Service, "role", m.Role, "stage", m.Stage)
	r, rerr := e.st.Record(m.Service)
	if rerr != nil && !errors.Is(rerr, store.ErrNotFound) {
		return rerr
	}
	fail := func(why string, undo error) error {
		_, err := e.finish(&m, errors.New("rolled back after restart at stage "+m.Stage.String()+why))
		if errors.Is(err, ErrCrash) {
			return err
		}
		return undo // the failure itself is recorded; only the undo's error is news
	}
	// rollForward settles a home's or a reroute's migration past its
	// commit: every node points at the new copy and the record says so;
	// at the home, the old copy then drains and goes. Unless the record
	// is gone (failed) or a later move superseded it.
	rollForward := func() error {
		if rerr != nil {
			return fail(": record gone", nil)
		}
		if r.Epoch != m.Epoch && r.Epoch != m.FromEpoch {
			return e.superseded(&m, r)
		}
		want, before, err := e.commitTarget(&m, r)
		if err != nil {
			return fmt.Errorf("re-commit: %w", err)
		}
		if err := e.program(ctx, r.Frontends, want); err != nil {
			return fmt.Errorf("re-commit: %w", err)
		}
		if r.Epoch != m.Epoch {
			if err := e.recordMoved(ctx, &m, r); err != nil {
				return err
			}
		}
		if m.Role == ctrl.RoleReroute {
			// By SRv6 from an abroad location the path is [old, new]
			// (or local and the previous path, home): the home leaves
			// the old location off it once that location says its copy
			// is gone, or at its drain budget, as after a commit.
			e.srv6Moved(ctx, &m, before, r.Frontends)
		}
		if m.Role == ctrl.RoleHome {
			m.DrainedFlows = e.drain(ctx, r.Frontends, redirectTo(nil))
			if err := e.removeLocalCopy(ctx, m.Service, m.FromEpoch); err != nil {
				return err
			}
		}
		_, err = e.finish(&m, nil)
		return err
	}
	switch m.Role {
	case ctrl.RoleHome:
		if m.Stage.BeforeCommit() {
			if rerr == nil {
				e.abort(ctx, r.Frontends, nil)
			}
			var undo error
			if m.Stage.After(ctrl.StageReplication) && m.ToURL != "" {
				undo = e.removeNewCopy(ctx, m)
			}
			return fail("", undo)
		}
		return rollForward()
	case ctrl.RoleReroute:
		if m.Stage.BeforeCommit() {
			if rerr == nil {
				e.abort(ctx, r.Frontends, nil)
			}
			return fail("", nil)
		}
		return rollForward()
	case ctrl.RoleMover:
		var err error
		switch m.Stage {
		case ctrl.StageTrigger, ctrl.StagePlacement:
			return fail("", nil)
		case ctrl.StageReplication:
			return fail("", e.removeNewCopy(ctx, m))
		case ctrl.StageReroute:
			var w ctrl.Where
			w, err = e.askHome(ctx, m.Home, e.urlOf(m.Home, m.HomeURL), m.HomeIncarnation, m.Service)
			if err != nil {
				return fmt.Errorf("ask home %s where the service is (retry later): %w", m.Home, err)
			}
			if w.Cluster != m.To || w.Epoch != m.Epoch {
				return fail(": the home did not reroute", e.removeNewCopy(ctx, m))
			}
		}
		// The copy goes as the cleanup would have it go: an SRv6
		// location's copy drains, is said gone (to the agents and the
		// home) and its return route goes (srv6Depart; any other copy is
		// simply deleted).
		del := func(ctx context.Context) error { return e.cfg.Backend.Delete(ctx, m.Service) }
		if rerr == nil {
			err = e.srv6Depart(ctx, r, del)
		} else {
			err = del(ctx)
		}
		if err != nil {
			return err
		}
		if err := e.st.DeleteRecord(m.Service); err != nil {
			return err
		}
		_, err = e.finish(&m, nil)
		return err
	case ctrl.RoleFailsafe:
		if rerr != nil {
			return fail(": record gone", e.removeLocalCopy(ctx, m.Service, m.Epoch))
		}
		if r.Epoch != m.Epoch && r.Epoch != m.FromEpoch {
			return e.superseded(&m, r)
		}
		if m.Stage.BeforeCommit() && !e.lost(m.Service, m.FromEpoch) {
			// Nothing points at the copy at home yet, and the cluster is
			// not (or no longer) known to be lost: undo.
			return fail(": the cluster is not lost now", e.removeLocalCopy(ctx, m.Service, m.Epoch))
		}
		return e.takeBackSteps(ctx, &m, r)
	}
	return fail(": unknown role "+string(m.Role), nil)
}

// commitTarget is what m's commit staged and committed on every node (or
// would have): the uninterrupted migration's target (rerouteTarget: NAT
// or local, or an SRv6 path by the service's mode), from the record
// before the move. That is r while it still says the old epoch. A record
// already moved (a commit that failed on some node was rolled forward)
// says where the service went; the record before it is rebuilt from m: a
// home's migration left home (local before it), a reroute's left its old
// location (m.From, its endpoints, and the node m.FromSID: by SRv6 the
// path is then [old, new] again, not [new]). before is the record the
// target was computed from.
func (e *Engine) commitTarget(m *ctrl.Migration, r ctrl.Record) (want func(int) lb.Target, before ctrl.Record, err error) {
	before = r
	switch {
	case r.Epoch != m.Epoch:
	case m.Role == ctrl.RoleHome:
		before.Kind, before.Cluster, before.ClusterURL, before.Endpoints, before.SRv6SID = ctrl.KindLocal, e.cfg.ClusterID, e.cfg.URL, nil, netip.Addr{}
	case m.Role == ctrl.RoleReroute:
		before.Kind, before.Cluster, before.ClusterURL, before.Endpoints, before.SRv6SID = ctrl.KindAbroad, m.From, m.FromURL, m.FromEndpoints, m.FromSID
	}
	want, err = e.rerouteTarget(m, before)
	return want, before, err
}
