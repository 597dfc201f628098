package cells

import (
	"context"
	"errors"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/kip-dev/kip/internal/cloud"
)

func TestSweepFailsPodWhoseInstanceVanishedUnderAHangingStream(t *testing.T) {
	h := newHarness(t)
	if err := h.m.Recover(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	h.startControllers()
	pod := testPod("hang", func(p *corev1.Pod) { p.Spec.RestartPolicy = corev1.RestartPolicyAlways })
	h.runPod(pod)

	// The instance goes away but the stream stays open (no RST from a vanished host).
	if err := h.cloud.SetState(h.live()[0].ID, cloud.StateTerminated); err != nil {
		t.Fatal(err)
	}
	got := h.waitPod(pod, "Failed by the sweep", func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodFailed })
	if got.Status.Reason != ReasonCellLost {
		t.Errorf("reason %q", got.Status.Reason)
	}
}

func TestSweepTerminatesOrphansAfterTwoSweeps(t *testing.T) {
	h := newHarness(t)
	if err := h.m.Recover(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	h.startControllers()
	orphan, err := h.cloud.Launch(context.Background(), cloud.LaunchSpec{CellID: "c-orphan", InstanceType: "fake.small",
		Tags: map[string]string{cloud.TagCluster: "kip", cloud.TagNode: "kip", cloud.TagPodUID: "nobody", cloud.TagCellID: "c-orphan"}})
	if err != nil {
		t.Fatal(err)
	}
	other, err := h.cloud.Launch(context.Background(), cloud.LaunchSpec{CellID: "c-other", InstanceType: "fake.small",
		Tags: map[string]string{cloud.TagCluster: "another-cluster", cloud.TagNode: "kip", cloud.TagPodUID: "x"}})
	if err != nil {
		t.Fatal(err)
	}
	pod := testPod("mine", func(p *corev1.Pod) { p.Spec.RestartPolicy = corev1.RestartPolicyAlways })
	if err := h.m.CreatePod(context.Background(), pod); err != nil {
		t.Fatal(err)
	}
	h.waitFor("the orphan to be terminated", func() bool {
		in, err := h.cloud.Describe(context.Background(), orphan.ID)
		return err == nil && in.State == cloud.StateTerminated
	})
	for _, in := range h.cloud.Instances() {
		switch {
		case in.ID == other.ID && in.State == cloud.StateTerminated:
			t.Error("the sweep terminated another cluster's instance")
		case in.CellID == CellID(pod.UID) && in.State == cloud.StateTerminated:
			t.Error("the sweep terminated a pod's cell")
		}
	}
}

func TestSweepFailsPodWhoseAgentStopsAnsweringUnderAHangingStream(t *testing.T) {
	h := newHarness(t)
	if err := h.m.Recover(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	h.startControllers()
	pod := testPod("cut", func(p *corev1.Pod) { p.Spec.RestartPolicy = corev1.RestartPolicyAlways })
	a := h.runPod(pod)

	// The agent stops answering but the stream neither breaks nor sends.
	a.setHealth(errors.New("i/o timeout"))
	got := h.waitPod(pod, "Failed by the probes", func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodFailed })
	if got.Status.Reason != ReasonCellLost || !strings.Contains(got.Status.Message, "unreachable") {
		t.Errorf("reason %q message %q", got.Status.Reason, got.Status.Message)
	}
	h.waitFor("the cell to be terminated", func() bool { return len(h.live()) == 0 })
}
