// This file holds when a replica answers placements: it joins the queue
// group (adds the micro service) only once its view is warm, that is the
// registry is restored from the compact view and a full round of hellos
// has been heard since it subscribed (or last reconnected), and it leaves
// as soon as a connection drops. A replica never answers from a cold view,
// where live clusters would look down and requests get "no placement".

package meta

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go/micro"
)

// servingState is the replica's way to the queue group.
type servingState struct {
	mu        sync.Mutex
	svc       micro.Service // set while serving
	restored  bool
	helloUp   bool
	placeUp   bool
	warmFrom  time.Time // hellos heard since
	closed    bool
	changed   chan struct{} // closed and replaced at every change
	kickCh    chan struct{}
	joinError error
}

func (st *servingState) init() {
	st.changed = make(chan struct{})
	st.kickCh = make(chan struct{}, 1)
}

func (st *servingState) notifyLocked() {
	close(st.changed)
	st.changed = make(chan struct{})
	select {
	case st.kickCh <- struct{}{}:
	default:
	}
}

// connected records the connections' state; a hello connection that comes
// back starts a new warm-up round (hellos were missed meanwhile).
func (st *servingState) connected(helloUp, placeUp bool, now time.Time) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if helloUp && (!st.helloUp || st.warmFrom.IsZero()) {
		st.warmFrom = now
	}
	st.helloUp, st.placeUp = helloUp, placeUp
	st.notifyLocked()
}

func (st *servingState) restoredNow() {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.restored = true
	st.notifyLocked()
}

func (st *servingState) closing() {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.closed = true
	if st.svc != nil {
		_ = st.svc.Stop()
		st.svc = nil
	}
	st.notifyLocked()
}

func (st *servingState) isServing() bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.svc != nil
}

// warm reports whether the view is warm at now, and if not, when it may be.
func (st *servingState) warmLocked(now time.Time, warmUp time.Duration) (bool, time.Time) {
	if !st.restored || !st.helloUp || !st.placeUp || st.closed {
		return false, time.Time{}
	}
	at := st.warmFrom.Add(warmUp)
	return !now.Before(at), at
}

// why says what the replica waits for (for /readyz).
func (st *servingState) why(now time.Time, warmUp time.Duration) string {
	st.mu.Lock()
	defer st.mu.Unlock()
	switch {
	case st.closed:
		return "closing"
	case !st.helloUp || !st.placeUp:
		return "nats disconnected"
	case !st.restored:
		return "restoring the registry from jetstream"
	case st.joinError != nil:
		return "joining the queue group: " + st.joinError.Error()
	}
	return fmt.Sprintf("warming up: hellos heard for %s of %s", now.Sub(st.warmFrom).Round(time.Millisecond), warmUp)
}

// Serving reports whether this replica is in the queue group.
func (s *Server) Serving() bool { return s.serving.isServing() }

// WaitServing waits until this replica answers placements.
func (s *Server) WaitServing(ctx context.Context) error {
	for {
		s.serving.mu.Lock()
		ok, ch := s.serving.svc != nil, s.serving.changed
		s.serving.mu.Unlock()
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for %s to serve: %w (%s)", s.name, ctx.Err(), s.serving.why(time.Now(), s.cfg.WarmUp))
		case <-ch:
		}
	}
}

// serveLoop joins the queue group when the view is warm and leaves it when
// it is not.
func (s *Server) serveLoop(ctx context.Context) {
	st := &s.serving
	for {
		now := time.Now()
		st.mu.Lock()
		warm, at := st.warmLocked(now, s.cfg.WarmUp)
		var wait time.Duration
		switch {
		case warm && st.svc == nil:
			svc, err := s.join()
			st.joinError = err
			if err != nil {
				s.limiter.log(s.log, "join", "join the queue group", "err", err)
				wait = time.Second
				break
			}
			st.svc = svc
			s.log.Info("serving placements", "clusters", s.reg.Len())
			st.notifyLocked()
		case !warm && st.svc != nil:
			_ = st.svc.Stop()
			st.svc = nil
			s.log.Warn("left the queue group until the view is warm again", "hello_conn", st.helloUp, "place_conn", st.placeUp, "closing", st.closed)
			st.notifyLocked()
		}
		if !warm && !at.IsZero() {
			wait = at.Sub(now)
		}
		st.mu.Unlock()
		var timer <-chan time.Time
		if wait > 0 {
			timer = time.After(wait)
		}
		select {
		case <-ctx.Done():
			return
		case <-st.kickCh:
		case <-timer:
		}
	}
}

// join adds the micro service: its place endpoint subscribes in the queue
// group, so from now on this replica takes its share of requests.
func (s *Server) join() (micro.Service, error) {
	svc, err := micro.AddService(s.nc, micro.Config{
		Name:        ServiceName,
		Version:     "1.1.0",
		Description: "roam meta-orchestrator: cluster registry and placement",
		QueueGroup:  QueueGroup,
		Metadata:    map[string]string{"replica": s.name, "policy": s.policy.Name()},
	})
	if err != nil {
		return nil, fmt.Errorf("add micro service: %w", err)
	}
	if err := svc.AddEndpoint("place", micro.HandlerFunc(s.handlePlace), micro.WithEndpointSubject(SubjectPlace),
		micro.WithEndpointPendingLimits(1<<16, 64<<20)); err != nil {
		_ = svc.Stop()
		return nil, fmt.Errorf("add place endpoint: %w", err)
	}
	if err := s.nc.Flush(); err != nil {
		_ = svc.Stop()
		return nil, fmt.Errorf("flush subscriptions: %w", err)
	}
	return svc, nil
}
