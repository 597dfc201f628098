package cells

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/client-go/tools/record"
	testingclock "k8s.io/utils/clock/testing"

	"github.com/kip-dev/kip/internal/cellapi"
	"github.com/kip-dev/kip/internal/cloud"
	"github.com/kip-dev/kip/internal/cloud/fake"
	"github.com/kip-dev/kip/internal/controllers/gc"
	"github.com/kip-dev/kip/internal/instancetype"
	"github.com/kip-dev/kip/internal/pki"
	"github.com/kip-dev/kip/internal/podstatus/podstatustest"
	"github.com/kip-dev/kip/internal/selector"
)

// testAgent is an in-process cell agent: tests drive its pod status by hand.
type testAgent struct {
	cellID string

	mu        sync.Mutex
	healthErr error
	putErr    error
	req       *cellapi.PodRequest
	status    *cellapi.PodStatus
	puts      int
	deletes   []time.Duration
	watchers  map[*watcher]bool
	logs      map[string]string
	onDelete  func(a *testAgent) // runs under mu
}

type watcher struct {
	ch   chan *cellapi.PodStatus
	once sync.Once
}

func (w *watcher) close() { w.once.Do(func() { close(w.ch) }) }

var _ cellapi.Agent = (*testAgent)(nil)

func (a *testAgent) Health(context.Context) (*cellapi.Health, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.healthErr != nil {
		return nil, a.healthErr
	}
	return &cellapi.Health{CellID: a.cellID, Version: "test"}, nil
}

func (a *testAgent) PutPod(_ context.Context, req *cellapi.PodRequest) (*cellapi.PodStatus, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.healthErr != nil {
		return nil, a.healthErr
	}
	a.puts++
	if a.putErr != nil {
		return nil, a.putErr
	}
	if a.status != nil && a.status.UID == string(req.Pod.UID) {
		return a.status, nil
	}
	a.req = req
	st := &cellapi.PodStatus{UID: string(req.Pod.UID), Phase: corev1.PodPending, StartTime: time.Now()}
	for _, c := range req.Pod.Spec.Containers {
		st.ContainerStatuses = append(st.ContainerStatuses, corev1.ContainerStatus{
			Name: c.Name, Image: c.Image,
			State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "ContainerCreating"}},
		})
	}
	a.setLocked(st)
	return st, nil
}

func (a *testAgent) GetPod(context.Context) (*cellapi.PodStatus, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.healthErr != nil {
		return nil, a.healthErr
	}
	if a.status == nil {
		return nil, cellapi.Errorf(cellapi.KindNotFound, "no pod")
	}
	return a.status, nil
}

func (a *testAgent) WatchPod(ctx context.Context) (<-chan *cellapi.PodStatus, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.healthErr != nil {
		return nil, a.healthErr
	}
	w := &watcher{ch: make(chan *cellapi.PodStatus, 100)}
	if a.status != nil {
		w.ch <- a.status
	}
	if a.watchers == nil {
		a.watchers = map[*watcher]bool{}
	}
	a.watchers[w] = true
	go func() {
		<-ctx.Done()
		a.mu.Lock()
		delete(a.watchers, w)
		a.mu.Unlock()
		w.close()
	}()
	return w.ch, nil
}

func (a *testAgent) DeletePod(_ context.Context, grace time.Duration) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.deletes = append(a.deletes, grace)
	if a.onDelete != nil {
		a.onDelete(a)
	}
	return nil
}

func (a *testAgent) Logs(_ context.Context, container string, opts cellapi.LogOptions) (io.ReadCloser, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	l, ok := a.logs[container]
	if !ok {
		return nil, cellapi.Errorf(cellapi.KindNotFound, "no container %s", container)
	}
	if !opts.Timestamps {
		return nil, fmt.Errorf("test agent serves logs with timestamps only")
	}
	return io.NopCloser(strings.NewReader(l)), nil
}

func (a *testAgent) Stats(context.Context) (*cellapi.Stats, error) { return &cellapi.Stats{}, nil }

// set publishes a new status to every watcher.
func (a *testAgent) set(st *cellapi.PodStatus) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.setLocked(st)
}

func (a *testAgent) setLocked(st *cellapi.PodStatus) {
	seq := uint64(1)
	if a.status != nil {
		seq = a.status.Seq + 1
		if st.UID == "" {
			st.UID = a.status.UID
		}
	}
	st.Seq = seq
	a.status = st
	for w := range a.watchers {
		w.ch <- st
	}
}

// dropWatchers closes every stream, as a broken connection would.
func (a *testAgent) dropWatchers() {
	a.mu.Lock()
	defer a.mu.Unlock()
	for w := range a.watchers {
		delete(a.watchers, w)
		w.close()
	}
}

func (a *testAgent) setHealth(err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.healthErr = err
}

