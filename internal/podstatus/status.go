// Package podstatus computes, as pure functions, what kubelet would report for a pod: its
// status (phase, conditions, container statuses, QoS class) from the cell agent's view, and
// the events each change of a container implies.
package podstatus

import (
	"fmt"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kip-dev/kip/internal/cellapi"
)

// Input is everything a pod's status is computed from.
type Input struct {
	// Pod is the spec; its Status is the previously reported status (for transition times,
	// StartTime, QOSClass and conditions owned by others).
	Pod    *corev1.Pod
	Now    time.Time
	HostIP string
	PodIP  string
	// Agent is the agent's last status; nil while none is known.
	Agent *cellapi.PodStatus
	// Reason and Message explain a pod still without agent status: what kip is doing
	// (CellLaunching...) is the pod's reason; its containers wait with kubelet's default
	// reason, Message saying why.
	Reason, Message string
	// ContainerReason, for a pod still without agent status, is a kubelet waiting reason for
	// the containers kip could not start (CreateContainerConfigError: a reference the pod
	// makes cannot be resolved), with Message; it is not the pod's reason. It shows on the
	// first init container, or on every app container of a pod without init containers.
	ContainerReason string
	// Failure makes the pod Failed.
	Failure *Failure
	// Stopped means the containers are gone (deleted, completed, failed): every container
	// must show a terminated state.
	Stopped bool
	// CellReady means the cell and its agent are up (PodReadyToStartContainers).
	CellReady bool
	// Unreachable, when not empty, says why the cell's agent is silent: the containers' last
	// known states are kept but none is ready, and the Ready and ContainersReady conditions
	// are False with reason ReasonCellUnreachable and this message (as the node lifecycle
	// controller marks the pods of a NotReady node).
	Unreachable string
	// EphemeralWaiting is, by name, why kip could not yet give an ephemeral container to the
	// agent (CreateContainerConfigError: a reference it makes cannot be resolved); it shows
	// until the agent reports that container.
	EphemeralWaiting map[string]corev1.ContainerStateWaiting
}

// ReasonCellUnreachable is the reason of the Ready and ContainersReady conditions of a pod
// whose cell's agent is silent.
const ReasonCellUnreachable = "CellUnreachable"

// Failure is why a pod failed: the pod's status reason and message.
type Failure struct {
	Reason, Message string
}

// Kubelet's waiting and terminated reasons.
const (
	reasonContainerCreating = "ContainerCreating"
	reasonPodInitializing   = "PodInitializing"
	reasonStatusUnknown     = "ContainerStatusUnknown"
)

