package tick

import (
	"context"
	"testing"
	"time"
)

// TestEveryUntilDone: fn runs again and again, never before the first
// period, and Every returns once the context ends.
func TestEveryUntilDone(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	start := time.Now()
	var first time.Duration
	n := 0
	done := make(chan struct{})
	go func() {
		defer close(done)
		Every(ctx, 5*time.Millisecond, func() {
			if n == 0 {
				first = time.Since(start)
			}
			if n++; n >= 3 {
				cancel()
			}
		})
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Every did not return after its context ended")
	}
	if n < 3 {
		t.Errorf("fn ran %d times, want at least 3 (the context ended at the third)", n)
	}
	if first < 5*time.Millisecond {
		t.Errorf("first run after %v, want at least the period", first)
	}
}

// TestEveryEndedContext: a context already ended runs nothing.
func TestEveryEndedContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	Every(ctx, time.Millisecond, func() { t.Error("fn ran under an ended context") })
}