func (a *testAgent) watcherCount() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.watchers)
}

// harness is a manager over the fake cloud, test agents and a fake clock.
type harness struct {
	t      *testing.T
	cloud  *fake.Fake
	cl     cloud.Cloud // what the manager uses (may wrap fake)
	clock  *testingclock.FakeClock
	ca     *pki.CA
	rec    *record.FakeRecorder
	m      *Manager
	mirror *testMirror

	mu       sync.Mutex
	agents   map[string]*testAgent
	newAgent func(cellID string) *testAgent
	// dial is Deps.Dial (nil: the manager's mutual-TLS default, on agentPort).
	dial      func(ctx context.Context, inst *cloud.Instance, cellID string) (cellapi.Agent, error)
	agentPort int
	services  ServiceSync // Deps.Services
	// enrollment is Deps.Enrollment (nil: certificates in the bootstrap).
	enrollment *Enrollment
	// certLifetime is Options.CertLifetime (0: the default).
	certLifetime time.Duration
	events       []string
	notified     []*corev1.Pod
	observed     []Timing

	// options, when set, changes the manager's options before it is made.
	options func(*Options)
	// resolver is Deps.Resolver (nil: the request is the pod as given).
	resolver Resolver
}

func newHarness(t *testing.T, opts ...func(*harness)) *harness {
	t.Helper()
	ca, err := pki.NewCA("test")
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{
		t:      t,
		clock:  testingclock.NewFakeClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)),
		ca:     ca,
		rec:    record.NewFakeRecorder(10000),
		agents: map[string]*testAgent{},
		mirror: &testMirror{cells: map[string]CellInfo{}},
	}
	h.cloud = fake.New(fake.WithClock(h.clock))
	h.cl = h.cloud
	h.dial = func(ctx context.Context, inst *cloud.Instance, cellID string) (cellapi.Agent, error) {
		return h.agent(cellID), nil
	}
	for _, o := range opts {
		o(h)
	}
	h.m = h.newManager()
	t.Cleanup(h.m.Close)
	return h
}

func (h *harness) newManager() *Manager {
	cfg := DefaultOptions()
	if h.certLifetime > 0 {
		cfg.CertLifetime = h.certLifetime
	}
	if h.options != nil {
		h.options(&cfg)
	}
	resolver := h.resolver
	if resolver == nil {
		resolver = ResolverFunc(func(ctx context.Context, pod *corev1.Pod) (*cellapi.PodRequest, error) {
			return &cellapi.PodRequest{Pod: pod}, nil
		})
	}
	m := New(cfg, NodeInfo{Name: "kip", HostIP: "10.250.0.1"}, Deps{
		Cloud:      h.cl,
		Selector:   SelectFunc(testSelect),
		Resolver:   resolver,
		Dial:       h.dial,
		AgentPort:  h.agentPort,
		CA:         h.ca,
		Events:     h.rec,
		Clock:      h.clock,
		Mirror:     h.mirror,
		Services:   h.services,
		Enrollment: h.enrollment,
		Log:        slog.New(slog.NewTextHandler(testWriter{h.t}, nil)),
		Observe: func(tm Timing) {
			h.mu.Lock()
			defer h.mu.Unlock()
			h.observed = append(h.observed, tm)
		},
	})
	m.NotifyPods(func(p *corev1.Pod) {
		h.mu.Lock()
		defer h.mu.Unlock()
		h.notified = append(h.notified, p)
	})
	return m
}

// startControllers runs the gc controller against the harness's manager, passing every 10 s
// of the fake clock, as kip run does after Recover.
func (h *harness) startControllers() {
	ctx, cancel := context.WithCancel(context.Background())
	log := slog.New(slog.NewTextHandler(testWriter{h.t}, nil))
	g := gc.New(gc.Options{Interval: 10 * time.Second, ClusterName: "kip", NodeName: "kip"}, h.m, h.cl, h.mirror, h.clock, log)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); g.Run(ctx) }()
	h.t.Cleanup(func() { cancel(); wg.Wait() })
}

// agent returns (making it if needed) the test agent of a cell.
func (h *harness) agent(cellID string) *testAgent {
	h.mu.Lock()
	defer h.mu.Unlock()
	a, ok := h.agents[cellID]
	if !ok {
		if h.newAgent != nil {
			a = h.newAgent(cellID)
		} else {
			a = &testAgent{cellID: cellID}
		}
		h.agents[cellID] = a
	}
	return a
}

// runPod creates pod, has its agent report the main container running, and waits until the
// manager shows the pod Running; it returns the pod's agent.
func (h *harness) runPod(pod *corev1.Pod) *testAgent {
	h.t.Helper()
	if err := h.m.CreatePod(context.Background(), pod); err != nil {
		h.t.Fatal(err)
	}
	a := h.agent(CellID(pod.UID))
	h.waitFor("a status watch", func() bool { return a.watcherCount() > 0 })
	a.set(&cellapi.PodStatus{Phase: corev1.PodRunning, ContainerStatuses: []corev1.ContainerStatus{running("main", true)}})
	h.waitPod(pod, "Running", func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodRunning })
	return a
}

