package pod

import (
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func running() corev1.ContainerStatus {
	return corev1.ContainerStatus{State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{}}, Ready: true}
}

func exited(code int32) corev1.ContainerStatus {
	return corev1.ContainerStatus{State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: code}}}
}

func waitingFor(reason string) corev1.ContainerStatus {
	return corev1.ContainerStatus{State: waiting(reason, "")}
}

func crashLooping(code int32) corev1.ContainerStatus {
	s := waitingFor(ReasonCrashLoopBackOff)
	s.LastTerminationState = exited(code).State
	return s
}

func TestPhase(t *testing.T) {
	cs := func(s ...corev1.ContainerStatus) []corev1.ContainerStatus { return s }
	cases := []struct {
		name   string
		policy corev1.RestartPolicy
		init   []corev1.ContainerStatus
		app    []corev1.ContainerStatus
		want   corev1.PodPhase
	}{
		{"creating", "", nil, cs(waitingFor(ReasonContainerCreating)), corev1.PodPending},
		{"running", "", nil, cs(running()), corev1.PodRunning},
		{"one running one creating", "", nil, cs(running(), waitingFor(ReasonContainerCreating)), corev1.PodPending},
		{"init running", "", cs(running()), cs(waitingFor(ReasonPodInitializing)), corev1.PodPending},
		{"init failed never", corev1.RestartPolicyNever, cs(exited(1)), cs(waitingFor(ReasonPodInitializing)), corev1.PodFailed},
		{"init failed always", corev1.RestartPolicyAlways, cs(exited(1)), cs(waitingFor(ReasonPodInitializing)), corev1.PodPending},
		{"init crashlooping onfailure", corev1.RestartPolicyOnFailure, cs(crashLooping(1)), cs(waitingFor(ReasonPodInitializing)), corev1.PodPending},
		{"init done app running", "", cs(exited(0)), cs(running()), corev1.PodRunning},
		{"all succeeded never", corev1.RestartPolicyNever, nil, cs(exited(0), exited(0)), corev1.PodSucceeded},
		{"all succeeded onfailure", corev1.RestartPolicyOnFailure, nil, cs(exited(0)), corev1.PodSucceeded},
		{"exited always", corev1.RestartPolicyAlways, nil, cs(exited(0)), corev1.PodRunning},
		{"one failed never", corev1.RestartPolicyNever, nil, cs(exited(0), exited(3)), corev1.PodFailed},
		{"failed onfailure restarts", corev1.RestartPolicyOnFailure, nil, cs(exited(3)), corev1.PodRunning},
		{"crashloop always", corev1.RestartPolicyAlways, nil, cs(crashLooping(1)), corev1.PodRunning},
		{"image pull", "", nil, cs(waitingFor(ReasonErrImagePull)), corev1.PodPending},
		{"one running one exited never", corev1.RestartPolicyNever, nil, cs(running(), exited(1)), corev1.PodRunning},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := phase(&corev1.PodSpec{RestartPolicy: tc.policy}, tc.init, tc.app); got != tc.want {
				t.Errorf("phase = %s, want %s", got, tc.want)
			}
		})
	}
}

func TestPhaseWithSidecar(t *testing.T) {
	always := corev1.ContainerRestartPolicyAlways
	spec := &corev1.PodSpec{RestartPolicy: corev1.RestartPolicyNever, InitContainers: []corev1.Container{{Name: "side", RestartPolicy: &always}}}
	started := running()
	started.Started = ptrTo(true)
	notStarted := running()
	notStarted.Started = ptrTo(false)
	cs := func(s ...corev1.ContainerStatus) []corev1.ContainerStatus { return s }
	cases := []struct {
		name      string
		init, app []corev1.ContainerStatus
		want      corev1.PodPhase
	}{
		{"sidecar starting", cs(notStarted), cs(waitingFor(ReasonPodInitializing)), corev1.PodPending},
		{"sidecar started, app running", cs(started), cs(running()), corev1.PodRunning},
		{"app done, sidecar still running", cs(started), cs(exited(0)), corev1.PodSucceeded},
		{"app done, sidecar killed", cs(exited(143)), cs(exited(0)), corev1.PodSucceeded},
		{"app failed", cs(started), cs(exited(1)), corev1.PodFailed},
		{"sidecar crashlooping does not fail", cs(crashLooping(1)), cs(running()), corev1.PodRunning},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := phase(spec, tc.init, tc.app); got != tc.want {
				t.Errorf("phase = %s, want %s", got, tc.want)
			}
		})
	}
}

func TestConditionsKeepTransitionTimes(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	c1 := conditions(&corev1.PodSpec{}, nil, nil, []corev1.ContainerStatus{waitingFor(ReasonContainerCreating)}, t0)
	c2 := conditions(&corev1.PodSpec{}, c1, nil, []corev1.ContainerStatus{waitingFor(ReasonContainerCreating)}, t0.Add(time.Minute))
	c3 := conditions(&corev1.PodSpec{}, c2, nil, []corev1.ContainerStatus{running()}, t0.Add(2*time.Minute))
	get := func(cs []corev1.PodCondition, typ corev1.PodConditionType) corev1.PodCondition {
		for _, c := range cs {
			if c.Type == typ {
				return c
			}
		}
		t.Fatalf("no %s condition", typ)
		return corev1.PodCondition{}
	}
	if r := get(c2, corev1.PodReady); r.Status != corev1.ConditionFalse || !r.LastTransitionTime.Equal(&metav1.Time{Time: t0}) {
		t.Errorf("ready after no change: %+v", r)
	}
	if r := get(c3, corev1.PodReady); r.Status != corev1.ConditionTrue || !r.LastTransitionTime.Time.Equal(t0.Add(2*time.Minute)) {
		t.Errorf("ready after start: %+v", r)
	}
	if i := get(c3, corev1.PodInitialized); i.Status != corev1.ConditionTrue || !i.LastTransitionTime.Time.Equal(t0) {
		t.Errorf("initialized: %+v", i)
	}
}

func ptrTo[T any](v T) *T { return &v }
