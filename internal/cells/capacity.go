package cells

import (
	"github.com/kip-dev/kip/internal/capacity"
	"github.com/kip-dev/kip/internal/instancetype"
	"github.com/kip-dev/kip/internal/selector"
)

// candidates lists the choice's candidates in the order to try them: the choice, then its
// fallbacks, each with its launch zone in Offering.Zone, grouped by instance type (the
// choice's type in every zone it is offered in, then the next type's zones, ...), those that
// recently lacked capacity last. So a capacity error tries the same type in the other zones
// before another type.
func candidates(mem *capacity.Memory, choice *selector.Choice) []selector.Candidate {
	all := append([]selector.Candidate{choice.Candidate}, choice.Fallbacks...)
	for i := range all {
		if all[i].Zone != "" {
			all[i].Offering.Zone = all[i].Zone
		}
	}
	return capacity.Order(mem, byType(all), offeringOf)
}

// byType groups cands by instance type, in the order of each type's first candidate, keeping
// the order within a type.
func byType(cands []selector.Candidate) []selector.Candidate {
	out := make([]selector.Candidate, 0, len(cands))
	done := map[string]bool{}
	for _, c := range cands {
		if done[c.Type.Name] {
			continue
		}
		done[c.Type.Name] = true
		for _, d := range cands {
			if d.Type.Name == c.Type.Name {
				out = append(out, d)
			}
		}
	}
	return out
}

// offeringOf is what the capacity memory knows a candidate by.
func offeringOf(c selector.Candidate) capacity.Offering {
	return capacity.Offering{Type: c.Type.Name, Zone: c.Offering.Zone, Spot: c.Offering.Spot}
}

// instanceTypeNamed is a placeholder type known only by name (adopted cells).
func instanceTypeNamed(name string) instancetype.InstanceType {
	return instancetype.InstanceType{Name: name}
}
