package selector

import (
	"fmt"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/kip-dev/kip/internal/instancetype"
)

// cores renders millicores as vCPUs: 1050 → "1.05".
func cores(milli int64) string { return strconv.FormatFloat(float64(milli)/1000, 'f', -1, 64) }

// ResourceGPU is the extended resource that asks for NVIDIA GPUs, ResourceAMDGPU the one
// that asks for AMD GPUs; each is served only by its maker's GPUs.
const (
	ResourceGPU    corev1.ResourceName = "nvidia.com/gpu"
	ResourceAMDGPU corev1.ResourceName = "amd.com/gpu"
)

// Node labels the selector reads from nodeSelector and required node affinity. The beta
// spellings are still accepted.
var (
	archLabels = []string{corev1.LabelArchStable, "beta.kubernetes.io/arch"}
	zoneLabels = []string{corev1.LabelTopologyZone, corev1.LabelFailureDomainBetaZone}
	typeLabels = []string{corev1.LabelInstanceTypeStable, corev1.LabelInstanceType}
)

// Reserve is what a cell needs besides the pod: the cell agent and the guest OS.
type Reserve struct {
	CPUMilli    int64
	MemoryBytes int64
}

// DefaultReserve is added to every pod's needs unless Options.Reserve says otherwise: 50
// millicores and 128 MiB cover the cell agent (a Go process of a few tens of MiB that is idle
// between requests) plus a minimal guest OS (kernel, init, cloud-init's first boot).
var DefaultReserve = Reserve{CPUMilli: 50, MemoryBytes: 128 << 20}

// Resources is what a pod needs from a cell.
type Resources struct {
	// CPUMilli is in millicores, MemoryBytes in bytes, both including pod overhead and the
	// reserve.
	CPUMilli    int64 `json:"cpuMilli"`
	MemoryBytes int64 `json:"memoryBytes"`
	GPU         int   `json:"gpu,omitempty"`
	// AMDGPU is the number of AMD GPUs (amd.com/gpu); GPU counts NVIDIA's.
	AMDGPU int `json:"amdGPU,omitempty"`
	// Arch, Zone and InstanceType constrain the kubernetes.io/arch,
	// topology.kubernetes.io/zone and node.kubernetes.io/instance-type labels.
	Arch         Constraint `json:"arch,omitempty"`
	Zone         Constraint `json:"zone,omitempty"`
	InstanceType Constraint `json:"instanceType,omitempty"`
	// Unspecified is true when no container asks for CPU, memory or GPUs at all (the pod
	// then gets Options.DefaultType when one is set).
	Unspecified bool `json:"unspecified,omitempty"`
}

// String renders the needs for messages: "cpu 1.05, memory 1152Mi, gpu 1, arch in (arm64)".
func (r Resources) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "cpu %s, memory %s", cores(r.CPUMilli), resource.NewQuantity(r.MemoryBytes, resource.BinarySI))
	if r.GPU > 0 {
		fmt.Fprintf(&b, ", gpu %d", r.GPU)
	}
	if r.AMDGPU > 0 {
		fmt.Fprintf(&b, ", amd gpu %d", r.AMDGPU)
	}
	for _, c := range []struct {
		name string
		c    Constraint
	}{{"arch", r.Arch}, {"zone", r.Zone}, {"instance-type", r.InstanceType}} {
		if len(c.c) > 0 {
			fmt.Fprintf(&b, ", %s %s", c.name, c.c)
		}
	}
	return b.String()
}