// waitFor polls cond until it holds, stepping the fake clock whenever something waits on
// it, for at most 10 real seconds.
func (h *harness) waitFor(what string, cond func() bool) {
	h.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			h.t.Fatalf("timed out waiting for %s; events: %v", what, h.allEvents())
		}
		if h.clock.HasWaiters() {
			h.clock.Step(time.Second)
		}
		time.Sleep(time.Millisecond)
	}
}

// waitPod waits until the manager's view of the pod satisfies cond.
func (h *harness) waitPod(pod *corev1.Pod, what string, cond func(*corev1.Pod) bool) *corev1.Pod {
	h.t.Helper()
	var got *corev1.Pod
	h.waitFor(what, func() bool {
		p, ok := h.m.GetPod(pod.Namespace, pod.Name)
		got = p
		return ok && cond(p)
	})
	return got
}

func (h *harness) allEvents() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	for {
		select {
		case e := <-h.rec.Events:
			h.events = append(h.events, e)
		default:
			return append([]string(nil), h.events...)
		}
	}
}

func (h *harness) hasEvent(prefix string) bool {
	for _, e := range h.allEvents() {
		if strings.HasPrefix(e, prefix) {
			return true
		}
	}
	return false
}

func (h *harness) lastNotified(name string) *corev1.Pod {
	h.mu.Lock()
	defer h.mu.Unlock()
	for i := len(h.notified) - 1; i >= 0; i-- {
		if h.notified[i].Name == name {
			return h.notified[i]
		}
	}
	return nil
}

// live returns the instances the cloud still runs.
func (h *harness) live() []*cloud.Instance {
	var out []*cloud.Instance
	for _, in := range h.cloud.Instances() {
		if in.State != cloud.StateTerminated {
			out = append(out, in)
		}
	}
	return out
}

type testMirror struct {
	mu      sync.Mutex
	cells   map[string]CellInfo
	deleted []string
}

func (m *testMirror) Upsert(_ context.Context, c CellInfo) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.cells[c.CellID] = c
	return nil
}

func (m *testMirror) Delete(_ context.Context, id string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.cells, id)
	m.deleted = append(m.deleted, id)
	return nil
}

func (m *testMirror) get(id string) (CellInfo, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	c, ok := m.cells[id]
	return c, ok
}

// testSelect picks the cheapest on-demand type with enough CPU and memory; the others that
// fit are fallbacks, cheapest first.
func testSelect(pod *corev1.Pod, types []instancetype.InstanceType) (*selector.Choice, error) {
	switch pod.Annotations["test/selector"] {
	case "bad-annotation":
		return nil, &selector.AnnotationError{Annotation: "pod.kip.dev/instance-type", Value: "[", Reason: "bad glob"}
	case "bad-pod":
		return nil, &selector.PodError{Field: "spec.overhead", Reason: "negative"}
	}
	var cpu, mem resource.Quantity
	for _, c := range pod.Spec.Containers {
		cpu.Add(c.Resources.Requests[corev1.ResourceCPU])
		mem.Add(c.Resources.Requests[corev1.ResourceMemory])
	}
	var fits []selector.Candidate
	largest := instancetype.InstanceType{}
	for _, it := range types {
		if it.VCPU > largest.VCPU {
			largest = it
		}
		if float64(cpu.MilliValue())/1000 > it.VCPU || mem.Value() > it.MemoryMiB<<20 {
			continue
		}
		for _, o := range it.Offerings {
			if !o.Spot && o.Available {
				fits = append(fits, selector.Candidate{Type: it, Offering: o})
			}
		}
	}
	if len(fits) == 0 {
		return nil, fmt.Errorf("no instance type fits: the pod requests cpu %s, memory %s; the largest type %s offers %g vCPU, %d MiB",
			cpu.String(), mem.String(), largest.Name, largest.VCPU, largest.MemoryMiB)
	}
	sort.SliceStable(fits, func(i, j int) bool { return fits[i].Offering.Price < fits[j].Offering.Price })
	return &selector.Choice{Candidate: fits[0], Fallbacks: fits[1:]}, nil
}

var (
	testPod = podstatustest.Pod
	running = podstatustest.Running
	exited  = podstatustest.Exited
)

func findCondition(conds []corev1.PodCondition, t corev1.PodConditionType) *corev1.PodCondition {
	for i := range conds {
		if conds[i].Type == t {
			return &conds[i]
		}
	}
	return nil
}

// testWriter sends log lines to the test's log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}
