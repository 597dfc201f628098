package selector

import (
	"reflect"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

const mi = 1 << 20

func TestNeeds(t *testing.T) {
	none := &Reserve{}
	tests := []struct {
		name        string
		pod         *corev1.Pod
		opts        Options
		cpu, mem    int64 // millicores, bytes
		gpu         int
		unspecified bool
	}{
		{name: "nothing asked: the default reserve", pod: pod(), cpu: 50, mem: 128 * mi, unspecified: true},
		{name: "custom reserve", pod: pod(), opts: Options{Reserve: &Reserve{CPUMilli: 100, MemoryBytes: 256 * mi}}, cpu: 100, mem: 256 * mi, unspecified: true},
		{name: "requests", pod: pod(requests("cpu", "500m", "memory", "1Gi")), opts: Options{Reserve: none}, cpu: 500, mem: 1024 * mi},
		{name: "requests plus reserve", pod: pod(requests("cpu", "500m", "memory", "1Gi")), cpu: 550, mem: 1152 * mi},
		{name: "limits where requests are absent", pod: pod(containers(ctr("a", rl("cpu", "250m"), rl("cpu", "1", "memory", "2Gi")))), opts: Options{Reserve: none}, cpu: 250, mem: 2048 * mi},
		{name: "containers add up", pod: pod(containers(ctr("a", rl("cpu", "1", "memory", "1Gi"), nil), ctr("b", rl("cpu", "500m", "memory", "512Mi"), nil))),
			opts: Options{Reserve: none}, cpu: 1500, mem: 1536 * mi},
		{name: "largest init container wins per resource", pod: pod(requests("cpu", "1", "memory", "1Gi"), inits(ctr("i1", rl("cpu", "3"), nil), ctr("i2", rl("memory", "4Gi"), nil))),
			opts: Options{Reserve: none}, cpu: 3000, mem: 4096 * mi},
		{name: "init containers do not add up", pod: pod(requests("cpu", "1"), inits(ctr("i1", rl("cpu", "2"), nil), ctr("i2", rl("cpu", "2"), nil))),
			opts: Options{Reserve: none}, cpu: 2000},
		{name: "sidecars count with the app and with later init containers", pod: pod(requests("cpu", "1"),
			inits(ctr("before", rl("cpu", "2"), nil), sidecar("proxy", rl("cpu", "500m")), ctr("after", rl("cpu", "2"), nil))),
			opts: Options{Reserve: none}, cpu: 2500},
		{name: "sidecar plus app beats init", pod: pod(requests("cpu", "2"), inits(sidecar("proxy", rl("cpu", "1")), ctr("i", rl("cpu", "2"), nil))),
			opts: Options{Reserve: none}, cpu: 3000},
		{name: "pod overhead", pod: func() *corev1.Pod {
			p := pod(requests("cpu", "1", "memory", "1Gi"))
			p.Spec.Overhead = rl("cpu", "250m", "memory", "120Mi")
			return p
		}(), opts: Options{Reserve: none}, cpu: 1250, mem: 1144 * mi},
		{name: "pod-level resources", pod: func() *corev1.Pod {
			p := pod(requests("cpu", "1", "memory", "1Gi"))
			p.Spec.Resources = &corev1.ResourceRequirements{Limits: rl("cpu", "4", "memory", "8Gi")}
			return p
		}(), opts: Options{Reserve: none}, cpu: 4000, mem: 8192 * mi},
		{name: "gpu from limits", pod: pod(containers(ctr("a", nil, rl("nvidia.com/gpu", "2")))), opts: Options{Reserve: none}, gpu: 2},
		{name: "gpus add up", pod: pod(containers(ctr("a", rl("nvidia.com/gpu", "1"), nil), ctr("b", rl("nvidia.com/gpu", "1"), nil))), opts: Options{Reserve: none}, gpu: 2},
		{name: "other resources do not count as asking", pod: pod(requests("ephemeral-storage", "1Gi")), opts: Options{Reserve: none}, unspecified: true},
		{name: "zero requests still count as asking", pod: pod(requests("cpu", "0")), opts: Options{Reserve: none}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := tt.pod.DeepCopy()
			got, err := Needs(tt.pod, tt.opts)
			if err != nil {
				t.Fatal(err)
			}
			if got.CPUMilli != tt.cpu || got.MemoryBytes != tt.mem || got.GPU != tt.gpu || got.Unspecified != tt.unspecified {
				t.Errorf("Needs = cpu %d mem %d gpu %d unspecified %v, want %d %d %d %v", got.CPUMilli, got.MemoryBytes, got.GPU, got.Unspecified, tt.cpu, tt.mem, tt.gpu, tt.unspecified)
			}
			if !reflect.DeepEqual(before, tt.pod) {
				t.Error("Needs changed the pod")
			}
		})
	}
}

