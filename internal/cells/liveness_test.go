package cells

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/kip-dev/kip/internal/annotations"
	"github.com/kip-dev/kip/internal/cellapi"
	"github.com/kip-dev/kip/internal/cloud"
	"github.com/kip-dev/kip/internal/cloud/fake"
	"github.com/kip-dev/kip/internal/podstatus"
)

// beatAgent is a test agent whose status stream carries heartbeats: the test sends each one.
type beatAgent struct {
	*testAgent
	mu    sync.Mutex
	beats []chan cellapi.WatchMessage
}

var _ cellapi.HeartbeatWatcher = (*beatAgent)(nil)

func (b *beatAgent) WatchPodHeartbeats(ctx context.Context, _ time.Duration) (<-chan cellapi.WatchMessage, bool, error) {
	ch, err := b.WatchPod(ctx)
	if err != nil {
		return nil, false, err
	}
	out := make(chan cellapi.WatchMessage, 100)
	b.mu.Lock()
	b.beats = append(b.beats, out)
	b.mu.Unlock()
	go func() {
		for st := range ch {
			out <- cellapi.WatchMessage{Status: st}
		}
		b.mu.Lock()
		defer b.mu.Unlock()
		for i, c := range b.beats {
			if c == out {
				b.beats = append(b.beats[:i], b.beats[i+1:]...)
				close(out)
				break
			}
		}
	}()
	return out, true, nil
}

// beat sends a heartbeat on every open stream.
func (b *beatAgent) beat() {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, c := range b.beats {
		c <- cellapi.WatchMessage{}
	}
}

func (a *testAgent) putCount() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.puts
}

func withBeatAgents(beats map[string]*beatAgent) func(*harness) {
	return func(h *harness) {
		h.dial = func(ctx context.Context, inst *cloud.Instance, cellID string) (cellapi.Agent, error) {
			h.mu.Lock()
			defer h.mu.Unlock()
			if b, ok := beats[cellID]; ok {
				return b, nil
			}
			return nil, errors.New("no beat agent registered")
		}
	}
}

// stepUntil steps the fake clock by step while something waits on it, until cond holds;
// it fails once the clock has moved limit.
func (h *harness) stepUntil(what string, step, limit time.Duration, cond func() bool) time.Duration {
	h.t.Helper()
	start := h.clock.Now()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if moved := h.clock.Since(start); moved > limit {
			h.t.Fatalf("%s: not after %s of the fake clock; events: %v", what, moved, h.allEvents())
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("%s: timed out; events: %v", what, h.allEvents())
		}
		if h.clock.HasWaiters() {
			h.clock.Step(step)
		}
		time.Sleep(2 * time.Millisecond)
	}
	return h.clock.Since(start)
}

func readyCondition(p *corev1.Pod) *corev1.PodCondition {
	return findCondition(p.Status.Conditions, corev1.PodReady)
}

func isReady(p *corev1.Pod) bool {
	c := readyCondition(p)
	return p.Status.Phase == corev1.PodRunning && c != nil && c.Status == corev1.ConditionTrue &&
		len(p.Status.ContainerStatuses) == 1 && p.Status.ContainerStatuses[0].Ready
}

func isUnreachable(p *corev1.Pod) bool {
	c := readyCondition(p)
	return p.Status.Phase == corev1.PodRunning && c != nil && c.Status == corev1.ConditionFalse &&
		c.Reason == podstatus.ReasonCellUnreachable && len(p.Status.ContainerStatuses) == 1 &&
		!p.Status.ContainerStatuses[0].Ready && p.Status.ContainerStatuses[0].State.Running != nil
}

func (h *harness) pod(p *corev1.Pod) *corev1.Pod {
	got, _ := h.m.GetPod(p.Namespace, p.Name)
	if got == nil {
		return &corev1.Pod{}
	}
	return got
}

