// Package loop runs a controller's periodic reconcile on a client-go workqueue: one key, never
// processed twice at once, requeued after the delay each reconcile returns. Time comes from an
// injected clock so tests drive it with a fake one.
package loop

import (
	"context"
	"time"

	"k8s.io/client-go/util/workqueue"
	"k8s.io/utils/clock"
)

// Reconcile does one pass and returns how long to wait before the next.
type Reconcile func(ctx context.Context) time.Duration

// Run calls reconcile first after initial, then after each delay it returns, until ctx ends.
// name labels the queue; clk nil means the real clock.
func Run(ctx context.Context, name string, clk clock.WithTicker, initial time.Duration, reconcile Reconcile) {
	if clk == nil {
		clk = clock.RealClock{}
	}
	q := workqueue.NewTypedDelayingQueueWithConfig(workqueue.TypedDelayingQueueConfig[string]{Name: name, Clock: clk})
	go func() {
		<-ctx.Done()
		q.ShutDown()
	}()
	q.AddAfter(name, initial)
	for {
		key, quit := q.Get()
		if quit {
			return
		}
		next := reconcile(ctx)
		q.Done(key)
		if ctx.Err() != nil {
			return
		}
		q.AddAfter(key, next)
	}
}
