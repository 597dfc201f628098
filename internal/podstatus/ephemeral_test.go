package podstatus

import (
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/kip-dev/kip/internal/cellapi"
)

// Ephemeral containers get statuses like ordinary ones: the agent's where it has one, else
// waiting ContainerCreating (an agent that has not started it, or cannot); terminated when
// the pod stops. The pod's phase and readiness do not depend on them.
func TestBuildEphemeralStatuses(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 1, 0, 0, time.UTC)
	pod := testPod("p")
	pod.Spec.EphemeralContainers = []corev1.EphemeralContainer{
		{EphemeralContainerCommon: corev1.EphemeralContainerCommon{Name: "dbg", Image: "busybox"}},
		{EphemeralContainerCommon: corev1.EphemeralContainerCommon{Name: "new", Image: "alpine"}},
	}
	agent := &cellapi.PodStatus{Phase: corev1.PodRunning,
		ContainerStatuses:          []corev1.ContainerStatus{running("main", true)},
		EphemeralContainerStatuses: []corev1.ContainerStatus{exited("dbg", 0)},
	}
	s := Build(Input{Pod: pod, Now: now, CellReady: true, Agent: agent})
	if len(s.EphemeralContainerStatuses) != 2 {
		t.Fatalf("ephemeral statuses %+v, want dbg and new", s.EphemeralContainerStatuses)
	}
	if got := stateString(s.EphemeralContainerStatuses[0]); got != "terminated:Completed:0" {
		t.Errorf("dbg %s, want terminated:Completed:0", got)
	}
	if got := stateString(s.EphemeralContainerStatuses[1]); got != "waiting:"+reasonContainerCreating || s.EphemeralContainerStatuses[1].Image != "alpine" {
		t.Errorf("new %s image %q, want waiting:%s image alpine", got, s.EphemeralContainerStatuses[1].Image, reasonContainerCreating)
	}
	if s.Phase != corev1.PodRunning || findCondition(s.Conditions, corev1.PodReady).Status != corev1.ConditionTrue {
		t.Errorf("phase %s, ready %v: the ephemeral containers must not change them", s.Phase, findCondition(s.Conditions, corev1.PodReady))
	}

	s = Build(Input{Pod: pod, Now: now, Stopped: true, Agent: agent})
	if got := stateString(s.EphemeralContainerStatuses[1]); got != "terminated:"+reasonStatusUnknown+":128" {
		t.Errorf("after the pod stopped, new is %s, want terminated", got)
	}
}

// An ephemeral container kip could not give the agent (its references cannot be resolved)
// waits with the reason kip recorded until the agent reports it.
func TestBuildEphemeralWaiting(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 1, 0, 0, time.UTC)
	pod := testPod("p")
	pod.Spec.EphemeralContainers = []corev1.EphemeralContainer{
		{EphemeralContainerCommon: corev1.EphemeralContainerCommon{Name: "dbg", Image: "busybox"}},
	}
	cfgErr := map[string]corev1.ContainerStateWaiting{"dbg": {Reason: "CreateContainerConfigError", Message: `secret "s" not found`}}
	agent := &cellapi.PodStatus{Phase: corev1.PodRunning, ContainerStatuses: []corev1.ContainerStatus{running("main", true)}}
	s := Build(Input{Pod: pod, Now: now, CellReady: true, Agent: agent, EphemeralWaiting: cfgErr})
	if w := s.EphemeralContainerStatuses[0].State.Waiting; w == nil || w.Reason != "CreateContainerConfigError" || w.Message != `secret "s" not found` {
		t.Errorf("dbg %+v, want waiting CreateContainerConfigError with the message", s.EphemeralContainerStatuses[0].State)
	}
	agent.EphemeralContainerStatuses = []corev1.ContainerStatus{running("dbg", false)}
	s = Build(Input{Pod: pod, Now: now, CellReady: true, Agent: agent, EphemeralWaiting: cfgErr})
	if got := stateString(s.EphemeralContainerStatuses[0]); got != "running" {
		t.Errorf("dbg %s once the agent reports it, want running", got)
	}
}
