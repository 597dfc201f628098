package selector

import (
	"encoding/json"
	"fmt"
	"math/bits"
	"path"
	"strings"

	"k8s.io/apimachinery/pkg/api/resource"
)

// Why is a set of reasons a candidate does not fit.
type Why uint8

const (
	WhyCPU Why = 1 << iota
	WhyMemory
	WhyGPU
	WhyArch
	// WhyBaseline: a burstable type whose baseline is below the CPU asked for, without
	// unlimited credits.
	WhyBaseline
	// WhyUnavailable: the offering is known to lack capacity now.
	WhyUnavailable
)

func (w Why) count() int { return bits.OnesCount8(uint8(w)) }

// Rejection is a candidate that does not fit, and why.
type Rejection struct {
	Type         string  `json:"type"`
	Zone         string  `json:"zone,omitempty"`
	Spot         bool    `json:"spot"`
	Price        float64 `json:"price"`
	VCPU         float64 `json:"vcpu"`
	MemoryMiB    int64   `json:"memoryMiB"`
	GPU          int     `json:"gpu,omitempty"`
	AMDGPU       int     `json:"amdGPU,omitempty"`
	Arch         string  `json:"arch"`
	BaselineVCPU float64 `json:"baselineVCPU,omitempty"`
	Why          Why     `json:"-"`

	needs *Resources // what was asked; shared by a selection's rejections
}

// Reasons spells out Why against what was asked, e.g. "cpu 2 < 4.05".
func (r Rejection) Reasons() []string {
	var out []string
	n := r.needs
	if n == nil {
		n = &Resources{}
	}
	if r.Why&WhyCPU != 0 {
		out = append(out, fmt.Sprintf("cpu %g < %s", r.VCPU, cores(n.CPUMilli)))
	}
	if r.Why&WhyMemory != 0 {
		out = append(out, fmt.Sprintf("memory %dMi < %s", r.MemoryMiB, resource.NewQuantity(n.MemoryBytes, resource.BinarySI)))
	}
	if r.Why&WhyGPU != 0 && r.GPU < n.GPU {
		out = append(out, fmt.Sprintf("gpu %d < %d", r.GPU, n.GPU))
	}
	if r.Why&WhyGPU != 0 && r.AMDGPU < n.AMDGPU {
		out = append(out, fmt.Sprintf("amd gpu %d < %d", r.AMDGPU, n.AMDGPU))
	}
	if r.Why&WhyArch != 0 {
		out = append(out, fmt.Sprintf("arch %s not %s", r.Arch, n.Arch))
	}
	if r.Why&WhyBaseline != 0 {
		out = append(out, fmt.Sprintf("burstable baseline %g vCPU < %s (unlimited credits off)", r.BaselineVCPU, cores(n.CPUMilli)))
	}
	if r.Why&WhyUnavailable != 0 {
		out = append(out, "no capacity now")
	}
	return out
}

// String renders "m5.large ($0.0960/h): cpu 2 < 4.05".
func (r Rejection) String() string {
	return fmt.Sprintf("%s ($%.4f/h): %s", r.Type, r.Price, strings.Join(r.Reasons(), ", "))
}

// MarshalJSON adds the reasons in words.
func (r Rejection) MarshalJSON() ([]byte, error) {
	type plain Rejection
	return json.Marshal(struct {
		plain
		Reasons []string `json:"reasons"`
	}{plain(r), r.Reasons()})
}

// pathMatch is path.Match, named for what the instance-type annotation's globs follow.
func pathMatch(pattern, name string) (bool, error) { return path.Match(pattern, name) }