func TestNeedsConstraints(t *testing.T) {
	in := corev1.NodeSelectorOpIn
	tests := []struct {
		name           string
		pod            *corev1.Pod
		opts           Options
		arch, zone, it string // Constraint.String(), "" for none
		allowed        map[string]bool
	}{
		{name: "default arch", pod: pod(), arch: "in (amd64)", allowed: map[string]bool{"amd64": true, "arm64": false}},
		{name: "default arch by option", pod: pod(), opts: Options{DefaultArch: "arm64"}, arch: "in (arm64)"},
		{name: "any arch by option", pod: pod(), opts: Options{DefaultArch: "*"}, allowed: map[string]bool{"amd64": true, "arm64": true}},
		{name: "nodeSelector", pod: pod(nodeSelector("kubernetes.io/arch", "arm64", "topology.kubernetes.io/zone", "eu-west-1a")), arch: "in (arm64)", zone: "in (eu-west-1a)"},
		{name: "beta labels", pod: pod(nodeSelector("beta.kubernetes.io/arch", "arm64", "failure-domain.beta.kubernetes.io/zone", "z1", "beta.kubernetes.io/instance-type", "m5.large")),
			arch: "in (arm64)", zone: "in (z1)", it: "in (m5.large)"},
		{name: "affinity In", pod: pod(affinity([]corev1.NodeSelectorRequirement{expr("kubernetes.io/arch", in, "arm64", "amd64")})), arch: "in (arm64, amd64)"},
		{name: "affinity NotIn", pod: pod(affinity([]corev1.NodeSelectorRequirement{expr("topology.kubernetes.io/zone", corev1.NodeSelectorOpNotIn, "a")})),
			arch: "in (amd64)", zone: "not in (a)", allowed: map[string]bool{"amd64": true}},
		{name: "terms are ORed", pod: pod(affinity(
			[]corev1.NodeSelectorRequirement{expr("kubernetes.io/arch", in, "arm64")},
			[]corev1.NodeSelectorRequirement{expr("kubernetes.io/arch", in, "amd64")})),
			arch: "in (arm64) or in (amd64)", allowed: map[string]bool{"amd64": true, "arm64": true, "s390x": false}},
		{name: "expressions in a term are ANDed", pod: pod(affinity([]corev1.NodeSelectorRequirement{
			expr("kubernetes.io/arch", in, "arm64", "amd64"), expr("kubernetes.io/arch", corev1.NodeSelectorOpNotIn, "amd64")})),
			arch: "in (arm64, amd64) and not in (amd64)", allowed: map[string]bool{"amd64": false, "arm64": true}},
		{name: "nodeSelector ANDed with affinity", pod: pod(nodeSelector("kubernetes.io/arch", "amd64"), affinity([]corev1.NodeSelectorRequirement{expr("kubernetes.io/arch", in, "arm64")})),
			arch: "none", allowed: map[string]bool{"amd64": false, "arm64": false}},
		{name: "Exists allows anything", pod: pod(affinity([]corev1.NodeSelectorRequirement{expr("kubernetes.io/arch", corev1.NodeSelectorOpExists)})),
			arch: "any", allowed: map[string]bool{"amd64": true, "arm64": true}},
		{name: "a term without the label allows anything", pod: pod(affinity(
			[]corev1.NodeSelectorRequirement{expr("kubernetes.io/arch", in, "arm64")},
			[]corev1.NodeSelectorRequirement{expr("example.com/other", in, "x")})),
			arch: "in (arm64) or any", allowed: map[string]bool{"amd64": true}},
		{name: "other labels ignored", pod: pod(nodeSelector("type", "virtual-kubelet")), arch: "in (amd64)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Needs(tt.pod, tt.opts)
			if err != nil {
				t.Fatal(err)
			}
			if tt.arch != "" && got.Arch.String() != tt.arch || got.Zone.String() != tt.zone || got.InstanceType.String() != tt.it {
				t.Errorf("arch %q zone %q type %q, want %q %q %q", got.Arch, got.Zone, got.InstanceType, tt.arch, tt.zone, tt.it)
			}
			for v, want := range tt.allowed {
				if got.Arch.Allows(v) != want {
					t.Errorf("arch allows %s = %v, want %v", v, !want, want)
				}
			}
		})
	}
}

func TestNeedsErrors(t *testing.T) {
	tests := []struct {
		name string
		pod  *corev1.Pod
		want string
	}{
		{"nil", nil, "pod: is nil"},
		{"negative limit", pod(containers(ctr("a", nil, rl("memory", "-1Gi")))), "spec.containers[0].resources.limits[memory]: -1Gi must not be negative"},
		{"negative init", pod(inits(ctr("i", rl("cpu", "-1"), nil))), "spec.initContainers[0].resources.requests[cpu]"},
		{"fractional gpu", pod(containers(ctr("a", nil, rl("nvidia.com/gpu", "500m")))), "limits[nvidia.com/gpu]: 500m must be a whole number"},
		{"negative overhead", func() *corev1.Pod { p := pod(); p.Spec.Overhead = rl("cpu", "-1"); return p }(), "spec.overhead[cpu]"},
		{"negative pod-level", func() *corev1.Pod {
			p := pod()
			p.Spec.Resources = &corev1.ResourceRequirements{Requests: rl("memory", "-1")}
			return p
		}(), "spec.resources.requests[memory]"},
		{"Gt on arch", pod(affinity([]corev1.NodeSelectorRequirement{expr("kubernetes.io/arch", corev1.NodeSelectorOpGt, "1")})), "nodeSelectorTerms[0].matchExpressions[0].operator: Gt cannot be used with kubernetes.io/arch"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Needs(tt.pod, Options{})
			if err == nil || !IsBadPod(err) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Needs error = %v, want a PodError containing %q", err, tt.want)
			}
		})
	}
}
