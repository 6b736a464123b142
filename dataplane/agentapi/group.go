package agentapi

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/roamnet/roam/dataplane/lb"
)

// Group drives the agents of every node of a cluster in two phases: Stage on
// every node (if any node fails, the nodes already staged are aborted, so
// nothing stays staged anywhere), then Commit on every node with the
// generation each one returned.
type Group []*Client

// Generations holds the generation each node of a Group returned from Stage,
// in the Group's order.
type Generations []uint64

// each runs fn on every node concurrently and returns the errors by index.
func (g Group) each(fn func(i int, c *Client) error) []error {
	errs := make([]error, len(g))
	if len(g) == 1 { // no goroutine to hand over to and wait for
		errs[0] = fn(0, g[0])
		return errs
	}
	var wg sync.WaitGroup
	for i, c := range g {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = fn(i, c)
		}()
	}
	wg.Wait()
	return errs
}

func joinNodes(g Group, errs []error) error {
	var out []error
	for i, err := range errs {
		if err != nil {
			out = append(out, fmt.Errorf("node %s: %w", g[i].URL(), err))
		}
	}
	return errors.Join(out...)
}

// Stage stages f → t on every node. On any failure it aborts f on every node
// that staged (and on those whose outcome is unknown) and returns the error:
// nothing is left staged.
func (g Group) Stage(ctx context.Context, f lb.Frontend, t lb.Target) (Generations, error) {
	gens, errs := stageOn(g, func(c *Client) (uint64, error) { return c.Stage(ctx, f, t) })
	failed := joinNodes(g, errs)
	if failed == nil {
		return gens, nil
	}
	return nil, g.rollBack(ctx, fmt.Sprintf("%s -> %s", f, t), errs, failed, func(actx context.Context, i int, c *Client) error {
		return c.Abort(actx, f, gens[i]) // 0 where the outcome is unknown: whatever is staged
	})
}

// stageOn calls stage on every node at once and returns each node's
// result and error.
func stageOn[T any](g Group, stage func(c *Client) (T, error)) ([]T, []error) {
	out := make([]T, len(g))
	errs := g.each(func(i int, c *Client) error {
		v, err := stage(c)
		out[i] = v
		return err
	})
	return out, errs
}

// StageAll stages ts[i] for fs[i] on every node, one call per node (all
// or nothing on each), and returns each frontend's generations. On any
// failure it aborts every frontend on every node that staged (and on those
// whose outcome is unknown) and returns the error: nothing is left staged.
func (g Group) StageAll(ctx context.Context, fs []lb.Frontend, ts []lb.Target) ([]Generations, error) {
	byNode, errs := stageOn(g, func(c *Client) ([]uint64, error) { return c.StageAll(ctx, fs, ts) })
	failed := joinNodes(g, errs)
	if failed == nil {
		out := make([]Generations, len(fs))
		for j := range fs {
			out[j] = make(Generations, len(g))
			for i := range g {
				out[j][i] = byNode[i][j]
			}
		}
		return out, nil
	}
	return nil, g.rollBack(ctx, fmt.Sprint(fs), errs, failed, func(actx context.Context, i int, c *Client) error {
		var aerrs []error
		for j, f := range fs {
			var gen uint64 // 0 where the outcome is unknown: whatever is staged
			if errs[i] == nil {
				gen = byNode[i][j]
			}
			if err := c.Abort(actx, f, gen); err != nil {
				aerrs = append(aerrs, err)
			}
		}
		return errors.Join(aerrs...)
	})
}

// rollBack undoes the failed stage of what (errs: each node's error;
// failed: their join) with a context of its own (the caller's may be what
// failed): abort(actx, i, c) on every node but those whose agent refused
// the call (4xx: it staged nothing, or rolled back its own call). It
// returns the stage's error, and the roll-back's if that failed too.
func (g Group) rollBack(ctx context.Context, what string, errs []error, failed error, abort func(actx context.Context, i int, c *Client) error) error {
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), abortTimeout)
	defer cancel()
	aerr := joinNodes(g, g.each(func(i int, c *Client) error {
		var ae *Error
		if errs[i] != nil && errors.As(errs[i], &ae) && ae.Status/100 == 4 {
			return nil
		}
		return abort(actx, i, c)
	}))
	if aerr != nil {
		return fmt.Errorf("stage %s on every node: %w (and roll back: %w)", what, failed, aerr)
	}
	return fmt.Errorf("stage %s on every node (rolled back): %w", what, failed)
}

// CommitAll commits every fs[j] on every node with the generation it
// staged there (gens from StageAll), one call per node. A failure cannot
// be rolled back on the others: the error names the nodes that failed.
func (g Group) CommitAll(ctx context.Context, fs []lb.Frontend, gens []Generations) error {
	if len(gens) != len(fs) {
		return fmt.Errorf("commit %v: %d generations for %d frontends", fs, len(gens), len(fs))
	}
	for _, gs := range gens {
		if len(gs) != len(g) {
			return fmt.Errorf("commit %v: %d generations for %d nodes", fs, len(gs), len(g))
		}
	}
	errs := g.each(func(i int, c *Client) error {
		node := make([]uint64, len(fs))
		for j := range fs {
			node[j] = gens[j][i]
		}
		return c.CommitAll(ctx, fs, node)
	})
	if err := joinNodes(g, errs); err != nil {
		return fmt.Errorf("commit %v on every node: %w", fs, err)
	}
	return nil
}

