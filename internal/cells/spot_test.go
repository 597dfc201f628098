package cells

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/kip-dev/kip/internal/cellapi"
	"github.com/kip-dev/kip/internal/cloud"
)

// A spot interruption notice on a running pod's cell: a Warning Event, the DisruptionTarget
// condition, the containers stopped within the time the notice leaves, the pod Failed as
// kubelet's graceful node shutdown leaves it; the cloud then takes the instance, and the pod
// is not relaunched. The replacement a ReplicaSet makes runs on a new cell.
func TestSpotInterruptionFailsThePodForItsController(t *testing.T) {
	h := newHarness(t)
	owner := func(p *corev1.Pod) {
		p.Generation = 3
		p.OwnerReferences = []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: "web-5d4f", UID: "rs-uid", Controller: ptr.To(true)}}
		p.Spec.TerminationGracePeriodSeconds = ptr.To[int64](30)
		p.Spec.RestartPolicy = corev1.RestartPolicyAlways
	}
	pod := testPod("web-5d4f-a", owner)
	a := h.runPod(pod)
	insts := h.live()
	if len(insts) != 1 {
		t.Fatalf("%d instances, want 1", len(insts))
	}
	first := insts[0]
	// The cloud takes the instance once the containers were asked to stop.
	a.onDelete = func(*testAgent) {
		if err := h.cloud.SetState(first.ID, cloud.StateTerminated); err != nil {
			t.Error(err)
		}
	}

	// The notice leaves 10 s, less than the pod's 30 s grace period.
	action := h.clock.Now().Add(10 * time.Second)
	a.set(&cellapi.PodStatus{
		Phase:             corev1.PodRunning,
		ContainerStatuses: []corev1.ContainerStatus{running("main", true)},
		SpotInterruption:  &cellapi.SpotInterruption{Action: "terminate", Time: action},
	})
	got := h.waitPod(pod, "Failed after the notice", func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodFailed })
	if got.Status.Reason != ReasonTerminated || got.Status.Message != messageSpotTerminated {
		t.Errorf("pod reason %q message %q, want %q %q", got.Status.Reason, got.Status.Message, ReasonTerminated, messageSpotTerminated)
	}
	cond := findCondition(got.Status.Conditions, corev1.DisruptionTarget)
	if cond == nil || cond.Status != corev1.ConditionTrue || cond.Reason != corev1.PodReasonTerminationByKubelet ||
		cond.Message != messageSpotTerminated || cond.ObservedGeneration != 3 {
		t.Errorf("DisruptionTarget condition %+v", cond)
	}
	if !h.hasEvent("Warning SpotInterruption Spot instance " + first.ID + " of cell " + first.CellID + " will terminate at " + action.UTC().Format(time.RFC3339)) {
		t.Errorf("no SpotInterruption event; events: %v", h.allEvents())
	}
	h.waitFor("the cell finished", func() bool {
		h.m.mu.Lock()
		c := h.m.cells[podKey(pod.Namespace, pod.Name)]
		h.m.mu.Unlock()
		return c == nil || c.isFinished()
	})
	a.mu.Lock()
	deletes := append([]time.Duration(nil), a.deletes...)
	a.mu.Unlock()
	// The fake clock may have moved on while the notice travelled: what is left of the 10 s.
	if len(deletes) != 1 || deletes[0] > 10*time.Second || deletes[0] <= 0 {
		t.Errorf("containers stopped with grace %v, want once with at most 10s (the notice's time left, not the pod's 30s)", deletes)
	}
	final := h.waitPod(pod, "still Failed", func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodFailed })
	if final.Status.Reason != ReasonTerminated || findCondition(final.Status.Conditions, corev1.DisruptionTarget) == nil {
		t.Errorf("final status: reason %q, conditions %+v", final.Status.Reason, final.Status.Conditions)
	}
	// A second notice (every status carries it) changes nothing.
	if n := strings.Count(strings.Join(h.allEvents(), "\n"), "SpotInterruption"); n != 1 {
		t.Errorf("%d SpotInterruption events, want 1", n)
	}
	if n := h.cloud.CallCount("Launch"); n != 1 {
		t.Fatalf("%d launches for the interrupted pod, want 1 (never relaunched)", n)
	}

	// The ReplicaSet's replacement: a new pod, a new cell.
	repl := testPod("web-5d4f-b", owner)
	h.runPod(repl)
	if n := h.cloud.CallCount("Launch"); n != 2 {
		t.Fatalf("%d launches, want 2", n)
	}
	live := h.live()
	if len(live) != 1 || live[0].ID == first.ID || live[0].Tags[cloud.TagPodUID] != string(repl.UID) {
		t.Errorf("live instances %+v, want one new one for the replacement", live)
	}
}

// A notice whose time has passed stops the containers at once; one on a completed pod
// changes nothing.
func TestSpotInterruptionGraceAndCompletedPods(t *testing.T) {
	h := newHarness(t)
	pod := testPod("late")
	a := h.runPod(pod)
	a.set(&cellapi.PodStatus{
		Phase:             corev1.PodRunning,
		ContainerStatuses: []corev1.ContainerStatus{running("main", true)},
		SpotInterruption:  &cellapi.SpotInterruption{Action: "stop", Time: h.clock.Now().Add(-time.Minute)},
	})
	h.waitPod(pod, "Failed", func(p *corev1.Pod) bool {
		return p.Status.Phase == corev1.PodFailed && p.Status.Reason == ReasonTerminated
	})
	h.waitFor("the containers stopped", func() bool {
		a.mu.Lock()
		defer a.mu.Unlock()
		return len(a.deletes) == 1 && a.deletes[0] == 0
	})

	done := testPod("done")
	b := h.runPod(done)
	b.set(&cellapi.PodStatus{
		Phase:             corev1.PodSucceeded,
		ContainerStatuses: []corev1.ContainerStatus{exited("main", 0)},
		SpotInterruption:  &cellapi.SpotInterruption{Action: "terminate", Time: h.clock.Now().Add(time.Minute)},
	})
	got := h.waitPod(done, "Succeeded", func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodSucceeded })
	if findCondition(got.Status.Conditions, corev1.DisruptionTarget) != nil {
		t.Errorf("a completed pod got DisruptionTarget")
	}
}

func TestSpotCellsAreToldInTheirBootstrap(t *testing.T) {
	h := newHarness(t)
	for _, spot := range []bool{false, true} {
		b, err := h.m.bootstrap("c-1", spot)
		if err != nil {
			t.Fatal(err)
		}
		var bs cellapi.Bootstrap
		if err := json.Unmarshal(b, &bs); err != nil {
			t.Fatal(err)
		}
		if got := bs.Instance != nil && bs.Instance.Spot; got != spot {
			t.Errorf("spot %v: bootstrap instance %+v", spot, bs.Instance)
		}
	}
}
