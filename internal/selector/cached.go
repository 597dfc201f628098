package selector

import (
	"math"
	"sync"

	corev1 "k8s.io/api/core/v1"

	"github.com/kip-dev/kip/internal/instancetype"
)

// Selector selects with fixed Options from whatever catalog it is handed, keeping an Index
// for the last catalog it saw: it rebuilds only when the catalog's contents change (a refresh,
// an offering marked unavailable), which it notices by a hash of every type's figures and
// offerings. Its Select has the signature callers that fetch the catalog per pod want. Safe
// for concurrent use.
type Selector struct {
	Options Options

	mu  sync.Mutex
	sum uint64
	ix  *Index
}

// Select chooses for pod from types; see Index.Select.
func (s *Selector) Select(pod *corev1.Pod, types []instancetype.InstanceType) (*Choice, error) {
	sum := fingerprint(types)
	s.mu.Lock()
	ix := s.ix
	if ix == nil || s.sum != sum {
		ix = NewIndex(types)
		s.ix, s.sum = ix, sum
	}
	s.mu.Unlock()
	return ix.Select(pod, s.Options)
}

// fingerprint hashes everything in types that NewIndex reads (64-bit FNV-1a over words; it
// guards against change, not against an adversary).
func fingerprint(types []instancetype.InstanceType) uint64 {
	const prime = 0x100000001b3
	h := uint64(0xcbf29ce484222325)
	num := func(v uint64) { h = (h ^ v) * prime }
	str := func(s string) {
		for i := 0; i < len(s); i++ {
			h = (h ^ uint64(s[i])) * prime
		}
		num(uint64(len(s)))
	}
	for i := range types {
		t := &types[i]
		str(t.Name)
		str(t.Arch)
		num(math.Float64bits(t.VCPU))
		num(uint64(t.MemoryMiB))
		num(uint64(t.GPU))
		num(math.Float64bits(t.BaselineVCPU))
		flags := uint64(len(t.Offerings)) << 1
		if t.Burstable {
			flags |= 1
		}
		num(flags)
		for _, o := range t.Offerings {
			str(o.Zone)
			num(math.Float64bits(o.Price))
			f := uint64(0)
			if o.Spot {
				f |= 1
			}
			if o.Available {
				f |= 2
			}
			num(f)
		}
	}
	return h
}
