package loop

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"k8s.io/client-go/util/workqueue"
	"k8s.io/utils/clock"
)

// Keys is the worker pool the push controllers (svcpush, volpush, ephpush) share: a
// rate-limited client-go workqueue of keys (a cell, a pod), worked by a bounded number of
// goroutines, with a periodic resync that queues every key again. A key whose sync fails is
// logged and retried with exponential back-off; one that succeeds has its back-off forgotten.
// A key is never synced twice at once (the workqueue's guarantee).
type Keys struct {
	opts  KeysOptions
	queue workqueue.TypedRateLimitingInterface[string]
}

// KeysOptions configure a Keys. Name, Sync and Resync are required; zero durations and
// Parallelism take the defaults given.
type KeysOptions struct {
	// Name labels the queue and the log lines.
	Name string
	// Parallelism bounds the keys synced at once (default 4).
	Parallelism int
	// FirstResync is the delay before the first resync (0: at once); ResyncInterval the
	// period of the next ones (default 30 s).
	FirstResync, ResyncInterval time.Duration
	// MinRetry and MaxRetry bound the per-key retry back-off (defaults 200 ms, 30 s).
	MinRetry, MaxRetry time.Duration
	// Resync queues the keys a resync covers, through add; it may also forget keys gone.
	Resync func(add func(key string))
	// Sync brings one key up to date; an error retries it with back-off.
	Sync func(ctx context.Context, key string) error
	// Retrying is the log message for a failed sync ("pushing X; retrying").
	Retrying string
	Clock    clock.WithTicker
	Log      *slog.Logger
}

// NewKeys returns a pool; start it with Run. Keys added before Run are kept.
func NewKeys(opts KeysOptions) *Keys {
	if opts.Parallelism <= 0 {
		opts.Parallelism = 4
	}
	if opts.ResyncInterval <= 0 {
		opts.ResyncInterval = 30 * time.Second
	}
	if opts.MinRetry <= 0 {
		opts.MinRetry = 200 * time.Millisecond
	}
	if opts.MaxRetry <= 0 {
		opts.MaxRetry = 30 * time.Second
	}
	if opts.Clock == nil {
		opts.Clock = clock.RealClock{}
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	if opts.Retrying == "" {
		opts.Retrying = opts.Name + ": sync failed; retrying"
	}
	return &Keys{
		opts: opts,
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(
			workqueue.NewTypedItemExponentialFailureRateLimiter[string](opts.MinRetry, opts.MaxRetry),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: opts.Name, Clock: opts.Clock}),
	}
}

// resyncKey is the queue key that stands for "run Resync": resyncs go through the queue so
// that two never run at once and they share the workers' bound.
const resyncKey = "\x00resync"

// Add queues key now.
func (k *Keys) Add(key string) { k.queue.Add(key) }

// AddRateLimited queues key after its back-off (a failure seen outside Sync).
func (k *Keys) AddRateLimited(key string) { k.queue.AddRateLimited(key) }

// ResyncNow queues a resync now.
func (k *Keys) ResyncNow() { k.queue.Add(resyncKey) }

// Retries is how many times key has been retried since its last success.
func (k *Keys) Retries(key string) int { return k.queue.NumRequeues(key) }

// Len is the number of keys waiting (not those in back-off).
func (k *Keys) Len() int { return k.queue.Len() }

// Run works the queue until ctx ends, then waits for the workers to return.
func (k *Keys) Run(ctx context.Context) {
	go func() {
		<-ctx.Done()
		k.queue.ShutDown()
	}()
	var wg sync.WaitGroup
	wg.Go(func() {
		Run(ctx, k.opts.Name+"-resync", k.opts.Clock, k.opts.FirstResync, func(context.Context) time.Duration {
			k.ResyncNow()
			return k.opts.ResyncInterval
		})
	})
	for range k.opts.Parallelism {
		wg.Go(func() {
			for k.work(ctx) {
			}
		})
	}
	wg.Wait()
}

// work handles one key; it reports false once the queue is shut down.
func (k *Keys) work(ctx context.Context) bool {
	key, quit := k.queue.Get()
	if quit {
		return false
	}
	defer k.queue.Done(key)
	if key == resyncKey {
		k.opts.Resync(k.queue.Add)
		return true
	}
	err := k.opts.Sync(ctx, key)
	switch {
	case err == nil:
		k.queue.Forget(key)
	case ctx.Err() != nil:
	default:
		k.opts.Log.Warn(k.opts.Retrying, "key", key, "err", err, "retries", k.queue.NumRequeues(key))
		k.queue.AddRateLimited(key)
	}
	return true
}
