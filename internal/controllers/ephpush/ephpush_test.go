package ephpush

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/record"

	"github.com/kip-dev/kip/internal/cellapi"
)

// fakeAgent records PutEphemeralContainers calls; errors can be injected in order.
type fakeAgent struct {
	cellapi.Agent // the rest is never called
	mu            sync.Mutex
	calls         []*cellapi.EphemeralContainers
	errs          []error
}

func (a *fakeAgent) PutEphemeralContainers(_ context.Context, e *cellapi.EphemeralContainers) (*cellapi.PodStatus, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.calls = append(a.calls, e)
	if len(a.errs) > 0 {
		err := a.errs[0]
		a.errs = a.errs[1:]
		if err != nil {
			return nil, err
		}
	}
	return &cellapi.PodStatus{UID: e.UID}, nil
}

func (a *fakeAgent) snapshot() []*cellapi.EphemeralContainers {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]*cellapi.EphemeralContainers(nil), a.calls...)
}

// oldAgent has no EphemeralRunner at all.
type oldAgent struct{ cellapi.Agent }

type fakeCells struct {
	mu    sync.Mutex
	pod   *corev1.Pod
	agent cellapi.Agent
	// waiting is what EphemeralWaiting set, by container name.
	waiting map[string]string
}

func (f *fakeCells) EphemeralWaiting(ns, name string, uid types.UID, names []string, reason, message string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.waiting == nil {
		f.waiting = map[string]string{}
	}
	for _, n := range names {
		if reason == "" {
			delete(f.waiting, n)
			continue
		}
		f.waiting[n] = reason + ": " + message
	}
}

func (f *fakeCells) EachRunningPod(visit func(ns, name string, uid types.UID)) {
	f.mu.Lock()
	p := f.pod
	f.mu.Unlock()
	visit(p.Namespace, p.Name, p.UID)
}

func (f *fakeCells) RunningPod(ns, name string) (*corev1.Pod, cellapi.Agent, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.pod.Namespace != ns || f.pod.Name != name {
		return nil, nil, false
	}
	return f.pod.DeepCopy(), f.agent, true
}

// envResolver marks each container it resolves, so the test sees the resolver was used.
type envResolver struct{ err error }

func (r envResolver) EphemeralContainers(_ context.Context, pod *corev1.Pod) ([]corev1.EphemeralContainer, error) {
	if r.err != nil {
		return nil, r.err
	}
	out := make([]corev1.EphemeralContainer, len(pod.Spec.EphemeralContainers))
	for i := range out {
		pod.Spec.EphemeralContainers[i].DeepCopyInto(&out[i])
		out[i].Env = []corev1.EnvVar{{Name: "RESOLVED", Value: "1"}}
	}
	return out, nil
}

func testPod(eph ...string) *corev1.Pod {
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "web", UID: "uid-1"},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "busybox"}}}}
	for _, n := range eph {
		p.Spec.EphemeralContainers = append(p.Spec.EphemeralContainers, corev1.EphemeralContainer{EphemeralContainerCommon: corev1.EphemeralContainerCommon{Name: n, Image: "busybox"}})
	}
	return p
}

func newController(cells Cells, latest *corev1.Pod, events record.EventRecorder, res Resolver) *Controller {
	return New(Options{
		MinRetry: time.Millisecond, MaxRetry: 10 * time.Millisecond, ResyncInterval: time.Hour,
		LatestPod: func(ns, name string) *corev1.Pod { return latest },
		Events:    events, Log: slog.New(slog.DiscardHandler),
	}, cells, res)
}

func TestSyncPutsNewEphemeralContainersOnce(t *testing.T) {
	agent := &fakeAgent{}
	cells := &fakeCells{pod: testPod(), agent: agent}
	latest := testPod("dbg") // the informer saw the new container before the cells manager did
	c := newController(cells, latest, nil, envResolver{})

	if err := c.sync(t.Context(), "ns/web"); err != nil {
		t.Fatal(err)
	}
	calls := agent.snapshot()
	if len(calls) != 1 || calls[0].UID != "uid-1" || len(calls[0].Containers) != 1 ||
		calls[0].Containers[0].Name != "dbg" || calls[0].Containers[0].Env[0].Name != "RESOLVED" {
		t.Fatalf("calls %+v, want one put of the resolved dbg", calls)
	}
	if err := c.sync(t.Context(), "ns/web"); err != nil {
		t.Fatal(err)
	}
	if n := len(agent.snapshot()); n != 1 {
		t.Errorf("%d puts after a second sync, want 1: dbg was acknowledged", n)
	}
	// A second container: the whole list goes again.
	cells.mu.Lock()
	cells.pod = testPod("dbg", "dbg2")
	cells.mu.Unlock()
	if err := c.sync(t.Context(), "ns/web"); err != nil {
		t.Fatal(err)
	}
	if calls := agent.snapshot(); len(calls) != 2 || len(calls[1].Containers) != 2 {
		t.Errorf("calls %+v, want a second put of dbg and dbg2", calls)
	}
	// A new connection to the agent (an adopted cell) is put the list again.
	agent2 := &fakeAgent{}
	cells.mu.Lock()
	cells.agent = agent2
	cells.mu.Unlock()
	if err := c.sync(t.Context(), "ns/web"); err != nil {
		t.Fatal(err)
	}
	if n := len(agent2.snapshot()); n != 1 {
		t.Errorf("%d puts to the new agent, want 1", n)
	}
}

