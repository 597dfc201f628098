package pod

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	clocktesting "k8s.io/utils/clock/testing"
	"k8s.io/utils/ptr"

	"github.com/kip-dev/kip/internal/agent/image"
	"github.com/kip-dev/kip/internal/agent/runtime"
	"github.com/kip-dev/kip/internal/cellapi"
	"github.com/kip-dev/kip/internal/cgroups"
)

// fakeRuntime starts "containers" that exit when the test says, or on a signal they do not
// ignore.
type fakeRuntime struct {
	mu       sync.Mutex
	exits    map[string]func(runtime.ExitStatus)
	ignore   map[syscall.Signal]bool
	startErr error
	started  chan string
	signals  []string
	kills    []string // "<container id> <signal>", in order
	// configs holds each started container's config.json.
	configs map[string][]byte
}

func newFakeRuntime() *fakeRuntime {
	return &fakeRuntime{exits: map[string]func(runtime.ExitStatus){}, ignore: map[syscall.Signal]bool{}, started: make(chan string, 100)}
}

func (f *fakeRuntime) Start(_ context.Context, id, bundle string, _ runtime.IO) (*runtime.Container, error) {
	cfg, err := os.ReadFile(filepath.Join(bundle, "config.json"))
	if err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.configs == nil {
		f.configs = map[string][]byte{}
	}
	f.configs[id] = cfg
	if f.startErr != nil {
		return nil, f.startErr
	}
	c, exit := runtime.NewContainer(id, 1, time.Now())
	f.exits[id] = exit
	f.started <- id
	return c, nil
}

func (f *fakeRuntime) exit(id string, code int) {
	f.mu.Lock()
	exit := f.exits[id]
	delete(f.exits, id)
	f.mu.Unlock()
	if exit != nil {
		exit(runtime.ExitStatus{Code: code, At: time.Now()})
	}
}

func (f *fakeRuntime) State(context.Context, string) (*runtime.State, error) { return nil, nil }
func (f *fakeRuntime) Delete(context.Context, string) error                  { return nil }
func (f *fakeRuntime) List(context.Context) ([]string, error)                { return nil, nil }

func (f *fakeRuntime) Kill(_ context.Context, id string, sig syscall.Signal) error {
	f.mu.Lock()
	f.signals = append(f.signals, sig.String())
	f.kills = append(f.kills, id+" "+sig.String())
	ignored := f.ignore[sig]
	f.mu.Unlock()
	if !ignored {
		f.exit(id, 128+int(sig))
	}
	return nil
}

type fakeImages struct {
	err error

	mu     sync.Mutex
	pulled map[string]*image.Image // what Lookup finds
	pulls  int
}

func (f *fakeImages) Pull(_ context.Context, ref string, _ []cellapi.RegistryAuth) (*image.Image, error) {
	if f.err != nil {
		return nil, f.err
	}
	img := &image.Image{Ref: ref, ImageID: ref + "@sha256:00", Config: v1.Config{Cmd: []string{"/bin/sh"}}}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.pulled == nil {
		f.pulled = map[string]*image.Image{}
	}
	f.pulled[ref] = img
	f.pulls++
	return img, nil
}

func (f *fakeImages) Lookup(ref string) (*image.Image, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	img, ok := f.pulled[ref]
	return img, ok
}

func (f *fakeImages) MountRootFS(_ *image.Image, dir string) (string, func() error, error) {
	root := filepath.Join(dir, "rootfs")
	return root, func() error { return os.RemoveAll(root) }, os.MkdirAll(root, 0o755)
}

type fakeCgroups struct{}

func (fakeCgroups) SetMemoryLimit(string, int64) error { return nil }
func (fakeCgroups) SetPidsLimit(string, int64) error   { return nil }
func (fakeCgroups) MemoryEvents(string) (cgroups.MemoryEvents, error) {
	return cgroups.MemoryEvents{}, nil
}
func (fakeCgroups) Usage(string) (cgroups.Usage, error)     { return cgroups.Usage{}, nil }
func (fakeCgroups) Remove(string) error                     { return nil }
func (fakeCgroups) Ceiling(string) (cgroups.Ceiling, error) { return cgroups.Ceiling{}, nil }

type discardLog struct{}

func (discardLog) Stream(string) io.Writer { return io.Discard }
func (discardLog) Close() error            { return nil }

