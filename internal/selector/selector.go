// Package selector chooses the cheapest instance-type offering that fits a pod: what the pod
// needs (its containers' requests the way kubelet counts them, pod overhead, and a reserve for
// the cell agent and OS), its annotations (an instance type or glob, spot or on-demand) and
// its node constraints (architecture, zone), against a catalog of priced offerings. It is pure:
// no I/O, no clock, no state between calls.
//
// Burstable types are chosen only when their baseline covers the CPU asked for, unless
// Options.UnlimitedCredits allows AWS unlimited mode; then, as the original Kip did, the
// surplus (asked − baseline) is priced in at Options.SurplusCreditPrice per vCPU-hour.
package selector

import (
	"cmp"
	"fmt"
	"math"
	"slices"
	"sort"
	"strings"
	"sync"

	corev1 "k8s.io/api/core/v1"

	"github.com/kip-dev/kip/internal/annotations"
	"github.com/kip-dev/kip/internal/instancetype"
)

// Defaults for Options' zero values.
const (
	// DefaultSurplusCreditPrice is AWS's price of unlimited-mode surplus credits for Linux
	// t2/t3/t3a/t4g instances, in USD per vCPU-hour.
	DefaultSurplusCreditPrice = 0.05
	DefaultMaxFallbacks       = 5
	DefaultMaxRejected        = 5
)

// Options tune a selection. The zero value is usable.
type Options struct {
	// Reserve is added to every pod's needs; nil means DefaultReserve.
	Reserve *Reserve
	// DefaultType is chosen for pods that ask for no resources at all; it must be in the
	// catalog and still has to fit. Empty means such pods get the cheapest fit like others.
	DefaultType string
	// Spot is the market for pods without a launch-type annotation.
	Spot bool
	// SpotFallback lets a pod in the spot market (by annotation or Spot) fall back to
	// on-demand: the fitting on-demand offerings follow the spot ones among the fallbacks,
	// and when no spot offering fits (none listed, or all lacking capacity now) the cheapest
	// on-demand fit is chosen.
	SpotFallback bool
	// UnlimitedCredits lets burstable types that support unlimited mode (AWS t2, t3, t3a,
	// t4g) run above their baseline, at SurplusCreditPrice per vCPU-hour of surplus.
	UnlimitedCredits bool
	// SurplusCreditPrice is in USD per vCPU-hour; 0 means DefaultSurplusCreditPrice.
	SurplusCreditPrice float64
	// MaxFallbacks bounds Choice.Fallbacks; 0 means DefaultMaxFallbacks, negative none.
	MaxFallbacks int
	// MaxRejected bounds Choice.Rejected and NoFitError.Closest; 0 means
	// DefaultMaxRejected, negative none.
	MaxRejected int
	// DefaultArch is the architecture for pods that do not constrain kubernetes.io/arch;
	// empty means amd64, since most images are built for it. "*" allows any.
	DefaultArch string
}

func (o Options) reserve() Reserve {
	if o.Reserve == nil {
		return DefaultReserve
	}
	return *o.Reserve
}

func orDefault(v, def int) int {
	switch {
	case v == 0:
		return def
	case v < 0:
		return 0
	}
	return v
}

// Candidate is one offering of one instance type that fits a pod.
type Candidate struct {
	Type     instancetype.InstanceType `json:"type"`
	Offering instancetype.Offering     `json:"offering"`
	// Zone is where to launch: the offering's zone, or for a region-wide offering the zone
	// the pod asks for, if any.
	Zone string `json:"zone,omitempty"`
	// Price is what the pod will cost per hour in USD: the offering's price plus, with
	// UnlimitedCredits, the surplus credits.
	Price float64 `json:"price"`
	// UnlimitedCredits is set when the type must run in unlimited mode to give the pod its CPU.
	UnlimitedCredits bool `json:"unlimitedCredits,omitempty"`
}

// Choice is the selector's answer for a pod.
type Choice struct {
	Candidate
	// Needs is what the pod was found to need.
	Needs Resources `json:"needs"`
	// Reason says how the choice was made: the cheapest fit, an annotation, the default type.
	Reason string `json:"reason"`
	// Fallbacks are the next fitting offerings, cheapest first, to try on capacity errors.
	// They obey the same restriction as the choice: for a pod naming one instance type (or
	// getting the default type) they are only that type's other zones.
	Fallbacks []Candidate `json:"fallbacks,omitempty"`
	// Rejected are the cheaper candidates that did not fit, closest to the choice first.
	Rejected []Rejection `json:"rejected,omitempty"`
}

