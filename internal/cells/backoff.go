package cells

import (
	"math"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"
)

// backoff yields exponentially growing delays with jitter, capped at max, never running out.
type backoff struct{ b wait.Backoff }

func newBackoff(initial, max time.Duration) *backoff {
	return &backoff{wait.Backoff{Duration: initial, Factor: 2, Jitter: 0.1, Steps: math.MaxInt32, Cap: max}}
}

// next returns the next delay: the current one plus up to 10%, then doubles it up to max.
func (b *backoff) next() time.Duration { return b.b.Step() }
