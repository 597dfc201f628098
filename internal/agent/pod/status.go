package pod

import (
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Container waiting and terminated reasons, as kubelet reports them.
const (
	ReasonContainerCreating    = "ContainerCreating"
	ReasonPodInitializing      = "PodInitializing"
	ReasonErrImagePull         = "ErrImagePull"
	ReasonImagePullBackOff     = "ImagePullBackOff"
	ReasonErrImageNeverPull    = "ErrImageNeverPull"
	ReasonInvalidImageName     = "InvalidImageName"
	ReasonCrashLoopBackOff     = "CrashLoopBackOff"
	ReasonCreateContainerError = "CreateContainerError"
	// ReasonCreateContainerConfigError: the container's config could not be made (ConfigError).
	ReasonCreateContainerConfigError = "CreateContainerConfigError"
	ReasonRunContainerError          = "RunContainerError"

	ReasonCompleted          = "Completed"
	ReasonError              = "Error"
	ReasonOOMKilled          = "OOMKilled"
	ReasonContainerCannotRun = "ContainerCannotRun"
)

// phase computes the pod phase from container statuses as kubelet's getPhase does.
func phase(spec *corev1.PodSpec, init, app []corev1.ContainerStatus) corev1.PodPhase {
	policy := spec.RestartPolicy
	if policy == "" {
		policy = corev1.RestartPolicyAlways
	}
	pendingInit := 0
	for i, s := range init {
		if i < len(spec.InitContainers) && isSidecar(&spec.InitContainers[i]) {
			if !sidecarStarted(s) {
				pendingInit++
			}
			continue // a sidecar's exits never fail the pod
		}
		switch {
		case s.State.Terminated != nil && s.State.Terminated.ExitCode == 0:
		case s.State.Terminated != nil:
			if policy == corev1.RestartPolicyNever {
				return corev1.PodFailed
			}
			pendingInit++
		default:
			if policy == corev1.RestartPolicyNever && s.LastTerminationState.Terminated != nil && s.LastTerminationState.Terminated.ExitCode != 0 {
				return corev1.PodFailed
			}
			pendingInit++
		}
	}
	if pendingInit > 0 {
		return corev1.PodPending
	}
	var running, waiting, stopped, succeeded int
	for _, s := range app {
		switch {
		case s.State.Running != nil:
			running++
		case s.State.Terminated != nil:
			stopped++
			if s.State.Terminated.ExitCode == 0 {
				succeeded++
			}
		case s.State.Waiting != nil && s.LastTerminationState.Terminated != nil:
			stopped++
		default:
			waiting++
		}
	}
	switch {
	case waiting > 0:
		return corev1.PodPending
	case running > 0:
		return corev1.PodRunning
	case stopped > 0:
		if policy == corev1.RestartPolicyAlways {
			return corev1.PodRunning
		}
		if stopped == succeeded {
			return corev1.PodSucceeded
		}
		if policy == corev1.RestartPolicyNever {
			return corev1.PodFailed
		}
		return corev1.PodRunning
	}
	return corev1.PodPending
}

// conditions returns Initialized, ContainersReady and Ready, keeping the transition times of
// those that did not change.
func conditions(spec *corev1.PodSpec, prev []corev1.PodCondition, init, app []corev1.ContainerStatus, now time.Time) []corev1.PodCondition {
	initialized := true
	ready := true
	for i, s := range init {
		if i < len(spec.InitContainers) && isSidecar(&spec.InitContainers[i]) {
			initialized = initialized && sidecarStarted(s)
			ready = ready && s.Ready // sidecars count for readiness, as in kubelet
			continue
		}
		if s.State.Terminated == nil || s.State.Terminated.ExitCode != 0 {
			initialized = false
		}
	}
	ready = ready && initialized
	for _, s := range app {
		if !s.Ready {
			ready = false
		}
	}
	want := []corev1.PodCondition{
		{Type: corev1.PodInitialized, Status: boolStatus(initialized)},
		{Type: corev1.ContainersReady, Status: boolStatus(ready)},
		{Type: corev1.PodReady, Status: boolStatus(ready)},
	}
	for i := range want {
		want[i].LastTransitionTime = metav1.NewTime(now)
		for _, p := range prev {
			if p.Type == want[i].Type && p.Status == want[i].Status {
				want[i].LastTransitionTime = p.LastTransitionTime
			}
		}
	}
	return want
}

func boolStatus(b bool) corev1.ConditionStatus {
	if b {
		return corev1.ConditionTrue
	}
	return corev1.ConditionFalse
}

// sidecarStarted reports whether a sidecar has ever started: then the pod counts as
// initialized past it, even while the sidecar restarts.
func sidecarStarted(s corev1.ContainerStatus) bool {
	return (s.Started != nil && *s.Started) || s.RestartCount > 0 || s.LastTerminationState.Terminated != nil || s.State.Terminated != nil
}
