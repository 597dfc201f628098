// Package ec2limits describes EC2 API throttling as EC2 applies it: token buckets per account
// and region, one request-rate bucket per action (by category) and resource-rate buckets
// counting the instances RunInstances launches and TerminateInstances terminates. The EC2 fake
// enforces such limits; the backend sizes its client-side buckets from them.
package ec2limits

import (
	"strings"

	"golang.org/x/time/rate"
)

// Bucket is a token bucket: Burst tokens at most, refilled at PerSecond tokens a second.
type Bucket struct {
	Burst     int
	PerSecond float64
}

// Limiter returns a limiter implementing the bucket, full.
func (b Bucket) Limiter() *rate.Limiter { return rate.NewLimiter(rate.Limit(b.PerSecond), b.Burst) }

// Limits are a full set of buckets.
type Limits struct {
	// Actions overrides the request-rate bucket of individual actions.
	Actions map[string]Bucket
	// NonMutating is the request-rate bucket of Describe* actions.
	NonMutating Bucket
	// Mutating is the request-rate bucket of the other actions.
	Mutating Bucket
	// RunInstances and TerminateInstances count instances launched and terminated.
	RunInstances, TerminateInstances Bucket
}

// Published returns EC2's published default buckets (the "Request throttling for the Amazon EC2
// API" page): non-mutating actions 100 burst and 20 per second, mutating 50 and 5, CreateTags
// 100 and 10, RunInstances 1000 and 2 for requests and for instances, TerminateInstances 100
// and 20 for requests and 1000 and 20 for instances.
func Published() Limits {
	return Limits{
		Actions: map[string]Bucket{
			"RunInstances":       {Burst: 1000, PerSecond: 2},
			"TerminateInstances": {Burst: 100, PerSecond: 20},
			"CreateTags":         {Burst: 100, PerSecond: 10},
		},
		NonMutating:        Bucket{Burst: 100, PerSecond: 20},
		Mutating:           Bucket{Burst: 50, PerSecond: 5},
		RunInstances:       Bucket{Burst: 1000, PerSecond: 2},
		TerminateInstances: Bucket{Burst: 1000, PerSecond: 20},
	}
}

// Scaled returns the limits with every burst multiplied by burst and every refill rate by
// perSecond. Bursts stay at least 1.
func (l Limits) Scaled(burst, perSecond float64) Limits {
	sc := func(b Bucket) Bucket {
		return Bucket{Burst: max(int(float64(b.Burst)*burst), 1), PerSecond: b.PerSecond * perSecond}
	}
	out := Limits{Actions: make(map[string]Bucket, len(l.Actions))}
	for k, v := range l.Actions {
		out.Actions[k] = sc(v)
	}
	out.NonMutating, out.Mutating = sc(l.NonMutating), sc(l.Mutating)
	out.RunInstances, out.TerminateInstances = sc(l.RunInstances), sc(l.TerminateInstances)
	return out
}

// Request returns the request-rate bucket of action.
func (l Limits) Request(action string) Bucket {
	if b, ok := l.Actions[action]; ok {
		return b
	}
	if strings.HasPrefix(action, "Describe") {
		return l.NonMutating
	}
	return l.Mutating
}
