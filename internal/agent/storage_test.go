package agent_test

import (
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/utils/ptr"

	"github.com/kip-dev/kip/internal/agent"
	"github.com/kip-dev/kip/internal/cellapi"
)

// A container's ephemeral-storage limit covers its writable layer and its logs, as kubelet's
// eviction manager counts them: a pod whose container writes 4 MiB into its root filesystem,
// or 4 MiB of log, past a 2Mi limit is evicted with kubelet's message (the pod-level check
// comes first, and the pod's limit is the sum of its containers'); a container with a 2Mi
// limit among containers without one gets the same pod message, since the pod limit is 2Mi
// too; a pod that writes within its limit keeps running.
func TestEphemeralStorageLimitEvicts(t *testing.T) {
	const podMsg = "Pod ephemeral local storage usage exceeds the total limit of containers 2Mi. "
	const ctrMsg = `Container app exceeded its local ephemeral storage limit "2Mi". `
	tests := []struct {
		name   string
		script string
		// other adds a container with a 100Mi limit: the pod's limit is then 102Mi, and the
		// app container's own limit is what it exceeds.
		other bool
		want  string // "" = not evicted
	}{
		{name: "writable layer", script: "dd if=/dev/zero of=/big bs=1M count=4 2>/dev/null; sync; sleep 3600", want: podMsg},
		{name: "logs", script: "dd if=/dev/zero bs=1M count=4 2>/dev/null | tr '\\0' x | fold -w 1000; sleep 3600", want: podMsg},
		{name: "container limit", script: "dd if=/dev/zero of=/big bs=1M count=4 2>/dev/null; sync; sleep 3600", other: true, want: ctrMsg},
		{name: "within the limit", script: "dd if=/dev/zero of=/small bs=1k count=256 2>/dev/null; sync; echo wrote; sleep 3600"},
	}
	h := newHarness(t, fastBackOff, func(c *agent.Config) { c.StorageInterval = 200 * time.Millisecond })
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := newPod("storage", corev1.RestartPolicyAlways, shell("app", h.img("busybox"), tc.script))
			p.Spec.TerminationGracePeriodSeconds = ptr.To[int64](1)
			p.Spec.Containers[0].Resources.Limits = corev1.ResourceList{corev1.ResourceEphemeralStorage: resource.MustParse("2Mi")}
			if tc.other {
				other := shell("other", h.img("busybox"), "sleep 3600")
				other.Resources.Limits = corev1.ResourceList{corev1.ResourceEphemeralStorage: resource.MustParse("100Mi")}
				p.Spec.Containers = append(p.Spec.Containers, other)
			}
			if _, err := h.client.PutPod(t.Context(), &cellapi.PodRequest{Pod: p}); err != nil {
				t.Fatal(err)
			}
			if tc.want == "" {
				h.watchUntil(60*time.Second, func(s *cellapi.PodStatus) bool { return s.ContainerStatuses[0].State.Running != nil })
				deadline := time.Now().Add(30 * time.Second)
				for h.logs("app", cellapi.LogOptions{}) != "wrote\n" && time.Now().Before(deadline) {
					time.Sleep(100 * time.Millisecond)
				}
				// Five checks (200ms apart) pass: the pod still runs. (A wait for checks to
				// happen, not a timing assertion.)
				time.Sleep(time.Second)
				if st, err := h.client.GetPod(t.Context()); err != nil || st.Phase != corev1.PodRunning || st.Reason != "" {
					t.Errorf("pod within its limit: %v %v", err, st)
				}
				h.deletePod(time.Second)
				return
			}
			seen := h.watchUntil(90*time.Second, func(s *cellapi.PodStatus) bool { return s.Phase == corev1.PodFailed })
			st := seen[len(seen)-1]
			if st.Reason != "Evicted" || st.Message != tc.want {
				t.Errorf("reason %q message %q, want Evicted %q", st.Reason, st.Message, tc.want)
			}
			var event bool
			for _, e := range st.Events {
				event = event || e.Type == corev1.EventTypeWarning && e.Reason == "Evicted" && e.Message == tc.want
			}
			if !event {
				t.Errorf("no Evicted warning event: %+v", st.Events)
			}
			if st.ContainerStatuses[0].RestartCount != 0 {
				t.Errorf("restarted after the eviction: %s", describe(st))
			}
			h.deletePod(time.Second)
		})
	}
}
