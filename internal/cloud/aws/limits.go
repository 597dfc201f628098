package aws

import (
	"context"
	"errors"
	"math/rand/v2"
	"strings"
	"time"

	"golang.org/x/time/rate"

	"github.com/kip-dev/kip/internal/cloud"
)

// Bucket is a token bucket: Burst tokens at most, refilled at PerSecond tokens a second.
type Bucket struct {
	Burst     int
	PerSecond float64
}

// Limits are the backend's client-side token buckets. Every call takes a token from its
// action's bucket before it is sent; RunInstances and TerminateInstances also take one token
// per instance from their instance bucket.
type Limits struct {
	// Actions overrides the bucket of individual actions.
	Actions map[string]Bucket
	// Describe is the bucket of Describe* actions.
	Describe Bucket
	// Mutating is the bucket of other actions.
	Mutating Bucket
	// RunInstances and TerminateInstances limit instances launched and terminated.
	RunInstances, TerminateInstances Bucket
}

// DefaultLimits returns buckets at 80% of EC2's published defaults per account and region
// (non-mutating 100 burst / 20 per s, mutating 50 / 5, RunInstances 1000 / 2 requests and
// instances, TerminateInstances 100 / 20 requests and 1000 / 20 instances), so that Kip
// leaves room for other clients of the account and is not throttled itself.
func DefaultLimits() Limits {
	return Limits{
		Actions: map[string]Bucket{
			"RunInstances":       {Burst: 800, PerSecond: 1.6},
			"TerminateInstances": {Burst: 80, PerSecond: 16},
		},
		Describe:           Bucket{Burst: 80, PerSecond: 16},
		Mutating:           Bucket{Burst: 40, PerSecond: 4},
		RunInstances:       Bucket{Burst: 800, PerSecond: 1.6},
		TerminateInstances: Bucket{Burst: 800, PerSecond: 16},
	}
}

// Scaled returns the limits with bursts multiplied by burst and refill rates by perSecond
// (bursts stay at least 1).
func (l Limits) Scaled(burst, perSecond float64) Limits {
	sc := func(b Bucket) Bucket {
		return Bucket{Burst: max(int(float64(b.Burst)*burst), 1), PerSecond: b.PerSecond * perSecond}
	}
	out := Limits{Actions: map[string]Bucket{}}
	for k, v := range l.Actions {
		out.Actions[k] = sc(v)
	}
	out.Describe, out.Mutating = sc(l.Describe), sc(l.Mutating)
	out.RunInstances, out.TerminateInstances = sc(l.RunInstances), sc(l.TerminateInstances)
	return out
}

type limiters struct {
	requests map[string]*rate.Limiter
	run      *rate.Limiter
	term     *rate.Limiter
}

func newLimiters(l Limits) *limiters {
	ls := &limiters{requests: map[string]*rate.Limiter{}, run: newLimiter(l.RunInstances), term: newLimiter(l.TerminateInstances)}
	for _, a := range ec2Actions() {
		b, ok := l.Actions[a]
		switch {
		case ok:
		case strings.HasPrefix(a, "Describe"):
			b = l.Describe
		default:
			b = l.Mutating
		}
		ls.requests[a] = newLimiter(b)
	}
	return ls
}

func newLimiter(b Bucket) *rate.Limiter { return rate.NewLimiter(rate.Limit(b.PerSecond), b.Burst) }

// maxTerminateBatch is the most instances one TerminateInstances may carry: EC2's 1000, or
// less when the instance bucket is smaller.
func (l *limiters) maxTerminateBatch() int { return min(1000, l.term.Burst()) }

// wait takes the tokens action needs for n instances.
func (l *limiters) wait(ctx context.Context, action string, n int) error {
	if r := l.requests[action]; r != nil {
		if err := r.Wait(ctx); err != nil {
			return err
		}
	}
	switch action {
	case "RunInstances":
		return l.run.WaitN(ctx, n)
	case "TerminateInstances":
		return l.term.WaitN(ctx, n)
	}
	return nil
}

// call runs one EC2 call for n instances: it waits on the client-side buckets, sends it and,
// when EC2 throttles anyway, backs off (exponentially, with jitter, from 200ms to 20s) and
// tries again until ctx ends. The error returned is classified.
func (b *Backend) call(ctx context.Context, action string, n int, fn func(context.Context) error) error {
	delay := 200 * time.Millisecond
	for {
		if err := b.limits.wait(ctx, action, n); err != nil {
			return cloud.Wrap(cloud.KindThrottled, err, "waiting for the %s rate limit", action)
		}
		err := fn(ctx)
		if err == nil {
			return nil
		}
		err = classify(err)
		if !cloud.IsThrottled(err) {
			return err
		}
		b.throttled.Add(1)
		d := delay/2 + rand.N(delay/2+1)
		b.log.Debug("EC2 throttled the call, backing off", "action", action, "delay", d)
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return cloud.Wrap(cloud.KindThrottled, errors.Join(ctx.Err(), err), "%s still throttled", action)
		case <-t.C:
		}
		delay = min(2*delay, 20*time.Second)
	}
}

// Throttled returns how many times EC2 refused a call with a throttling error (each retried).
func (b *Backend) Throttled() int64 { return b.throttled.Load() }