// Needs computes what pod needs from a cell, the way kubelet admits it: the larger of the sum
// of the app containers (plus sidecars, that is init containers with restartPolicy Always) and
// the largest init container (plus the sidecars started before it); pod-level resources when
// set; requests, falling back to limits; plus pod.Spec.Overhead and the reserve. GPUs come from
// nvidia.com/gpu; architecture, zone and instance type from nodeSelector and required node
// affinity (pods that do not constrain the architecture get Options.DefaultArch).
func Needs(pod *corev1.Pod, opts Options) (Resources, error) {
	if pod == nil {
		return Resources{}, &PodError{Field: "pod", Reason: "is nil"}
	}
	total, unspecified, err := podAmount(pod)
	if err != nil {
		return Resources{}, err
	}
	reserve := opts.reserve()
	r := Resources{Unspecified: unspecified, GPU: int(total.gpu), AMDGPU: int(total.amd)}
	r.CPUMilli = total.cpu + reserve.CPUMilli
	r.MemoryBytes = total.mem + reserve.MemoryBytes
	if r.Arch, err = constraintFor(pod, archLabels); err != nil {
		return Resources{}, err
	}
	if len(r.Arch) == 0 && opts.DefaultArch != "*" {
		arch := opts.DefaultArch
		if arch == "" {
			arch = instancetype.ArchAMD64
		}
		r.Arch = Constraint{{In: []string{arch}}}
	}
	if r.Zone, err = constraintFor(pod, zoneLabels); err != nil {
		return Resources{}, err
	}
	if r.InstanceType, err = constraintFor(pod, typeLabels); err != nil {
		return Resources{}, err
	}
	return r, nil
}

// amount is what a container or pod asks for: millicores, bytes, NVIDIA and AMD GPUs.
type amount struct{ cpu, mem, gpu, amd int64 }

func (a *amount) add(b amount) {
	a.cpu, a.mem, a.gpu, a.amd = a.cpu+b.cpu, a.mem+b.mem, a.gpu+b.gpu, a.amd+b.amd
}

func (a *amount) max(b amount) {
	a.cpu, a.mem, a.gpu, a.amd = max(a.cpu, b.cpu), max(a.mem, b.mem), max(a.gpu, b.gpu), max(a.amd, b.amd)
}

// podAmount adds up what pod asks for, as kubelet's admission does (k8s.io/component-helpers
// resource.PodRequests, which the tests hold this to): app containers and sidecars summed,
// each init container with the sidecars started before it, the larger of the two; pod-level
// CPU and memory instead when set; plus overhead. Requests fall back to limits per resource.
// unspecified reports that no container (nor the pod level) asks for CPU, memory or GPUs.
func podAmount(pod *corev1.Pod) (total amount, unspecified bool, err error) {
	unspecified = true
	var sum, initMax, sidecars amount
	for i := range pod.Spec.Containers {
		a, asked, err := ask(pod.Spec.Containers[i].Resources, "spec.containers", i)
		if err != nil {
			return total, false, err
		}
		unspecified = unspecified && !asked
		sum.add(a)
	}
	for i := range pod.Spec.InitContainers {
		c := &pod.Spec.InitContainers[i]
		a, asked, err := ask(c.Resources, "spec.initContainers", i)
		if err != nil {
			return total, false, err
		}
		unspecified = unspecified && !asked
		if c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways {
			sum.add(a)
			sidecars.add(a)
			initMax.max(sidecars)
		} else {
			a.add(sidecars)
			initMax.max(a)
		}
	}
	total = sum
	total.max(initMax)
	if pod.Spec.Resources != nil {
		a, asked, err := ask(*pod.Spec.Resources, "spec.resources", -1)
		if err != nil {
			return total, false, err
		}
		unspecified = unspecified && !asked
		if has(*pod.Spec.Resources, corev1.ResourceCPU) {
			total.cpu = a.cpu
		}
		if has(*pod.Spec.Resources, corev1.ResourceMemory) {
			total.mem = a.mem
		}
	}
	for name, q := range pod.Spec.Overhead {
		if q.Sign() < 0 {
			return total, false, &PodError{Field: fmt.Sprintf("spec.overhead[%s]", name), Reason: fmt.Sprintf("%s must not be negative", q.String())}
		}
		switch name {
		case corev1.ResourceCPU:
			total.cpu += q.MilliValue()
		case corev1.ResourceMemory:
			total.mem += q.Value()
		}
	}
	return total, unspecified, nil
}

