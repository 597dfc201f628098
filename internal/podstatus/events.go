package podstatus

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"

	"github.com/kip-dev/kip/internal/cellapi"
)

// Event is one Kubernetes event to record on a pod.
type Event struct {
	Type, Reason, Message string
}

// Events remembers what was already reported of one pod's containers, so each transition is
// reported once. The zero value is ready to use.
type Events struct {
	pulling map[string]bool
	pulled  map[string]bool
	waiting map[string]string // last waiting reason reported
	started map[string]string // StartedAt of the last run reported
}

// Waiting reasons the agent reports (kubelet's), and the event each one becomes.
var waitingEvents = map[string]struct{ typ, reason string }{
	"ErrImagePull":               {corev1.EventTypeWarning, "Failed"},
	"InvalidImageName":           {corev1.EventTypeWarning, "InspectFailed"},
	"ErrImageNeverPull":          {corev1.EventTypeWarning, "ErrImageNeverPull"},
	"CreateContainerError":       {corev1.EventTypeWarning, "Failed"},
	"CreateContainerConfigError": {corev1.EventTypeWarning, "Failed"},
	"RunContainerError":          {corev1.EventTypeWarning, "Failed"},
	"ImagePullBackOff":           {corev1.EventTypeNormal, "BackOff"},
	"CrashLoopBackOff":           {corev1.EventTypeWarning, "BackOff"},
}

// Diff returns the events implied by the agent's status moving from prev to cur.
func (e *Events) Diff(pod *corev1.Pod, prev, cur *cellapi.PodStatus) []Event {
	if e.pulling == nil {
		e.pulling, e.pulled = map[string]bool{}, map[string]bool{}
		e.waiting, e.started = map[string]string{}, map[string]string{}
	}
	var out []Event
	for _, list := range [][]corev1.ContainerStatus{cur.InitContainerStatuses, cur.ContainerStatuses} {
		for _, cs := range list {
			out = append(out, e.container(pod, cs)...)
		}
	}
	return out
}

func (e *Events) container(pod *corev1.Pod, cs corev1.ContainerStatus) []Event {
	var out []Event
	image := cs.Image
	if image == "" {
		image = specImage(pod, cs.Name)
	}
	w := cs.State.Waiting
	if !e.pulling[cs.Name] && (w == nil || w.Reason != reasonPodInitializing) {
		e.pulling[cs.Name] = true
		out = append(out, Event{corev1.EventTypeNormal, "Pulling", fmt.Sprintf("Pulling image %q", image)})
	}
	if cs.ImageID != "" && !e.pulled[cs.Name] {
		e.pulled[cs.Name] = true
		out = append(out, Event{corev1.EventTypeNormal, "Pulled", fmt.Sprintf("Successfully pulled image %q", image)})
	}
	if w != nil && w.Reason != e.waiting[cs.Name] {
		e.waiting[cs.Name] = w.Reason
		if ev, ok := waitingEvents[w.Reason]; ok {
			msg := w.Message
			switch {
			case w.Reason == "ImagePullBackOff":
				msg = fmt.Sprintf("Back-off pulling image %q", image)
			case w.Reason == "CrashLoopBackOff":
				msg = fmt.Sprintf("Back-off restarting failed container %s in pod %s_%s", cs.Name, pod.Name, pod.Namespace)
			case msg == "":
				msg = "Error: " + w.Reason
			}
			out = append(out, Event{ev.typ, ev.reason, msg})
		}
	} else if w == nil {
		e.waiting[cs.Name] = ""
	}
	if r := cs.State.Running; r != nil {
		at := r.StartedAt.UTC().String()
		if e.started[cs.Name] != at {
			e.started[cs.Name] = at
			out = append(out, Event{corev1.EventTypeNormal, "Started", fmt.Sprintf("Started container %s", cs.Name)})
		}
	} else if t := cs.State.Terminated; t != nil && !t.StartedAt.IsZero() {
		// A container that ran and exited between two statuses still started.
		at := t.StartedAt.UTC().String()
		if e.started[cs.Name] != at {
			e.started[cs.Name] = at
			out = append(out, Event{corev1.EventTypeNormal, "Started", fmt.Sprintf("Started container %s", cs.Name)})
		}
	}
	return out
}

func specImage(pod *corev1.Pod, name string) string {
	for _, list := range [][]corev1.Container{pod.Spec.InitContainers, pod.Spec.Containers} {
		for _, c := range list {
			if c.Name == name {
				return c.Image
			}
		}
	}
	return ""
}
