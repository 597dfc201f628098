package selector

import (
	"slices"
	"sync"

	corev1 "k8s.io/api/core/v1"

	"github.com/kip-dev/kip/internal/instancetype"
)

// Selector selects with fixed Options from whatever catalog it is handed, keeping an Index
// for the last catalog it saw: it rebuilds only when the catalog's contents change (a refresh,
// an offering marked unavailable), which it notices by comparing the catalog with the Index's
// copy. Its Select has the signature callers that fetch the catalog per pod want. Safe for
// concurrent use.
type Selector struct {
	Options Options

	mu sync.Mutex
	ix *Index
}

// Select chooses for pod from types; see Index.Select.
func (s *Selector) Select(pod *corev1.Pod, types []instancetype.InstanceType) (*Choice, error) {
	s.mu.Lock()
	ix := s.ix
	if ix == nil || !sameCatalog(ix.types, types) {
		ix = NewIndex(types)
		s.ix = ix
	}
	s.mu.Unlock()
	return ix.Select(pod, s.Options)
}

// sameCatalog reports whether a and b hold the same types and offerings in the same order.
func sameCatalog(a, b []instancetype.InstanceType) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		x, y := &a[i], &b[i]
		if x.Name != y.Name || x.Arch != y.Arch || x.VCPU != y.VCPU || x.MemoryMiB != y.MemoryMiB ||
			x.GPU != y.GPU || x.GPUVendor != y.GPUVendor || x.GPUModel != y.GPUModel || x.Burstable != y.Burstable ||
			x.BaselineVCPU != y.BaselineVCPU || !slices.Equal(x.Offerings, y.Offerings) {
			return false
		}
	}
	return true
}
