package ec2fake

import (
	"strings"
	"time"

	"golang.org/x/time/rate"
)

// Bucket is a token bucket: Burst tokens at most, refilled at PerSecond tokens a second.
type Bucket struct {
	Burst     int
	PerSecond float64
}

// Limits are the throttling buckets the fake enforces, per account and region as EC2 does.
// A request takes one token from its action's request-rate bucket; RunInstances and
// TerminateInstances also take one token per instance from their resource-rate bucket.
type Limits struct {
	// Actions overrides the request-rate bucket of individual actions.
	Actions map[string]Bucket
	// NonMutating is the request-rate bucket of Describe* actions.
	NonMutating Bucket
	// Mutating is the request-rate bucket of other actions.
	Mutating Bucket
	// RunInstancesResource limits the number of instances launched.
	RunInstancesResource Bucket
	// TerminateInstancesResource limits the number of instances terminated.
	TerminateInstancesResource Bucket
}

// PublishedLimits returns EC2's published default buckets (the "EC2 API request throttling"
// page): non-mutating 100/20 per s, mutating 50/5 per s, CreateTags 100/10 per s,
// RunInstances 1000/2 per s for requests and for instances, TerminateInstances 1000/20 per s
// for instances.
func PublishedLimits() Limits {
	return Limits{
		Actions: map[string]Bucket{
			"RunInstances":       {Burst: 1000, PerSecond: 2},
			"TerminateInstances": {Burst: 100, PerSecond: 20},
			"CreateTags":         {Burst: 100, PerSecond: 10},
		},
		NonMutating:                Bucket{Burst: 100, PerSecond: 20},
		Mutating:                   Bucket{Burst: 50, PerSecond: 5},
		RunInstancesResource:       Bucket{Burst: 1000, PerSecond: 2},
		TerminateInstancesResource: Bucket{Burst: 1000, PerSecond: 20},
	}
}

// Scaled returns the limits with every burst multiplied by burst and every refill rate by
// perSecond, so tests can keep EC2's shape at a speed that suits them. Bursts stay at least 1.
func (l Limits) Scaled(burst, perSecond float64) Limits {
	sc := func(b Bucket) Bucket {
		n := int(float64(b.Burst) * burst)
		return Bucket{Burst: max(n, 1), PerSecond: b.PerSecond * perSecond}
	}
	out := Limits{Actions: map[string]Bucket{}}
	for k, v := range l.Actions {
		out.Actions[k] = sc(v)
	}
	out.NonMutating = sc(l.NonMutating)
	out.Mutating = sc(l.Mutating)
	out.RunInstancesResource = sc(l.RunInstancesResource)
	out.TerminateInstancesResource = sc(l.TerminateInstancesResource)
	return out
}

// RequestBucket returns the request-rate bucket of action.
func (l Limits) RequestBucket(action string) Bucket {
	if b, ok := l.Actions[action]; ok {
		return b
	}
	if strings.HasPrefix(action, "Describe") {
		return l.NonMutating
	}
	return l.Mutating
}

// buckets holds the live token buckets; a nil *buckets allows everything.
type buckets struct {
	limits   Limits
	requests map[string]*rate.Limiter
	run      *rate.Limiter
	term     *rate.Limiter
}

func newBuckets(l *Limits) *buckets {
	if l == nil {
		return nil
	}
	return &buckets{
		limits:   *l,
		requests: map[string]*rate.Limiter{},
		run:      newLimiter(l.RunInstancesResource),
		term:     newLimiter(l.TerminateInstancesResource),
	}
}

func newLimiter(b Bucket) *rate.Limiter {
	return rate.NewLimiter(rate.Limit(b.PerSecond), b.Burst)
}

// allowRequest takes a token from action's request-rate bucket.
func (b *buckets) allowRequest(action string, now time.Time) bool {
	if b == nil {
		return true
	}
	l, ok := b.requests[action]
	if !ok {
		l = newLimiter(b.limits.RequestBucket(action))
		b.requests[action] = l
	}
	return l.AllowN(now, 1)
}

// allowResource takes n tokens from the resource-rate bucket of RunInstances or
// TerminateInstances.
func (b *buckets) allowResource(action string, n int, now time.Time) bool {
	if b == nil {
		return true
	}
	switch action {
	case "RunInstances":
		return b.run.AllowN(now, n)
	case "TerminateInstances":
		return b.term.AllowN(now, n)
	}
	return true
}