// TestSilentCellWithHeartbeats: an agent whose stream stops beating turns its pod NotReady
// (containers kept, not ready) after silentBeats heartbeats; a heartbeat makes it Ready
// again without a new PutPod; silence past the lost timeout fails it with CellLost and
// terminates the cell.
func TestSilentCellWithHeartbeats(t *testing.T) {
	beats := map[string]*beatAgent{}
	h := newHarness(t, withBeatAgents(beats))
	pod := testPod("beating", func(p *corev1.Pod) { p.Spec.RestartPolicy = corev1.RestartPolicyAlways })
	b := &beatAgent{testAgent: &testAgent{cellID: CellID(pod.UID)}}
	h.mu.Lock()
	beats[CellID(pod.UID)] = b
	h.agents[CellID(pod.UID)] = b.testAgent
	h.mu.Unlock()
	b.testAgent = h.runPod(pod)
	h.waitFor("Ready", func() bool { return isReady(h.pod(pod)) })

	// Beats keep it Ready, however long.
	for i := 0; i < 40; i++ {
		b.beat()
		h.clock.Step(500 * time.Millisecond)
		time.Sleep(time.Millisecond)
	}
	b.beat()
	h.waitFor("the last beat taken", func() bool { return isReady(h.pod(pod)) })
	if p := h.pod(pod); !isReady(p) {
		t.Fatalf("a beating cell is not ready: %+v", p.Status)
	}

	// Silence: NotReady, well before the lost timeout.
	took := h.stepUntil("NotReady", 100*time.Millisecond, 20*time.Second, func() bool { return isUnreachable(h.pod(pod)) })
	t.Logf("NotReady after %s of fake silence", took)
	if !h.hasEvent("Warning CellUnreachable") {
		t.Errorf("no CellUnreachable event: %v", h.allEvents())
	}
	puts := b.putCount()
	lastBeat := h.clock.Now()
	b.beat()
	h.waitFor("Ready again", func() bool { return isReady(h.pod(pod)) })
	if !h.hasEvent("Normal CellReachable") {
		t.Errorf("no CellReachable event: %v", h.allEvents())
	}
	if b.putCount() != puts {
		t.Errorf("the pod was put again (%d → %d puts)", puts, b.putCount())
	}

	// Silence past the lost timeout.
	took = h.stepUntil("CellLost", time.Second, 2*DefaultOptions().LostTimeout, func() bool { return h.pod(pod).Status.Phase == corev1.PodFailed })
	t.Logf("Failed after %s of fake silence", took)
	got := h.pod(pod)
	if got.Status.Reason != ReasonCellLost || !strings.Contains(got.Status.Message, "unreachable") {
		t.Errorf("reason %q message %q", got.Status.Reason, got.Status.Message)
	}
	// Silence counts from the last beat; waiting for Ready again may have stepped the clock
	// past it before stepUntil began.
	if silent := h.clock.Since(lastBeat); silent < DefaultOptions().LostTimeout {
		t.Errorf("lost after %s of silence, before the lost timeout %s", silent, DefaultOptions().LostTimeout)
	}
	h.waitFor("the cell terminated", func() bool { return len(h.live()) == 0 })
}

// TestSilentCellWithoutHeartbeats: an older agent (no heartbeats) is probed: failing probes
// turn the pod NotReady, an answer makes it Ready again (no new PutPod, no new launch), and
// a pod's lost-timeout annotation sets when it is lost.
func TestSilentCellWithoutHeartbeats(t *testing.T) {
	h := newHarness(t)
	pod := testPod("quiet", func(p *corev1.Pod) {
		p.Spec.RestartPolicy = corev1.RestartPolicyAlways
		p.Annotations = map[string]string{annotations.LostTimeout: "12s"}
	})
	a := h.runPod(pod)
	h.waitFor("Ready", func() bool { return isReady(h.pod(pod)) })

	a.setHealth(errors.New("i/o timeout"))
	took := h.stepUntil("NotReady", 200*time.Millisecond, 10*time.Second, func() bool { return isUnreachable(h.pod(pod)) })
	t.Logf("NotReady after %s of failing probes", took)
	puts := a.putCount()
	a.setHealth(nil)
	h.stepUntil("Ready again", 200*time.Millisecond, 5*time.Second, func() bool { return isReady(h.pod(pod)) })
	if a.putCount() != puts || h.cloud.CallCount(fake.MethodLaunch) != 1 {
		t.Errorf("puts %d → %d, launches %d", puts, a.putCount(), h.cloud.CallCount(fake.MethodLaunch))
	}

	a.setHealth(errors.New("i/o timeout"))
	took = h.stepUntil("CellLost", time.Second, time.Minute, func() bool { return h.pod(pod).Status.Phase == corev1.PodFailed })
	t.Logf("Failed after %s of failing probes", took)
	got := h.pod(pod)
	if got.Status.Reason != ReasonCellLost || !strings.Contains(got.Status.Message, "lost timeout 12s") {
		t.Errorf("reason %q message %q", got.Status.Reason, got.Status.Message)
	}
	if took < 12*time.Second || took >= DefaultOptions().LostTimeout {
		t.Errorf("lost after %s, want the annotation's 12s (not the default %s)", took, DefaultOptions().LostTimeout)
	}
	h.waitFor("the cell terminated", func() bool { return len(h.live()) == 0 })
}

