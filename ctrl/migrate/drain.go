package migrate

import (
	"context"
	"fmt"
	"time"

	"github.com/roamnet/roam/ctrl"
	"github.com/roamnet/roam/dataplane/lb"
)

// drainPoll bounds how often drain counts the flows left: it polls every
// drainPollMin at first (most drains end within milliseconds of the
// commit, once the old copy has closed its connections), backing off to
// drainPollMax.
const (
	drainPollMin = time.Millisecond
	drainPollMax = 20 * time.Millisecond
)

// drain waits until no live flow uses old on any frontend, or the drain
// timeout; it returns the flows left. A count that fails counts as not
// drained (one flow left): the drain then lasts until the timeout rather
// than let the old copy go while it may still serve.
func (e *Engine) drain(ctx context.Context, fs []lb.Frontend, old func(int) lb.Target) int {
	if e.cfg.Agents == nil {
		return 0
	}
	deadline := time.Now().Add(e.cfg.DrainTimeout)
	poll := drainPollMin
	for {
		left := 0
		for i, f := range fs {
			n, err := e.cfg.Agents.Flows(ctx, f, old(i))
			if err != nil {
				e.log.Warn("count flows: counted as not drained", "frontend", f, "err", err)
				n = max(n, 1)
			}
			left += n
		}
		if left == 0 || time.Now().After(deadline) || ctx.Err() != nil {
			return left
		}
		select {
		case <-ctx.Done():
			return left
		case <-time.After(min(poll, time.Until(deadline))):
		}
		poll = min(2*poll, drainPollMax)
	}
}

// movingKey names a copy a mover is stopping: the service and its epoch.
type movingKey struct {
	name  string
	epoch ctrl.Epoch
}

// expectDrained registers the copy of name of epoch as one being stopped
// by a move on: the channel is closed when its home says it is drained
// (Drained). forget unregisters it.
func (e *Engine) expectDrained(name string, epoch ctrl.Epoch) (<-chan struct{}, func()) {
	k := movingKey{name, epoch}
	ch := make(chan struct{})
	e.movingMu.Lock()
	e.moving[k] = ch
	e.movingMu.Unlock()
	return ch, func() {
		e.movingMu.Lock()
		if e.moving[k] == ch {
			delete(e.moving, k)
		}
		e.movingMu.Unlock()
	}
}

// Drained is a home's word that its load balancer has no live flow left
// to this cluster's copy of name of epoch: a move on stopping that copy
// stops it at once. Only the service's home may say it, and only of the
// copy's own epoch; with no move on stopping that copy, it does nothing.
func (e *Engine) Drained(ctx context.Context, from ctrl.Caller, name string, epoch ctrl.Epoch) error {
	r, err := e.st.Record(name)
	if err != nil {
		return fmt.Errorf("drained %s: %w", name, err)
	}
	if r.Kind != ctrl.KindForeign || r.Home != from.Cluster {
		return fmt.Errorf("drained %s: %w: %s is not its home", name, ErrConflict, from.Cluster)
	}
	if r.Epoch != epoch {
		return fmt.Errorf("drained %s: %w: the copy here is of epoch %s, not %s", name, ErrConflict, r.Epoch, epoch)
	}
	e.movingMu.Lock()
	defer e.movingMu.Unlock()
	if ch, ok := e.moving[movingKey{name, epoch}]; ok {
		select {
		case <-ch:
		default:
			close(ch)
			e.log.Info("home says drained: stopping the old copy now", "service", name, "epoch", epoch)
		}
	}
	return nil
}

// drainForMover is the home's drain of a copy a mover stops (role
// reroute): it watches the old target's flows on our frontends in the
// background and, once none is left, tells the mover (Drained). At the
// drain timeout, or if the counts fail, it says nothing: the mover's
// graceful stop then runs its course, as it would without us.
func (e *Engine) drainForMover(ctx context.Context, m *ctrl.Migration, fs []lb.Frontend) {
	if e.cfg.Agents == nil || len(m.FromEndpoints) == 0 || m.From == e.cfg.ClusterID {
		return
	}
	dctx, cancel := detached(ctx, e.cfg.DrainTimeout+e.cfg.CallTimeout)
	old := redirectTo(m.FromEndpoints)
	name, epoch, url, from := m.Service, m.FromEpoch, m.FromURL, m.From
	go func() {
		defer cancel()
		if left := e.drain(dctx, fs, old); left > 0 || dctx.Err() != nil {
			e.log.Info("mover's copy not drained: its graceful stop runs its course", "service", name, "at", from, "flows", left)
			return
		}
		if err := e.cfg.Peers.Drained(dctx, url, name, epoch); err != nil {
			e.log.Warn("tell mover drained", "service", name, "at", from, "err", err)
		}
	}()
}