func has(rr corev1.ResourceRequirements, name corev1.ResourceName) bool {
	_, req := rr.Requests[name]
	_, lim := rr.Limits[name]
	return req || lim
}

var counted = [...]corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory, ResourceGPU, ResourceAMDGPU}

// ask reads what one container (list[index], or the pod level when index < 0) asks for:
// requests, falling back to limits. It refuses negative quantities and fractional GPUs.
func ask(rr corev1.ResourceRequirements, list string, index int) (a amount, asked bool, err error) {
	for _, name := range counted {
		req, reqOK := rr.Requests[name]
		lim, limOK := rr.Limits[name]
		if reqOK {
			if err := checkQuantity(req, name, list, index, "requests"); err != nil {
				return a, false, err
			}
		}
		if limOK {
			if err := checkQuantity(lim, name, list, index, "limits"); err != nil {
				return a, false, err
			}
		}
		q := req
		if !reqOK {
			if !limOK {
				continue
			}
			q = lim
		}
		asked = true
		switch name {
		case corev1.ResourceCPU:
			a.cpu = q.MilliValue()
		case corev1.ResourceMemory:
			a.mem = q.Value()
		case ResourceGPU:
			a.gpu = q.Value()
		case ResourceAMDGPU:
			a.amd = q.Value()
		}
	}
	return a, asked, nil
}

func checkQuantity(q resource.Quantity, name corev1.ResourceName, list string, index int, kind string) error {
	var reason string
	switch {
	case q.Sign() < 0:
		reason = q.String() + " must not be negative"
	case (name == ResourceGPU || name == ResourceAMDGPU) && q.MilliValue()%1000 != 0:
		reason = q.String() + " must be a whole number"
	default:
		return nil
	}
	field := list
	if index >= 0 {
		field = fmt.Sprintf("%s[%d].resources", list, index)
	}
	return &PodError{Field: fmt.Sprintf("%s.%s[%s]", field, kind, name), Reason: reason}
}

// gpuShortfall refuses a pod that names (by annotation) an instance type with fewer GPUs of
// the maker it asks for than it asks for: no offering of the type can ever run it, so the
// error is the pod's, and names the first container field asking for them.
func gpuShortfall(pod *corev1.Pod, n Resources, t *instancetype.InstanceType, annotation string) error {
	for _, g := range []struct {
		res   corev1.ResourceName
		maker string
		want  int
	}{{ResourceGPU, "nvidia", n.GPU}, {ResourceAMDGPU, "amd", n.AMDGPU}} {
		have := gpusBy(t, g.maker)
		if g.want <= have {
			continue
		}
		what := fmt.Sprintf("%d %s GPUs", have, strings.ToUpper(g.maker))
		if t.GPU > 0 && have == 0 {
			what = fmt.Sprintf("%d GPUs, none of them %s", t.GPU, strings.ToUpper(g.maker))
		}
		return &PodError{Field: gpuField(pod, g.res), Reason: fmt.Sprintf("the pod asks for %d %s, but instance type %s (annotation %s) has %s",
			g.want, g.res, t.Name, annotation, what)}
	}
	return nil
}

// gpuField is the first container field asking for res: its limit, else its request.
func gpuField(pod *corev1.Pod, res corev1.ResourceName) string {
	for _, l := range []struct {
		name string
		cs   []corev1.Container
	}{{"spec.containers", pod.Spec.Containers}, {"spec.initContainers", pod.Spec.InitContainers}} {
		for i, c := range l.cs {
			if _, ok := c.Resources.Limits[res]; ok {
				return fmt.Sprintf("%s[%d].resources.limits[%s]", l.name, i, res)
			}
			if _, ok := c.Resources.Requests[res]; ok {
				return fmt.Sprintf("%s[%d].resources.requests[%s]", l.name, i, res)
			}
		}
	}
	return fmt.Sprintf("resources[%s]", res)
}
