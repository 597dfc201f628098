package agent_test

import (
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/kip-dev/kip/internal/cellapi"
	"github.com/kip-dev/kip/internal/cgroups"
)

// A fork bomb stays inside its pod: with PodPidsLimit (kip's cells.podPidsLimit, kubelet's
// podPidsLimit) the pod's cgroup gets pids.max, a container that forks 400 sleeps in a loop
// sees its forks fail past the limit, the pod's cgroup never holds more tasks than the limit,
// and the agent still answers.
func TestPodPidsLimitContainsForkBomb(t *testing.T) {
	const limit = 64
	h := newHarness(t, fastBackOff)
	p := newPod("forkbomb", corev1.RestartPolicyNever, shell("bomb", h.img("busybox"),
		`i=0; while [ $i -lt 400 ]; do sleep 100 >/dev/null 2>&1 & i=$((i+1)); done 2>&1 | grep -q "can't fork" && echo forks-failed; echo spawned; sleep 3600`))
	if _, err := h.client.PutPod(t.Context(), &cellapi.PodRequest{Pod: p, PodPidsLimit: limit}); err != nil {
		t.Fatal(err)
	}
	h.watchUntil(60*time.Second, func(s *cellapi.PodStatus) bool {
		return s.ContainerStatuses[0].State.Running != nil || s.ContainerStatuses[0].State.Terminated != nil
	})
	deadline := time.Now().Add(60 * time.Second)
	out := ""
	for !strings.Contains(out, "spawned") && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
		out = h.logs("bomb", cellapi.LogOptions{})
	}
	if st, err := h.client.GetPod(t.Context()); err == nil {
		t.Logf("pod: %s", describe(st))
	}
	if out != "forks-failed\nspawned\n" {
		t.Errorf("the container said %q, want %q (its forks failing past the limit)", out, "forks-failed\nspawned\n")
	}
	cur, max, err := h.cg.Pids(cgroups.PodPath(h.parent, string(p.UID)))
	if err != nil {
		t.Fatal(err)
	}
	if max != limit || cur > limit || cur < limit/2 {
		t.Errorf("the pod's cgroup has pids.current %d, pids.max %d; want the limit %d, and at most (and near) it", cur, max, limit)
	}
	if _, err := h.client.Health(t.Context()); err != nil {
		t.Errorf("the agent does not answer after the fork bomb: %v", err)
	}
	h.deletePod(time.Second)
}
