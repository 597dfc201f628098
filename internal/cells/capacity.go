package cells

import (
	"fmt"
	"sync"
	"time"

	"k8s.io/utils/clock"

	"github.com/kip-dev/kip/internal/instancetype"
)

// capacityMemory remembers offerings that recently failed with an insufficient-capacity
// error, so the next pods try them last.
type capacityMemory struct {
	clock clock.PassiveClock
	ttl   time.Duration

	mu     sync.Mutex
	failed map[string]time.Time // offering key → when it failed
}

func newCapacityMemory(c clock.PassiveClock, ttl time.Duration) *capacityMemory {
	return &capacityMemory{clock: c, ttl: ttl, failed: map[string]time.Time{}}
}

func offeringKey(c Candidate) string {
	return fmt.Sprintf("%s/%s/%t", c.Type.Name, c.Offering.Zone, c.Offering.Spot)
}

// remember records a capacity failure of c now.
func (m *capacityMemory) remember(c Candidate) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.failed[offeringKey(c)] = m.clock.Now()
}

// recent reports whether c failed within the memory window. m.mu must be held.
func (m *capacityMemory) recent(c Candidate) bool {
	at, ok := m.failed[offeringKey(c)]
	if !ok {
		return false
	}
	if m.clock.Since(at) >= m.ttl {
		delete(m.failed, offeringKey(c))
		return false
	}
	return true
}

// order returns cands with recently failed ones moved to the end, keeping relative order.
func (m *capacityMemory) order(cands []Candidate) []Candidate {
	m.mu.Lock()
	defer m.mu.Unlock()
	fresh := make([]Candidate, 0, len(cands))
	var stale []Candidate
	for _, c := range cands {
		if m.recent(c) {
			stale = append(stale, c)
		} else {
			fresh = append(fresh, c)
		}
	}
	return append(fresh, stale...)
}

// instanceTypeNamed is a placeholder type known only by name (adopted cells).
func instanceTypeNamed(name string) instancetype.InstanceType {
	return instancetype.InstanceType{Name: name}
}
