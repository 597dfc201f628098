package selector

import (
	"fmt"
	"math"
	"math/rand/v2"
	"path"
	"sort"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/kip-dev/kip/internal/instancetype"
)

// shape is one generated pod and the options it is selected with.
type shape struct {
	pod  *corev1.Pod
	opts Options
}

// genShapes makes n pod shapes from a fixed seed: one to three containers asking for CPU and
// memory by requests or limits, init containers and sidecars, GPUs, spot, globs and
// unlimited credits, from tiny to larger than any instance type.
func genShapes(seed uint64, n int) []shape {
	r := rand.New(rand.NewPCG(seed, 42))
	cpus := []string{"", "10m", "100m", "250m", "500m", "900m", "1", "1500m", "2", "3", "4", "7", "8", "15", "16", "31", "48", "64", "95", "200"}
	mems := []string{"", "64Mi", "256Mi", "400Mi", "1Gi", "1500Mi", "2Gi", "3Gi", "4Gi", "7Gi", "8Gi", "15Gi", "30Gi", "60Gi", "120Gi", "250Gi", "500Gi", "1000Gi", "4000Gi"}
	globs := []string{"m5*", "c5*", "r5*", "t3*", "*.large", "g4dn.*", "p3*", "Standard_D*", "Standard_B*", "*"}
	list := func(cpu, mem string) corev1.ResourceList {
		l := corev1.ResourceList{}
		if cpu != "" {
			l["cpu"] = mustQ(cpu)
		}
		if mem != "" {
			l["memory"] = mustQ(mem)
		}
		return l
	}
	container := func(name string) corev1.Container {
		cpu, mem := cpus[r.IntN(len(cpus)-4)], mems[r.IntN(len(mems)-4)]
		if r.IntN(20) == 0 { // now and then something huge
			cpu, mem = cpus[r.IntN(len(cpus))], mems[r.IntN(len(mems))]
		}
		if r.IntN(3) == 0 {
			return ctr(name, nil, list(cpu, mem))
		}
		return ctr(name, list(cpu, mem), nil)
	}
	var out []shape
	for i := 0; i < n; i++ {
		p := pod()
		p.Name = fmt.Sprintf("p%d", i)
		p.Spec.Containers = nil
		for c := 0; c <= r.IntN(3); c++ {
			p.Spec.Containers = append(p.Spec.Containers, container(fmt.Sprintf("c%d", c)))
		}
		if r.IntN(4) == 0 {
			p.Spec.InitContainers = append(p.Spec.InitContainers, container("init"))
		}
		if r.IntN(6) == 0 {
			sc := container("sidecar")
			always := corev1.ContainerRestartPolicyAlways
			sc.RestartPolicy = &always
			p.Spec.InitContainers = append(p.Spec.InitContainers, sc)
		}
		if r.IntN(10) == 0 {
			p.Spec.Containers[0].Resources.Limits = corev1.ResourceList{ResourceGPU: mustQ(fmt.Sprint(1 << r.IntN(4)))}
		}
		if r.IntN(3) == 0 {
			annotate(AnnotationLaunchType, "spot")(p)
		}
		if r.IntN(6) == 0 {
			annotate(AnnotationInstanceType, globs[r.IntN(len(globs))])(p)
		}
		out = append(out, shape{pod: p, opts: Options{UnlimitedCredits: r.IntN(3) == 0, MaxFallbacks: 3}})
	}
	return out
}

func mustQ(s string) resource.Quantity { return resource.MustParse(s) }

// bruteForce prices every offering of every type that fits, independently of Index: the
// effective prices of the fits, ascending. Needs come from Needs (tested on its own).
func bruteForce(t *testing.T, types []instancetype.InstanceType, s shape) []float64 {
	t.Helper()
	n, err := Needs(s.pod, s.opts)
	if err != nil {
		t.Fatal(err)
	}
	spot := s.pod.Annotations[AnnotationLaunchType] == "spot"
	glob := s.pod.Annotations[AnnotationInstanceType]
	var prices []float64
	for _, it := range types {
		if glob != "" {
			if ok, _ := path.Match(glob, it.Name); !ok {
				continue
			}
		} else if it.Arch != "amd64" {
			continue
		}
		if it.VCPU*1000 < float64(n.CPUMilli) || it.MemoryMiB*mi < n.MemoryBytes || it.GPU < n.GPU {
			continue
		}
		surplus := 0.0
		if it.Burstable && it.BaselineVCPU*1000 < float64(n.CPUMilli) {
			name := it.Name
			if !s.opts.UnlimitedCredits || !(len(name) > 3 && (name[:3] == "t2." || name[:3] == "t3." || name[:4] == "t3a." || name[:4] == "t4g.")) {
				continue
			}
			surplus = (float64(n.CPUMilli)/1000 - it.BaselineVCPU) * DefaultSurplusCreditPrice
		}
		for _, o := range it.Offerings {
			if o.Spot == spot && o.Available && o.Price > 0 {
				prices = append(prices, o.Price+surplus)
			}
		}
	}
	sort.Float64s(prices)
	return prices
}

// TestSelectMatchesBruteForce checks, for 250 generated shapes in each of several regions,
// that Select's choice and fallbacks cost exactly what an exhaustive search finds.
func TestSelectMatchesBruteForce(t *testing.T) {
	regions := []struct{ cloud, region string }{
		{"aws", "us-east-1"}, {"aws", "eu-west-1"}, {"aws", "ap-southeast-2"}, {"aws", "sa-east-1"}, {"azure", "eastus"},
	}
	for _, rg := range regions {
		t.Run(rg.cloud+"/"+rg.region, func(t *testing.T) {
			types, err := instancetype.Load(rg.cloud, rg.region)
			if err != nil {
				t.Fatal(err)
			}
			ix := NewIndex(types)
			shapes := genShapes(7, 250)
			var chosen, nofit, annotated int
			for i, s := range shapes {
				want := bruteForce(t, types, s)
				ch, err := ix.Select(s.pod, s.opts)
				if err != nil {
					if len(want) > 0 || !(IsNoFit(err) || IsBadAnnotation(err)) {
						t.Fatalf("shape %d: Select error %v; brute force found %d fits", i, err, len(want))
					}
					if IsBadAnnotation(err) {
						annotated++ // a glob matching nothing in this catalog
					} else {
						nofit++
					}
					continue
				}
				chosen++
				if len(want) == 0 {
					t.Fatalf("shape %d: Select chose %s, brute force found nothing", i, ch.Type.Name)
				}
				got := []float64{ch.Price}
				for _, f := range ch.Fallbacks {
					got = append(got, f.Price)
				}
				for k := range got {
					if k >= len(want) || math.Abs(got[k]-want[k]) > 1e-9 {
						t.Fatalf("shape %d (%s): prices %v, brute force %v", i, ch.Needs, got, want[:min(len(want), len(got))])
					}
				}
				if len(got) < min(len(want), 1+s.opts.MaxFallbacks) {
					t.Fatalf("shape %d: %d candidates, brute force has %d", i, len(got), len(want))
				}
			}
			t.Logf("%d shapes: %d chosen, %d fit nothing, %d globs matching nothing", len(shapes), chosen, nofit, annotated)
			if chosen < 150 || nofit == 0 {
				t.Errorf("the corpus should mostly fit and sometimes not: %d chosen, %d no fit", chosen, nofit)
			}
		})
	}
}