// Build computes the pod status kubelet would report.
func Build(in Input) corev1.PodStatus {
	pod, prev := in.Pod, in.Pod.Status
	s := corev1.PodStatus{
		Phase:              corev1.PodPending,
		QOSClass:           prev.QOSClass,
		StartTime:          prev.StartTime,
		ObservedGeneration: pod.Generation,
	}
	if s.QOSClass == "" {
		s.QOSClass = qosClass(pod)
	}
	if s.StartTime == nil {
		t := metav1.NewTime(in.Now)
		s.StartTime = &t
	}
	if in.HostIP != "" {
		s.HostIP, s.HostIPs = in.HostIP, []corev1.HostIP{{IP: in.HostIP}}
	}
	if in.PodIP != "" {
		s.PodIP, s.PodIPs = in.PodIP, []corev1.PodIP{{IP: in.PodIP}}
	} else if prev.PodIP != "" {
		s.PodIP, s.PodIPs = prev.PodIP, prev.PodIPs
	}

	// As kubelet, a container with nothing to report waits with ContainerCreating, or
	// PodInitializing in a pod with init containers (for every container of that pod, init
	// and ephemeral ones included, until it is created). Before the cell answers, the
	// waiting message says what kip is doing; the pod's reason names it (CellLaunching...).
	waiting := reasonContainerCreating
	if len(pod.Spec.InitContainers) > 0 {
		waiting = reasonPodInitializing
	}
	if in.Agent != nil {
		if in.Agent.Phase != "" {
			s.Phase = in.Agent.Phase
		}
		s.Reason, s.Message = in.Agent.Reason, in.Agent.Message
		s.InitContainerStatuses = containerStatuses(pod.Spec.InitContainers, in.Agent.InitContainerStatuses, waiting, "")
		s.ContainerStatuses = containerStatuses(pod.Spec.Containers, in.Agent.ContainerStatuses, waiting, "")
		s.EphemeralContainerStatuses = containerStatuses(ephemeralSpecs(pod), in.Agent.EphemeralContainerStatuses, waiting, "")
		reported := map[string]bool{}
		for _, cs := range in.Agent.EphemeralContainerStatuses {
			reported[cs.Name] = true
		}
		for i := range s.EphemeralContainerStatuses {
			cs := &s.EphemeralContainerStatuses[i]
			if w, ok := in.EphemeralWaiting[cs.Name]; ok && !reported[cs.Name] {
				cs.State = corev1.ContainerState{Waiting: &w}
			}
		}
	} else {
		if in.ContainerReason == "" {
			s.Reason, s.Message = in.Reason, in.Message
		}
		s.InitContainerStatuses = containerStatuses(pod.Spec.InitContainers, nil, waiting, in.Message)
		s.ContainerStatuses = containerStatuses(pod.Spec.Containers, nil, waiting, in.Message)
		s.EphemeralContainerStatuses = containerStatuses(ephemeralSpecs(pod), nil, waiting, in.Message)
		if in.ContainerReason != "" {
			first := s.ContainerStatuses
			if len(s.InitContainerStatuses) > 0 {
				first = s.InitContainerStatuses[:1]
			}
			for i := range first {
				first[i].State.Waiting.Reason = in.ContainerReason
			}
		}
	}

	if in.Failure != nil {
		s.Phase, s.Reason, s.Message = corev1.PodFailed, in.Failure.Reason, in.Failure.Message
	}
	if in.Stopped || in.Failure != nil {
		reason, message := reasonStatusUnknown, "The container could not be located when the pod was terminated"
		if in.Failure != nil {
			reason, message = in.Failure.Reason, in.Failure.Message
		}
		// As kubelet's TerminatePod: app containers are marked terminated only once the pod
		// initialized (before that, waiting says they never ran); init containers up to the
		// last one that tried to start.
		if hasInitialized(pod, &s) {
			terminate(s.ContainerStatuses, reason, message, in.Now)
		}
		terminate(attemptedInit(s.InitContainerStatuses), reason, message, in.Now)
		terminate(s.EphemeralContainerStatuses, reason, message, in.Now)
		if !isTerminal(s.Phase) {
			s.Phase = corev1.PodSucceeded
			for _, cs := range s.ContainerStatuses {
				if cs.State.Terminated == nil || cs.State.Terminated.ExitCode != 0 {
					s.Phase = corev1.PodFailed
				}
			}
		}
	}
	markInitReady(pod, s.InitContainerStatuses)
	unreachable := ""
	if in.Unreachable != "" && !in.Stopped && in.Failure == nil && !isTerminal(s.Phase) {
		unreachable = in.Unreachable
		for _, list := range [][]corev1.ContainerStatus{s.InitContainerStatuses, s.ContainerStatuses, s.EphemeralContainerStatuses} {
			for i := range list {
				list[i].Ready = false
			}
		}
	}
	s.Conditions = conditions(pod, &s, in.CellReady && unreachable == "", unreachable, in.Now)
	return s
}

