package cells

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
)

// TestReadinessGateFromTheAPI: a pod with a readiness gate is not Ready while the gate's
// condition is missing, even with every container ready; once another controller sets it True
// in the API the pod is Ready, and kip's later statuses keep the condition.
func TestReadinessGateFromTheAPI(t *testing.T) {
	h := newHarness(t)
	const gate corev1.PodConditionType = "example.com/lb-ready"
	pod := testPod("gated", func(p *corev1.Pod) {
		p.Spec.RestartPolicy = corev1.RestartPolicyAlways
		p.Spec.ReadinessGates = []corev1.PodReadinessGate{{ConditionType: gate}}
	})
	h.runPod(pod)
	ready := func(p *corev1.Pod) *corev1.PodCondition {
		for i := range p.Status.Conditions {
			if p.Status.Conditions[i].Type == corev1.PodReady {
				return &p.Status.Conditions[i]
			}
		}
		return nil
	}
	got := h.waitPod(pod, "containers ready, gate missing", func(p *corev1.Pod) bool {
		c := ready(p)
		return c != nil && c.Reason == "ReadinessGatesNotReady"
	})
	if c := ready(got); c.Status != corev1.ConditionFalse {
		t.Fatalf("Ready %s with the gate missing", c.Status)
	}

	fromAPI := got.DeepCopy()
	fromAPI.Status.Conditions = append(fromAPI.Status.Conditions, corev1.PodCondition{Type: gate, Status: corev1.ConditionTrue})
	h.m.MergeConditions(fromAPI)
	got = h.waitPod(pod, "Ready with the gate True", func(p *corev1.Pod) bool {
		c := ready(p)
		return c != nil && c.Status == corev1.ConditionTrue
	})
	found := false
	for _, c := range got.Status.Conditions {
		found = found || (c.Type == gate && c.Status == corev1.ConditionTrue)
	}
	if !found {
		t.Errorf("kip's status dropped the gate's condition: %+v", got.Status.Conditions)
	}
}
