package aws

import (
	"testing"
	"time"

	"github.com/kip-dev/kip/internal/cloud"
)

// A refresh fills byID but leaves launchAt nil; a launch after it must record both.
func TestCacheLaunchedAfterRefresh(t *testing.T) {
	c := instanceCache{byID: map[string]*cloud.Instance{}}
	now := time.Now()
	c.launched(&cloud.Instance{ID: "i-1"}, now)
	if c.byID["i-1"] == nil || !c.launchAt["i-1"].Equal(now) {
		t.Errorf("launched after a refresh: byID %v, launchAt %v", c.byID, c.launchAt)
	}
}
