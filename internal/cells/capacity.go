package cells

import (
	"github.com/kip-dev/kip/internal/capacity"
	"github.com/kip-dev/kip/internal/instancetype"
	"github.com/kip-dev/kip/internal/selector"
)

// candidates lists the choice's candidates in the order to try them: the choice, then its
// fallbacks, each with its launch zone in Offering.Zone, those that recently lacked capacity
// last.
func candidates(mem *capacity.Memory, choice *selector.Choice) []selector.Candidate {
	all := append([]selector.Candidate{choice.Candidate}, choice.Fallbacks...)
	for i := range all {
		if all[i].Zone != "" {
			all[i].Offering.Zone = all[i].Zone
		}
	}
	return capacity.Order(mem, all, offeringOf)
}

// offeringOf is what the capacity memory knows a candidate by.
func offeringOf(c selector.Candidate) capacity.Offering {
	return capacity.Offering{Type: c.Type.Name, Zone: c.Offering.Zone, Spot: c.Offering.Spot}
}

// instanceTypeNamed is a placeholder type known only by name (adopted cells).
func instanceTypeNamed(name string) instancetype.InstanceType {
	return instancetype.InstanceType{Name: name}
}
