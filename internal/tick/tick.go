// Package tick runs a function at a fixed period until a context ends:
// tick.Every(ctx, time.Second, resync). A leaf package: it imports nothing
// of roam.
package tick

import (
	"context"
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