type rig struct {
	rt       *fakeRuntime
	clk      *clocktesting.FakeClock
	statuses chan *cellapi.PodStatus
	pod      *Pod
}

func start(t *testing.T, p *corev1.Pod, images *fakeImages) *rig {
	t.Helper()
	r := &rig{rt: newFakeRuntime(), clk: clocktesting.NewFakeClock(time.Now()), statuses: make(chan *cellapi.PodStatus, 1000)}
	var err error
	r.pod, err = Start(Config{
		Dir: filepath.Join(t.TempDir(), "pod"), Runtime: r.rt, Images: images, Cgroups: fakeCgroups{},
		CgroupParent: "kip", NewLog: func(string) (LogWriter, error) { return discardLog{}, nil },
		Clock: r.clk, Notify: func(s *cellapi.PodStatus) { r.statuses <- s },
	}, &cellapi.PodRequest{Pod: p})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		done := make(chan error, 1)
		go func() { done <- r.pod.Stop(context.Background(), 0) }()
		for {
			select {
			case <-done:
				return
			case <-time.After(10 * time.Millisecond):
				r.clk.Step(time.Hour) // the grace timer runs on the fake clock
			}
		}
	})
	return r
}

// until reads statuses until cond holds.
func (r *rig) until(t *testing.T, cond func(*cellapi.PodStatus) bool) *cellapi.PodStatus {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case s := <-r.statuses:
			if cond(s) {
				return s
			}
		case <-deadline:
			t.Fatalf("condition not reached; status now %+v", r.pod.Status())
		}
	}
}

// waitTimer waits until the supervisor has armed a timer on the fake clock.
func (r *rig) waitTimer(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !r.clk.HasWaiters() {
		if time.Now().After(deadline) {
			t.Fatal("no timer armed")
		}
		time.Sleep(time.Millisecond)
	}
}

func (r *rig) nextStart(t *testing.T) string {
	t.Helper()
	select {
	case id := <-r.rt.started:
		return id
	case <-time.After(10 * time.Second):
		t.Fatal("no container started")
		return ""
	}
}

func testPod(policy corev1.RestartPolicy, names ...string) *corev1.Pod {
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p", UID: "u1"}, Spec: corev1.PodSpec{RestartPolicy: policy, DNSPolicy: corev1.DNSDefault}} // Default: no MissingClusterDNS event among the ones tests count
	for _, n := range names {
		p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: n, Image: "busybox"})
	}
	return p
}

// TestCrashLoopBackOffOnFakeClock checks kubelet's delays on an injected clock: the first
// crash restarts at once, then 10s, 20s, 40s: a restart happens only once the clock has moved
// past the back-off.
func TestCrashLoopBackOffOnFakeClock(t *testing.T) {
	r := start(t, testPod(corev1.RestartPolicyOnFailure, "app"), &fakeImages{})
	first := r.nextStart(t)
	r.until(t, func(s *cellapi.PodStatus) bool { return s.ContainerStatuses[0].State.Running != nil })
	r.rt.exit(first, 1)
	// Restarted without the clock moving, never shown in CrashLoopBackOff.
	st := r.until(t, func(s *cellapi.PodStatus) bool {
		cs := s.ContainerStatuses[0]
		if w := cs.State.Waiting; w != nil && w.Reason == ReasonCrashLoopBackOff {
			t.Fatalf("the first crash backed off: %q", w.Message)
		}
		return cs.RestartCount == 1
	})
	if lt := st.ContainerStatuses[0].LastTerminationState.Terminated; lt == nil || lt.ExitCode != 1 {
		t.Fatalf("lastState after the immediate restart %+v", st.ContainerStatuses[0].LastTerminationState)
	}
	for i, want := range []time.Duration{10 * time.Second, 20 * time.Second, 40 * time.Second} {
		i++ // restarts so far
		id := r.nextStart(t)
		r.until(t, func(s *cellapi.PodStatus) bool { return s.ContainerStatuses[0].State.Running != nil })
		r.rt.exit(id, 1)
		st := r.until(t, func(s *cellapi.PodStatus) bool {
			w := s.ContainerStatuses[0].State.Waiting
			return w != nil && w.Reason == ReasonCrashLoopBackOff
		})
		cs := st.ContainerStatuses[0]
		if !strings.HasPrefix(cs.State.Waiting.Message, "back-off "+want.String()) || cs.RestartCount != int32(i) {
			t.Fatalf("restart %d: waiting %q restarts %d, want back-off %s", i, cs.State.Waiting.Message, cs.RestartCount, want)
		}
		if lt := cs.LastTerminationState.Terminated; lt == nil || lt.ExitCode != 1 || lt.Reason != ReasonError {
			t.Fatalf("lastState %+v", cs.LastTerminationState)
		}
		if st.Phase != corev1.PodRunning {
			t.Fatalf("phase %s during back-off of an OnFailure pod", st.Phase)
		}
		// Not yet: the clock is just short of the back-off.
		r.waitTimer(t)
		r.clk.Step(want - time.Millisecond)
		select {
		case id := <-r.rt.started:
			t.Fatalf("%s restarted before its back-off of %s", id, want)
		case <-time.After(50 * time.Millisecond):
		}
		r.clk.Step(time.Millisecond)
	}
	// Success ends an OnFailure pod.
	id := r.nextStart(t)
	r.until(t, func(s *cellapi.PodStatus) bool { return s.ContainerStatuses[0].State.Running != nil })
	r.rt.exit(id, 0)
	st = r.until(t, func(s *cellapi.PodStatus) bool { return s.Phase == corev1.PodSucceeded })
	if st.ContainerStatuses[0].RestartCount != 4 {
		t.Errorf("restartCount %d, want 4", st.ContainerStatuses[0].RestartCount)
	}
}

