package cells

import (
	"testing"
	"time"
)

func TestBackoffDoublesToItsCap(t *testing.T) {
	bo := newBackoff(time.Second, 5*time.Second)
	for i, base := range []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 5 * time.Second, 5 * time.Second, 5 * time.Second} {
		if d := bo.next(); d < base || d > base+base/10 {
			t.Errorf("delay %d = %v, want %v plus at most 10%%", i, d, base)
		}
	}
}
