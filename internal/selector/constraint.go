package selector

import (
	"fmt"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// Constraint limits the values of one node label. A value is allowed when any term allows it
// (node affinity terms are ORed); an empty Constraint allows every value.
//
// Each label is constrained on its own: a pod with two affinity terms pairing arch and zone
// (arm64 in zone a, or amd64 in zone b) is treated as allowing both arches in both zones.
type Constraint []Term

// Term is one way of satisfying a Constraint.
type Term struct {
	// In lists the allowed values; nil allows any value not in NotIn.
	In    []string `json:"in,omitempty"`
	NotIn []string `json:"notIn,omitempty"`
	// None allows no value at all (DoesNotExist on a label every cell has, or an In list
	// emptied by nodeSelector).
	None bool `json:"none,omitempty"`
}

// Allows reports whether a node labelled v satisfies the constraint.
func (c Constraint) Allows(v string) bool {
	if len(c) == 0 {
		return true
	}
	for _, t := range c {
		if t.allows(v) {
			return true
		}
	}
	return false
}

func (t Term) allows(v string) bool {
	if t.None || slices.Contains(t.NotIn, v) {
		return false
	}
	return t.In == nil || slices.Contains(t.In, v)
}

// Preferred returns a value the constraint allows, for choosing among equals (a zone for a
// region-wide offering): the first In value of the first term that has one, or "".
func (c Constraint) Preferred() string {
	for _, t := range c {
		if !t.None {
			for _, v := range t.In {
				if t.allows(v) {
					return v
				}
			}
		}
	}
	return ""
}

// String renders the constraint: "in (a, b)", "not in (c)", "none", terms joined by " or ".
func (c Constraint) String() string {
	parts := make([]string, 0, len(c))
	for _, t := range c {
		var p []string
		switch {
		case t.None:
			p = append(p, "none")
		case t.In != nil:
			p = append(p, "in ("+strings.Join(t.In, ", ")+")")
		}
		if len(t.NotIn) > 0 && !t.None {
			p = append(p, "not in ("+strings.Join(t.NotIn, ", ")+")")
		}
		if len(p) == 0 {
			p = append(p, "any")
		}
		parts = append(parts, strings.Join(p, " and "))
	}
	return strings.Join(parts, " or ")
}

// constraintFor reads the constraint a pod puts on a node label (under any of its spellings
// keys) from spec.nodeSelector and requiredDuringScheduling node affinity.
func constraintFor(pod *corev1.Pod, keys []string) (Constraint, error) {
	var c Constraint
	if na := pod.Spec.Affinity; na != nil && na.NodeAffinity != nil && na.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution != nil {
		terms := na.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution.NodeSelectorTerms
		constrained := false
		var out Constraint
		for i, term := range terms {
			t := Term{}
			for j, e := range term.MatchExpressions {
				if !slices.Contains(keys, e.Key) {
					continue
				}
				constrained = true
				field := fmt.Sprintf("spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[%d].matchExpressions[%d]", i, j)
				switch e.Operator {
				case corev1.NodeSelectorOpIn:
					t = t.intersect(e.Values)
				case corev1.NodeSelectorOpNotIn:
					t.NotIn = append(t.NotIn, e.Values...)
				case corev1.NodeSelectorOpExists:
				case corev1.NodeSelectorOpDoesNotExist:
					t.None = true
				default:
					return nil, &PodError{Field: field + ".operator", Reason: fmt.Sprintf("%s cannot be used with %s", e.Operator, e.Key)}
				}
			}
			out = append(out, t)
		}
		if constrained {
			c = out
		}
	}
	for _, k := range keys {
		v, ok := pod.Spec.NodeSelector[k]
		if !ok {
			continue
		}
		if len(c) == 0 {
			c = Constraint{{}}
		}
		for i := range c {
			c[i] = c[i].intersect([]string{v})
		}
	}
	return c, nil
}

// intersect narrows the term's In list to values.
func (t Term) intersect(values []string) Term {
	if t.In == nil {
		t.In = append([]string(nil), values...)
	} else {
		t.In = slices.DeleteFunc(t.In, func(v string) bool { return !slices.Contains(values, v) })
	}
	if len(t.In) == 0 {
		t.None = true
	}
	return t
}