// TestBrokenStreamWithinLostTimeoutKeepsPod: a stream that breaks while the agent is
// unreachable is reopened once it answers, before the lost timeout: the pod is Ready again
// and its containers were not put again.
func TestBrokenStreamWithinLostTimeoutKeepsPod(t *testing.T) {
	h := newHarness(t)
	pod := testPod("flaky", func(p *corev1.Pod) { p.Spec.RestartPolicy = corev1.RestartPolicyAlways })
	a := h.runPod(pod)
	a.setHealth(errors.New("connection refused"))
	a.dropWatchers()
	h.stepUntil("NotReady", 200*time.Millisecond, 10*time.Second, func() bool { return isUnreachable(h.pod(pod)) })
	puts := a.putCount()
	a.setHealth(nil)
	h.stepUntil("Ready again", 200*time.Millisecond, 10*time.Second, func() bool {
		return isReady(h.pod(pod)) && a.watcherCount() > 0
	})
	if a.putCount() != puts {
		t.Errorf("the pod was put again (%d → %d puts)", puts, a.putCount())
	}
}

// TestBadLostTimeoutRefusedBeforeLaunch: an unusable lost-timeout fails the pod naming the
// annotation, and no cell is launched.
func TestBadLostTimeoutRefusedBeforeLaunch(t *testing.T) {
	h := newHarness(t)
	pod := testPod("badtimeout", func(p *corev1.Pod) { p.Annotations = map[string]string{annotations.LostTimeout: "soon"} })
	if err := h.m.CreatePod(context.Background(), pod); err != nil {
		t.Fatal(err)
	}
	got := h.waitPod(pod, "Failed", func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodFailed })
	if got.Status.Reason != ReasonInvalidAnnotation || !strings.Contains(got.Status.Message, annotations.LostTimeout) {
		t.Errorf("reason %q message %q", got.Status.Reason, got.Status.Message)
	}
	if n := h.cloud.CallCount(fake.MethodLaunch); n != 0 {
		t.Errorf("%d launches", n)
	}
}

// brokenPutAgent is a live agent whose first PutPod outlasts the lost timeout and then breaks
// on the transport (as an HTTP/2 connection whose ping came back late under load), while
// Health answers at once.
type brokenPutAgent struct {
	cellapi.Agent
	h    *harness
	once sync.Once
}

func (a *brokenPutAgent) PutPod(ctx context.Context, req *cellapi.PodRequest) (*cellapi.PodStatus, error) {
	broke := false
	a.once.Do(func() {
		a.h.clock.Step(DefaultOptions().LostTimeout + time.Second)
		broke = true
	})
	if broke {
		return nil, errors.New("http2: client connection lost")
	}
	return a.Agent.PutPod(ctx, req)
}

// TestBrokenPutOfALiveAgentKeepsPod: a put that breaks after more than the lost timeout does
// not fail the pod while the agent answers: the put is retried and the pod runs.
func TestBrokenPutOfALiveAgentKeepsPod(t *testing.T) {
	h := newHarness(t, func(h *harness) {
		h.dial = func(ctx context.Context, inst *cloud.Instance, cellID string) (cellapi.Agent, error) {
			return &brokenPutAgent{Agent: h.agent(cellID), h: h}, nil
		}
	})
	pod := testPod("slowput", func(p *corev1.Pod) { p.Spec.RestartPolicy = corev1.RestartPolicyAlways })
	a := h.runPod(pod)
	if got := h.pod(pod); got.Status.Phase != corev1.PodRunning {
		t.Fatalf("pod %s: %s", got.Status.Phase, got.Status.Message)
	}
	if a.putCount() != 1 {
		t.Errorf("puts that reached the agent: %d, want 1 (after the broken one)", a.putCount())
	}
	if h.hasEvent("Warning " + ReasonCellLost) {
		t.Errorf("a live agent was declared lost: %v", h.allEvents())
	}
}
