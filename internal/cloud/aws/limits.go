package aws

import (
	"context"
	"errors"
	"math"
	"time"

	"golang.org/x/time/rate"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/kip-dev/kip/internal/cloud"
	"github.com/kip-dev/kip/internal/cloud/aws/ec2limits"
)

// DefaultLimits returns the backend's client-side buckets: 80% of EC2's published defaults
// (ec2limits.Published), so that Kip leaves room for other clients of the account and, even
// when requests bunch up on their way, is not throttled itself.
func DefaultLimits() ec2limits.Limits { return ec2limits.Published().Scaled(0.8, 0.8) }

type limiters struct {
	requests map[string]*rate.Limiter
	run      *rate.Limiter
	term     *rate.Limiter
}

func newLimiters(l ec2limits.Limits) *limiters {
	ls := &limiters{requests: map[string]*rate.Limiter{}, run: l.RunInstances.Limiter(), term: l.TerminateInstances.Limiter()}
	for _, a := range ec2Actions() {
		ls.requests[a] = l.Request(a).Limiter()
	}
	return ls
}

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

// throttleBackOff is the wait before retrying a throttled call: uniform in [d, 2d], d doubling
// from 100ms to 10s (100-200ms at first, 10-20s at most). Steps never runs out: reaching the
// cap ends the doubling, not the retries.
func throttleBackOff() wait.Backoff {
	return wait.Backoff{Duration: 100 * time.Millisecond, Factor: 2, Jitter: 1, Cap: 10 * time.Second, Steps: math.MaxInt32}
}

// call runs one EC2 call for n instances: it waits on the client-side buckets, sends it and,
// when EC2 throttles anyway, backs off (exponentially, with jitter, from 200ms to 20s) and
// tries again until ctx ends. The error returned is classified. (wait.ExponentialBackoff
// does not fit: it stops at the cap, and each try must wait on the buckets again.)
func (b *Backend) call(ctx context.Context, action string, n int, fn func(context.Context) error) error {
	bo := throttleBackOff()
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
		d := bo.Step()
		b.log.Debug("EC2 throttled the call, backing off", "action", action, "delay", d)
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return cloud.Wrap(cloud.KindThrottled, errors.Join(ctx.Err(), err), "%s still throttled", action)
		case <-t.C:
		}
	}
}

// Throttled returns how many times EC2 refused a call with a throttling error (each retried).
func (b *Backend) Throttled() int64 { return b.throttled.Load() }
