package instancetype

import "sort"

// Offerings is a list of ways to buy one instance type, with pure helpers to narrow it down.
// An InstanceType's Offerings field converts to it directly: Offerings(t.Offerings).
type Offerings []Offering

// Available returns the offerings not known to lack capacity.
func (os Offerings) Available() Offerings {
	var out Offerings
	for _, o := range os {
		if o.Available {
			out = append(out, o)
		}
	}
	return out
}

// Compatible returns the offerings in the given market that can serve a pod constrained to
// zones (nil or empty means any zone). An offering with an empty Zone is region-wide — the
// catalog does not know its zones — and is taken to serve every zone.
func (os Offerings) Compatible(spot bool, zones []string) Offerings {
	var out Offerings
	for _, o := range os {
		if o.Spot == spot && ZoneAllowed(o.Zone, zones) {
			out = append(out, o)
		}
	}
	return out
}

// Cheapest returns the offering with the lowest positive price; ties go to the earliest.
// ok is false when no offering has a positive price.
func (os Offerings) Cheapest() (cheapest Offering, ok bool) {
	for _, o := range os {
		if o.Price > 0 && (!ok || o.Price < cheapest.Price) {
			cheapest, ok = o, true
		}
	}
	return cheapest, ok
}

// SortByPrice sorts the offerings cheapest first, keeping the order of equal prices.
func (os Offerings) SortByPrice() {
	sort.SliceStable(os, func(i, j int) bool { return os[i].Price < os[j].Price })
}

// ZoneAllowed reports whether an offering in zone can serve a pod allowed in zones. Empty
// zones allow every zone; an empty zone (region-wide offering) serves every allowed zone.
func ZoneAllowed(zone string, zones []string) bool {
	if len(zones) == 0 || zone == "" {
		return true
	}
	for _, z := range zones {
		if z == zone {
			return true
		}
	}
	return false
}

// Clone returns a deep copy of types, so a caller may mark offerings unavailable without
// touching anyone else's copy.
func Clone(types []InstanceType) []InstanceType {
	out := make([]InstanceType, len(types))
	for i, t := range types {
		out[i] = t
		out[i].Offerings = append([]Offering(nil), t.Offerings...)
	}
	return out
}