func TestFailingInitContainerNeverFailsPod(t *testing.T) {
	p := testPod(corev1.RestartPolicyNever, "app")
	p.Spec.InitContainers = []corev1.Container{{Name: "init1", Image: "busybox"}, {Name: "init2", Image: "busybox"}}
	r := start(t, p, &fakeImages{})
	r.rt.exit(r.nextStart(t), 0)
	id := r.nextStart(t)
	if !strings.Contains(id, "-init2-") {
		t.Fatalf("second start %s, want init2", id)
	}
	r.rt.exit(id, 2)
	st := r.until(t, func(s *cellapi.PodStatus) bool { return s.Phase == corev1.PodFailed })
	if w := st.ContainerStatuses[0].State.Waiting; w == nil || w.Reason != ReasonPodInitializing {
		t.Errorf("app container %+v, want waiting PodInitializing", st.ContainerStatuses[0].State)
	}
	select {
	case id := <-r.rt.started:
		t.Fatalf("started %s after a failed init container", id)
	case <-time.After(50 * time.Millisecond):
	}
}

func TestStopEscalatesToSIGKILL(t *testing.T) {
	r := start(t, testPod(corev1.RestartPolicyAlways, "a", "b"), &fakeImages{})
	r.nextStart(t)
	r.nextStart(t)
	r.until(t, func(s *cellapi.PodStatus) bool { return s.Phase == corev1.PodRunning })
	r.rt.mu.Lock()
	r.rt.ignore[syscall.SIGTERM] = true
	r.rt.mu.Unlock()
	done := make(chan error, 1)
	go func() { done <- r.pod.Stop(context.Background(), 30*time.Second) }()
	// Wait until the grace timer is armed on the fake clock, then let it expire.
	deadline := time.Now().Add(10 * time.Second)
	for !r.clk.HasWaiters() {
		if time.Now().After(deadline) {
			t.Fatal("Stop never waited for the grace period")
		}
		time.Sleep(time.Millisecond)
	}
	for {
		r.rt.mu.Lock()
		n := len(r.rt.signals)
		r.rt.mu.Unlock()
		if n == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("SIGTERM never sent")
		}
		time.Sleep(time.Millisecond)
	}
	select {
	case <-done:
		t.Fatal("Stop returned before the grace period although containers ignore SIGTERM")
	default:
	}
	r.clk.Step(30 * time.Second)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	st := r.pod.Status()
	for _, cs := range st.ContainerStatuses {
		if cs.State.Terminated == nil || cs.State.Terminated.ExitCode != 137 {
			t.Errorf("%s: %+v, want terminated 137", cs.Name, cs.State)
		}
	}
	if got := strings.Join(r.rt.signals, ","); got != "terminated,terminated,killed,killed" {
		t.Errorf("signals %s", got)
	}
}