func TestSyncErrors(t *testing.T) {
	t.Run("a failed put is retried", func(t *testing.T) {
		agent := &fakeAgent{errs: []error{cellapi.Errorf(cellapi.KindInternal, "down")}}
		c := newController(&fakeCells{pod: testPod("dbg"), agent: agent}, nil, nil, envResolver{})
		if err := c.sync(t.Context(), "ns/web"); err == nil {
			t.Fatal("sync with the put failing returned nil, want the error (retried)")
		}
		if err := c.sync(t.Context(), "ns/web"); err != nil {
			t.Fatal(err)
		}
		if n := len(agent.snapshot()); n != 2 {
			t.Errorf("%d puts, want 2", n)
		}
	})
	t.Run("a resolution error is retried, shown as CreateContainerConfigError with one event", func(t *testing.T) {
		agent := &fakeAgent{}
		events := record.NewFakeRecorder(10)
		cells := &fakeCells{pod: testPod("dbg"), agent: agent}
		c := newController(cells, nil, events, envResolver{err: errors.New(`secret "s" not found`)})
		for range 2 {
			if err := c.sync(t.Context(), "ns/web"); err == nil || len(agent.snapshot()) != 0 {
				t.Errorf("sync = %v with %d puts, want the error and no put", err, len(agent.snapshot()))
			}
		}
		if got, want := cells.waiting["dbg"], `CreateContainerConfigError: secret "s" not found`; got != want {
			t.Errorf("dbg waiting %q, want %q", got, want)
		}
		if n := len(events.Events); n != 1 {
			t.Fatalf("%d events, want 1 for the same error", n)
		}
		if ev := <-events.Events; ev != `Warning Failed Error: secret "s" not found` {
			t.Errorf("event %q", ev)
		}
		// Resolved: put, and the waiting reason cleared.
		c.resolver = envResolver{}
		if err := c.sync(t.Context(), "ns/web"); err != nil || len(agent.snapshot()) != 1 {
			t.Fatalf("sync = %v with %d puts, want one put", err, len(agent.snapshot()))
		}
		if w, ok := cells.waiting["dbg"]; ok {
			t.Errorf("dbg still waiting %q after its put", w)
		}
	})
	for _, tc := range []struct {
		name  string
		agent cellapi.Agent
	}{
		{"an agent answering 501", &fakeAgent{errs: []error{cellapi.Errorf(cellapi.KindBadVersion, "not implemented")}}},
		{"an agent without the interface", oldAgent{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			events := record.NewFakeRecorder(10)
			c := newController(&fakeCells{pod: testPod("dbg"), agent: tc.agent}, nil, events, envResolver{})
			for range 2 {
				if err := c.sync(t.Context(), "ns/web"); err != nil {
					t.Fatal(err)
				}
			}
			if n := len(events.Events); n != 1 {
				t.Fatalf("%d events, want 1 (once per container)", n)
			}
			if ev := <-events.Events; !strings.Contains(ev, "Warning "+ReasonEphemeralUnsupported) || !strings.Contains(ev, `"dbg"`) {
				t.Errorf("event %q, want a Warning %s naming dbg", ev, ReasonEphemeralUnsupported)
			}
		})
	}
}

// TestRunPushesOnPodChanged drives the controller through its queue: a pod update that adds
// an ephemeral container is put to the agent.
func TestRunPushesOnPodChanged(t *testing.T) {
	agent := &fakeAgent{}
	cells := &fakeCells{pod: testPod(), agent: agent}
	c := newController(cells, nil, nil, envResolver{})
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { c.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	cells.mu.Lock()
	cells.pod = testPod("dbg")
	cells.mu.Unlock()
	c.PodChanged(testPod(), testPod("dbg"))
	deadline := time.Now().Add(10 * time.Second)
	for len(agent.snapshot()) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no put after PodChanged")
		}
		time.Sleep(5 * time.Millisecond)
	}
}
