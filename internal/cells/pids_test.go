package cells

import (
	"context"
	"testing"
)

// cells.podPidsLimit reaches the agent with the pod (PodRequest.PodPidsLimit); -1 (no limit)
// sends none.
func TestPodPidsLimitSentWithThePod(t *testing.T) {
	for _, tc := range []struct {
		name      string
		limit     int64
		wantLimit int64
	}{{"limit", 4096, 4096}, {"no limit", -1, 0}} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, func(h *harness) { h.options = func(o *Options) { o.PodPidsLimit = tc.limit } })
			pod := testPod("pids")
			if err := h.m.CreatePod(context.Background(), pod); err != nil {
				t.Fatal(err)
			}
			a := h.agent(CellID(pod.UID))
			h.waitFor("the agent to get the pod", func() bool { a.mu.Lock(); defer a.mu.Unlock(); return a.req != nil })
			a.mu.Lock()
			got := a.req.PodPidsLimit
			a.mu.Unlock()
			if got != tc.wantLimit {
				t.Errorf("PodRequest.PodPidsLimit = %d, want %d", got, tc.wantLimit)
			}
		})
	}
}
