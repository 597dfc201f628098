package vnode

import (
	"sync"
	"time"

	"k8s.io/client-go/util/workqueue"
)

// retryLimiter is the rate limiter of the pod controller's queues. virtual-kubelet's default
// (client-go's controller limiter) delays every enqueue by at least 5 ms and shares one
// token bucket of 10 per second (burst 100) among all pods, so a burst of pods, each with a
// handful of status changes, waits seconds for tokens. Here only retries wait: the first
// enqueue of a key since it was last processed runs at once, and each failure after it
// doubles the delay from base up to max. What protects the API server is the client's own
// QPS limit, which every request of kip passes.
type retryLimiter struct {
	base, max time.Duration

	mu       sync.Mutex
	failures map[any]int
}

var _ workqueue.TypedRateLimiter[any] = (*retryLimiter)(nil)

func newRetryLimiter(base, max time.Duration) *retryLimiter {
	return &retryLimiter{base: base, max: max, failures: map[any]int{}}
}

// When is called for every rate-limited insertion of item: the first since Forget is the
// item's first attempt, each later one a retry.
func (r *retryLimiter) When(item any) time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := r.failures[item]
	r.failures[item] = n + 1
	if n == 0 {
		return 0
	}
	d := r.base
	for i := 1; i < n && d < r.max; i++ {
		d *= 2
	}
	return min(d, r.max)
}

// Forget is called once item was processed (successfully, or given up on).
func (r *retryLimiter) Forget(item any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.failures, item)
}

// NumRequeues is how many times item was retried since it was last forgotten.
func (r *retryLimiter) NumRequeues(item any) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return max(r.failures[item]-1, 0)
}
