package instancetype

import (
	"errors"
	"fmt"
	"math"
)

// Architectures Kip knows, as Kubernetes spells them in the kubernetes.io/arch label.
const (
	ArchAMD64 = "amd64"
	ArchARM64 = "arm64"
)

// Validate checks a catalog before anyone selects from it: every instance type has a unique
// name, a known architecture, positive vCPU and memory, a baseline within its vCPUs and at
// least one offering with a finite, non-negative price. It reports every problem at once,
// each naming the type and field.
func Validate(types []InstanceType) error {
	if len(types) == 0 {
		return errors.New("catalog is empty")
	}
	var errs []error
	bad := func(i int, name, field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("types[%d] (%s).%s: %s", i, name, field, fmt.Sprintf(format, args...)))
	}
	seen := make(map[string]int, len(types))
	for i, t := range types {
		if t.Name == "" {
			bad(i, t.Name, "name", "must not be empty")
		} else if j, dup := seen[t.Name]; dup {
			bad(i, t.Name, "name", "duplicates types[%d]", j)
		}
		seen[t.Name] = i
		if t.Arch != ArchAMD64 && t.Arch != ArchARM64 {
			bad(i, t.Name, "arch", "%q is not %s or %s", t.Arch, ArchAMD64, ArchARM64)
		}
		if !(t.VCPU > 0) || math.IsInf(t.VCPU, 0) {
			bad(i, t.Name, "vcpu", "%v must be positive", t.VCPU)
		}
		if t.MemoryMiB <= 0 {
			bad(i, t.Name, "memoryMiB", "%d must be positive", t.MemoryMiB)
		}
		if t.GPU < 0 {
			bad(i, t.Name, "gpu", "%d must not be negative", t.GPU)
		}
		if t.Burstable && (!(t.BaselineVCPU >= 0) || t.BaselineVCPU > t.VCPU) {
			bad(i, t.Name, "baselineVCPU", "%v must be within 0..vcpu (%v)", t.BaselineVCPU, t.VCPU)
		}
		if len(t.Offerings) == 0 {
			bad(i, t.Name, "offerings", "must not be empty")
		}
		for j, o := range t.Offerings {
			if !(o.Price >= 0) || math.IsInf(o.Price, 0) {
				bad(i, t.Name, fmt.Sprintf("offerings[%d].price", j), "%v must be a finite non-negative number", o.Price)
			}
		}
	}
	return errors.Join(errs...)
}
