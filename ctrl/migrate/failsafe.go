package migrate

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/roamnet/roam/ctrl"
	"github.com/roamnet/roam/dataplane/lb"
	"github.com/roamnet/roam/meta"
)

// The fail-safe takes a service home from an abroad cluster that is lost.
// A cluster is lost only when three vantage points agree, so a restarted
// controller or a lossy link does not pull every service home at once:
//
//   - its controller has not answered a probe (as itself) for
//     FailsafeAfter (the grace);
//   - the MO, a second vantage point, no longer lists it (when this
//     controller has an MO view at all; an empty view says nothing);
//   - and, per service, the copy's own endpoint (the path users take)
//     does not answer either.
//
// Take-backs are rate limited (TakeBackRate, TakeBackBurst).

// errNoProbe says an endpoint cannot be probed (a UDP-only service): the
// controller's and the MO's word decide alone.
var errNoProbe = errors.New("no probe for this service's endpoints")

// Probe looks at every cluster running a service owned here (each probe
// concurrently, under a deadline), updates which services count as lost,
// and returns them (for the work queue: their Reconcile takes them home).
func (e *Engine) Probe(ctx context.Context) []string {
	recs, err := e.st.Records()
	if err != nil {
		e.log.Warn("fail-safe: read records", "err", err)
		return nil
	}
	byCluster := map[string][]ctrl.Record{}
	for _, r := range recs {
		if r.Kind == ctrl.KindAbroad {
			byCluster[r.Cluster] = append(byCluster[r.Cluster], r)
		}
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	lost := map[string]lostCopy{}
	for cluster, rs := range byCluster {
		wg.Go(func() {
			if !e.probe(ctx, cluster, e.urlOf(cluster, rs[0].ClusterURL)) {
				return
			}
			// The cluster looks gone: does each copy's endpoint agree?
			for _, r := range rs {
				pctx, cancel := context.WithTimeout(ctx, e.probeTimeout())
				perr := e.cfg.ProbeEndpoint(pctx, r.Service, r.Endpoints)
				cancel()
				if perr == nil {
					e.log.Warn("fail-safe: controller and MO say lost, but the copy answers: not taking it back",
						"service", r.Service.Name, "cluster", cluster)
					continue
				}
				mu.Lock()
				lost[r.Service.Name] = lostCopy{epoch: r.Epoch, at: time.Now()}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	e.probeMu.Lock()
	for c := range e.lastOK {
		if byCluster[c] == nil {
			// Nothing of ours runs there now: a later move there starts
			// its grace afresh.
			delete(e.lastOK, c)
		}
	}
	e.lostSvc = lost
	e.probeMu.Unlock()
	out := make([]string, 0, len(lost))
	for name := range lost {
		out = append(out, name)
	}
	return out
}

func (e *Engine) probeTimeout() time.Duration { return min(e.cfg.ProbeInterval*2, 2*time.Second) }

// lostCopy is a probe's verdict on one abroad copy.
type lostCopy struct {
	epoch ctrl.Epoch
	at    time.Time
}

// lost reports whether a recent probe found the copy of name at epoch
// lost (a verdict on an older copy, or an old verdict, says nothing).
func (e *Engine) lost(name string, epoch ctrl.Epoch) bool {
	e.probeMu.Lock()
	defer e.probeMu.Unlock()
	v, ok := e.lostSvc[name]
	return ok && v.epoch == epoch && time.Since(v.at) < 10*e.cfg.ProbeInterval
}

// probe records a health probe of a cluster's controller and says whether
// the cluster counts as lost (see the rule above; the endpoint is
// checked by the caller).
func (e *Engine) probe(ctx context.Context, cluster, url string) bool {
	pctx, cancel := context.WithTimeout(ctx, e.probeTimeout())
	h, err := e.cfg.Peers.Health(pctx, url)
	cancel()
	ok := err == nil && h.Cluster == cluster
	if err == nil && !ok {
		e.log.Warn("fail-safe: another controller answers at a cluster's URL", "cluster", cluster, "answered", h.Cluster)
	}
	now := time.Now()
	e.probeMu.Lock()
	defer e.probeMu.Unlock()
	return e.judge(cluster, ok, now)
}

// judge applies the cluster rule; probeMu is held.
func (e *Engine) judge(cluster string, ok bool, now time.Time) bool {
	last, seen := e.lastOK[cluster]
	if ok || !seen {
		e.lastOK[cluster] = now
		return false
	}
	if now.Sub(last) < e.cfg.FailsafeAfter {
		return false
	}
	if e.cfg.Hellos == nil {
		return true // no MO: the controller's and the endpoint's word
	}
	hs := e.cfg.Hellos()
	if len(hs) == 0 {
		return false // no view of the MO's now: it cannot agree
	}
	for _, h := range hs {
		if h.ClusterID == cluster {
			return false // the MO still hears it: a path problem of ours
		}
	}
	return true
}

// probeEndpoint is the default endpoint probe: an HTTP GET for the demo
// service, a TCP connect to the first TCP port otherwise.
func probeEndpoint(ctx context.Context, d ctrl.Descriptor, eps []netip.AddrPort) error {
	for i, p := range d.Ports {
		if p.Protocol != lb.TCP || i >= len(eps) {
			continue
		}
		if d.Demo {
			return verifyHTTP(ctx, "http://"+eps[i].String()+"/healthz")
		}
		var dl net.Dialer
		c, err := dl.DialContext(ctx, "tcp", eps[i].String())
		if err != nil {
			return err
		}
		return c.Close()
	}
	return errNoProbe
}

// failsafeID is the id of the take-back of a copy at epoch from: every
// attempt at it reuses it (and its journal entry), so a take-back that
// keeps failing does not grow the journal.
func failsafeID(from ctrl.Epoch) string {
	return fmt.Sprintf("fs-%d-%s", from.N, from.MigrationID)
}

// takeBack redeploys r's service at home from its lost cluster and commits
// the load balancer back to local (the fail-safe). The copy at the lost
// cluster becomes an orphan, removed when that cluster returns. The caller
// holds the service's lock.
func (e *Engine) takeBack(ctx context.Context, r ctrl.Record) (time.Duration, error) {
	if res := e.takeBacks.Reserve(); res.Delay() > 0 {
		d := res.Delay()
		res.Cancel()
		e.log.Warn("fail-safe: take-backs rate limited, later", "service", r.Service.Name, "in", d)
		return d, nil
	}
	id := failsafeID(r.Epoch)
	m := &ctrl.Migration{ID: id, Service: r.Service.Name, Role: ctrl.RoleFailsafe, Reason: string(meta.ReasonFailover),
		Home: e.cfg.ClusterID, HomeURL: e.cfg.URL, From: r.Cluster, FromURL: e.urlOf(r.Cluster, r.ClusterURL), FromEndpoints: r.Endpoints,
		FromEpoch: r.Epoch, Epoch: r.Epoch.Next(id), To: e.cfg.ClusterID, ToURL: e.cfg.URL, State: ctrl.StateRunning, Started: time.Now().UTC()}
	e.log.Warn("fail-safe: cluster lost, taking service home", "service", m.Service, "cluster", r.Cluster, "id", id)
	if err := e.step(ctx, m, ctrl.StageTrigger, func(context.Context) error { return nil }); err != nil {
		_, err = e.finish(m, err)
		return 0, err
	}
	if err := e.takeBackSteps(ctx, m, r); err != nil {
		return 0, fmt.Errorf("take %s home from %s: %w", m.Service, r.Cluster, err)
	}
	return 0, nil
}

// takeBackSteps deploys the copy at home and commits every node to it.
// A deploy that fails removes the copy it started (its epoch is m's); a
// commit that fails on some node rolls forward: the migration stays in
// the journal and the next reconcile commits again, since some nodes may
// point at the new copy already.
func (e *Engine) takeBackSteps(ctx context.Context, m *ctrl.Migration, r ctrl.Record) error {
	// Remember the orphan first: whatever happens next, the copy at the
	// lost cluster must go when it returns.
	if err := e.remember(ctrl.Orphan{Service: m.Service, Home: e.cfg.ClusterID, Cluster: m.From, ClusterURL: m.FromURL, Epoch: m.FromEpoch}); err != nil {
		_, ferr := e.finish(m, err)
		return ferr
	}
	err := e.step(ctx, m, ctrl.StageReplication, func(ctx context.Context) error {
		dctx, cancel := context.WithTimeout(ctx, e.cfg.DeployTimeout)
		defer cancel()
		_, err := e.cfg.Backend.Deploy(dctx, e.spec(r, e.cfg.ClusterID, m.Epoch))
		return err
	})
	if err != nil {
		if !errors.Is(err, ErrCrash) {
			err = errors.Join(err, e.removeLocalCopy(ctx, m.Service, m.Epoch))
		}
		_, err = e.finish(m, err)
		return err
	}
	err = e.step(ctx, m, ctrl.StageCommit, func(ctx context.Context) error {
		if err := e.program(ctx, r.Frontends, redirectTo(nil)); err != nil {
			return err
		}
		return e.recordMoved(ctx, m, r)
	})
	if err != nil && !errors.Is(err, ErrCrash) {
		err = e.rollForward(ctx, m, r, err)
	}
	_, err = e.finish(m, err)
	return err
}

// removeLocalCopy removes the copy of name here if it carries epoch (a
// copy with another epoch is not the one meant and stays).
func (e *Engine) removeLocalCopy(ctx context.Context, name string, epoch ctrl.Epoch) error {
	dctx, cancel := detached(ctx, e.cfg.CallTimeout)
	defer cancel()
	inst, err := e.cfg.Backend.Get(dctx, name)
	if err != nil {
		if isNotFound(err) {
			return nil
		}
		return fmt.Errorf("remove the copy of %s at %s: %w", name, epoch, err)
	}
	if ctrl.EpochOf(inst) != epoch {
		e.log.Info("not removing a copy of another epoch", "service", name, "epoch", ctrl.EpochOf(inst), "asked", epoch)
		return nil
	}
	if err := e.cfg.Backend.Delete(dctx, name); err != nil {
		return fmt.Errorf("remove the copy of %s at %s: %w", name, epoch, err)
	}
	return nil
}