func TestImagePullErrors(t *testing.T) {
	r := start(t, testPod(corev1.RestartPolicyAlways, "app"), &fakeImages{err: errors.New("manifest unknown")})
	r.until(t, func(s *cellapi.PodStatus) bool {
		w := s.ContainerStatuses[0].State.Waiting
		return w != nil && w.Reason == ReasonErrImagePull && strings.Contains(w.Message, "manifest unknown")
	})
	r.waitTimer(t)
	r.clk.Step(time.Second)
	r.until(t, func(s *cellapi.PodStatus) bool {
		w := s.ContainerStatuses[0].State.Waiting
		return w != nil && w.Reason == ReasonImagePullBackOff
	})
	// The retry comes after the whole 10s back-off.
	r.waitTimer(t)
	r.clk.Step(9 * time.Second)
	r.until(t, func(s *cellapi.PodStatus) bool {
		w := s.ContainerStatuses[0].State.Waiting
		return w != nil && w.Reason == ReasonErrImagePull
	})
}

func TestStartErrorIsRunContainerError(t *testing.T) {
	images := &fakeImages{}
	rt := newFakeRuntime()
	rt.startErr = &runtime.StartError{ID: "x", Message: `exec: "nope": executable file not found in $PATH`}
	p := testPod(corev1.RestartPolicyAlways, "app")
	statuses := make(chan *cellapi.PodStatus, 100)
	pd, err := Start(Config{
		Dir: filepath.Join(t.TempDir(), "pod"), Runtime: rt, Images: images, Cgroups: fakeCgroups{}, CgroupParent: "kip",
		NewLog: func(string) (LogWriter, error) { return discardLog{}, nil },
		Clock:  clocktesting.NewFakeClock(time.Now()), Notify: func(s *cellapi.PodStatus) { statuses <- s },
	}, &cellapi.PodRequest{Pod: p})
	if err != nil {
		t.Fatal(err)
	}
	defer pd.Stop(context.Background(), 0)
	deadline := time.After(10 * time.Second)
	for {
		select {
		case s := <-statuses:
			cs := s.ContainerStatuses[0]
			if w := cs.State.Waiting; w != nil && w.Reason == ReasonRunContainerError {
				lt := cs.LastTerminationState.Terminated
				if !strings.Contains(w.Message, "nope") || lt == nil || lt.Reason != ReasonContainerCannotRun || lt.ExitCode != 128 {
					t.Fatalf("status %+v", cs)
				}
				return
			}
		case <-deadline:
			t.Fatalf("no RunContainerError; status %+v", pd.Status())
		}
	}
}

// untilStepping is until while the fake clock advances a second every few milliseconds, for
// behaviour driven by periodic timers (probes).
func (r *rig) untilStepping(t *testing.T, cond func(*cellapi.PodStatus) bool) *cellapi.PodStatus {
	t.Helper()
	deadline := time.After(20 * time.Second)
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case s := <-r.statuses:
			if cond(s) {
				return s
			}
		case <-tick.C:
			r.clk.Step(time.Second)
		case <-deadline:
			t.Fatalf("condition not reached; status now %+v", r.pod.Status())
		}
	}
}

func TestProbes(t *testing.T) {
	var healthy, live atomic.Bool
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		ok := healthy.Load()
		if req.URL.Path == "/live" {
			ok = live.Load()
		}
		if !ok {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	}))
	defer srv.Close()
	_, portStr, _ := net.SplitHostPort(strings.TrimPrefix(srv.URL, "http://"))
	port, _ := strconv.Atoi(portStr)
	live.Store(true)

	p := testPod(corev1.RestartPolicyAlways, "web")
	c := &p.Spec.Containers[0]
	c.Ports = []corev1.ContainerPort{{Name: "http", ContainerPort: int32(port)}}
	c.ReadinessProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/ready", Port: intstr.FromString("http")}}, PeriodSeconds: 1, FailureThreshold: 1}
	c.LivenessProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt32(int32(port))}}, PeriodSeconds: 1}
	c.StartupProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/live", Port: intstr.FromInt32(int32(port))}}, PeriodSeconds: 1}
	r := start(t, p, &fakeImages{})
	r.nextStart(t)
	st := r.until(t, func(s *cellapi.PodStatus) bool { return s.ContainerStatuses[0].State.Running != nil })
	if cs := st.ContainerStatuses[0]; cs.Ready || *cs.Started {
		t.Fatalf("running before any probe: ready=%v started=%v, want both false", cs.Ready, *cs.Started)
	}
	r.untilStepping(t, func(s *cellapi.PodStatus) bool { return *s.ContainerStatuses[0].Started })
	healthy.Store(true)
	r.untilStepping(t, func(s *cellapi.PodStatus) bool { return s.ContainerStatuses[0].Ready })
	healthy.Store(false)
	st = r.untilStepping(t, func(s *cellapi.PodStatus) bool { return !s.ContainerStatuses[0].Ready })
	if st.ContainerStatuses[0].State.Running == nil {
		t.Fatal("a failing readiness probe stopped the container")
	}
}

