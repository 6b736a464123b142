// Package tick runs a function at a fixed period until a context ends
// (tick.Every(ctx, time.Second, resync)) or until it succeeds
// (tick.Until(ctx, time.Minute, 100*time.Millisecond, ready)). A leaf
// package: it imports nothing of roam.
package tick

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Every calls fn every d, the first time d after the call, and returns
// when it finds ctx ended between two calls (it never interrupts fn).
func Every(ctx context.Context, d time.Duration, fn func()) {
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		fn()
	}
}

// Until calls f every period, the first time at once, until it returns
// nil or within passes (or ctx ends); the error is then f's last, saying
// how long it was tried. An error f marks with Final ends the wait at once
// and is returned as it is. Tests and tools wait for a state with it.
func Until(ctx context.Context, within, period time.Duration, f func() error) error {
	ctx, cancel := context.WithTimeout(ctx, within)
	defer cancel()
	for {
		err := f()
		if err == nil {
			return nil
		}
		if fe := (finalError{}); errors.As(err, &fe) {
			return fe.err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("after %s: %w", within, err)
		case <-time.After(period):
		}
	}
}

// Final marks err as one that waiting longer cannot cure (the process
// waited for has exited): Until returns err at once.
func Final(err error) error { return finalError{err} }

type finalError struct{ err error }

func (e finalError) Error() string { return e.err.Error() }
func (e finalError) Unwrap() error { return e.err }