// ephemeralSpecs returns the pod's ephemeral containers as containers, for containerStatuses:
// their statuses are kept like those of ordinary containers (kubelet's
// convertToAPIContainerStatuses serves both).
func ephemeralSpecs(pod *corev1.Pod) []corev1.Container {
	var out []corev1.Container
	for _, e := range pod.Spec.EphemeralContainers {
		out = append(out, corev1.Container(e.EphemeralContainerCommon))
	}
	return out
}

// containerStatuses lists a status for every container of spec, in spec order: the agent's
// where it has one, else waiting with reason.
func containerStatuses(spec []corev1.Container, agent []corev1.ContainerStatus, reason, message string) []corev1.ContainerStatus {
	if len(spec) == 0 {
		return nil
	}
	byName := make(map[string]*corev1.ContainerStatus, len(agent))
	for i := range agent {
		byName[agent[i].Name] = &agent[i]
	}
	out := make([]corev1.ContainerStatus, 0, len(spec))
	for _, c := range spec {
		if a, ok := byName[c.Name]; ok {
			cs := *a.DeepCopy()
			if cs.Image == "" {
				cs.Image = c.Image
			}
			if cs.Started == nil {
				started := cs.State.Running != nil
				cs.Started = &started
			}
			if cs.State.Waiting == nil && cs.State.Running == nil && cs.State.Terminated == nil {
				cs.State.Waiting = &corev1.ContainerStateWaiting{Reason: reason, Message: message}
			}
			out = append(out, cs)
			continue
		}
		started := false
		out = append(out, corev1.ContainerStatus{
			Name:    c.Name,
			Image:   c.Image,
			Started: &started,
			State:   corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: reason, Message: message}},
		})
	}
	return out
}

// terminate gives every container not already terminated a terminated state: exit 137 if
// it was running (killed), 128 if it never started.
func terminate(statuses []corev1.ContainerStatus, reason, message string, now time.Time) {
	for i := range statuses {
		cs := &statuses[i]
		cs.Ready = false
		f := false
		cs.Started = &f
		if cs.State.Terminated != nil {
			continue
		}
		t := &corev1.ContainerStateTerminated{ExitCode: 128, Reason: reason, Message: message, FinishedAt: metav1.NewTime(now)}
		if cs.State.Running != nil {
			t.ExitCode = 137
			t.StartedAt = cs.State.Running.StartedAt
		}
		cs.State = corev1.ContainerState{Terminated: t}
	}
}

// hasInitialized reports whether the pod ever finished initializing, as kubelet's
// hasPodInitialized: it has no init containers, an app container left waiting (or has a
// last termination), or its last init container completed (a sidecar: started).
func hasInitialized(pod *corev1.Pod, s *corev1.PodStatus) bool {
	if len(pod.Spec.InitContainers) == 0 {
		return true
	}
	for _, cs := range s.ContainerStatuses {
		if cs.State.Waiting == nil || cs.LastTerminationState.Terminated != nil {
			return true
		}
	}
	n := len(s.InitContainerStatuses)
	if n == 0 || n != len(pod.Spec.InitContainers) {
		return false
	}
	last, cs := pod.Spec.InitContainers[n-1], s.InitContainerStatuses[n-1]
	if isSidecar(&last) {
		return cs.State.Running != nil && cs.Started != nil && *cs.Started
	}
	for _, t := range []*corev1.ContainerStateTerminated{cs.State.Terminated, cs.LastTerminationState.Terminated} {
		if t != nil && t.ExitCode == 0 {
			return true
		}
	}
	return false
}

// attemptedInit returns the init container statuses up to the last one that tried to start
// (out of waiting, or with a last termination); at least the first.
func attemptedInit(statuses []corev1.ContainerStatus) []corev1.ContainerStatus {
	for i := len(statuses) - 1; i >= 0; i-- {
		if statuses[i].State.Waiting == nil || statuses[i].LastTerminationState.Terminated != nil {
			return statuses[:i+1]
		}
	}
	if len(statuses) > 0 {
		return statuses[:1]
	}
	return nil
}

