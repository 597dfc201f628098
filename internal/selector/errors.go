package selector

import (
	"errors"
	"fmt"
	"strings"

	"github.com/kip-dev/kip/internal/annotations"
	"github.com/kip-dev/kip/internal/instancetype"
)

// PodError says which field of the pod the selector cannot use, and why.
type PodError struct {
	Field, Reason string
}

func (e *PodError) Error() string { return e.Field + ": " + e.Reason }

// AnnotationError says which annotation has a value the selector cannot use, and why: one
// annotations.Parse refuses, or an instance type the catalog lacks.
type AnnotationError = annotations.Error

// NoFitError says that no instance type fits a pod: what was asked, and what came closest.
type NoFitError struct {
	Needs Resources
	Spot  bool
	// Restriction is what narrowed the candidates besides the needs, e.g. an annotation.
	Restriction string
	// Closest are the candidates that missed on the fewest counts, cheapest first.
	Closest []Rejection
	// Largest is the biggest type (by vCPU, then memory) the market, zone and restriction
	// allowed; nil when they allowed none.
	Largest *instancetype.InstanceType
}

func (e *NoFitError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "no instance type fits: asked %s, %s", e.Needs, marketName(e.Spot))
	if e.Restriction != "" {
		fmt.Fprintf(&b, ", %s", e.Restriction)
	}
	if len(e.Closest) > 0 {
		parts := make([]string, len(e.Closest))
		for i, r := range e.Closest {
			parts[i] = r.String()
		}
		fmt.Fprintf(&b, "; closest: %s", strings.Join(parts, "; "))
	}
	if e.Largest != nil {
		fmt.Fprintf(&b, "; largest: %s (%g vCPU, %d MiB, %d GPU, %s)", e.Largest.Name, e.Largest.VCPU, e.Largest.MemoryMiB, e.Largest.GPU, e.Largest.Arch)
	} else {
		b.WriteString("; no instance type is offered in that market and zone")
	}
	return b.String()
}

// IsNoFit reports whether err says no instance type fits the pod.
func IsNoFit(err error) bool {
	var e *NoFitError
	return errors.As(err, &e)
}

// IsBadAnnotation reports whether err is about an annotation's value.
func IsBadAnnotation(err error) bool {
	var e *AnnotationError
	return errors.As(err, &e)
}

// IsBadPod reports whether err is about a field of the pod.
func IsBadPod(err error) bool {
	var e *PodError
	return errors.As(err, &e)
}

// market indexes Index.cands: 0 on-demand, 1 spot.
func market(spot bool) int {
	if spot {
		return 1
	}
	return 0
}

func marketName(spot bool) string {
	if spot {
		return LaunchTypeSpot
	}
	return LaunchTypeOnDemand
}