// Select chooses the cheapest offering in types that fits pod; see Index.Select. It builds an
// Index each call (about a millisecond for a full AWS region); callers selecting many pods
// from one catalog keep an Index instead.
func Select(pod *corev1.Pod, types []instancetype.InstanceType, opts Options) (*Choice, error) {
	return NewIndex(types).Select(pod, opts)
}

// Index is a catalog prepared for selection: every priced offering, sorted by price. It is
// immutable and safe for concurrent use.
type Index struct {
	types []instancetype.InstanceType
	// cands holds the on-demand ([0]) and spot ([1]) offerings, each sorted by price.
	cands  [2][]cand
	byName map[string]int
	arches []string // distinct architectures; cand.arch indexes it
	// tiers are shortcuts for big pods: per market, the candidates of at least some size.
	tiers [2][]tier

	globMu sync.Mutex
	globs  map[string][]bool // pattern → which types it matches
}

// tier lists (as indexes into Index.cands, in price order) the candidates with at least
// cpuMilli, memBytes and gpu.
type tier struct {
	cpuMilli, memBytes int64
	gpu                int
	idx                []int32
}

// Tier thresholds: a pod's walk uses the shortest tier it is at least as big as.
var (
	tierCPUs = []int64{1000, 2000, 4000, 8000, 16000, 32000, 48000, 64000, 96000}
	tierMems = []int64{2 << 30, 4 << 30, 8 << 30, 16 << 30, 32 << 30, 64 << 30, 128 << 30, 256 << 30, 512 << 30}
)

func (ix *Index) buildTiers() {
	for m, cs := range ix.cands {
		add := func(cpu, mem int64, gpu int) {
			t := tier{cpuMilli: cpu, memBytes: mem, gpu: gpu}
			for i := range cs {
				if cs[i].cpuMilli >= cpu && cs[i].memBytes >= mem && cs[i].gpu >= gpu {
					t.idx = append(t.idx, int32(i))
				}
			}
			ix.tiers[m] = append(ix.tiers[m], t)
		}
		add(0, 0, 0)
		for _, c := range tierCPUs {
			add(c, 0, 0)
		}
		for _, b := range tierMems {
			add(0, b, 0)
		}
		add(0, 0, 1)
	}
}

// walk returns the shortest list of candidates (indexes into cands, in price order) that
// holds every candidate big enough for needs.
func (ix *Index) walk(q *query) []int32 {
	ts := ix.tiers[market(q.spot)]
	best := ts[0].idx
	for _, t := range ts[1:] {
		if t.cpuMilli <= q.needs.CPUMilli && t.memBytes <= q.needs.MemoryBytes && t.gpu <= q.needs.GPU && len(t.idx) < len(best) {
			best = t.idx
		}
	}
	return best
}

// maxGlobs bounds the cache of annotation globs an Index keeps.
const maxGlobs = 256

// globMask returns which types pattern matches, and whether any does.
func (ix *Index) globMask(pattern string) (mask []bool, any bool) {
	ix.globMu.Lock()
	mask, ok := ix.globs[pattern]
	ix.globMu.Unlock()
	if !ok {
		mask = make([]bool, len(ix.types))
		for i, t := range ix.types {
			mask[i], _ = pathMatch(pattern, t.Name)
		}
		ix.globMu.Lock()
		if len(ix.globs) < maxGlobs {
			ix.globs[pattern] = mask
		}
		ix.globMu.Unlock()
	}
	return mask, slices.Contains(mask, true)
}

// gpusBy is how many of t's GPUs serve a pod asking for vendor's: all of them when vendor
// makes them (instancetype.GPUMaker), none otherwise (an AMD g4ad's Radeon cannot run a CUDA
// container, nor an NVIDIA T4 a ROCm one).
func gpusBy(t *instancetype.InstanceType, vendor string) int {
	if t.GPUMaker() == vendor {
		return t.GPU
	}
	return 0
}

// anyArchAllowed reports whether a type of mask has an architecture arch allows.
func (ix *Index) anyArchAllowed(mask []bool, arch Constraint) bool {
	for i, in := range mask {
		if in && arch.Allows(ix.types[i].Arch) {
			return true
		}
	}
	return false
}

// cand is one offering with its type's figures in the units the needs use.
type cand struct {
	name      string
	typ, off  int
	price     float64
	cpuMilli  int64
	baseMilli int64
	memBytes  int64
	gpu       int // NVIDIA GPUs
	amdGPU    int
	arch      int
	zone      string
	spot      bool
	avail     bool
	burst     bool
	unlimited bool
}

