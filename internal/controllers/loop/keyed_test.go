package loop

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

// TestKeysRetryThenForget runs a pool on the real clock: a resync queues two keys; one fails
// twice and is retried after at least 50 ms and then 100 ms of back-off (lower bounds only:
// a loaded machine makes the gaps longer, never shorter); once it succeeds its back-off is
// forgotten, and the key that succeeded at once is synced once.
func TestKeysRetryThenForget(t *testing.T) {
	const minRetry = 50 * time.Millisecond
	var mu sync.Mutex
	at := map[string][]time.Time{}
	fail := map[string]int{"b": 2}
	k := NewKeys(KeysOptions{
		Name:           "test",
		ResyncInterval: time.Hour,
		MinRetry:       minRetry,
		MaxRetry:       time.Minute,
		Resync:         func(add func(string)) { add("a"); add("b") },
		Sync: func(_ context.Context, key string) error {
			mu.Lock()
			defer mu.Unlock()
			at[key] = append(at[key], time.Now())
			if fail[key] > 0 {
				fail[key]--
				return errors.New("boom")
			}
			return nil
		},
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); k.Run(ctx) }()
	defer func() { cancel(); <-done }()

	calls := func(key string) []time.Time {
		mu.Lock()
		defer mu.Unlock()
		return append([]time.Time(nil), at[key]...)
	}
	deadline := time.Now().Add(30 * time.Second)
	for len(calls("b")) < 3 || k.Retries("b") != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("b synced %d times with %d retries pending, want 3 and 0 (forgotten)", len(calls("b")), k.Retries("b"))
		}
		time.Sleep(time.Millisecond)
	}
	b := calls("b")
	if gap := b[1].Sub(b[0]); gap < minRetry {
		t.Errorf("first retry after %v, want at least %v", gap, minRetry)
	}
	if gap := b[2].Sub(b[1]); gap < 2*minRetry {
		t.Errorf("second retry after %v, want at least %v (doubled)", gap, 2*minRetry)
	}
	if n := len(calls("a")); n != 1 {
		t.Errorf("a synced %d times, want 1", n)
	}
}
