package selector

import (
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kip-dev/kip/internal/instancetype"
)

// rl builds a ResourceList from name/quantity pairs: rl("cpu", "1", "memory", "1Gi").
func rl(kv ...string) corev1.ResourceList {
	out := corev1.ResourceList{}
	for i := 0; i < len(kv); i += 2 {
		out[corev1.ResourceName(kv[i])] = resource.MustParse(kv[i+1])
	}
	return out
}

func ctr(name string, req, lim corev1.ResourceList) corev1.Container {
	return corev1.Container{Name: name, Image: "busybox", Resources: corev1.ResourceRequirements{Requests: req, Limits: lim}}
}

func sidecar(name string, req corev1.ResourceList) corev1.Container {
	c := ctr(name, req, nil)
	always := corev1.ContainerRestartPolicyAlways
	c.RestartPolicy = &always
	return c
}

type podOpt func(*corev1.Pod)

func pod(opts ...podOpt) *corev1.Pod {
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "default"}}
	for _, o := range opts {
		o(p)
	}
	if len(p.Spec.Containers) == 0 {
		p.Spec.Containers = []corev1.Container{ctr("app", nil, nil)}
	}
	return p
}

func containers(cs ...corev1.Container) podOpt {
	return func(p *corev1.Pod) { p.Spec.Containers = append(p.Spec.Containers, cs...) }
}

func inits(cs ...corev1.Container) podOpt {
	return func(p *corev1.Pod) { p.Spec.InitContainers = append(p.Spec.InitContainers, cs...) }
}

func requests(kv ...string) podOpt { return containers(ctr("app", rl(kv...), nil)) }

func annotate(kv ...string) podOpt {
	return func(p *corev1.Pod) {
		if p.Annotations == nil {
			p.Annotations = map[string]string{}
		}
		for i := 0; i < len(kv); i += 2 {
			p.Annotations[kv[i]] = kv[i+1]
		}
	}
}

func nodeSelector(kv ...string) podOpt {
	return func(p *corev1.Pod) {
		if p.Spec.NodeSelector == nil {
			p.Spec.NodeSelector = map[string]string{}
		}
		for i := 0; i < len(kv); i += 2 {
			p.Spec.NodeSelector[kv[i]] = kv[i+1]
		}
	}
}

// affinity sets required node affinity with one term per argument.
func affinity(terms ...[]corev1.NodeSelectorRequirement) podOpt {
	return func(p *corev1.Pod) {
		var ts []corev1.NodeSelectorTerm
		for _, t := range terms {
			ts = append(ts, corev1.NodeSelectorTerm{MatchExpressions: t})
		}
		p.Spec.Affinity = &corev1.Affinity{NodeAffinity: &corev1.NodeAffinity{
			RequiredDuringSchedulingIgnoredDuringExecution: &corev1.NodeSelector{NodeSelectorTerms: ts}}}
	}
}

func expr(key string, op corev1.NodeSelectorOperator, values ...string) corev1.NodeSelectorRequirement {
	return corev1.NodeSelectorRequirement{Key: key, Operator: op, Values: values}
}

func od(price float64) instancetype.Offering {
	return instancetype.Offering{Price: price, Available: true}
}

func spotAt(price float64) instancetype.Offering {
	return instancetype.Offering{Spot: true, Price: price, Available: true}
}

func it(name, arch string, vcpu float64, memMiB int64, gpu int, offs ...instancetype.Offering) instancetype.InstanceType {
	return instancetype.InstanceType{Name: name, Arch: arch, VCPU: vcpu, MemoryMiB: memMiB, GPU: gpu, Offerings: offs}
}

func burst(t instancetype.InstanceType, baseline float64) instancetype.InstanceType {
	t.Burstable, t.BaselineVCPU = true, baseline
	return t
}

func amdGPU(t instancetype.InstanceType) instancetype.InstanceType {
	t.GPUModel = "amd-radeon pro v520"
	return t
}

// testCatalog is small enough to reason about by hand.
func testCatalog() []instancetype.InstanceType {
	zoned := it("z.large", "amd64", 2, 8192, 0,
		instancetype.Offering{Zone: "us-east-1a", Price: 0.09, Available: true},
		instancetype.Offering{Zone: "us-east-1b", Price: 0.05, Available: false},
		instancetype.Offering{Zone: "us-east-1c", Price: 0.092, Available: true})
	return []instancetype.InstanceType{
		burst(it("t3.small", "amd64", 2, 2048, 0, od(0.0208), spotAt(0.0062)), 0.4),
		burst(it("Standard_B2s", "amd64", 2, 4096, 0, od(0.0416)), 0.4),
		it("c5.large", "amd64", 2, 4096, 0, od(0.085), spotAt(0.031)),
		it("m5.large", "amd64", 2, 8192, 0, od(0.096), spotAt(0.035)),
		it("m6g.large", "arm64", 2, 8192, 0, od(0.077), spotAt(0.029)),
		it("c5.xlarge", "amd64", 4, 8192, 0, od(0.17), spotAt(0.065)),
		it("r5.large", "amd64", 2, 16384, 0, od(0.126)),
		it("g4dn.xlarge", "amd64", 4, 16384, 1, od(0.526), spotAt(0.158)),
		it("free.large", "amd64", 64, 1<<20, 0, od(0)),
		zoned,
	}
}
