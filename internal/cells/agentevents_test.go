package cells

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/kip-dev/kip/internal/cellapi"
)

// TestAgentEventsRecordedOnce: the events only the agent sees (probe failures and kills)
// become the pod's Events, each once however often the status repeats them.
func TestAgentEventsRecordedOnce(t *testing.T) {
	h := newHarness(t)
	pod := testPod("probed", func(p *corev1.Pod) { p.Spec.RestartPolicy = corev1.RestartPolicyAlways })
	a := h.runPod(pod)
	unhealthy := cellapi.Event{ID: 1, Container: "main", Type: corev1.EventTypeWarning, Reason: "Unhealthy", Message: "Liveness probe failed: dial tcp 127.0.0.1:1: connect: connection refused"}
	killing := cellapi.Event{ID: 2, Container: "main", Type: corev1.EventTypeNormal, Reason: "Killing", Message: "Container main failed liveness probe, will be restarted"}
	status := func(evs ...cellapi.Event) *cellapi.PodStatus {
		return &cellapi.PodStatus{Phase: corev1.PodRunning, ContainerStatuses: []corev1.ContainerStatus{running("main", true)}, Events: evs}
	}
	a.set(status(unhealthy))
	a.set(status(unhealthy))
	a.set(status(unhealthy, killing))
	h.waitFor("the Killing event", func() bool { return h.hasEvent("Normal Killing") })
	count := func(prefix string) int {
		n := 0
		for _, e := range h.allEvents() {
			if strings.HasPrefix(e, prefix) {
				n++
			}
		}
		return n
	}
	a.set(status(unhealthy, killing))
	h.waitFor("the last status applied", func() bool { p, _ := h.m.GetPod("default", "probed"); return p != nil })
	if n := count("Warning Unhealthy Liveness probe failed"); n != 1 {
		t.Errorf("%d Unhealthy events, want 1: %v", n, h.allEvents())
	}
	if n := count("Normal Killing"); n != 1 {
		t.Errorf("%d Killing events, want 1: %v", n, h.allEvents())
	}
}
