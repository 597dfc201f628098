package provider

import (
	"context"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/virtual-kubelet/virtual-kubelet/node/api"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8sruntime "k8s.io/apimachinery/pkg/runtime"
	k8sfake "k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/kip-dev/kip/internal/cellapi"
	"github.com/kip-dev/kip/internal/cells"
	"github.com/kip-dev/kip/internal/cloud"
	cloudfake "github.com/kip-dev/kip/internal/cloud/fake"
	"github.com/kip-dev/kip/internal/config"
	"github.com/kip-dev/kip/internal/instancetype"
	"github.com/kip-dev/kip/internal/pki"
)

// streamAgent is an in-process agent that runs a pod at once, streams every status change,
// and stops the containers (exit 0) on DeletePod.
type streamAgent struct {
	mu       sync.Mutex
	req      *cellapi.PodRequest
	status   *cellapi.PodStatus
	watchers []chan *cellapi.PodStatus
}

var _ cellapi.Agent = (*streamAgent)(nil)

func (a *streamAgent) Health(context.Context) (*cellapi.Health, error) { return &cellapi.Health{}, nil }

func (a *streamAgent) PutPod(_ context.Context, req *cellapi.PodRequest) (*cellapi.PodStatus, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.status != nil && a.status.UID == string(req.Pod.UID) {
		return a.status, nil
	}
	a.req = req
	now := time.Now()
	st := &cellapi.PodStatus{UID: string(req.Pod.UID), Phase: corev1.PodRunning, StartTime: now}
	for _, c := range req.Pod.Spec.Containers {
		st.ContainerStatuses = append(st.ContainerStatuses, corev1.ContainerStatus{
			Name: c.Name, Image: c.Image, ImageID: "sha256:1", Ready: true, Started: ptrTo(true),
			State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: metav1.NewTime(now)}},
		})
	}
	a.setLocked(st)
	return st, nil
}

func ptrTo[T any](v T) *T { return &v }

func (a *streamAgent) setLocked(st *cellapi.PodStatus) {
	if a.status != nil {
		st.Seq = a.status.Seq + 1
	}
	a.status = st
	for _, w := range a.watchers {
		select {
		case w <- st:
		default:
		}
	}
}

func (a *streamAgent) GetPod(context.Context) (*cellapi.PodStatus, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.status == nil {
		return nil, cellapi.Errorf(cellapi.KindNotFound, "no pod")
	}
	return a.status, nil
}

func (a *streamAgent) WatchPod(ctx context.Context) (<-chan *cellapi.PodStatus, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	ch := make(chan *cellapi.PodStatus, 64)
	if a.status != nil {
		ch <- a.status
	}
	a.watchers = append(a.watchers, ch)
	go func() {
		<-ctx.Done()
		a.mu.Lock()
		defer a.mu.Unlock()
		for i, w := range a.watchers {
			if w == ch {
				a.watchers = append(a.watchers[:i], a.watchers[i+1:]...)
				close(ch)
				break
			}
		}
	}()
	return ch, nil
}

func (a *streamAgent) DeletePod(context.Context, time.Duration) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.status == nil {
		return nil
	}
	st := *a.status
	st.ContainerStatuses = nil
	now := metav1.Now()
	for _, cs := range a.status.ContainerStatuses {
		cs.State = corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: 0, Reason: "Completed", FinishedAt: now}}
		cs.Ready = false
		st.ContainerStatuses = append(st.ContainerStatuses, cs)
	}
	st.Phase = corev1.PodSucceeded
	a.setLocked(&st)
	return nil
}

func (a *streamAgent) Logs(_ context.Context, container string, _ cellapi.LogOptions) (io.ReadCloser, error) {
	return io.NopCloser(strings.NewReader("hello from " + container + "\n")), nil
}

func (a *streamAgent) Stats(context.Context) (*cellapi.Stats, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	s := &cellapi.Stats{Time: time.Now(), Cell: cellapi.Usage{CPUUsageNanoSeconds: 5e9, MemoryWorkingSetBytes: 64 << 20}}
	for _, c := range a.req.Pod.Spec.Containers {
		s.Containers = append(s.Containers, cellapi.ContainerStats{Name: c.Name, StartTime: a.status.StartTime,
			Usage: cellapi.Usage{CPUUsageNanoSeconds: 1e9, MemoryWorkingSetBytes: 32 << 20}})
	}
	return s, nil
}

