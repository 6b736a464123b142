package migrate

import (
	"context"
	"time"

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
