//go:build e2e

package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/kip-dev/kip/internal/annotations"
	"github.com/kip-dev/kip/internal/cells"
	"github.com/kip-dev/kip/internal/podstatus"
	"github.com/kip-dev/kip/test/e2e/framework"
)

// unreachable: the pod still runs but its cell is silent, so it is not ready and neither are
// its containers.
func unreachable(p *corev1.Pod) bool {
	var c *corev1.PodCondition
	for i := range p.Status.Conditions {
		if p.Status.Conditions[i].Type == corev1.PodReady {
			c = &p.Status.Conditions[i]
		}
	}
	if p.Status.Phase != corev1.PodRunning || c == nil || c.Status != corev1.ConditionFalse || c.Reason != podstatus.ReasonCellUnreachable {
		return false
	}
	for _, cs := range p.Status.ContainerStatuses {
		if cs.Ready {
			return false
		}
	}
	return true
}

// runReady creates pod in ns and waits until it is Running and Ready; it returns it with its
// one cell.
func runReady(ctx context.Context, t *testing.T, e *framework.Env, ns string, pod *corev1.Pod) (*corev1.Pod, string) {
	t.Helper()
	if _, err := e.Client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	got, err := e.WaitForPod(ctx, ns, pod.Name, podTimeout, func(p *corev1.Pod) bool { return framework.Running(p) && framework.Ready(p) })
	if err != nil {
		t.Fatalf("%v\nevents:\n%s", err, e.EventsFor(ctx, ns, pod.Name))
	}
	cs, err := e.Cells(ctx, framework.PodCells(ns, pod.Name))
	if err != nil || len(cs) != 1 {
		t.Fatalf("pod's cells %v (%v), want one", cs, err)
	}
	return got, cs[0].ID
}

// TestCellPartitionShorterThanLostTimeout: a cell cut off the network turns its pod NotReady
// (Ready False, containers not ready, still Running); healed before the lost timeout, the
// pod is Ready again with the same container (same ID, no restart) on the same cell.
func TestCellPartitionShorterThanLostTimeout(t *testing.T) {
	e := need(t)
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	ns := e.Namespace(t)
	pod := framework.Pod("ferry", framework.Busybox("main", idle))
	pod.Spec.TerminationGracePeriodSeconds = ptr.To[int64](2)
	pod.Annotations = map[string]string{annotations.LostTimeout: "2m"}
	before, cell := runReady(ctx, t, e, ns, pod)

	cut := time.Now()
	if err := e.Backend.Partition(ctx, cell); err != nil {
		t.Fatal(err)
	}
	healed := false
	heal := func() {
		if !healed {
			healed = true
			if err := e.Backend.Heal(context.Background(), cell); err != nil {
				t.Errorf("healing cell %s: %v", cell, err)
			}
		}
	}
	defer heal()
	if _, err := e.WaitForPod(ctx, ns, "ferry", 2*time.Minute, unreachable); err != nil {
		t.Fatalf("%v\nevents:\n%s", err, e.EventsFor(ctx, ns, "ferry"))
	}
	t.Logf("NotReady in the API %s after the cut", time.Since(cut).Round(time.Millisecond))
	// The fault lasts well past the few seconds after which kip drops the hung connection,
	// and well short of the lost timeout.
	time.Sleep(15 * time.Second)
	healAt := time.Now()
	heal()
	after, err := e.WaitForPod(ctx, ns, "ferry", 2*time.Minute, func(p *corev1.Pod) bool { return framework.Running(p) && framework.Ready(p) })
	if err != nil {
		t.Fatalf("%v\nevents:\n%s", err, e.EventsFor(ctx, ns, "ferry"))
	}
	t.Logf("Ready in the API %s after the heal (cut off %s)", time.Since(healAt).Round(time.Millisecond), healAt.Sub(cut).Round(time.Millisecond))
	bc, ac := before.Status.ContainerStatuses[0], after.Status.ContainerStatuses[0]
	if bc.ContainerID == "" || ac.ContainerID != bc.ContainerID || ac.RestartCount != bc.RestartCount || ac.State.Running == nil ||
		!ac.State.Running.StartedAt.Equal(&bc.State.Running.StartedAt) {
		t.Errorf("the container changed: before %s restarts %d %+v; after %s restarts %d %+v",
			bc.ContainerID, bc.RestartCount, bc.State, ac.ContainerID, ac.RestartCount, ac.State)
	}
	if cs, err := e.Cells(ctx, framework.PodCells(ns, "ferry")); err != nil || len(cs) != 1 || cs[0].ID != cell {
		t.Errorf("cells after the heal %v (%v), want only %s", cs, err, cell)
	}
	if _, err := e.WaitForEvent(ctx, ns, "ferry", "CellReachable", time.Minute); err != nil {
		t.Errorf("no CellReachable event: %v\nevents:\n%s", err, e.EventsFor(ctx, ns, "ferry"))
	}
	if err := e.Client.CoreV1().Pods(ns).Delete(ctx, "ferry", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.WaitForCells(ctx, framework.PodCells(ns, "ferry"), time.Minute, framework.NoCells); err != nil {
		t.Errorf("the pod's cell outlived it: %v", err)
	}
}

// TestCellPartitionLongerThanLostTimeout: a cell cut off past the lost timeout (kip's
// default) fails its pod (Failed, reason CellLost, its container terminated with 137) and
// is terminated.
func TestCellPartitionLongerThanLostTimeout(t *testing.T) {
	e := need(t)
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	ns := e.Namespace(t)
	pod := framework.Pod("island", framework.Busybox("main", idle))
	pod.Spec.TerminationGracePeriodSeconds = ptr.To[int64](2)
	_, cell := runReady(ctx, t, e, ns, pod)

	cut := time.Now()
	if err := e.Backend.Partition(ctx, cell); err != nil {
		t.Fatal(err)
	}
	if _, err := e.WaitForPod(ctx, ns, "island", 2*time.Minute, unreachable); err != nil {
		t.Fatalf("%v\nevents:\n%s", err, e.EventsFor(ctx, ns, "island"))
	}
	t.Logf("NotReady in the API %s after the cut", time.Since(cut).Round(time.Millisecond))
	got, err := e.WaitForPod(ctx, ns, "island", 3*time.Minute, framework.Failed)
	if err != nil {
		t.Fatalf("%v\nevents:\n%s", err, e.EventsFor(ctx, ns, "island"))
	}
	t.Logf("Failed in the API %s after the cut", time.Since(cut).Round(time.Millisecond))
	if got.Status.Reason != cells.ReasonCellLost || !strings.Contains(got.Status.Message, "lost timeout 30s") {
		t.Errorf("reason %q message %q", got.Status.Reason, got.Status.Message)
	}
	if term := got.Status.ContainerStatuses[0].State.Terminated; term == nil || term.ExitCode != 137 || got.Status.ContainerStatuses[0].Ready {
		t.Errorf("container %+v", got.Status.ContainerStatuses[0])
	}
	if _, err := e.WaitForCells(ctx, framework.PodCells(ns, "island"), 2*time.Minute, framework.NoCells); err != nil {
		t.Errorf("the lost cell was not terminated: %v", err)
	}
	if _, err := e.WaitForEvent(ctx, ns, "island", cells.ReasonCellLost, time.Minute); err != nil {
		t.Errorf("no CellLost event: %v", err)
	}
	if err := e.Client.CoreV1().Pods(ns).Delete(ctx, "island", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
}
