package provider

import (
	"context"
	"errors"
	"io"
	"strings"
	"sync"
	"testing/iotest"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/kip-dev/kip/internal/cellapi"
)

// fakeAgent is an in-memory cellapi.Agent for one pod.
type fakeAgent struct {
	mu       sync.Mutex
	stats    *cellapi.Stats
	statsErr error
	logs     string
	logsErr  error
	lastLogs cellapi.LogOptions
	// onLogs, when set, runs at each Logs call (before it answers).
	onLogs func()
	// streamErr, when set, is what the log stream's first Read returns.
	streamErr error
}

var _ cellapi.Agent = (*fakeAgent)(nil)

func (a *fakeAgent) PutPod(context.Context, *cellapi.PodRequest) (*cellapi.PodStatus, error) {
	return nil, errors.New("not used")
}
func (a *fakeAgent) GetPod(context.Context) (*cellapi.PodStatus, error) {
	return nil, errors.New("not used")
}
func (a *fakeAgent) WatchPod(context.Context) (<-chan *cellapi.PodStatus, error) {
	return nil, errors.New("not used")
}
func (a *fakeAgent) DeletePod(context.Context, time.Duration) error { return nil }
func (a *fakeAgent) Health(context.Context) (*cellapi.Health, error) {
	return &cellapi.Health{}, nil
}

func (a *fakeAgent) Logs(_ context.Context, _ string, o cellapi.LogOptions) (io.ReadCloser, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.lastLogs = o
	if a.onLogs != nil {
		a.onLogs()
	}
	if a.logsErr != nil {
		return nil, a.logsErr
	}
	if a.streamErr != nil {
		return io.NopCloser(iotest.ErrReader(a.streamErr)), nil
	}
	return io.NopCloser(strings.NewReader(a.logs)), nil
}

func (a *fakeAgent) Stats(context.Context) (*cellapi.Stats, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.statsErr != nil {
		return nil, a.statsErr
	}
	s := *a.stats
	return &s, nil
}

// fakeCells is a hand-written Cells: pods by namespace/name, one agent each, a call log and
// an error to return from the next lifecycle call.
type fakeCells struct {
	mu     sync.Mutex
	pods   map[string]*corev1.Pod
	agents map[string]*fakeAgent
	// agentsAny overrides agents with any Agent implementation.
	agentsAny map[string]cellapi.Agent
	calls     []string
	nextErr   error
	notify    func(*corev1.Pod)
}

var _ Cells = (*fakeCells)(nil)

func newFakeCells(pods ...*corev1.Pod) *fakeCells {
	f := &fakeCells{pods: map[string]*corev1.Pod{}, agents: map[string]*fakeAgent{}}
	for _, p := range pods {
		f.pods[p.Namespace+"/"+p.Name] = p
	}
	return f
}

func (f *fakeCells) take(call string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, call)
	err := f.nextErr
	f.nextErr = nil
	return err
}

func (f *fakeCells) CreatePod(_ context.Context, p *corev1.Pod) error {
	if err := f.take("create " + p.Name); err != nil {
		return err
	}
	f.mu.Lock()
	f.pods[p.Namespace+"/"+p.Name] = p.DeepCopy()
	f.mu.Unlock()
	return nil
}

func (f *fakeCells) UpdatePod(_ context.Context, p *corev1.Pod) error {
	return f.take("update " + p.Name)
}
func (f *fakeCells) DeletePod(_ context.Context, p *corev1.Pod) error {
	return f.take("delete " + p.Name)
}

func (f *fakeCells) GetPod(ns, name string) (*corev1.Pod, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	p, ok := f.pods[ns+"/"+name]
	if !ok {
		return nil, false
	}
	return p.DeepCopy(), true
}

func (f *fakeCells) ListPods() []*corev1.Pod {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []*corev1.Pod
	for _, p := range f.pods {
		out = append(out, p.DeepCopy())
	}
	return out
}

func (f *fakeCells) NotifyPods(fn func(*corev1.Pod)) { f.notify = fn }

func (f *fakeCells) Agent(ns, name string) (cellapi.Agent, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.pods[ns+"/"+name]; !ok {
		return nil, errors.New("pod not found")
	}
	if a, ok := f.agentsAny[ns+"/"+name]; ok {
		return a, nil
	}
	a, ok := f.agents[ns+"/"+name]
	if !ok {
		return nil, cellapi.Errorf(cellapi.KindNotFound, "pod %s/%s has no cell yet", ns, name)
	}
	return a, nil
}
