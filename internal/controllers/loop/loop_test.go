package loop

import (
	"context"
	"sync"
	"testing"
	"time"

	testingclock "k8s.io/utils/clock/testing"
)

// TestRunRequeuesAfterTheReturnedDelay steps a fake clock a second at a time and checks when
// the reconciles happen: first after the initial delay, then after each returned delay.
func TestRunRequeuesAfterTheReturnedDelay(t *testing.T) {
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	clk := testingclock.NewFakeClock(start)
	ctx, cancel := context.WithCancel(context.Background())
	var mu sync.Mutex
	var at []time.Duration
	done := make(chan struct{})
	go func() {
		defer close(done)
		Run(ctx, "test", clk, 3*time.Second, func(context.Context) time.Duration {
			mu.Lock()
			defer mu.Unlock()
			at = append(at, clk.Since(start))
			return 10 * time.Second
		})
	}()
	calls := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(at)
	}
	deadline := time.Now().Add(20 * time.Second)
	for calls() < 3 && time.Now().Before(deadline) {
		// Let the queue arm its timer for the current time before moving the clock on.
		time.Sleep(5 * time.Millisecond)
		clk.Step(time.Second)
	}
	cancel()
	<-done
	mu.Lock()
	defer mu.Unlock()
	if len(at) < 3 {
		t.Fatalf("reconciled at %v; want three passes", at)
	}
	// A step may land just before the timer is armed, so each gap may run a few seconds long under load.
	within := func(got, want time.Duration) bool { return got >= want && got <= want+3*time.Second }
	if !within(at[0], 3*time.Second) || !within(at[1]-at[0], 10*time.Second) || !within(at[2]-at[1], 10*time.Second) {
		t.Errorf("reconciled at %v; want 3s, then every 10s", at)
	}
}
