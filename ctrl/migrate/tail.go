package migrate

import (
	"context"
	"errors"
	"slices"

	"github.com/roamnet/roam/ctrl"
)

// A migration asked to answer at its commit (ctrl.ReturnCommitted) hands
// its drain and cleanup to a tail: a goroutine that runs those stages as
// the migration would have (journalled first, timed in m.Stages), then
// settles the migration (finish). The service's lock is not held across
// it: the caller's answer and the lock go at the commit. Everything that
// takes the service's lock afterwards waits for the tail first (lock), so
// a second migration, a delete or a reconcile of that service never sees
// the old copy half removed; a service coming home (DeployForeign) waits
// for it too. A kill -9 during the tail leaves the journal at the drain or
// cleanup stage, which recovery settles as it settles a migration that
// did not answer yet (recoverLocked: the old copy drains and goes).

// errInTail is run's word that the rest of the migration runs in a tail.
var errInTail = errors.New("drain and cleanup run behind the answer")

// tail is the end of name's tail, nil when none runs.
func (e *Engine) tail(name string) chan struct{} {
	e.tailsMu.Lock()
	defer e.tailsMu.Unlock()
	return e.tails[name]
}

// waitTail waits for name's tail to end (or ctx).
func (e *Engine) waitTail(ctx context.Context, name string) error {
	if t := e.tail(name); t != nil {
		select {
		case <-t:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// later runs rest, the drain and cleanup of m, in a tail when m answers at
// its commit (answered is then the answer: m as journalled at the handing
// over, its state running and its stage drain; the error is errInTail);
// else at once.
func (e *Engine) later(ctx context.Context, m *ctrl.Migration, atCommit bool, answered *ctrl.Migration, rest func(ctx context.Context) error) error {
	if !atCommit {
		return rest(ctx)
	}
	done := make(chan struct{})
	e.tailsMu.Lock()
	e.tails[m.Service] = done
	e.tailsMu.Unlock()
	*answered = *m
	answered.Stages = slices.Clone(m.Stages)
	answered.Stage = ctrl.StageDrain
	name := m.Service
	go func() {
		err := rest(ctx)
		if _, ferr := e.finish(m, err); ferr != nil && !errors.Is(ferr, ErrCrash) {
			e.log.Warn("migration's drain and cleanup", "id", m.ID, "service", name, "err", ferr)
		}
		e.tailsMu.Lock()
		delete(e.tails, name)
		e.tailsMu.Unlock()
		close(done)
		e.changed(name)
	}()
	return errInTail
}
