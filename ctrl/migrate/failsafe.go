package migrate

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/roamnet/roam/ctrl"
	"github.com/roamnet/roam/meta"
)

// Probe looks at every cluster running a service owned here (each probe
// concurrently, under a deadline), updates which clusters count as lost,
// and returns the services at lost clusters (for the work queue: their
// Reconcile takes them home).
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
	var out []string
	for cluster, rs := range byCluster {
		wg.Go(func() {
			if e.probe(ctx, cluster, e.urlOf(cluster, rs[0].ClusterURL)) {
				mu.Lock()
				for _, r := range rs {
					out = append(out, r.Service.Name)
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	e.probeMu.Lock()
	for c := range e.lostSet {
		if byCluster[c] == nil {
			delete(e.lostSet, c)
		}
	}
	e.probeMu.Unlock()
	return out
}

// lost reports whether the fail-safe counts cluster as lost.
func (e *Engine) lost(cluster string) bool {
	e.probeMu.Lock()
	defer e.probeMu.Unlock()
	return e.lostSet[cluster]
}

// probe records a health probe of a cluster and says whether it counts as
// lost (unreachable for FailsafeAfter, or unreachable and down in the MO's
// view).
func (e *Engine) probe(ctx context.Context, cluster, url string) bool {
	pctx, cancel := context.WithTimeout(ctx, min(e.cfg.ProbeInterval*2, 2*time.Second))
	_, err := e.cfg.Peers.Health(pctx, url)
	cancel()
	now := time.Now()
	e.probeMu.Lock()
	defer e.probeMu.Unlock()
	lost := e.judge(cluster, err == nil, now)
	e.lostSet[cluster] = lost
	return lost
}

// judge applies the loss rule; probeMu is held.
func (e *Engine) judge(cluster string, ok bool, now time.Time) bool {
	last, seen := e.lastOK[cluster]
	if ok || !seen {
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

// takeBack redeploys r's service at home from its lost cluster and commits
// the load balancer back to local (the fail-safe). The copy at the lost
// cluster becomes an orphan, removed when that cluster returns. The caller
// holds the service's lock.
func (e *Engine) takeBack(ctx context.Context, r ctrl.Record) error {
	id := newID()
	m := &ctrl.Migration{ID: id, Service: r.Service.Name, Role: ctrl.RoleFailsafe, Reason: string(meta.ReasonFailover),
		Home: e.cfg.ClusterID, HomeURL: e.cfg.URL, From: r.Cluster, FromURL: e.urlOf(r.Cluster, r.ClusterURL), FromEndpoints: r.Endpoints,
		FromEpoch: r.Epoch, Epoch: r.Epoch.Next(id), To: e.cfg.ClusterID, ToURL: e.cfg.URL, State: ctrl.StateRunning, Started: time.Now().UTC()}
	e.log.Warn("fail-safe: cluster lost, taking service home", "service", m.Service, "cluster", r.Cluster)
	if err := e.step(ctx, m, ctrl.StageTrigger, func(context.Context) error { return nil }); err != nil {
		_, err = e.finish(m, err)
		return err
	}
	if err := e.takeBackSteps(ctx, m, r); err != nil {
		return fmt.Errorf("take %s home from %s: %w", m.Service, r.Cluster, err)
	}
	return nil
}

func (e *Engine) takeBackSteps(ctx context.Context, m *ctrl.Migration, r ctrl.Record) error {
	// Remember the orphan first: whatever happens next, the copy at the
	// lost cluster must go when it returns.
	if err := e.remember(ctrl.Orphan{Service: m.Service, Home: e.cfg.ClusterID, Cluster: m.From, ClusterURL: m.FromURL, Epoch: m.FromEpoch}); err != nil {
		_, ferr := e.finish(m, err)
		return ferr
	}
	err := e.step(ctx, m, ctrl.StageReplication, func(ctx context.Context) error {
		_, err := e.cfg.Backend.Deploy(ctx, e.spec(r, e.cfg.ClusterID, m.Epoch))
		return err
	})
	if err == nil {
		err = e.step(ctx, m, ctrl.StageCommit, func(ctx context.Context) error {
			if err := e.program(ctx, r.Frontends, redirectTo(nil)); err != nil {
				return err
			}
			return e.recordMoved(ctx, m, r)
		})
	}
	_, err = e.finish(m, err)
	return err
}
