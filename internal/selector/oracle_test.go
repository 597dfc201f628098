package selector

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	resourcehelper "k8s.io/component-helpers/resource"
)

// withLimitsAsRequests returns a copy of pod whose missing requests are its limits, what API
// defaulting does for containers.
func withLimitsAsRequests(pod *corev1.Pod) *corev1.Pod {
	p := pod.DeepCopy()
	fill := func(rr *corev1.ResourceRequirements) {
		for name, q := range rr.Limits {
			if _, ok := rr.Requests[name]; !ok {
				if rr.Requests == nil {
					rr.Requests = corev1.ResourceList{}
				}
				rr.Requests[name] = q
			}
		}
	}
	for i := range p.Spec.Containers {
		fill(&p.Spec.Containers[i].Resources)
	}
	for i := range p.Spec.InitContainers {
		fill(&p.Spec.InitContainers[i].Resources)
	}
	if p.Spec.Resources != nil {
		fill(p.Spec.Resources)
	}
	return p
}

// TestNeedsAgreesWithKubelet holds Needs' arithmetic to kubelet's own
// (k8s.io/component-helpers resource.PodRequests) over the generated corpus and the table pods.
func TestNeedsAgreesWithKubelet(t *testing.T) {
	var pods []*corev1.Pod
	for _, s := range genShapes(3, 500) {
		pods = append(pods, s.pod)
	}
	withOverhead := pod(requests("cpu", "1", "memory", "1Gi"), inits(sidecar("s", rl("cpu", "2")), ctr("i", rl("memory", "3Gi"), nil)))
	withOverhead.Spec.Overhead = rl("cpu", "100m", "memory", "64Mi")
	podLevel := pod(requests("cpu", "1", "memory", "1Gi"))
	podLevel.Spec.Resources = &corev1.ResourceRequirements{Limits: rl("cpu", "3")}
	pods = append(pods, withOverhead, podLevel)
	for i, p := range pods {
		got, err := Needs(p, Options{Reserve: &Reserve{}})
		if err != nil {
			t.Fatal(err)
		}
		want := resourcehelper.PodRequests(withLimitsAsRequests(p), resourcehelper.PodResourcesOptions{})
		gpu := want[ResourceGPU]
		if got.CPUMilli != want.Cpu().MilliValue() || got.MemoryBytes != want.Memory().Value() || int64(got.GPU) != gpu.Value() {
			t.Fatalf("pod %d: Needs cpu %d mem %d gpu %d; kubelet cpu %d mem %d gpu %d", i,
				got.CPUMilli, got.MemoryBytes, got.GPU, want.Cpu().MilliValue(), want.Memory().Value(), gpu.Value())
		}
	}
}
