package volpush

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"sync"
	"testing"
	"time"

	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes/fake"
	corev1listers "k8s.io/client-go/listers/core/v1"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/cache"
	testclock "k8s.io/utils/clock/testing"
	"k8s.io/utils/ptr"

	"github.com/kip-dev/kip/internal/cellapi"
	"github.com/kip-dev/kip/internal/podrequest"
)

// fakeAgent records UpdateVolumes calls; the next error can be injected.
type fakeAgent struct {
	cellapi.Agent // the rest is never called
	mu            sync.Mutex
	calls         []*cellapi.VolumeUpdate
	errs          []error
}

func (a *fakeAgent) UpdateVolumes(_ context.Context, u *cellapi.VolumeUpdate) (*cellapi.VolumeUpdateStatus, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.calls = append(a.calls, u)
	if len(a.errs) > 0 {
		err := a.errs[0]
		a.errs = a.errs[1:]
		if err != nil {
			return nil, err
		}
	}
	return &cellapi.VolumeUpdateStatus{Updated: []string{"x"}}, nil
}

func (a *fakeAgent) nCalls() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.calls)
}

func (a *fakeAgent) call(i int) *cellapi.VolumeUpdate {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.calls[i]
}

// fakeCells runs pods on agents.
type fakeCells struct {
	mu     sync.Mutex
	pods   map[string]*corev1.Pod
	agents map[string]cellapi.Agent
}

func newFakeCells() *fakeCells {
	return &fakeCells{pods: map[string]*corev1.Pod{}, agents: map[string]cellapi.Agent{}}
}

func (f *fakeCells) run(pod *corev1.Pod, a cellapi.Agent) {
	f.mu.Lock()
	defer f.mu.Unlock()
	k := pod.Namespace + "/" + pod.Name
	f.pods[k], f.agents[k] = pod, a
}

func (f *fakeCells) EachRunningPod(visit func(string, string, types.UID)) {
	f.mu.Lock()
	var ps []*corev1.Pod
	for _, p := range f.pods {
		ps = append(ps, p)
	}
	f.mu.Unlock()
	for _, p := range ps {
		visit(p.Namespace, p.Name, p.UID)
	}
}

func (f *fakeCells) RunningPod(ns, name string) (*corev1.Pod, cellapi.Agent, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	p, ok := f.pods[ns+"/"+name]
	if !ok {
		return nil, nil, false
	}
	return p.DeepCopy(), f.agents[ns+"/"+name], true
}

// fakeResolver serves files from a map it is given, counting calls and keeping the last pod.
type fakeResolver struct {
	mu      sync.Mutex
	files   map[string]cellapi.VolumeFiles
	err     error
	calls   int
	lastPod *corev1.Pod
}

func (r *fakeResolver) VolumeUpdate(_ context.Context, pod *corev1.Pod) (map[string]cellapi.VolumeFiles, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls++
	r.lastPod = pod
	return maps.Clone(r.files), r.err
}

func (r *fakeResolver) ForgetPod(types.UID) {}

func (r *fakeResolver) set(vol, path, data string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.files[vol] = cellapi.VolumeFiles{Files: map[string]cellapi.File{path: {Data: []byte(data), Mode: 0o644}}}
}

func (r *fakeResolver) nCalls() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.calls
}

func cmPod() *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "web", UID: "uid-1", Labels: map[string]string{"v": "1"}},
		Spec: corev1.PodSpec{Volumes: []corev1.Volume{
			{Name: "cfg", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{LocalObjectReference: corev1.LocalObjectReference{Name: "site"}}}},
			{Name: "info", VolumeSource: corev1.VolumeSource{DownwardAPI: &corev1.DownwardAPIVolumeSource{}}},
		}},
	}
}

func start(t *testing.T, cells Cells, r Resolver, opts Options) (*Controller, *testclock.FakeClock) {
	t.Helper()
	clk, ok := opts.Clock.(*testclock.FakeClock)
	if !ok {
		clk = testclock.NewFakeClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
		opts.Clock = clk
	}
	opts.Log = slog.New(slog.DiscardHandler)
	if opts.MinRetry == 0 {
		opts.MinRetry = time.Millisecond
	}
	if opts.ResyncInterval == 0 {
		opts.ResyncInterval = 30 * time.Second
	}
	c := New(opts, cells, r)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); c.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return c, clk
}

