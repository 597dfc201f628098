package aws

import (
	"context"
	"fmt"

	"github.com/kip-dev/kip/internal/capacity"
	"github.com/kip-dev/kip/internal/instancetype"
)

// InstanceTypes returns the catalog's types that can launch in the backend's zones, each with
// its offerings in those zones: a zone-less (region-wide) offering becomes one offering per
// zone, so that a capacity error in one zone leaves the others available. An offering that
// recently had no capacity is reported with Available false until CapacityTTL has passed.
func (b *Backend) InstanceTypes(ctx context.Context) ([]instancetype.InstanceType, error) {
	all, err := b.cfg.Catalog.InstanceTypes()
	if err != nil {
		return nil, fmt.Errorf("reading the instance-type catalog: %w", err)
	}
	zones := b.Zones()
	out := make([]instancetype.InstanceType, 0, len(all))
	for _, it := range all {
		var offs []instancetype.Offering
		for _, o := range it.Offerings {
			for _, z := range zones {
				if o.Zone != "" && o.Zone != z {
					continue
				}
				o := o
				o.Zone = z
				if b.unavailable.Recent(capacity.Offering{Type: it.Name, Zone: z, Spot: o.Spot}) {
					o.Available = false
				}
				offs = append(offs, o)
			}
		}
		if len(offs) > 0 {
			it.Offerings = offs
			out = append(out, it)
		}
	}
	return out, nil
}
