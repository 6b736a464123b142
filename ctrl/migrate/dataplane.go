package migrate

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/roamnet/roam/ctrl"

	"github.com/roamnet/roam/dataplane/agentapi"
	"github.com/roamnet/roam/dataplane/lb"
)

// staged is what one stage of every frontend returned: the generations to
// commit, frontend by frontend.
type staged []agentapi.Generations

// program stages t(i) for every frontend, then commits (two-phase on every
// node). On a stage failure everything staged is aborted.
func (e *Engine) program(ctx context.Context, fs []lb.Frontend, t func(i int) lb.Target) error {
	if e.cfg.Agents == nil || len(fs) == 0 {
		return nil
	}
	gens, err := e.stage(ctx, fs, t)
	if err != nil {
		return err
	}
	return e.commit(ctx, fs, gens)
}

// stage writes t(i) into the inactive slot of every frontend on every node,
// all frontends in one call per node (one round trip); no packet sees it
// until the commit. On a failure nothing stays staged on any node (the
// agents' group aborts what staged).
func (e *Engine) stage(ctx context.Context, fs []lb.Frontend, t func(i int) lb.Target) (staged, error) {
	if e.cfg.Agents == nil || len(fs) == 0 {
		return nil, nil
	}
	ts := make([]lb.Target, len(fs))
	for i := range fs {
		ts[i] = t(i)
	}
	gens, err := e.cfg.Agents.StageAll(ctx, fs, ts)
	if err != nil {
		return nil, fmt.Errorf("stage %v -> %v: %w", fs, ts, err)
	}
	return gens, nil
}

// commit flips every frontend to its staged target on every node, all
// frontends in one call per node: the reroute's critical section, the
// agents' map swaps and nothing else.
func (e *Engine) commit(ctx context.Context, fs []lb.Frontend, gens staged) error {
	if e.cfg.Agents == nil || len(fs) == 0 {
		return nil
	}
	if err := e.cfg.Agents.CommitAll(ctx, fs, gens); err != nil {
		return fmt.Errorf("commit %v: %w", fs, err)
	}
	return nil
}

// reroute stages t(i) for every frontend and commits it on every node,
// make-before-break across nodes (the agents' Reroute: one call per node
// when the cluster has one node), within a call's timeout; d is its wall
// time, from the start of staging to the last commit.
func (e *Engine) reroute(ctx context.Context, m *ctrl.Migration, fs []lb.Frontend, t func(i int) lb.Target) (times agentapi.RerouteTimes, d time.Duration, err error) {
	if e.cfg.Agents == nil || len(fs) == 0 {
		return times, 0, nil
	}
	ts := make([]lb.Target, len(fs))
	for i := range fs {
		ts[i] = t(i)
	}
	sctx, cancel := context.WithTimeout(ctx, e.stageTimeout(ctrl.StageCommit, m.Role))
	defer cancel()
	start := time.Now()
	times, err = e.cfg.Agents.Reroute(sctx, fs, ts)
	d = time.Since(start)
	if err != nil {
		return times, d, fmt.Errorf("reroute %v -> %v: %w", fs, ts, err)
	}
	return times, d, nil
}

// abort clears the staged slot of every frontend (on a context of its own:
// the caller's may be what failed), naming the generations stage returned
// (nil: whatever is staged).
func (e *Engine) abort(ctx context.Context, fs []lb.Frontend, gens staged) {
	if e.cfg.Agents == nil {
		return
	}
	actx, cancel := detached(ctx, e.cfg.CallTimeout)
	defer cancel()
	eachFrontend(fs, func(i int, f lb.Frontend) error {
		var g agentapi.Generations
		if gens != nil {
			g = gens[i]
		}
		if err := e.cfg.Agents.Abort(actx, f, g); err != nil {
			e.log.Warn("abort staged target", "frontend", f, "err", err)
		}
		return nil
	})
}

// eachFrontend runs fn for every frontend concurrently (the agents' calls
// of one frontend are independent of another's) and returns the errors by
// index.
func eachFrontend(fs []lb.Frontend, fn func(i int, f lb.Frontend) error) []error {
	errs := make([]error, len(fs))
	if len(fs) == 1 {
		errs[0] = fn(0, fs[0])
		return errs
	}
	var wg sync.WaitGroup
	for i, f := range fs {
		wg.Go(func() { errs[i] = fn(i, f) })
	}
	wg.Wait()
	return errs
}

// redirectTo is the target of frontend i for a copy reached at eps (local
// when eps is empty: the copy runs here).
func redirectTo(eps []netip.AddrPort) func(int) lb.Target {
	return func(i int) lb.Target {
		if len(eps) == 0 {
			return lb.Local
		}
		return lb.Redirect(eps[min(i, len(eps)-1)])
	}
}