// markInitReady marks each init container (not a sidecar) that completed with exit code 0
// ready, as kubelet's prober manager does; a sidecar's readiness is the agent's.
func markInitReady(pod *corev1.Pod, statuses []corev1.ContainerStatus) {
	for i := range statuses {
		if i < len(pod.Spec.InitContainers) && isSidecar(&pod.Spec.InitContainers[i]) {
			continue
		}
		if t := statuses[i].State.Terminated; t != nil && t.ExitCode == 0 {
			statuses[i].Ready = true
		}
	}
}

func isSidecar(c *corev1.Container) bool {
	return c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways
}

func incompleteInit(pod *corev1.Pod, statuses []corev1.ContainerStatus) []string {
	var out []string
	for i, c := range pod.Spec.InitContainers {
		if i >= len(statuses) {
			out = append(out, c.Name)
			continue
		}
		cs := statuses[i]
		sidecar := isSidecar(&c)
		switch {
		case sidecar && cs.Started != nil && *cs.Started:
		case !sidecar && cs.State.Terminated != nil && cs.State.Terminated.ExitCode == 0:
		default:
			out = append(out, c.Name)
		}
	}
	return out
}

// conditions computes kubelet's pod conditions, keeping transition times of unchanged ones
// and conditions kubelet does not own (readiness gates, disruption targets).
func conditions(pod *corev1.Pod, s *corev1.PodStatus, cellReady bool, unreachable string, now time.Time) []corev1.PodCondition {
	var conds []corev1.PodCondition
	add := func(t corev1.PodConditionType, ok bool, reason, message string) {
		st := corev1.ConditionFalse
		if ok {
			st = corev1.ConditionTrue
		}
		conds = append(conds, corev1.PodCondition{Type: t, Status: st, Reason: reason, Message: message, ObservedGeneration: pod.Generation})
	}
	add(corev1.PodReadyToStartContainers, cellReady, "", "")

	succeeded := s.Phase == corev1.PodSucceeded
	if inc := incompleteInit(pod, s.InitContainerStatuses); succeeded {
		add(corev1.PodInitialized, true, "PodCompleted", "")
	} else if len(inc) == 0 {
		add(corev1.PodInitialized, true, "", "")
	} else {
		add(corev1.PodInitialized, false, "ContainersNotInitialized", fmt.Sprintf("containers with incomplete status: [%s]", strings.Join(inc, " ")))
	}

	var unready []string
	for i, c := range pod.Spec.InitContainers {
		if isSidecar(&c) && (i >= len(s.InitContainerStatuses) || !s.InitContainerStatuses[i].Ready) {
			unready = append(unready, c.Name)
		}
	}
	for i, c := range pod.Spec.Containers {
		if i >= len(s.ContainerStatuses) || !s.ContainerStatuses[i].Ready {
			unready = append(unready, c.Name)
		}
	}
	var crReason, crMessage string
	switch {
	case succeeded:
		crReason = "PodCompleted"
	case unreachable != "":
		crReason, crMessage = ReasonCellUnreachable, unreachable
	case len(unready) > 0:
		crReason, crMessage = "ContainersNotReady", fmt.Sprintf("containers with unready status: [%s]", strings.Join(unready, " "))
	}
	containersReady := !succeeded && len(unready) == 0 && unreachable == ""
	ready, rReason, rMessage := containersReady, crReason, crMessage
	if containersReady {
		for _, g := range pod.Spec.ReadinessGates {
			if c := findCondition(pod.Status.Conditions, g.ConditionType); c == nil || c.Status != corev1.ConditionTrue {
				ready, rReason = false, "ReadinessGatesNotReady"
				rMessage = fmt.Sprintf("corresponding condition of pod readiness gate %q is not true", g.ConditionType)
				break
			}
		}
	}
	add(corev1.PodReady, ready, rReason, rMessage)
	add(corev1.ContainersReady, containersReady, crReason, crMessage)

	if sc := findCondition(pod.Status.Conditions, corev1.PodScheduled); sc != nil {
		conds = append(conds, *sc)
	} else {
		add(corev1.PodScheduled, true, "", "")
	}
	for i := range conds {
		if old := findCondition(pod.Status.Conditions, conds[i].Type); old != nil && old.Status == conds[i].Status && !old.LastTransitionTime.IsZero() {
			conds[i].LastTransitionTime = old.LastTransitionTime
		} else if conds[i].LastTransitionTime.IsZero() {
			conds[i].LastTransitionTime = metav1.NewTime(now)
		}
	}
	owned := map[corev1.PodConditionType]bool{}
	for _, c := range conds {
		owned[c.Type] = true
	}
	for _, c := range pod.Status.Conditions {
		if !owned[c.Type] {
			conds = append(conds, c)
		}
	}
	return conds
}