func TestLivenessFailureRestarts(t *testing.T) {
	p := testPod(corev1.RestartPolicyAlways, "app")
	// Nothing listens on port 1: the liveness probe fails.
	p.Spec.Containers[0].LivenessProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt32(1)}}, PeriodSeconds: 1, FailureThreshold: 2}
	r := start(t, p, &fakeImages{})
	r.nextStart(t)
	st := r.untilStepping(t, func(s *cellapi.PodStatus) bool { return s.ContainerStatuses[0].State.Terminated != nil })
	term := st.ContainerStatuses[0].State.Terminated
	if !strings.Contains(term.Message, "failed liveness probe") || term.ExitCode != 143 {
		t.Fatalf("terminated %+v", term)
	}
	st = r.untilStepping(t, func(s *cellapi.PodStatus) bool { return s.ContainerStatuses[0].RestartCount >= 1 })
	// kubelet's events: Unhealthy for each failed probe, Killing for the kill.
	var unhealthy, killing int
	var last uint64
	for _, e := range st.Events {
		if e.ID <= last || e.Container != "app" {
			t.Errorf("event %+v out of order or of another container", e)
		}
		last = e.ID
		switch {
		case e.Reason == "Unhealthy" && e.Type == corev1.EventTypeWarning && strings.HasPrefix(e.Message, "Liveness probe failed: "):
			unhealthy++
		case e.Reason == "Killing" && e.Message == "Container app failed liveness probe, will be restarted":
			killing++
		}
	}
	if unhealthy < 2 || killing != 1 {
		t.Errorf("events %+v: want at least 2 Unhealthy (failureThreshold 2) and 1 Killing", st.Events)
	}
}

// TestImagePullPolicy: as kubelet, Never does not pull: the container waits
// ErrImageNeverPull while the image is absent; IfNotPresent uses an image another container
// of the pod pulled instead of pulling it again.
func TestImagePullPolicy(t *testing.T) {
	t.Run("Never", func(t *testing.T) {
		p := testPod(corev1.RestartPolicyNever, "app")
		p.Spec.Containers[0].ImagePullPolicy = corev1.PullNever
		images := &fakeImages{}
		r := start(t, p, images)
		st := r.until(t, func(s *cellapi.PodStatus) bool {
			w := s.ContainerStatuses[0].State.Waiting
			return w != nil && w.Reason == ReasonErrImageNeverPull
		})
		if msg := st.ContainerStatuses[0].State.Waiting.Message; msg != `Container image "busybox" is not present with pull policy of Never` {
			t.Errorf("message %q", msg)
		}
		images.mu.Lock()
		defer images.mu.Unlock()
		if images.pulls != 0 {
			t.Errorf("%d pulls with pull policy Never", images.pulls)
		}
	})
	t.Run("IfNotPresent after an init container pulled it", func(t *testing.T) {
		p := testPod(corev1.RestartPolicyNever, "app")
		p.Spec.InitContainers = []corev1.Container{{Name: "init", Image: "busybox"}}
		p.Spec.Containers[0].ImagePullPolicy = corev1.PullIfNotPresent
		images := &fakeImages{}
		r := start(t, p, images)
		r.rt.exit(r.nextStart(t), 0) // init
		r.nextStart(t)               // app, from the init container's image
		images.mu.Lock()
		defer images.mu.Unlock()
		if images.pulls != 1 {
			t.Errorf("%d pulls, want 1: IfNotPresent must use the image already here", images.pulls)
		}
	})
}