// advanceUntil steps the fake clock by step until cond holds (giving the controller a moment
// after each step) and returns how far it moved; it fails the test past max. The resync loop
// and the retry back-off wait on the clock, and a step lands after or before their timers are
// set, so the tests bound when something happened instead of counting single ticks.
func advanceUntil(t *testing.T, clk *testclock.FakeClock, step, max time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	var moved time.Duration
	for {
		if err := wait.PollUntilContextTimeout(context.Background(), time.Millisecond, 20*time.Millisecond, true,
			func(context.Context) (bool, error) { return cond(), nil }); err == nil {
			return moved
		}
		if moved >= max {
			t.Fatalf("%s: not after %v on the clock", what, moved)
		}
		clk.Step(step)
		moved += step
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	if err := wait.PollUntilContextTimeout(context.Background(), time.Millisecond, wait.ForeverTestTimeout, true,
		func(context.Context) (bool, error) { return cond(), nil }); err != nil {
		t.Fatalf("timed out waiting for %s", what)
	}
}

func TestConfigMapChangePushesOnlyWhatChanged(t *testing.T) {
	cells, agent := newFakeCells(), &fakeAgent{}
	cells.run(cmPod(), agent)
	res := &fakeResolver{files: map[string]cellapi.VolumeFiles{}}
	res.set("cfg", "index.html", "v1")
	res.set("info", "labels", `v="1"`)
	c, clk := start(t, cells, res, Options{})

	// The first pass, at start, gives the agent every volume once: kip cannot know what it holds.
	waitFor(t, "the first push", func() bool { return agent.nCalls() == 1 })
	if got := agent.call(0); got.UID != "uid-1" || len(got.Volumes) != 2 {
		t.Fatalf("first push %+v, want both volumes of uid-1", got)
	}

	// The ConfigMap changes: one push, with only the changed volume and its new content.
	res.set("cfg", "index.html", "v2")
	c.ObjectChanged("ConfigMap", "ns", "site")
	waitFor(t, "the push of the change", func() bool { return agent.nCalls() == 2 })
	got := agent.call(1)
	if len(got.Volumes) != 1 || string(got.Volumes["cfg"].Files["index.html"].Data) != "v2" {
		t.Errorf("second push %+v, want only cfg with index.html v2", got.Volumes)
	}

	// The same event again with nothing changed: resolved, not pushed.
	n := res.nCalls()
	c.ObjectChanged("ConfigMap", "ns", "site")
	waitFor(t, "the resolution", func() bool { return res.nCalls() == n+1 })
	// An object no volume reads: not even resolved.
	c.ObjectChanged("ConfigMap", "ns", "other")
	c.ObjectChanged("Secret", "ns", "site")
	// The next resync resolves again (the events above were queued before it).
	advanceUntil(t, clk, 5*time.Second, time.Minute, "the resync's resolution", func() bool { return res.nCalls() >= n+2 })
	if agent.nCalls() != 2 {
		t.Errorf("%d pushes, want 2: unchanged files were pushed", agent.nCalls())
	}
}

func TestPodLabelsChangeReachDownwardVolume(t *testing.T) {
	cells, agent := newFakeCells(), &fakeAgent{}
	pod := cmPod()
	cells.run(pod, agent)
	res := &fakeResolver{files: map[string]cellapi.VolumeFiles{}}
	res.set("info", "labels", `v="1"`)
	latest := pod.DeepCopy()
	var mu sync.Mutex
	c, _ := start(t, cells, res, Options{PodMeta: func(ns, name string) *corev1.Pod {
		mu.Lock()
		defer mu.Unlock()
		return latest.DeepCopy()
	}})
	waitFor(t, "the first push", func() bool { return agent.nCalls() == 1 })

	// The informer has the new labels before the cells manager: the controller reads them there.
	mu.Lock()
	latest.Labels = map[string]string{"v": "2"}
	cur := latest.DeepCopy()
	mu.Unlock()
	res.set("info", "labels", `v="2"`)
	n := res.nCalls()
	c.PodMetaChanged(pod, cur)
	waitFor(t, "the push", func() bool { return agent.nCalls() == 2 })
	res.mu.Lock()
	seen := res.lastPod.Labels["v"]
	res.mu.Unlock()
	if seen != "2" || res.nCalls() != n+1 {
		t.Errorf("resolved with label v=%q after %d calls, want v=2 after 1", seen, res.nCalls()-n)
	}
	// Only status changed: nothing to do.
	c.PodMetaChanged(cur, cur)
	if c.keys.Len() != 0 {
		t.Errorf("a pod whose metadata did not change was queued")
	}
}

func TestPushRetriedThenUnsupportedAgentLeftAlone(t *testing.T) {
	cells := newFakeCells()
	flaky := &fakeAgent{errs: []error{errors.New("connection reset"), cellapi.Errorf(cellapi.KindInternal, "disk full")}}
	cells.run(cmPod(), flaky)
	old := &fakeAgent{errs: []error{cellapi.Errorf(cellapi.KindBadVersion, "PUT /v1/pod/volumes is not implemented by this agent")}}
	oldPod := cmPod()
	oldPod.Name, oldPod.UID = "old", "uid-2"
	cells.run(oldPod, old)
	res := &fakeResolver{files: map[string]cellapi.VolumeFiles{}}
	res.set("cfg", "index.html", "v1")
	c, clk := start(t, cells, res, Options{MinRetry: time.Second})
	// The flaky agent's two failures are retried with back-off (1 s, then 2 s on the clock).
	waitFor(t, "the first push", func() bool { return flaky.nCalls() == 1 })
	if moved := advanceUntil(t, clk, 100*time.Millisecond, 10*time.Second, "the retries", func() bool { return flaky.nCalls() == 3 }); moved < 3*time.Second {
		t.Errorf("two retries after %v, want at least the 1 s + 2 s back-off", moved)
	}
	waitFor(t, "the push to be recorded", func() bool { return c.Pushed("ns/web", "cfg") })

	res.set("cfg", "index.html", "v2")
	c.ObjectChanged("ConfigMap", "ns", "site")
	waitFor(t, "the flaky agent's update", func() bool { return flaky.nCalls() == 4 })
	if old.nCalls() != 1 {
		t.Errorf("the agent without the route got %d calls, want 1 (then left alone)", old.nCalls())
	}
}

// The real resolver and its token cache on the controller's fake clock: a projected token of
// 600 s is pushed again at 80% of its TTL (480 s), not before, as kubelet refreshes it.
func TestTokenRefreshedAt80PercentOfTTL(t *testing.T) {
	cms := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
	secrets := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
	client := fake.NewClientset()
	clk := testclock.NewFakeClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	var issued int
	var imu sync.Mutex
	client.PrependReactor("create", "serviceaccounts", func(a k8stesting.Action) (bool, runtime.Object, error) {
		imu.Lock()
		defer imu.Unlock()
		issued++
		tr := a.(k8stesting.CreateAction).GetObject().(*authv1.TokenRequest).DeepCopy()
		tr.Status = authv1.TokenRequestStatus{Token: fmt.Sprintf("tok-%d", issued),
			ExpirationTimestamp: metav1.NewTime(clk.Now().Add(time.Duration(*tr.Spec.ExpirationSeconds) * time.Second))}
		return true, tr, nil
	})
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "web", UID: "uid-1"},
		Spec: corev1.PodSpec{Volumes: []corev1.Volume{{Name: "sa", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{
			Sources: []corev1.VolumeProjection{{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Path: "token", ExpirationSeconds: ptr.To[int64](600)}}},
		}}}}},
	}
	r, err := podrequest.New(podrequest.Config{
		Secrets: corev1listers.NewSecretLister(secrets), ConfigMaps: corev1listers.NewConfigMapLister(cms),
		Client: client, Clock: clk, Log: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	cells, agent := newFakeCells(), &fakeAgent{}
	cells.run(pod, agent)
	counting := &countingResolver{r: r}
	start(t, cells, counting, Options{Clock: clk})

	token := func(i int) string { return string(agent.call(i).Volumes["sa"].Files["token"].Data) }
	waitFor(t, "the first push", func() bool { return agent.nCalls() == 1 })
	if token(0) != "tok-1" {
		t.Fatalf("first push %q, want tok-1", token(0))
	}
	// Issued at 0 s with a TTL of 600 s, the token is due at 480 s; resyncs every 30 s.
	moved := advanceUntil(t, clk, 5*time.Second, 20*time.Minute, "the refreshed token's push", func() bool { return agent.nCalls() >= 2 })
	if moved < 480*time.Second || moved > 515*time.Second {
		t.Errorf("token pushed again after %v, want between 480 s (80%% of 600 s) and the first resync after it", moved)
	}
	if token(1) != "tok-2" || agent.nCalls() != 2 {
		t.Errorf("pushed %q (%d pushes), want tok-2 in the second", token(1), agent.nCalls())
	}
	if counting.nCalls() < 16 {
		t.Errorf("resolved %d times in %v, want a resolution every 30 s", counting.nCalls(), moved)
	}
}

// countingResolver forwards to a resolver, counting calls.
type countingResolver struct {
	r     Resolver
	mu    sync.Mutex
	calls int
}

func (c *countingResolver) VolumeUpdate(ctx context.Context, pod *corev1.Pod) (map[string]cellapi.VolumeFiles, error) {
	out, err := c.r.VolumeUpdate(ctx, pod)
	c.mu.Lock()
	c.calls++
	c.mu.Unlock()
	return out, err
}

func (c *countingResolver) ForgetPod(uid types.UID) {}

func (c *countingResolver) nCalls() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.calls
}

// A pod that started after the last resync is pushed on the first change of a ConfigMap,
// without waiting for the next resync (the fake clock never moves here).
func TestChangeReachesPodNotResolvedYet(t *testing.T) {
	cells, agent := newFakeCells(), &fakeAgent{}
	res := &fakeResolver{files: map[string]cellapi.VolumeFiles{}}
	res.set("cfg", "index.html", "v1")
	c, _ := start(t, cells, res, Options{})
	waitFor(t, "the first (empty) pass", func() bool { return c.keys.Len() == 0 })
	cells.run(cmPod(), agent)
	res.set("cfg", "index.html", "v2")
	c.ObjectChanged("ConfigMap", "ns", "unrelated-but-maybe")
	waitFor(t, "the push", func() bool { return agent.nCalls() == 1 })
	if got := string(agent.call(0).Volumes["cfg"].Files["index.html"].Data); got != "v2" {
		t.Errorf("pushed %q, want v2", got)
	}
}