// Reroute points every fs[j] at ts[j] on every node, make-before-break:
// no node commits before every node staged. A group of one node does it
// in one call (Client.Reroute: the agent stages all, then commits); a
// larger one stages on every node (StageAll: on any failure nothing stays
// staged), then commits on every node (CommitAll). An error wrapping
// ErrNotCommitted says nothing was committed anywhere; any other leaves
// some nodes committed, or unknown.
func (g Group) Reroute(ctx context.Context, fs []lb.Frontend, ts []lb.Target) (RerouteTimes, error) {
	switch len(g) {
	case 0:
		return RerouteTimes{}, nil
	case 1:
		t, err := g[0].Reroute(ctx, fs, ts)
		var ae *Error
		if errors.As(err, &ae) && ae.Status == http.StatusNotFound && ae.Reason == ReasonNotFound && strings.HasPrefix(ae.Msg, "no route") {
			break // an agent older than /v1/reroute: in two calls
		}
		if err != nil {
			return t, fmt.Errorf("node %s: %w", g[0].URL(), err)
		}
		return t, nil
	}
	t0 := time.Now()
	gens, err := g.StageAll(ctx, fs, ts)
	if err != nil {
		return RerouteTimes{}, fmt.Errorf("%w (%w)", err, ErrNotCommitted)
	}
	t1 := time.Now()
	err = g.CommitAll(ctx, fs, gens)
	return RerouteTimes{Stage: t1.Sub(t0), Commit: time.Since(t1)}, err
}

// Commit commits f on every node with the generation it staged (gens from
// Stage; nil commits whatever is staged on each node). A failure on some node
// cannot be rolled back on the others: the error names the nodes that failed.
func (g Group) Commit(ctx context.Context, f lb.Frontend, gens Generations) error {
	return g.withGens("commit", f, gens, func(c *Client, gen uint64) error { return c.Commit(ctx, f, gen) })
}

// Abort clears f's staged slot on every node, naming on each the
// generation it staged (gens from Stage; nil aborts whatever is staged on
// each node). A Commit of those generations then fails.
func (g Group) Abort(ctx context.Context, f lb.Frontend, gens Generations) error {
	return g.withGens("abort", f, gens, func(c *Client, gen uint64) error { return c.Abort(ctx, f, gen) })
}

// withGens runs fn on every node with the generation that node staged (0
// everywhere when gens is nil).
func (g Group) withGens(verb string, f lb.Frontend, gens Generations, fn func(c *Client, gen uint64) error) error {
	if gens != nil && len(gens) != len(g) {
		return fmt.Errorf("%s %s: %d generations for %d nodes", verb, f, len(gens), len(g))
	}
	errs := g.each(func(i int, c *Client) error {
		var gen uint64
		if gens != nil {
			gen = gens[i]
		}
		return fn(c, gen)
	})
	if err := joinNodes(g, errs); err != nil {
		return fmt.Errorf("%s %s on every node: %w", verb, f, err)
	}
	return nil
}

// Remove deletes f on every node.
func (g Group) Remove(ctx context.Context, f lb.Frontend) error {
	if err := joinNodes(g, g.each(func(_ int, c *Client) error { return c.Remove(ctx, f) })); err != nil {
		return fmt.Errorf("remove %s on every node: %w", f, err)
	}
	return nil
}

// List returns each node's services, in the Group's order.
func (g Group) List(ctx context.Context) ([][]lb.Service, error) {
	out := make([][]lb.Service, len(g))
	errs := g.each(func(i int, c *Client) error {
		s, err := c.List(ctx)
		out[i] = s
		return err
	})
	if err := joinNodes(g, errs); err != nil {
		return nil, fmt.Errorf("list services on every node: %w", err)
	}
	return out, nil
}

// Flows sums the live flows of f pinned to t over every node.
func (g Group) Flows(ctx context.Context, f lb.Frontend, t lb.Target) (int, error) {
	counts := make([]int, len(g))
	errs := g.each(func(i int, c *Client) error {
		n, err := c.Flows(ctx, f, t)
		counts[i] = n
		return err
	})
	if err := joinNodes(g, errs); err != nil {
		return 0, fmt.Errorf("count flows of %s to %s on every node: %w", f, t, err)
	}
	total := 0
	for _, n := range counts {
		total += n
	}
	return total, nil
}

// Warm opens (or checks) a connection to every node's agent: see
// Client.Warm.
func (g Group) Warm(ctx context.Context) error {
	if err := joinNodes(g, g.each(func(_ int, c *Client) error { return c.Warm(ctx) })); err != nil {
		return fmt.Errorf("warm every node: %w", err)
	}
	return nil
}

// Health checks every node's agent.
func (g Group) Health(ctx context.Context) error {
	if err := joinNodes(g, g.each(func(_ int, c *Client) error { return c.Health(ctx) })); err != nil {
		return fmt.Errorf("check health of every node: %w", err)
	}
	return nil
}

// abortTimeout bounds the roll back of a failed Stage.
const abortTimeout = 10 * time.Second
