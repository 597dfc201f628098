package cells

import (
	"context"
	"sync/atomic"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/kip-dev/kip/internal/cloud"
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
