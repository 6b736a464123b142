package migrate

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/roamnet/roam/ctrl"
	"github.com/roamnet/roam/ctrl/store"
	"github.com/roamnet/roam/dataplane/lb"
	"github.com/roamnet/roam/meta"
)

// The calls other controllers make on this one. Each takes the Caller the
// API layer verified, so what a peer may do can depend on who it is.

// DeployForeign runs a copy for another cluster (or, when the request names
// this cluster as home, brings its own service back).
func (e *Engine) DeployForeign(ctx context.Context, from ctrl.Caller, req ctrl.ForeignRequest) (ctrl.ForeignReply, error) {
	if err := req.Service.Validate(); err != nil {
		return ctrl.ForeignReply{}, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if err := meta.ValidateClusterID(req.Home); err != nil {
		return ctrl.ForeignReply{}, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	name := req.Service.Name
	if err := e.recovered(name); err != nil {
		return ctrl.ForeignReply{}, err
	}
	defer e.changed(name)
	spec := req.Service.Spec(req.Home, req.Epoch.MigrationID)
	spec.Epoch = req.Epoch.N
	if req.Home == e.cfg.ClusterID {
		// Coming home: start the copy; the record changes at the commit
		// (the "moved on" notice). An earlier migration's removal of
		// the old copy here must be over first (tail.go).
		if err := e.waitTail(ctx, name); err != nil {
			return ctrl.ForeignReply{}, fmt.Errorf("deploy %s at home: wait for the removal of the old copy: %w", name, err)
		}
		t0 := time.Now()
		if _, err := e.cfg.Backend.Deploy(ctx, spec); err != nil {
			return ctrl.ForeignReply{}, fmt.Errorf("deploy %s at home: %w", name, err)
		}
		return ctrl.ForeignReply{Cluster: e.cfg.ClusterID, Home: true, DeployMs: msSince(t0)}, nil
	}
	unlock, err := e.lockCtx(ctx, name)
	defer unlock()
	if err != nil {
		return ctrl.ForeignReply{}, fmt.Errorf("deploy foreign %s: %w", name, err)
	}
	r, err := e.st.Record(name)
	switch {
	case err == nil && !(r.Kind == ctrl.KindForeign && r.Home == req.Home):
		return ctrl.ForeignReply{}, fmt.Errorf("deploy foreign %s: %w: a %s service of that name runs here", name, ErrConflict, r.Kind)
	case err != nil && !errors.Is(err, store.ErrNotFound):
		return ctrl.ForeignReply{}, fmt.Errorf("deploy foreign %s: %w", name, err)
	case err == nil && r.Epoch.N > req.Epoch.N:
		// A late or replayed request: a newer copy runs here.
		return ctrl.ForeignReply{}, fmt.Errorf("deploy foreign %s: %w: a copy of epoch %s runs here, asked for %s", name, ErrConflict, r.Epoch, req.Epoch)
	}
	r = ctrl.Record{Service: req.Service, Kind: ctrl.KindForeign, Home: req.Home, HomeURL: req.HomeURL,
		HomeIncarnation: req.HomeIncarnation, Cluster: e.cfg.ClusterID, ClusterURL: e.cfg.URL, Epoch: req.Epoch}
	if req.Service.Redirect == lb.ModeSRv6 {
		r.SRv6Frontends, r.SRv6SID = req.Frontends, req.HomeSID
	}
	// Record first: a crash after the deploy must not leave an unknown copy.
	if err := e.st.PutRecord(r); err != nil {
		return ctrl.ForeignReply{}, fmt.Errorf("deploy foreign %s: %w", name, err)
	}
	t0 := time.Now()
	inst, err := e.cfg.Backend.Deploy(ctx, spec)
	deployMs := msSince(t0)
	if err != nil {
		err = fmt.Errorf("deploy foreign %s: %w", name, err)
		if derr := e.st.DeleteRecord(name); derr != nil {
			err = errors.Join(err, derr)
		}
		return ctrl.ForeignReply{}, e.undeploy(ctx, name, err)
	}
	r.Endpoints = inst.Endpoints
	if err := e.st.PutRecord(r); err != nil {
		return ctrl.ForeignReply{}, fmt.Errorf("deploy foreign %s: %w", name, err)
	}
	sid, err := e.srv6Arrive(ctx, req)
	if err != nil {
		err = fmt.Errorf("deploy foreign %s: %w", name, err)
		if rerr := e.removeForeignLocked(ctx, name, req.Home, req.Epoch); rerr != nil {
			err = errors.Join(err, rerr)
		}
		return ctrl.ForeignReply{}, err
	}
	e.log.Info("deployed foreign", "service", name, "home", req.Home, "epoch", req.Epoch, "endpoints", inst.Endpoints)
	return ctrl.ForeignReply{Cluster: e.cfg.ClusterID, Endpoints: inst.Endpoints, DeployMs: deployMs, SRv6SID: sid}, nil
}

// RemoveForeign drops a foreign copy (home must match; a non-zero epoch
// must be the copy's own: another epoch is a newer copy, left alone).
func (e *Engine) RemoveForeign(ctx context.Context, from ctrl.Caller, name, home string, epoch ctrl.Epoch) error {
	done, err := e.lockChange(ctx, name, "remove foreign")
	defer done()
	if err != nil {
		return err
	}
	return e.removeForeignLocked(ctx, name, home, epoch)
}

// removeForeignLocked is RemoveForeign with the service's lock held.
func (e *Engine) removeForeignLocked(ctx context.Context, name, home string, epoch ctrl.Epoch) error {
	ctx, cancel := detached(ctx, e.cfg.CallTimeout)
	defer cancel()
	r, err := e.st.Record(name)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("remove foreign %s: %w", name, err)
	}
	if home == e.cfg.ClusterID {
		// Our own service: drop a copy started for a move home that did
		// not commit (only that copy: its epoch).
		if err == nil && r.Kind == ctrl.KindLocal {
			return nil
		}
		return e.removeLocalCopy(ctx, name, epoch)
	}
	if err != nil {
		// Nothing recorded: a copy of that epoch must not run (a crash
		// between a deploy and its record); any other is left to the
		// collector.
		return e.removeLocalCopy(ctx, name, epoch)
	}
	if r.Kind != ctrl.KindForeign || r.Home != home {
		return fmt.Errorf("remove foreign %s: %w: it is %s (home %s)", name, ErrConflict, r.Kind, r.Home)
	}
	if r.Epoch != epoch {
		e.log.Info("remove foreign: not the copy asked about, left alone", "service", name, "copy", r.Epoch, "asked", epoch)
		return nil
	}
	if err := e.srv6Depart(ctx, r, func(ctx context.Context) error { return e.cfg.Backend.Delete(ctx, name) }); err != nil {
		return fmt.Errorf("remove foreign %s: %w", name, err)
	}
	e.log.Info("removed foreign", "service", name, "home", home, "epoch", r.Epoch)
	if err := e.st.DeleteRecord(name); err != nil {
		return fmt.Errorf("remove foreign %s: %w", name, err)
	}
	return nil
}

// MovedOn reroutes the home's load balancer to where an abroad cluster moved
// the service (stages 4 and 5 at home).
func (e *Engine) MovedOn(ctx context.Context, from ctrl.Caller, n ctrl.MovedOn) (ctrl.Migration, error) {
	if err := e.recovered(n.Service); err != nil {
		return ctrl.Migration{}, err
	}
	defer e.changed(n.Service)
	unlock, err := e.lockCtx(ctx, n.Service)
	defer unlock()
	if err != nil {
		return ctrl.Migration{}, fmt.Errorf("moved on %s: %w", n.Service, err)
	}
	if err := e.settled(ctx, n.Service); err != nil {
		return ctrl.Migration{}, fmt.Errorf("moved on %s: %w", n.Service, err)
	}
	r, err := e.Get(n.Service)
	if err != nil {
		return ctrl.Migration{}, fmt.Errorf("moved on %s: %w", n.Service, err)
	}
	if r.Kind != ctrl.KindAbroad || r.Cluster != n.From {
		return ctrl.Migration{}, fmt.Errorf("moved on %s: %w: it is %s at %s, not at %s", n.Service, ErrConflict, r.Kind, r.Cluster, n.From)
	}
	if n.FromEpoch != r.Epoch {
		return ctrl.Migration{}, fmt.Errorf("moved on %s: %w: the load balancer points at epoch %s, not %s", n.Service, ErrConflict, r.Epoch, n.FromEpoch)
	}

	if n.To != e.cfg.ClusterID && len(n.Endpoints) == 0 {
		return ctrl.Migration{}, fmt.Errorf("moved on %s: %w: no endpoints", n.Service, ErrInvalid)
	}
	m := &ctrl.Migration{ID: n.Epoch.MigrationID, Service: n.Service, Role: ctrl.RoleReroute, Reason: "moved-on",
		Home: e.cfg.ClusterID, HomeURL: e.cfg.URL, From: n.From, FromURL: e.urlOf(n.From, r.ClusterURL), FromEndpoints: r.Endpoints,
		FromSID: r.SRv6SID, FromEpoch: r.Epoch, Epoch: n.Epoch, To: n.To, ToURL: e.urlOf(n.To, n.ToURL), ToEndpoints: n.Endpoints, ToSID: n.SRv6SID,
		State: ctrl.StateRunning, Started: time.Now().UTC()}
	if n.To == e.cfg.ClusterID {
		m.ToEndpoints = nil
	}
	err = e.rerouteHome(context.WithoutCancel(ctx), m, r, tailer{})
	return e.finish(m, err)
}

// Where answers a foreign copy's question: where does its home run it?
// While a migration of the service is in flight here the answer is not
// known yet: it returns an error wrapping ErrUnsettled (ask again).
func (e *Engine) Where(ctx context.Context, from ctrl.Caller, name string) (ctrl.Where, error) {
	if err := e.recovered(name); err != nil {
		return ctrl.Where{}, err
	}
	inflight, err := e.st.InFlight()
	if err != nil {
		return ctrl.Where{}, fmt.Errorf("where %s: %w", name, err)
	}
	for _, m := range inflight {
		if m.Service == name {
			return ctrl.Where{}, fmt.Errorf("where %s: migration %s at stage %s: %w", name, m.ID, m.Stage, ErrUnsettled)
		}
	}
	w := ctrl.Where{Home: e.cfg.ClusterID, Incarnation: e.Incarnation()}
	r, err := e.st.Record(name)
	if errors.Is(err, store.ErrNotFound) || (err == nil && r.Kind == ctrl.KindForeign) {
		return w, nil
	}
	if err != nil {
		return ctrl.Where{}, fmt.Errorf("where %s: %w", name, err)
	}
	w.Kind, w.Cluster, w.Epoch, w.Known = r.Kind, r.Cluster, r.Epoch, true
	return w, nil
}

// Health is this controller's answer to a peer's probe.
func (e *Engine) Health() ctrl.Health {
	return ctrl.Health{Status: "ok", Cluster: e.cfg.ClusterID, Incarnation: e.Incarnation()}
}

// askHome asks home (at url) where service runs, and takes the answer only
// as the word of that home's store incarnation (fromHome).
func (e *Engine) askHome(ctx context.Context, home, url, incarnation, service string) (ctrl.Where, error) {
	w, err := e.cfg.Peers.Where(ctx, url, service)
	if err == nil {
		err = fromHome(w, home, incarnation)
	}
	return w, err
}

// fromHome checks that a Where answer is the word of the right home: the
// cluster asked, and the incarnation of its store that the copy answers
// to (a reinstalled home has forgotten what it asked for; a URL that now
// reaches another controller says nothing about this copy). Only such an
// answer may remove a copy.
func fromHome(w ctrl.Where, home, incarnation string) error {
	if w.Home != home {
		return fmt.Errorf("where: %q answered, not the home %s", w.Home, home)
	}
	if incarnation != "" && w.Incarnation != incarnation {
		return fmt.Errorf("where: home %s answered from store incarnation %q, the copy answers to %q", home, w.Incarnation, incarnation)
	}
	return nil
}