// TestStopTerminatesSidecarsLast: as kubelet, a deleted pod's regular containers get SIGTERM
// first; its sidecars (restartable init containers) only once those have exited.
func TestStopTerminatesSidecarsLast(t *testing.T) {
	p := testPod(corev1.RestartPolicyAlways, "app")
	always := corev1.ContainerRestartPolicyAlways
	p.Spec.InitContainers = []corev1.Container{{Name: "proxy", Image: "busybox", RestartPolicy: &always}}
	r := start(t, p, &fakeImages{})
	proxy := r.nextStart(t)
	app := r.nextStart(t)
	r.until(t, func(s *cellapi.PodStatus) bool { return s.Phase == corev1.PodRunning })
	r.rt.mu.Lock()
	r.rt.ignore[syscall.SIGTERM] = true
	r.rt.mu.Unlock()
	kills := func() []string {
		r.rt.mu.Lock()
		defer r.rt.mu.Unlock()
		return append([]string(nil), r.rt.kills...)
	}
	done := make(chan error, 1)
	go func() { done <- r.pod.Stop(context.Background(), 30*time.Second) }()
	waitKills := func(n int) []string {
		deadline := time.Now().Add(10 * time.Second)
		for len(kills()) < n {
			if time.Now().After(deadline) {
				t.Fatalf("signals %v, want %d", kills(), n)
			}
			time.Sleep(time.Millisecond)
		}
		return kills()
	}
	if got := waitKills(1); got[0] != app+" terminated" {
		t.Fatalf("first signal %v, want SIGTERM to the app", got)
	}
	time.Sleep(20 * time.Millisecond) // the sidecar must not be signalled while the app runs
	if got := kills(); len(got) != 1 {
		t.Fatalf("signals %v while the app still runs, want only its SIGTERM", got)
	}
	r.rt.exit(app, 143)
	if got := waitKills(2); got[1] != proxy+" terminated" {
		t.Fatalf("signals %v, want SIGTERM to the sidecar once the app exited", got)
	}
	r.rt.exit(proxy, 143)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestLivenessKillRunsPreStop: as kubelet's killContainer, a container killed for a failed
// liveness probe runs its preStop hook first, then gets SIGTERM, then SIGKILL after the
// probe's own terminationGracePeriodSeconds (3s here, not the pod's 30s).
func TestLivenessKillRunsPreStop(t *testing.T) {
	preStops := make(chan struct{}, 10)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.URL.Path == "/prestop" {
			preStops <- struct{}{}
		}
	}))
	defer srv.Close()
	_, portStr, _ := net.SplitHostPort(strings.TrimPrefix(srv.URL, "http://"))
	port, _ := strconv.Atoi(portStr)

	p := testPod(corev1.RestartPolicyAlways, "app")
	c := &p.Spec.Containers[0]
	c.LivenessProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt32(1)}},
		PeriodSeconds: 1, FailureThreshold: 1, TerminationGracePeriodSeconds: ptr.To[int64](3)}
	c.Lifecycle = &corev1.Lifecycle{PreStop: &corev1.LifecycleHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/prestop", Port: intstr.FromInt32(int32(port))}}}
	r := start(t, p, &fakeImages{})
	r.rt.mu.Lock()
	r.rt.ignore[syscall.SIGTERM] = true
	r.rt.mu.Unlock()
	app := r.nextStart(t)
	kills := func() []string {
		r.rt.mu.Lock()
		defer r.rt.mu.Unlock()
		return append([]string(nil), r.rt.kills...)
	}
	// Step the clock a second at a time until the probe fails and the container gets SIGTERM.
	deadline := time.Now().Add(20 * time.Second)
	for len(kills()) == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("no signal; status %+v", r.pod.Status())
		}
		r.clk.Step(time.Second)
		time.Sleep(2 * time.Millisecond)
	}
	if got := kills(); got[0] != app+" terminated" {
		t.Fatalf("signals %v, want SIGTERM first", got)
	}
	select {
	case <-preStops:
	default:
		t.Fatal("SIGTERM sent without running preStop first")
	}
	// The grace period is the probe's: SIGKILL comes within 3 fake seconds (a few more for
	// timers armed between steps), never the pod's 30.
	steps := 0
	for len(kills()) < 2 {
		if steps > 10 {
			t.Fatalf("no SIGKILL %d fake seconds after SIGTERM: the pod's grace period, not the probe's", steps)
		}
		time.Sleep(5 * time.Millisecond)
		r.clk.Step(time.Second)
		steps++
	}
	if got := kills(); got[1] != app+" killed" {
		t.Errorf("signals %v, want SIGTERM then SIGKILL", got)
	}
}