// NewIndex prepares types (which it copies) for selection. Offerings without a positive
// price are left out: their price is unknown, so they cannot be compared.
func NewIndex(types []instancetype.InstanceType) *Index {
	ix := &Index{types: instancetype.Clone(types), byName: make(map[string]int, len(types)), globs: map[string][]bool{}}
	for ti, t := range ix.types {
		ix.byName[t.Name] = ti
		arch := slices.Index(ix.arches, t.Arch)
		if arch < 0 {
			arch = len(ix.arches)
			ix.arches = append(ix.arches, t.Arch)
		}
		for oi, o := range t.Offerings {
			if !(o.Price > 0) || math.IsInf(o.Price, 0) {
				continue
			}
			m := market(o.Spot)
			ix.cands[m] = append(ix.cands[m], cand{
				name: t.Name, typ: ti, off: oi, price: o.Price,
				cpuMilli:  int64(math.Round(t.VCPU * 1000)),
				baseMilli: int64(math.Round(t.BaselineVCPU * 1000)),
				memBytes:  t.MemoryMiB << 20,
				gpu:       gpusBy(&t, "nvidia"), amdGPU: gpusBy(&t, "amd"), arch: arch, zone: o.Zone, spot: o.Spot, avail: o.Available,
				burst: t.Burstable, unlimited: unlimitedCapable(t.Name),
			})
		}
	}
	for _, cs := range ix.cands {
		// A total order, so the result does not depend on the input's order.
		slices.SortFunc(cs, func(a, b cand) int {
			switch {
			case a.price != b.price:
				return cmp.Compare(a.price, b.price)
			case a.cpuMilli != b.cpuMilli:
				return cmp.Compare(a.cpuMilli, b.cpuMilli)
			case a.memBytes != b.memBytes:
				return cmp.Compare(a.memBytes, b.memBytes)
			case a.name != b.name:
				return strings.Compare(a.name, b.name)
			case a.zone != b.zone:
				return strings.Compare(a.zone, b.zone)
			}
			return cmp.Compare(a.off, b.off)
		})
	}
	ix.buildTiers()
	return ix
}

