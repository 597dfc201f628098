package aws

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/kip-dev/kip/internal/instancetype"
)

// capacityMemory remembers offerings (type, zone, market) that lacked capacity, until a time.
type capacityMemory struct {
	mu    sync.Mutex
	until map[offeringKey]time.Time
}

type offeringKey struct {
	typ, zone string
	spot      bool
}

func (m *capacityMemory) remember(until time.Time, typ, zone string, spot bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.until == nil {
		m.until = map[offeringKey]time.Time{}
	}
	m.until[offeringKey{typ, zone, spot}] = until
}

func (m *capacityMemory) blocked(now time.Time, typ, zone string, spot bool) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	k := offeringKey{typ, zone, spot}
	until, ok := m.until[k]
	if ok && !now.Before(until) {
		delete(m.until, k)
		return false
	}
	return ok
}

// InstanceTypes returns the catalog's types that can launch in the backend's zone, each with
// the offerings of that zone (or zone-less ones); an offering that recently had no capacity is
// reported with Available false until CapacityTTL has passed.
func (b *Backend) InstanceTypes(ctx context.Context) ([]instancetype.InstanceType, error) {
	all, err := b.cfg.Catalog.InstanceTypes()
	if err != nil {
		return nil, fmt.Errorf("reading the instance-type catalog: %w", err)
	}
	now := b.clk.Now()
	out := make([]instancetype.InstanceType, 0, len(all))
	for _, it := range all {
		var offs []instancetype.Offering
		for _, o := range it.Offerings {
			if o.Zone != "" && o.Zone != b.zone {
				continue
			}
			if b.unavailable.blocked(now, it.Name, b.zone, o.Spot) {
				o.Available = false
			}
			offs = append(offs, o)
		}
		if len(offs) > 0 {
			it.Offerings = offs
			out = append(out, it)
		}
	}
	return out, nil
}