// TestWithCellsManager runs the provider over the real cell state machine, the fake cloud and
// an in-process agent: create → Running with the cell's IP (and env resolved after launch) →
// logs, stats, /runningpods → delete → the pod object is removed and the cell terminated.
func TestWithCellsManager(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ca, err := pki.NewCA("kip-test")
	if err != nil {
		t.Fatal(err)
	}
	pod := basePod(corev1.Container{Name: "app", Image: "busybox", Env: []corev1.EnvVar{
		{Name: "PW", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "db"}, Key: "password"}}},
		{Name: "MY_IP", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "status.podIP"}}},
	}})
	pod.Status = corev1.PodStatus{Phase: corev1.PodPending}
	env := newResolverEnv(t, secret("db", map[string]string{"password": "s3cret"}))
	client := k8sfake.NewClientset(pod.DeepCopy())
	deleted := make(chan struct{}, 4)
	client.PrependReactor("delete", "pods", func(k8stesting.Action) (bool, k8sruntime.Object, error) {
		deleted <- struct{}{}
		return false, nil, nil
	})

	fc := cloudfake.New()
	agent := &streamAgent{}
	cfg := config.NewDefault()
	mgr := cells.New(cfg.Cells, cells.NodeInfo{Name: "kip", HostIP: "10.250.0.1"}, cells.Deps{
		Cloud: fc,
		Select: func(_ *corev1.Pod, types []instancetype.InstanceType) (*cells.Choice, error) {
			return &cells.Choice{Type: types[0], Offering: types[0].Offerings[0]}, nil
		},
		Resolve: env.r.Resolve,
		Dial: func(context.Context, *cloud.Instance, string) (cellapi.Agent, error) {
			return agent, nil
		},
		CA: ca,
	})
	defer mgr.Close()
	p, err := New(Config{NodeName: "kip", Cells: mgr, Pods: client.CoreV1()})
	if err != nil {
		t.Fatal(err)
	}
	updates := make(chan *corev1.Pod, 256)
	p.NotifyPods(ctx, func(p *corev1.Pod) { updates <- p })
	waitFor := func(what string, ok func(*corev1.Pod) bool) *corev1.Pod {
		t.Helper()
		for {
			select {
			case u := <-updates:
				if ok(u) {
					return u
				}
			case <-ctx.Done():
				t.Fatalf("waiting for %s: %v", what, ctx.Err())
			}
		}
	}

	if err := p.CreatePod(ctx, pod.DeepCopy()); err != nil {
		t.Fatal(err)
	}
	running := waitFor("Running", func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodRunning })
	insts, err := fc.List(ctx, nil)
	if err != nil || len(insts) != 1 {
		t.Fatalf("cells: %v, %v", insts, err)
	}
	if running.Status.PodIP != insts[0].PrivateIP {
		t.Errorf("pod IP %q, want the cell's %q", running.Status.PodIP, insts[0].PrivateIP)
	}
	agent.mu.Lock()
	req := agent.req
	agent.mu.Unlock()
	got := envOf(t, req, "app")
	if got["PW"] != "s3cret" || got["MY_IP"] != insts[0].PrivateIP {
		t.Errorf("agent got env %v; want the secret and the cell's IP", got)
	}

	rc, err := p.GetContainerLogs(ctx, "ns", "web", "app", api.ContainerLogOpts{})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(rc)
	rc.Close()
	if string(b) != "hello from app\n" {
		t.Errorf("logs %q", b)
	}
	sum, err := p.GetStatsSummary(ctx)
	if err != nil || len(sum.Pods) != 1 || len(sum.Pods[0].Containers) != 1 {
		t.Fatalf("stats %+v, %v", sum, err)
	}
	if rp, _ := p.RunningPods(ctx); len(rp) != 1 {
		t.Errorf("running pods %d, want 1", len(rp))
	}

	// kubectl delete: virtual-kubelet hands over the pod with its deletion timestamp.
	del := pod.DeepCopy()
	del.DeletionTimestamp = &metav1.Time{Time: time.Now()}
	del.DeletionGracePeriodSeconds = ptrTo[int64](30)
	if err := p.DeletePod(ctx, del); err != nil {
		t.Fatal(err)
	}
	if rp, _ := p.RunningPods(ctx); len(rp) != 0 {
		t.Errorf("a deleted pod is still listed as running")
	}
	select {
	case <-deleted:
	case <-ctx.Done():
		t.Fatal("the pod object was not deleted once its containers stopped")
	}
	for {
		insts, err := fc.List(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		if len(insts) == 0 {
			break
		}
		select {
		case <-updates: // every status push is a chance the cell is gone
		case <-ctx.Done():
			t.Fatalf("the cell was not terminated: %v", insts)
		}
	}
}
