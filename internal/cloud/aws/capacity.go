package aws

import (
	"context"
	"fmt"

	"github.com/kip-dev/kip/internal/capacity"
	"github.com/kip-dev/kip/internal/instancetype"
)

// InstanceTypes returns the catalog's types that can launch in the backend's zone, each with
// the offerings of that zone (or zone-less ones); an offering that recently had no capacity is
// reported with Available false until CapacityTTL has passed.
func (b *Backend) InstanceTypes(ctx context.Context) ([]instancetype.InstanceType, error) {
	all, err := b.cfg.Catalog.InstanceTypes()
	if err != nil {
		return nil, fmt.Errorf("reading the instance-type catalog: %w", err)
	}
	out := make([]instancetype.InstanceType, 0, len(all))
	for _, it := range all {
		var offs []instancetype.Offering
		for _, o := range it.Offerings {
			if o.Zone != "" && o.Zone != b.zone {
				continue
			}
			if b.unavailable.Recent(capacity.Offering{Type: it.Name, Zone: b.zone, Spot: o.Spot}) {
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
