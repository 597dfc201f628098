package cells

import (
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kip-dev/kip/internal/cellapi"
)

// A spot interruption is handled as kubelet's graceful node shutdown handles a node going
// down: the pod is Failed with kubelet's reason, its DisruptionTarget condition says why, and
// its containers stop within the time the notice leaves.
const (
	// ReasonSpotInterruption is the Warning Event of a pod whose cell got a spot interruption
	// notice.
	ReasonSpotInterruption = "SpotInterruption"
	// ReasonTerminated is the failed pod's reason (kubelet's node shutdown reason).
	ReasonTerminated = "Terminated"
	// messageSpotTerminated is the pod's message, after kubelet's node shutdown message.
	messageSpotTerminated = "Pod was terminated in response to imminent cell shutdown (spot interruption)."
)

// spotInterrupted takes the agent's spot interruption notice, once: it records a Warning
// Event, adds the DisruptionTarget condition and kills the pod (graceful stop, then Failed
// with reason Terminated) within min(the pod's grace period, the time left before the
// action), so that its controller replaces it on a new cell before the instance goes. The pod
// is not deleted; its cell is terminated like any finished pod's and never relaunched.
func (c *cell) spotInterrupted(n *cellapi.SpotInterruption) {
	m := c.m
	now := m.clock.Now()
	m.mu.Lock()
	if c.spotNotice != nil || c.stage >= stageStopping || c.killed != nil || c.userDeleted ||
		(c.agentStatus != nil && isTerminal(c.agentStatus.Phase)) {
		m.mu.Unlock()
		return
	}
	c.spotNotice = n
	grace := gracePeriod(c.pod)
	left := max(n.Time.Sub(now), 0)
	if left < grace {
		grace = left
	}
	cond := corev1.PodCondition{
		Type:               corev1.DisruptionTarget,
		Status:             corev1.ConditionTrue,
		Reason:             corev1.PodReasonTerminationByKubelet,
		Message:            messageSpotTerminated,
		LastTransitionTime: metav1.NewTime(now),
		ObservedGeneration: c.pod.Generation,
	}
	var conds []corev1.PodCondition
	for _, old := range c.pod.Status.Conditions {
		if old.Type != corev1.DisruptionTarget {
			conds = append(conds, old)
		}
	}
	c.pod.Status.Conditions = append(conds, cond)
	pod := c.pod
	instance := ""
	if c.inst != nil {
		instance = c.inst.ID
	}
	m.mu.Unlock()
	c.log.Warn("spot interruption notice: stopping the pod", "action", n.Action, "time", n.Time, "grace", grace)
	m.event(pod, corev1.EventTypeWarning, ReasonSpotInterruption,
		"Spot instance %s of cell %s will %s at %s (interruption notice); stopping the pod within %s",
		instance, c.cellID, n.Action, n.Time.UTC().Format(time.RFC3339), grace)
	c.publish()
	c.kill(&podFailure{reason: ReasonTerminated, message: messageSpotTerminated}, grace)
}