// unlimitedCapable reports whether a burstable type can run in AWS unlimited mode.
func unlimitedCapable(name string) bool {
	for _, p := range []string{"t2.", "t3.", "t3a.", "t4g."} {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}

// query is one selection: the needs and everything that narrows the candidates.
type query struct {
	needs       Resources
	spot        bool
	unlimited   bool
	surplusRate float64
	// only restricts to one type (index), or -1; allowed restricts to a glob's types, or nil.
	only        int
	allowed     []bool
	restriction string
	// archOK says which of Index.arches the needs allow.
	archOK []bool
}

// compatible reports whether a candidate (already in the right market) is in the zone and
// restriction asked for; candidates that are not are never mentioned.
func (q *query) compatible(c *cand) bool {
	if q.only >= 0 && c.typ != q.only || q.allowed != nil && !q.allowed[c.typ] {
		return false
	}
	if c.zone != "" && len(q.needs.Zone) > 0 && !q.needs.Zone.Allows(c.zone) {
		return false
	}
	return len(q.needs.InstanceType) == 0 || q.needs.InstanceType.Allows(c.name)
}

// check returns why a compatible candidate does not fit (0 if it does) and the surplus
// credit cost per hour it needs to.
func (q *query) check(c *cand) (why Why, surcharge float64) {
	n := &q.needs
	if c.cpuMilli < n.CPUMilli {
		why |= WhyCPU
	}
	if c.memBytes < n.MemoryBytes {
		why |= WhyMemory
	}
	if c.gpu < n.GPU || c.amdGPU < n.AMDGPU {
		why |= WhyGPU
	}
	if !q.archOK[c.arch] {
		why |= WhyArch
	}
	if !c.avail {
		why |= WhyUnavailable
	}
	if c.burst && c.baseMilli < n.CPUMilli && why&WhyCPU == 0 {
		if q.unlimited && c.unlimited {
			surcharge = float64(n.CPUMilli-c.baseMilli) / 1000 * q.surplusRate
		} else {
			why |= WhyBaseline
		}
	}
	return why, surcharge
}

// Select chooses the cheapest offering that fits pod:
//
//   - candidates are the offerings in the pod's market (the launch-type annotation, else
//     Options.Spot) that are available, have a positive price and can serve its zone;
//   - an instance-type annotation narrows them to one type (which must be in the catalog) or
//     to a glob's types (which must match at least one); otherwise a pod asking for no
//     resources gets Options.DefaultType when set;
//   - a candidate fits when its vCPUs, memory and GPUs cover Needs (reserve included), its
//     architecture is allowed (naming a type in the annotation lifts Options.DefaultArch; a
//     glob lifts it only when none of its types has that architecture), and,
//     for a burstable type, its baseline covers the CPU needed or unlimited credits pay for
//     the rest;
//   - the cheapest fit by effective price wins; the next ones are the fallbacks.
//
// A named type still has to fit. Errors are a *PodError or *AnnotationError for input the
// selector cannot use, and a *NoFitError when nothing fits.
func (ix *Index) Select(pod *corev1.Pod, opts Options) (*Choice, error) {
	needs, err := Needs(pod, opts)
	if err != nil {
		return nil, err
	}
	ann, err := annotations.Parse(pod)
	if err != nil {
		return nil, err
	}
	q := query{needs: needs, spot: opts.Spot, unlimited: opts.UnlimitedCredits, surplusRate: opts.SurplusCreditPrice, only: -1}
	if ann.Spot != nil {
		q.spot = *ann.Spot
	}
	// Naming one type names its architecture: the default one applies to the pod only. A glob
	// keeps the default architecture unless none of its types has it (then it names theirs).
	defaultArch := false
	if c, _ := constraintFor(pod, archLabels); len(c) == 0 {
		defaultArch = true
	}
	if ann.InstanceType != "" && !ann.InstanceTypeGlob && defaultArch {
		q.needs.Arch = nil
	}
	if q.surplusRate == 0 {
		q.surplusRate = DefaultSurplusCreditPrice
	}
	switch {
	case ann.InstanceTypeGlob:
		var matched bool
		if q.allowed, matched = ix.globMask(ann.InstanceType); !matched {
			return nil, &AnnotationError{Annotation: ann.InstanceTypeFrom, Value: ann.InstanceType, Reason: "matches no instance type in the catalog"}
		}
		if defaultArch && !ix.anyArchAllowed(q.allowed, q.needs.Arch) {
			q.needs.Arch = nil
		}
		q.restriction = fmt.Sprintf("annotation %s=%q", ann.InstanceTypeFrom, ann.InstanceType)
	case ann.InstanceType != "":
		i, ok := ix.byName[ann.InstanceType]
		if !ok {
			return nil, &AnnotationError{Annotation: ann.InstanceTypeFrom, Value: ann.InstanceType, Reason: "unknown instance type (not in the catalog)"}
		}
		if err := gpuShortfall(pod, needs, &ix.types[i], ann.InstanceTypeFrom); err != nil {
			return nil, err
		}
		q.only = i
		q.restriction = fmt.Sprintf("annotation %s=%q", ann.InstanceTypeFrom, ann.InstanceType)
	case needs.Unspecified && opts.DefaultType != "":
		i, ok := ix.byName[opts.DefaultType]
		if !ok {
			return nil, fmt.Errorf("selecting for a pod that asks for no resources: default instance type %q is not in the catalog", opts.DefaultType)
		}
		q.only = i
		q.restriction = fmt.Sprintf("default instance type %s (the pod asks for no resources)", opts.DefaultType)
	}
	q.archOK = make([]bool, len(ix.arches))
	for i, a := range ix.arches {
		q.archOK[i] = q.needs.Arch.Allows(a)
	}
	maxFallbacks, maxRejected := orDefault(opts.MaxFallbacks, DefaultMaxFallbacks), orDefault(opts.MaxRejected, DefaultMaxRejected)
	ch, err := ix.search(&q, maxFallbacks, maxRejected)
	if !q.spot || !opts.SpotFallback {
		return ch, err
	}
	od := q
	od.spot = false
	och, oerr := ix.search(&od, maxFallbacks, maxRejected)
	switch {
	case oerr != nil:
		return ch, err
	case err != nil:
		och.Reason = "on-demand fallback: " + err.Error()
		return och, nil
	}
	ch.Fallbacks = append(append(ch.Fallbacks, och.Candidate), och.Fallbacks...)
	return ch, nil
}

type fit struct {
	i         int
	price     float64
	surcharge bool
}

// search walks the candidates cheapest first and keeps the cheapest 1+maxFallbacks that fit
// by effective price. Effective price is never below the listed price, so the walk stops at
// the first candidate listed above the last one kept.
func (ix *Index) search(q *query, maxFallbacks, maxRejected int) (*Choice, error) {
	keep := maxFallbacks + 1
	fits := make([]fit, 0, keep)
	cands := ix.cands[market(q.spot)]
	for _, i32 := range ix.walk(q) {
		i := int(i32)
		c := &cands[i]
		if len(fits) == keep && c.price > fits[keep-1].price {
			break
		}
		if !q.compatible(c) {
			continue
		}
		why, surcharge := q.check(c)
		if why != 0 {
			continue
		}
		f := fit{i: i, price: c.price + surcharge, surcharge: surcharge > 0}
		at := sort.Search(len(fits), func(k int) bool { return fits[k].price > f.price })
		if at == keep {
			continue
		}
		if len(fits) < keep {
			fits = append(fits, fit{})
		}
		copy(fits[at+1:], fits[at:])
		fits[at] = f
	}
	if len(fits) == 0 {
		return nil, ix.noFit(q, maxRejected)
	}
	ch := &Choice{Candidate: ix.candidate(q, fits[0]), Needs: q.needs, Reason: q.restriction}
	if ch.Reason == "" {
		ch.Reason = "cheapest fitting " + marketName(q.spot) + " offering"
	}
	if len(fits) > 1 {
		ch.Fallbacks = make([]Candidate, len(fits)-1)
		for k, f := range fits[1:] {
			ch.Fallbacks[k] = ix.candidate(q, f)
		}
	}
	ch.Rejected = ix.rejected(q, ch.Price, maxRejected)
	return ch, nil
}

func (ix *Index) candidate(q *query, f fit) Candidate {
	c := &ix.cands[market(q.spot)][f.i]
	zone := c.zone
	if zone == "" {
		zone = q.needs.Zone.Preferred()
	}
	return Candidate{Type: ix.types[c.typ], Offering: ix.types[c.typ].Offerings[c.off], Zone: zone, Price: f.price, UnlimitedCredits: f.surcharge}
}

// rejected lists the compatible candidates listed at or below price that do not fit, one per
// type, the closest to price first.
func (ix *Index) rejected(q *query, price float64, max int) []Rejection {
	if max == 0 {
		return nil
	}
	out := make([]Rejection, 0, max)
	cands := ix.cands[market(q.spot)]
	hi := sort.Search(len(cands), func(i int) bool { return cands[i].price > price })
	for i := hi - 1; i >= 0 && len(out) < max; i-- {
		c := &cands[i]
		if !q.compatible(c) {
			continue
		}
		why, _ := q.check(c)
		if why == 0 || containsType(out, c.name) {
			continue
		}
		out = append(out, ix.rejection(q, c, why))
	}
	return out
}

func containsType(rs []Rejection, name string) bool {
	for _, r := range rs {
		if r.Type == name {
			return true
		}
	}
	return false
}

func (ix *Index) rejection(q *query, c *cand, why Why) Rejection {
	t := &ix.types[c.typ]
	return Rejection{Type: c.name, Zone: c.zone, Spot: c.spot, Price: c.price, Why: why,
		VCPU: t.VCPU, MemoryMiB: t.MemoryMiB, GPU: gpusBy(t, "nvidia"), AMDGPU: gpusBy(t, "amd"), Arch: t.Arch, BaselineVCPU: t.BaselineVCPU, needs: &q.needs}
}

// noFit explains why nothing fits: the candidates that missed on the fewest counts, and the
// largest type on offer.
func (ix *Index) noFit(q *query, max int) *NoFitError {
	e := &NoFitError{Needs: q.needs, Spot: q.spot, Restriction: q.restriction}
	best := math.MaxInt
	var largest *cand
	cands := ix.cands[market(q.spot)]
	for i := range cands {
		c := &cands[i]
		if !q.compatible(c) {
			continue
		}
		if largest == nil || c.cpuMilli > largest.cpuMilli || c.cpuMilli == largest.cpuMilli && c.memBytes > largest.memBytes {
			largest = c
		}
		why, _ := q.check(c)
		n := why.count()
		switch {
		case n < best:
			best, e.Closest = n, e.Closest[:0]
		case n > best || len(e.Closest) >= max || containsType(e.Closest, c.name):
			continue
		}
		if max > 0 {
			e.Closest = append(e.Closest, ix.rejection(q, c, why))
		}
	}
	if largest != nil {
		t := ix.types[largest.typ]
		e.Largest = &t
	}
	return e
}
