package ec2fake

import (
	"time"

	"golang.org/x/time/rate"

	"github.com/kip-dev/kip/internal/cloud/aws/ec2limits"
)

// buckets holds the live token buckets; a nil *buckets allows everything.
type buckets struct {
	limits   ec2limits.Limits
	requests map[string]*rate.Limiter
	run      *rate.Limiter
	term     *rate.Limiter
}

func newBuckets(l *ec2limits.Limits) *buckets {
	if l == nil {
		return nil
	}
	return &buckets{limits: *l, requests: map[string]*rate.Limiter{},
		run: l.RunInstances.Limiter(), term: l.TerminateInstances.Limiter()}
}

// allowRequest takes a token from action's request-rate bucket.
func (b *buckets) allowRequest(action string, now time.Time) bool {
	if b == nil {
		return true
	}
	l, ok := b.requests[action]
	if !ok {
		l = b.limits.Request(action).Limiter()
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
