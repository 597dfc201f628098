package selector

import (
	"fmt"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	resourcehelper "k8s.io/component-helpers/resource"

	"github.com/kip-dev/kip/internal/instancetype"
)

// cores renders millicores as vCPUs: 1050 → "1.05".
func cores(milli int64) string { return strconv.FormatFloat(float64(milli)/1000, 'f', -1, 64) }

// ResourceGPU is the extended resource that asks for NVIDIA GPUs.
const ResourceGPU corev1.ResourceName = "nvidia.com/gpu"

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
	eff, unspecified, err := effectivePod(pod)
	if err != nil {
		return Resources{}, err
	}
	reqs := resourcehelper.PodRequests(eff, resourcehelper.PodResourcesOptions{})
	reserve := opts.reserve()
	r := Resources{Unspecified: unspecified}
	r.CPUMilli = reqs.Cpu().MilliValue() + reserve.CPUMilli
	r.MemoryBytes = reqs.Memory().Value() + reserve.MemoryBytes
	if q, ok := reqs[ResourceGPU]; ok {
		r.GPU = int(q.Value())
	}
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

var counted = []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory, ResourceGPU}

// effectivePod returns a copy of pod whose requests fall back to limits, after checking the
// quantities the selector counts. unspecified reports that nothing asks for any of them.
func effectivePod(pod *corev1.Pod) (eff *corev1.Pod, unspecified bool, err error) {
	unspecified = true
	fill := func(field string, rr corev1.ResourceRequirements) (corev1.ResourceRequirements, error) {
		out, copied := rr, false
		for _, name := range counted {
			for _, l := range [2]struct {
				kind string
				list corev1.ResourceList
			}{{"requests", rr.Requests}, {"limits", rr.Limits}} {
				q, ok := l.list[name]
				if !ok {
					continue
				}
				unspecified = false
				if q.Sign() < 0 {
					return out, &PodError{Field: fmt.Sprintf("%s.%s[%s]", field, l.kind, name), Reason: fmt.Sprintf("%s must not be negative", q.String())}
				}
				if name == ResourceGPU && q.MilliValue()%1000 != 0 {
					return out, &PodError{Field: fmt.Sprintf("%s.%s[%s]", field, l.kind, name), Reason: fmt.Sprintf("%s must be a whole number", q.String())}
				}
			}
			if _, ok := rr.Requests[name]; ok {
				continue
			}
			if lim, ok := rr.Limits[name]; ok {
				if !copied { // never write into the caller's pod
					out.Requests = make(corev1.ResourceList, len(rr.Requests)+len(counted))
					for k, v := range rr.Requests {
						out.Requests[k] = v
					}
					copied = true
				}
				out.Requests[name] = lim
			}
		}
		return out, nil
	}
	cp := *pod
	cp.Spec.Containers = append([]corev1.Container(nil), pod.Spec.Containers...)
	cp.Spec.InitContainers = append([]corev1.Container(nil), pod.Spec.InitContainers...)
	for i := range cp.Spec.Containers {
		if cp.Spec.Containers[i].Resources, err = fill(fmt.Sprintf("spec.containers[%d].resources", i), cp.Spec.Containers[i].Resources); err != nil {
			return nil, false, err
		}
	}
	for i := range cp.Spec.InitContainers {
		if cp.Spec.InitContainers[i].Resources, err = fill(fmt.Sprintf("spec.initContainers[%d].resources", i), cp.Spec.InitContainers[i].Resources); err != nil {
			return nil, false, err
		}
	}
	if pod.Spec.Resources != nil {
		rr, err := fill("spec.resources", *pod.Spec.Resources)
		if err != nil {
			return nil, false, err
		}
		cp.Spec.Resources = &rr
	}
	for name, q := range pod.Spec.Overhead {
		if q.Sign() < 0 {
			return nil, false, &PodError{Field: fmt.Sprintf("spec.overhead[%s]", name), Reason: fmt.Sprintf("%s must not be negative", q.String())}
		}
	}
	return &cp, unspecified, nil
}
