package cells

import (
	"context"
	"fmt"
	"sync"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/kip-dev/kip/internal/cellapi"
)

// testServices records each Sync with how many times the pod had been put on the agent then.
type testServices struct {
	mu    sync.Mutex
	syncs []string // "cellID puts=N"
	err   error
}

func (s *testServices) Sync(_ context.Context, cellID string, agent cellapi.Agent) error {
	a := agent.(*testAgent)
	a.mu.Lock()
	puts := a.puts
	a.mu.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.syncs = append(s.syncs, fmt.Sprintf("%s puts=%d", cellID, puts))
	return s.err
}

func (s *testServices) calls() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.syncs...)
}

// TestServicesSyncedBeforePut: a new cell's agent gets the Services after it is ready and
// before its pod is put; so does an adopted cell's after a restart.
func TestServicesSyncedBeforePut(t *testing.T) {
	svcs := &testServices{}
	h := newHarness(t, func(h *harness) { h.services = svcs })
	pod := testPod("web", func(p *corev1.Pod) { p.Spec.RestartPolicy = corev1.RestartPolicyAlways })
	h.runPod(pod)
	id := CellID(pod.UID)
	if got := svcs.calls(); len(got) != 1 || got[0] != id+" puts=0" {
		t.Fatalf("syncs %v, want one for %s before any put", got, id)
	}

	running := h.waitPod(pod, "Running", func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodRunning })
	h.m.Close()
	m2 := h.newManager()
	t.Cleanup(m2.Close)
	h.m = m2
	if err := m2.Recover(context.Background(), []*corev1.Pod{running}); err != nil {
		t.Fatal(err)
	}
	h.waitFor("the adopted cell's sync", func() bool { return len(svcs.calls()) == 2 })
	if got := svcs.calls()[1]; got != id+" puts=1" {
		t.Errorf("adopted cell's sync %q, want %q (after the first put, before any other)", got, id+" puts=1")
	}
}

// TestServicesSyncFailureDoesNotFailThePod: the pod runs although its Services could not be
// given to the cell (the service controller retries).
func TestServicesSyncFailureDoesNotFailThePod(t *testing.T) {
	svcs := &testServices{err: fmt.Errorf("agent refused")}
	h := newHarness(t, func(h *harness) { h.services = svcs })
	pod := testPod("web")
	a := h.runPod(pod)
	a.mu.Lock()
	puts := a.puts
	a.mu.Unlock()
	if len(svcs.calls()) != 1 || puts != 1 {
		t.Errorf("syncs %v, puts %d; want one of each", svcs.calls(), puts)
	}
}
