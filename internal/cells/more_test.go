package cells

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/kip-dev/kip/internal/cellapi"
	"github.com/kip-dev/kip/internal/cloud"
	"github.com/kip-dev/kip/internal/cloud/fake"
)

func TestNoCapacityAnywhereWaitsAndRetries(t *testing.T) {
	h := newHarness(t)
	for i := 0; i < 3; i++ { // every type of the fake catalog
		h.cloud.InjectError(fake.MethodLaunch, cloud.InsufficientCapacity("sold out"))
	}
	pod := testPod("patient")
	if err := h.m.CreatePod(context.Background(), pod); err != nil {
		t.Fatal(err)
	}
	// Pending with the reason while it waits, then a cell once capacity returns.
	h.waitFor("a cell after the retry", func() bool { return len(h.live()) == 1 })
	if n := h.cloud.CallCount(fake.MethodLaunch); n != 4 {
		t.Errorf("%d launches, want 3 refused and 1 made", n)
	}
	found := false
	h.mu.Lock()
	for _, p := range h.notified {
		if p.Name == "patient" && p.Status.Reason == ReasonInsufficientCapacity && p.Status.Phase == corev1.PodPending {
			found = true
		}
	}
	h.mu.Unlock()
	if !found {
		t.Error("the pod never showed Pending with reason InsufficientCapacity")
	}
}

func TestRefusedSpecsFailThePodAndLeakNothing(t *testing.T) {
	tests := []struct {
		name  string
		setup func(h *harness)
	}{
		{"cloud refuses the launch", func(h *harness) {
			h.cloud.InjectError(fake.MethodLaunch, cloud.InvalidSpec("bootstrap too large"))
		}},
		{"agent refuses the pod", func(h *harness) {
			h.newAgent = func(id string) *testAgent {
				return &testAgent{cellID: id, putErr: cellapi.Errorf(cellapi.KindInvalid, "spec.containers[0].image: must not be empty")}
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t)
			tt.setup(h)
			pod := testPod("refused")
			if err := h.m.CreatePod(context.Background(), pod); err != nil {
				t.Fatal(err)
			}
			got := h.waitPod(pod, "Failed", func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodFailed })
			if got.Status.Reason != ReasonInvalidSpec {
				t.Errorf("reason %q message %q", got.Status.Reason, got.Status.Message)
			}
			h.waitFor("no live cell", func() bool { return len(h.live()) == 0 })
		})
	}
}

func TestResolveErrorsAreRetried(t *testing.T) {
	var mu sync.Mutex
	fails := 2
	h := newHarness(t)
	h.m.deps.Resolver = ResolverFunc(func(ctx context.Context, pod *corev1.Pod) (*cellapi.PodRequest, error) {
		mu.Lock()
		defer mu.Unlock()
		if fails > 0 {
			fails--
			return nil, errors.New(`secret "db" not found`)
		}
		if pod.Status.PodIP == "" {
			return nil, errors.New("the resolver got no pod IP")
		}
		return &cellapi.PodRequest{Pod: pod}, nil
	})
	pod := testPod("needs-secret")
	if err := h.m.CreatePod(context.Background(), pod); err != nil {
		t.Fatal(err)
	}
	h.waitFor("the config error on the container", func() bool {
		h.mu.Lock()
		defer h.mu.Unlock()
		for _, p := range h.notified {
			if w := p.Status.ContainerStatuses[0].State.Waiting; w != nil && w.Reason == "CreateContainerConfigError" && strings.Contains(w.Message, `secret "db"`) {
				return true
			}
		}
		return false
	})
	a := h.agent(CellID(pod.UID))
	h.waitFor("the pod on the agent", func() bool { return a.watcherCount() > 0 })
	if !h.hasEvent(`Warning Failed Error: secret "db" not found`) {
		t.Errorf("events %v", h.allEvents())
	}
}

// countingCloud records the most launches in flight at once.
type countingCloud struct {
	*fake.Fake
	mu       sync.Mutex
	inFlight int
	max      int
	release  chan struct{}
}

func (c *countingCloud) Launch(ctx context.Context, spec cloud.LaunchSpec) (*cloud.Instance, error) {
	c.mu.Lock()
	c.inFlight++
	c.max = max(c.max, c.inFlight)
	c.mu.Unlock()
	<-c.release
	c.mu.Lock()
	c.inFlight--
	c.mu.Unlock()
	return c.Fake.Launch(ctx, spec)
}

func TestLaunchConcurrencyIsBounded(t *testing.T) {
	cc := &countingCloud{release: make(chan struct{})}
	h := newHarness(t, func(h *harness) {
		cc.Fake = h.cloud
		h.cl = cc
	})
	h.m.Close()
	cfg := h.m.cfg
	cfg.LaunchConcurrency = 2
	m := New(cfg, h.m.node, h.m.deps)
	t.Cleanup(m.Close)
	h.m = m
	for i := 0; i < 5; i++ {
		if err := m.CreatePod(context.Background(), testPod(fmt.Sprintf("p%d", i))); err != nil {
			t.Fatal(err)
		}
	}
	h.waitFor("two launches in flight", func() bool { cc.mu.Lock(); defer cc.mu.Unlock(); return cc.inFlight == 2 })
	close(cc.release)
	h.waitFor("every pod launched", func() bool { return len(h.live()) == 5 })
	if cc.max != 2 {
		t.Errorf("at most %d launches in flight, want 2", cc.max)
	}
}

// TestEphemeralWaiting: what ephpush records for an ephemeral container it could not give the
// agent shows on the pod's status (for its UID only) until the agent reports the container.
func TestEphemeralWaiting(t *testing.T) {
	h := newHarness(t)
	pod := testPod("debugged", func(p *corev1.Pod) {
		p.Spec.EphemeralContainers = []corev1.EphemeralContainer{{EphemeralContainerCommon: corev1.EphemeralContainerCommon{Name: "dbg", Image: "busybox"}}}
	})
	a := h.runPod(pod)
	configError := func(p *corev1.Pod) bool {
		w := p.Status.EphemeralContainerStatuses[0].State.Waiting
		return w != nil && w.Reason == "CreateContainerConfigError" && w.Message == `secret "s" not found`
	}
	h.m.EphemeralWaiting(pod.Namespace, pod.Name, "another-uid", []string{"dbg"}, "CreateContainerConfigError", `secret "s" not found`)
	if p, _ := h.m.GetPod(pod.Namespace, pod.Name); configError(p) {
		t.Fatal("a reason recorded for another pod's UID shows")
	}
	h.m.EphemeralWaiting(pod.Namespace, pod.Name, pod.UID, []string{"dbg"}, "CreateContainerConfigError", `secret "s" not found`)
	h.waitPod(pod, "dbg waiting with CreateContainerConfigError", configError)
	a.set(&cellapi.PodStatus{Phase: corev1.PodRunning, ContainerStatuses: []corev1.ContainerStatus{running("main", true)},
		EphemeralContainerStatuses: []corev1.ContainerStatus{running("dbg", false)}})
	h.waitPod(pod, "dbg running as the agent reports", func(p *corev1.Pod) bool {
		return p.Status.EphemeralContainerStatuses[0].State.Running != nil
	})
}
