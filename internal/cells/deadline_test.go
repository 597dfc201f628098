package cells

import (
	"context"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/kip-dev/kip/internal/cellapi"
)

// TestActiveDeadlineKillsThePod: as kubelet, a pod active longer than its
// activeDeadlineSeconds (from its startTime) has its containers stopped with its grace period
// and ends Failed with reason DeadlineExceeded; it is not deleted (its status and logs stay),
// and its cell is terminated. Lowering the deadline by an update re-arms it.
func TestActiveDeadlineKillsThePod(t *testing.T) {
	h := newHarness(t)
	grace := int64(5)
	pod := testPod("slow", func(p *corev1.Pod) {
		p.Spec.RestartPolicy = corev1.RestartPolicyAlways
		p.Spec.TerminationGracePeriodSeconds = &grace
		p.Spec.ActiveDeadlineSeconds = ptrTo(int64(3600))
	})
	a := h.runPod(pod)
	a.mu.Lock()
	a.logs = map[string]string{"main": "2026-01-01T00:00:01Z working\n"}
	a.onDelete = func(a *testAgent) {
		a.setLocked(&cellapi.PodStatus{Phase: corev1.PodFailed, ContainerStatuses: []corev1.ContainerStatus{exited("main", 143)}})
	}
	a.mu.Unlock()

	// An hour is far: lower it to 30s, as a user may.
	upd, _ := h.m.GetPod("default", "slow")
	upd.Spec.ActiveDeadlineSeconds = ptrTo(int64(30))
	if err := h.m.UpdatePod(context.Background(), upd); err != nil {
		t.Fatal(err)
	}
	got := h.waitPod(pod, "Failed with DeadlineExceeded", func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodFailed })
	if got.Status.Reason != ReasonDeadlineExceeded || got.Status.Message != messageDeadlineExceeded {
		t.Errorf("reason %q message %q", got.Status.Reason, got.Status.Message)
	}
	if started := got.Status.StartTime; started == nil || h.clock.Since(started.Time) < 30*time.Second {
		t.Errorf("killed %v after the start, want at least the 30s deadline", h.clock.Since(started.Time))
	}
	h.waitFor("the cell to be terminated", func() bool { return len(h.live()) == 0 })
	a.mu.Lock()
	deletes := append([]time.Duration(nil), a.deletes...)
	a.mu.Unlock()
	if len(deletes) != 1 || deletes[0] != 5*time.Second {
		t.Errorf("agent DeletePod graces %v, want [5s]: the containers stop with the pod's grace period", deletes)
	}
	final := h.lastNotified("slow")
	if term := final.Status.ContainerStatuses[0].State.Terminated; final.Status.Phase != corev1.PodFailed || term == nil || term.ExitCode != 143 {
		t.Errorf("final status %+v", final.Status)
	}
	if _, ok := h.m.GetPod("default", "slow"); !ok {
		t.Error("the killed pod was forgotten; it is Failed, not deleted")
	}
	if _, err := h.m.Agent("default", "slow"); err != nil {
		t.Errorf("the killed pod's logs are gone: %v", err)
	}
	if !h.hasEvent("Warning " + ReasonDeadlineExceeded) {
		t.Errorf("no DeadlineExceeded event: %v", h.allEvents())
	}
}

func ptrTo[T any](v T) *T { return &v }

// TestActiveDeadlineSetByUpdate: a pod started without activeDeadlineSeconds has no deadline
// watcher; an update that sets one (the API allows adding it) arms it.
func TestActiveDeadlineSetByUpdate(t *testing.T) {
	h := newHarness(t)
	pod := testPod("later", func(p *corev1.Pod) { p.Spec.RestartPolicy = corev1.RestartPolicyAlways })
	a := h.runPod(pod)
	a.mu.Lock()
	a.onDelete = func(a *testAgent) {
		a.setLocked(&cellapi.PodStatus{Phase: corev1.PodFailed, ContainerStatuses: []corev1.ContainerStatus{exited("main", 137)}})
	}
	a.mu.Unlock()
	upd, _ := h.m.GetPod("default", "later")
	upd.Spec.ActiveDeadlineSeconds = ptrTo(int64(30))
	if err := h.m.UpdatePod(context.Background(), upd); err != nil {
		t.Fatal(err)
	}
	got := h.waitPod(pod, "Failed with DeadlineExceeded", func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodFailed })
	if got.Status.Reason != ReasonDeadlineExceeded {
		t.Errorf("reason %q, want %s", got.Status.Reason, ReasonDeadlineExceeded)
	}
}
