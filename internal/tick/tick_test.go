package tick

import (
	"context"
	"errors"
	"fmt"
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

// TestUntil: f is called until it succeeds; one that never does is given
// up after within, with its last error; an ended context ends it too.
func TestUntil(t *testing.T) {
	n := 0
	if err := Until(context.Background(), 10*time.Second, time.Millisecond, func() error {
		if n++; n < 3 {
			return errors.New("not yet")
		}
		return nil
	}); err != nil || n != 3 {
		t.Fatalf("Until: %v after %d calls, want nil after 3", err, n)
	}
	last := errors.New("still down")
	start := time.Now()
	err := Until(context.Background(), 30*time.Millisecond, time.Millisecond, func() error { return last })
	if !errors.Is(err, last) || time.Since(start) < 30*time.Millisecond {
		t.Fatalf("Until of a failing f: %v after %s, want its error after 30ms", err, time.Since(start))
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := Until(ctx, time.Hour, time.Millisecond, func() error { return last }); !errors.Is(err, last) {
		t.Fatalf("Until with an ended context: %v, want f's error at once", err)
	}
}

// TestUntilFinal: an error marked Final ends the wait at once (not after
// within) and comes back as it was, not marked.
func TestUntilFinal(t *testing.T) {
	gone := errors.New("exited")
	n := 0
	start := time.Now()
	err := Until(context.Background(), time.Hour, time.Millisecond, func() error {
		if n++; n < 3 {
			return errors.New("not yet")
		}
		return fmt.Errorf("wait: %w", Final(gone))
	})
	if err != gone || n != 3 || time.Since(start) > time.Minute {
		t.Fatalf("Until: %v after %d calls and %s, want %v after 3 at once", err, n, time.Since(start), gone)
	}
}
