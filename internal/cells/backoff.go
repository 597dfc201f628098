package cells

import (
	"math/rand/v2"
	"time"
)

// backoff yields exponentially growing delays with jitter, capped at max.
type backoff struct {
	cur, max time.Duration
}

func newBackoff(initial, max time.Duration) *backoff { return &backoff{cur: initial, max: max} }

// next returns the next delay: the current one ±10%, then doubles it up to max.
func (b *backoff) next() time.Duration {
	d := b.cur
	b.cur *= 2
	if b.cur > b.max {
		b.cur = b.max
	}
	jitter := time.Duration(rand.Int64N(int64(d)/5+1)) - d/10
	return d + jitter
}
