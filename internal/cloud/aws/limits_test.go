package aws

import (
	"testing"
	"time"
)

// TestThrottleBackOff: a throttled call waits 100-200ms at first, each range doubling, and
// 10-20s at most however often it is throttled.
func TestThrottleBackOff(t *testing.T) {
	bo := throttleBackOff()
	lo := 100 * time.Millisecond
	for i := range 20 {
		d := bo.Step()
		if d < lo || d > 2*lo {
			t.Fatalf("wait %d is %s, want within [%s, %s]", i+1, d, lo, 2*lo)
		}
		lo = min(2*lo, 10*time.Second)
	}
}
