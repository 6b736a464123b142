package migrate

import (
	"context"
	"fmt"
	"net/netip"

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

// stage writes t(i) into the inactive slot of every frontend on every node;
// no packet sees it until the commit. On a failure the frontends already
// staged are aborted.
func (e *Engine) stage(ctx context.Context, fs []lb.Frontend, t func(i int) lb.Target) (staged, error) {
	if e.cfg.Agents == nil {
		return nil, nil
	}
	gens := make(staged, len(fs))
	for i, f := range fs {
		g, err := e.cfg.Agents.Stage(ctx, f, t(i))
		if err != nil {
			e.abort(ctx, fs[:i], gens[:i])
			return nil, fmt.Errorf("stage %s -> %s: %w", f, t(i), err)
		}
		gens[i] = g
	}
	return gens, nil
}

// commit flips every frontend to its staged target on every node.
func (e *Engine) commit(ctx context.Context, fs []lb.Frontend, gens staged) error {
	if e.cfg.Agents == nil {
		return nil
	}
	for i, f := range fs {
		var g agentapi.Generations
		if gens != nil {
			g = gens[i]
		}
		if err := e.cfg.Agents.Commit(ctx, f, g); err != nil {
			return fmt.Errorf("commit %s: %w", f, err)
		}
	}
	return nil
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
	for i, f := range fs {
		var g agentapi.Generations
		if gens != nil {
			g = gens[i]
		}
		if err := e.cfg.Agents.Abort(actx, f, g); err != nil {
			e.log.Warn("abort staged target", "frontend", f, "err", err)
		}
	}
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
