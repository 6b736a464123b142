package migrate

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/roamnet/roam/ctrl"
	"github.com/roamnet/roam/ctrl/store"
	"github.com/roamnet/roam/dataplane/lb"
)

func (e *Engine) frontends(d ctrl.Descriptor) []lb.Frontend {
	if !e.cfg.FrontendAddr.IsValid() {
		return nil
	}
	fs := make([]lb.Frontend, len(d.Ports))
	for i, p := range d.Ports {
		fs[i] = lb.Frontend{Addr: e.cfg.FrontendAddr, Port: p.Port, Proto: p.Protocol}
	}
	return fs
}

// Deploy runs a new service at home and points its frontends at it.
func (e *Engine) Deploy(ctx context.Context, d ctrl.Descriptor) (ctrl.Record, error) {
	if err := d.Validate(); err != nil {
		return ctrl.Record{}, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if err := e.srv6Resolve(&d); err != nil {
		return ctrl.Record{}, err
	}
	unlock, err := e.lockCtx(ctx, d.Name)
	defer unlock()
	if err != nil {
		return ctrl.Record{}, fmt.Errorf("deploy %s: %w", d.Name, err)
	}
	if r, err := e.st.Record(d.Name); err == nil {
		return r, fmt.Errorf("deploy %s: %w: already exists (%s)", d.Name, ErrConflict, r.Kind)
	} else if !errors.Is(err, store.ErrNotFound) {
		return ctrl.Record{}, fmt.Errorf("deploy %s: %w", d.Name, err)
	}
	if err := e.frontendsFree(d); err != nil {
		return ctrl.Record{}, err
	}
	inst, err := e.cfg.Backend.Deploy(ctx, d.Spec(e.cfg.ClusterID, ""))
	if err != nil {
		return ctrl.Record{}, fmt.Errorf("deploy %s: %w", d.Name, err)
	}
	r := ctrl.Record{Service: d, Kind: ctrl.KindLocal, Home: e.cfg.ClusterID, HomeURL: e.cfg.URL,
		Cluster: e.cfg.ClusterID, ClusterURL: e.cfg.URL, Frontends: e.frontends(d), Endpoints: inst.Endpoints}
	if err := e.program(ctx, r.Frontends, redirectTo(nil)); err != nil {
		err = fmt.Errorf("deploy %s: program data plane: %w", d.Name, err)
		return ctrl.Record{}, e.undeploy(ctx, d.Name, err)
	}
	if err := e.st.PutRecord(r); err != nil {
		return ctrl.Record{}, e.undeploy(ctx, d.Name, fmt.Errorf("deploy %s: %w", d.Name, err))
	}
	e.log.Info("deployed", "service", d.Name, "frontends", r.Frontends)
	return r, nil
}

// frontendsFree refuses a service whose frontends another service of this
// cluster holds (wherever that one runs): two services would share one
// (address, port, protocol), and deleting one would remove the other's.
// Deploys of different names may race past it; the backend refuses a copy
// on a port another copy holds.
func (e *Engine) frontendsFree(d ctrl.Descriptor) error {
	recs, err := e.st.Records()
	if err != nil {
		return fmt.Errorf("deploy %s: %w", d.Name, err)
	}
	for _, f := range e.frontends(d) {
		for _, r := range recs {
			if r.Kind != ctrl.KindForeign && r.Service.Name != d.Name && slices.Contains(r.Frontends, f) {
				return fmt.Errorf("deploy %s: %w: frontend %s is service %s's", d.Name, ErrConflict, f, r.Service.Name)
			}
		}
	}
	return nil
}

// undeploy removes a copy a failed deploy started and returns cause (joined
// with the removal's error).
func (e *Engine) undeploy(ctx context.Context, name string, cause error) error {
	dctx, cancel := detached(ctx, e.cfg.CallTimeout)
	defer cancel()
	if err := e.cfg.Backend.Delete(dctx, name); err != nil {
		return errors.Join(cause, fmt.Errorf("and remove the copy: %w", err))
	}
	return cause
}

// Get returns a record.
func (e *Engine) Get(name string) (ctrl.Record, error) {
	r, err := e.st.Record(name)
	if errors.Is(err, store.ErrNotFound) {
		return r, fmt.Errorf("get %s: %w", name, ErrNotFound)
	}
	return r, err
}

// List returns every record.
func (e *Engine) List() ([]ctrl.Record, error) { return e.st.Records() }

// Migrations returns the journal, oldest first.
func (e *Engine) Migrations() ([]ctrl.Migration, error) { return e.st.Migrations() }

// Delete removes a service this cluster owns, wherever it runs.
func (e *Engine) Delete(ctx context.Context, name string) error {
	done, err := e.lockChange(ctx, name, "delete")
	defer done()
	if err != nil {
		return err
	}
	if err := e.settled(ctx, name); err != nil {
		return fmt.Errorf("delete %s: %w", name, err)
	}
	r, err := e.st.Record(name)
	if errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("delete %s: %w", name, ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("delete %s: %w", name, err)
	}
	// Once started, a delete finishes whatever the client does.
	ctx, cancel := detached(ctx, e.cfg.CallTimeout)
	defer cancel()
	switch r.Kind {
	case ctrl.KindForeign:
		return fmt.Errorf("delete %s: %w: a foreign copy (home %s); delete it at its home", name, ErrConflict, r.Home)
	case ctrl.KindAbroad:
		url := e.urlOf(r.Cluster, r.ClusterURL)
		if err := e.cfg.Peers.RemoveForeign(ctx, url, name, e.cfg.ClusterID, r.Epoch); err != nil {
			// Unreachable: remember it and remove it when it returns.
			o := ctrl.Orphan{Service: name, Home: e.cfg.ClusterID, Cluster: r.Cluster, ClusterURL: url, Epoch: r.Epoch}
			if perr := e.st.PutOrphan(o); perr != nil {
				return fmt.Errorf("delete %s: remove the copy at %s: %w (and remember it: %w)", name, r.Cluster, err, perr)
			}
			e.log.Warn("remove abroad copy later", "service", name, "cluster", r.Cluster, "err", err)
		}
	default:
		if err := e.cfg.Backend.Delete(ctx, name); err != nil {
			return fmt.Errorf("delete %s: %w", name, err)
		}
	}
	if e.cfg.Agents != nil {
		for _, f := range r.Frontends {
			if err := e.cfg.Agents.Remove(ctx, f); err != nil {
				e.log.Warn("remove frontend", "frontend", f, "err", err)
			}
		}
	}
	if err := e.st.DeleteRecord(name); err != nil {
		return fmt.Errorf("delete %s: %w", name, err)
	}
	return nil
}