func findCondition(conds []corev1.PodCondition, t corev1.PodConditionType) *corev1.PodCondition {
	for i := range conds {
		if conds[i].Type == t {
			return &conds[i]
		}
	}
	return nil
}

// qosClass computes the pod's QoS class as the API server does.
func qosClass(pod *corev1.Pod) corev1.PodQOSClass {
	all := append(append([]corev1.Container{}, pod.Spec.InitContainers...), pod.Spec.Containers...)
	requested, guaranteed := false, true
	for _, c := range all {
		for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
			req, hasReq := c.Resources.Requests[r]
			lim, hasLim := c.Resources.Limits[r]
			if (hasReq && !req.IsZero()) || (hasLim && !lim.IsZero()) {
				requested = true
			}
			if !hasLim || lim.IsZero() {
				guaranteed = false
				continue
			}
			if hasReq && req.Cmp(lim) != 0 {
				guaranteed = false
			}
		}
	}
	switch {
	case !requested:
		return corev1.PodQOSBestEffort
	case guaranteed:
		return corev1.PodQOSGuaranteed
	}
	return corev1.PodQOSBurstable
}

// AllPulled reports whether every container of the pod reports an image ID.
func AllPulled(pod *corev1.Pod, st *cellapi.PodStatus) bool {
	return countWith(st.ContainerStatuses, func(cs corev1.ContainerStatus) bool { return cs.ImageID != "" }) >= len(pod.Spec.Containers)
}

// AllStarted reports whether every regular container has started at least once.
func AllStarted(pod *corev1.Pod, st *cellapi.PodStatus) bool {
	return countWith(st.ContainerStatuses, func(cs corev1.ContainerStatus) bool {
		return cs.State.Running != nil || cs.State.Terminated != nil || cs.LastTerminationState.Terminated != nil
	}) >= len(pod.Spec.Containers)
}

// AnyStartedOrStuck reports whether the agent's status shows the pod past its first
// container's start: a container (or init container) running or ended, one waiting for a
// reason other than its creation (an image that cannot be pulled, a bad config, a back-off),
// or the pod ended.
func AnyStartedOrStuck(st *cellapi.PodStatus) bool {
	if isTerminal(st.Phase) {
		return true
	}
	for _, list := range [][]corev1.ContainerStatus{st.InitContainerStatuses, st.ContainerStatuses} {
		for _, cs := range list {
			if cs.State.Running != nil || cs.State.Terminated != nil {
				return true
			}
			if w := cs.State.Waiting; w != nil && w.Reason != "" && w.Reason != reasonContainerCreating && w.Reason != reasonPodInitializing {
				return true
			}
		}
	}
	return false
}

func countWith(statuses []corev1.ContainerStatus, f func(corev1.ContainerStatus) bool) int {
	n := 0
	for _, cs := range statuses {
		if f(cs) {
			n++
		}
	}
	return n
}

func isTerminal(p corev1.PodPhase) bool { return p == corev1.PodSucceeded || p == corev1.PodFailed }
