package controller

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"golang.org/x/time/rate"
	"k8s.io/client-go/util/workqueue"

	"github.com/roamnet/roam/ctrl/migrate"
	"github.com/roamnet/roam/internal/tick"
)

// reconciler runs the engine's reconcilers the way sample-controller runs
// its: a rate-limited work queue of service names, a few workers taking one
// name at a time (a name is never worked on by two at once), a periodic
// resync that queues every name, and side loops that queue what they find
// (the fail-safe's lost services) or act on their own (collecting what no
// record owns, the bandwidth policy). Every reconcile runs under a deadline;
// a failed one is retried with backoff.
type reconciler struct {
	eng     *migrate.Engine
	log     *slog.Logger
	q       workqueue.TypedRateLimitingInterface[string]
	workers int
	// resync queues every key; probe, collect and policy pace their loops.
	resync, probe, collect, policy time.Duration
	timeout                        time.Duration // per reconcile
}

func newReconciler(eng *migrate.Engine, log *slog.Logger, workers int, resync, probe, collect, policy, timeout time.Duration) *reconciler {
	// Per service: 100 ms doubling to 30 s after each failure; overall: at
	// most 50 retries a second (bursts of 200), so a cluster with many
	// services in trouble does not hammer its peers.
	limiter := workqueue.NewTypedMaxOfRateLimiter(
		workqueue.NewTypedItemExponentialFailureRateLimiter[string](100*time.Millisecond, 30*time.Second),
		&workqueue.TypedBucketRateLimiter[string]{Limiter: rate.NewLimiter(rate.Limit(50), 200)},
	)
	q := workqueue.NewTypedRateLimitingQueueWithConfig(limiter, workqueue.TypedRateLimitingQueueConfig[string]{Name: "roam-ctrl-services"})
	r := &reconciler{eng: eng, log: log, q: q, workers: workers, resync: resync, probe: probe, collect: collect, policy: policy, timeout: timeout}
	eng.SetNotify(q.Add)
	return r
}

// run works the queue until ctx ends. keys are queued first (what the
// controller must recover).
func (r *reconciler) run(ctx context.Context, keys []string) {
	for _, k := range keys {
		r.q.Add(k)
	}
	var wg sync.WaitGroup
	for range r.workers {
		wg.Go(func() {
			for r.next(ctx) {
			}
		})
	}
	wg.Go(func() { r.every(ctx, r.resync, r.queueAll) })
	wg.Go(func() {
		r.every(ctx, r.probe, func(ctx context.Context) {
			for _, name := range r.eng.Probe(ctx) {
				r.q.Add(name)
			}
		})
	})
	wg.Go(func() {
		r.every(ctx, r.collect, func(ctx context.Context) {
			if err := r.eng.Collect(ctx); err != nil {
				r.log.Warn("collect", "err", err)
			}
		})
	})
	wg.Go(func() { r.every(ctx, r.policy, r.eng.Policy) })
	<-ctx.Done()
	r.q.ShutDown()
	wg.Wait()
}

// every runs fn every d until ctx ends (each run under the reconcile
// deadline).
func (r *reconciler) every(ctx context.Context, d time.Duration, fn func(context.Context)) {
	tick.Every(ctx, d, func() {
		fctx, cancel := context.WithTimeout(ctx, r.timeout)
		fn(fctx)
		cancel()
	})
}

func (r *reconciler) queueAll(ctx context.Context) {
	keys, err := r.eng.Keys()
	if err != nil {
		r.log.Warn("resync: list keys", "err", err)
		return
	}
	for _, k := range keys {
		r.q.Add(k)
	}
}

// next reconciles one name from the queue; false once the queue shuts down.
func (r *reconciler) next(ctx context.Context) bool {
	name, shutdown := r.q.Get()
	if shutdown {
		return false
	}
	defer r.q.Done(name)
	rctx, cancel := context.WithTimeout(ctx, r.timeout)
	again, err := r.eng.Reconcile(rctx, name)
	cancel()
	if err != nil {
		if ctx.Err() == nil {
			r.log.Warn("reconcile, will retry", "service", name, "retries", r.q.NumRequeues(name), "err", err)
		}
		r.q.AddRateLimited(name)
		return true
	}
	r.q.Forget(name)
	if again > 0 {
		r.q.AddAfter(name, again)
	}
	return true
}
