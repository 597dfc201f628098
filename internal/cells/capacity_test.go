package cells

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/kip-dev/kip/internal/cloud"
	"github.com/kip-dev/kip/internal/cloud/fake"
	"github.com/kip-dev/kip/internal/instancetype"
	"github.com/kip-dev/kip/internal/selector"
)

// starvedCloud reports fake.small's offerings unavailable while starved is set, as the AWS
// backend does for an offering that just had an InsufficientInstanceCapacity.
type starvedCloud struct {
	cloud.Cloud
	starved atomic.Bool
}

func (s *starvedCloud) InstanceTypes(ctx context.Context) ([]instancetype.InstanceType, error) {
	types, err := s.Cloud.InstanceTypes(ctx)
	if err != nil || !s.starved.Load() {
		return types, err
	}
	for i := range types {
		if types[i].Name == "fake.small" {
			for j := range types[i].Offerings {
				types[i].Offerings[j].Available = false
			}
		}
	}
	return types, nil
}

// TestPinnedPodWaitsOutACapacityShortage: a pod pinned to one instance type whose offerings
// are unavailable for now (a recent capacity error) waits, InsufficientCapacity, and launches
// once the type is available again; it does not fail with NoInstanceType.
func TestPinnedPodWaitsOutACapacityShortage(t *testing.T) {
	sc := &starvedCloud{}
	h := newHarness(t, func(h *harness) {
		sc.Cloud = h.cl
		h.cl = sc
	})
	h.m.Close()
	deps := h.m.deps
	deps.Selector = &selector.Selector{}
	h.m = New(h.m.cfg, h.m.node, deps)
	t.Cleanup(h.m.Close)
	sc.starved.Store(true)

	pod := testPod("pinned", func(p *corev1.Pod) { p.Annotations = map[string]string{selector.AnnotationInstanceType: "fake.small"} })
	if err := h.m.CreatePod(context.Background(), pod); err != nil {
		t.Fatal(err)
	}
	h.waitPod(pod, "waiting for capacity", func(p *corev1.Pod) bool { return p.Status.Reason == ReasonInsufficientCapacity })
	if len(h.live()) != 0 {
		t.Fatal("launched while the only type was unavailable")
	}
	sc.starved.Store(false)
	h.waitFor("a cell of the pinned type", func() bool { return len(h.live()) == 1 })
	if got := h.live()[0].InstanceType; got != "fake.small" {
		t.Errorf("launched %s, want fake.small", got)
	}
	if p, _ := h.m.GetPod("default", "pinned"); p.Status.Phase == corev1.PodFailed {
		t.Errorf("the pinned pod failed: %s %s", p.Status.Reason, p.Status.Message)
	}
}

// TestPinnedTypeWithoutTheGPUsFailsBeforeLaunch: a pod pinned to an instance type with fewer
// GPUs than it asks for can never run there: it fails InvalidSpec before any launch, with an
// Event naming the container field that asks for them (not a wait, not a cell that refuses it).
func TestPinnedTypeWithoutTheGPUsFailsBeforeLaunch(t *testing.T) {
	h := newHarness(t)
	h.m.Close()
	deps := h.m.deps
	deps.Selector = &selector.Selector{}
	h.m = New(h.m.cfg, h.m.node, deps)
	t.Cleanup(h.m.Close)

	pod := testPod("gpu", func(p *corev1.Pod) {
		p.Annotations = map[string]string{selector.AnnotationInstanceType: "fake.small"}
		p.Spec.Containers[0].Resources.Limits = corev1.ResourceList{selector.ResourceGPU: resource.MustParse("1")}
	})
	if err := h.m.CreatePod(context.Background(), pod); err != nil {
		t.Fatal(err)
	}
	got := h.waitPod(pod, "Failed", func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodFailed })
	const field = "spec.containers[0].resources.limits[nvidia.com/gpu]"
	if got.Status.Reason != ReasonInvalidSpec || !strings.Contains(got.Status.Message, field) || !strings.Contains(got.Status.Message, "fake.small") {
		t.Errorf("reason %q message %q, want InvalidSpec naming %s and fake.small", got.Status.Reason, got.Status.Message, field)
	}
	if n := h.cloud.CallCount(fake.MethodLaunch); n != 0 {
		t.Errorf("%d launches, want none", n)
	}
	found := false
	for _, e := range h.allEvents() {
		found = found || strings.Contains(e, "Warning "+ReasonInvalidSpec) && strings.Contains(e, field)
	}
	if !found {
		t.Errorf("no InvalidSpec event naming %s: %v", field, h.allEvents())
	}
}
