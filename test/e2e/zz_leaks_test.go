//go:build e2e

package e2e

import (
	"testing"
	"time"
)

// TestZZNoLeaks runs last (go test runs tests in file-name, then source order): once every
// other test's namespace is gone, no cell may be alive and no cell state may remain.
func TestZZNoLeaks(t *testing.T) {
	e := need(t)
	e.CheckNoLeaks(t, 2*time.Minute)
}
