package vnode

import (
	"testing"
	"time"
)

// TestRetryLimiter: a key's first enqueue since it was processed waits nothing; each retry
// after it doubles from base up to max; Forget starts the key afresh, and keys are apart.
func TestRetryLimiter(t *testing.T) {
	r := newRetryLimiter(5*time.Millisecond, 40*time.Millisecond)
	want := []time.Duration{0, 5 * time.Millisecond, 10 * time.Millisecond, 20 * time.Millisecond, 40 * time.Millisecond, 40 * time.Millisecond}
	for i, w := range want {
		if got := r.When("a"); got != w {
			t.Errorf("When #%d = %v, want %v", i+1, got, w)
		}
	}
	if n := r.NumRequeues("a"); n != len(want)-1 {
		t.Errorf("NumRequeues = %d, want %d", n, len(want)-1)
	}
	if got := r.When("b"); got != 0 {
		t.Errorf("another key's first When = %v, want 0", got)
	}
	r.Forget("a")
	if n := r.NumRequeues("a"); n != 0 {
		t.Errorf("NumRequeues after Forget = %d, want 0", n)
	}
	if got := r.When("a"); got != 0 {
		t.Errorf("When after Forget = %v, want 0", got)
	}
}

// TestRetryLimiterBurst: however many keys are enqueued at once, none waits (the default
// limiter's shared bucket would delay those past its burst of 100).
func TestRetryLimiterBurst(t *testing.T) {
	r := newRetryLimiter(retryBase, retryMax)
	for i := range 1000 {
		if got := r.When(i); got != 0 {
			t.Fatalf("key %d waits %v", i, got)
		}
		r.Forget(i)
	}
}
