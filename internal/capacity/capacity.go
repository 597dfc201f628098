// Package capacity remembers offerings (instance type, zone, market) that recently lacked
// capacity, so that launches try them last or not at all until the memory fades. It is the one
// such memory in kip: the cells manager orders its candidates by it and the AWS backend
// reports remembered offerings unavailable.
package capacity

import (
	"sync"
	"time"

	"k8s.io/utils/clock"
)

// Offering names what lacked capacity.
type Offering struct {
	Type string
	Zone string
	Spot bool
}

// Memory remembers capacity failures for a fixed time. It is safe for concurrent use.
type Memory struct {
	clock clock.PassiveClock
	ttl   time.Duration

	mu    sync.Mutex
	until map[Offering]time.Time
}

// New returns a memory that keeps each failure for ttl, as told by clk (nil: the real clock).
func New(clk clock.PassiveClock, ttl time.Duration) *Memory {
	if clk == nil {
		clk = clock.RealClock{}
	}
	return &Memory{clock: clk, ttl: ttl, until: map[Offering]time.Time{}}
}

// Remember records that o lacked capacity now.
func (m *Memory) Remember(o Offering) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.until[o] = m.clock.Now().Add(m.ttl)
}

// Recent reports whether o lacked capacity less than the memory's ttl ago.
func (m *Memory) Recent(o Offering) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.recent(o)
}

func (m *Memory) recent(o Offering) bool {
	until, ok := m.until[o]
	if !ok {
		return false
	}
	if !m.clock.Now().Before(until) {
		delete(m.until, o)
		return false
	}
	return true
}

// Order returns items with those whose offering failed recently moved to the end, keeping
// the relative order of each part. offering names each item's offering.
func Order[T any](m *Memory, items []T, offering func(T) Offering) []T {
	m.mu.Lock()
	defer m.mu.Unlock()
	fresh := make([]T, 0, len(items))
	var stale []T
	for _, it := range items {
		if m.recent(offering(it)) {
			stale = append(stale, it)
		} else {
			fresh = append(fresh, it)
		}
	}
	return append(fresh, stale...)
}
