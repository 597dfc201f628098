package provider

import (
	"context"
	"io"
	"testing"
	"time"

	"github.com/virtual-kubelet/virtual-kubelet/node/api"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8sruntime "k8s.io/apimachinery/pkg/runtime"
	k8sfake "k8s.io/client-go/kubernetes/fake"
	corev1listers "k8s.io/client-go/listers/core/v1"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/cache"

	"github.com/kip-dev/kip/internal/cellapi"
	"github.com/kip-dev/kip/internal/cellapi/cellapitest"
	"github.com/kip-dev/kip/internal/cells"
	"github.com/kip-dev/kip/internal/cloud"
	cloudfake "github.com/kip-dev/kip/internal/cloud/fake"
	"github.com/kip-dev/kip/internal/instancetype"
	"github.com/kip-dev/kip/internal/pki"
	"github.com/kip-dev/kip/internal/podrequest"
	"github.com/kip-dev/kip/internal/selector"
)

func ptrTo[T any](v T) *T { return &v }

// newResolver is a podrequest.Resolver over listers holding secrets.
func newResolver(t *testing.T, secrets ...*corev1.Secret) *podrequest.Resolver {
	t.Helper()
	idx := func() cache.Indexer {
		return cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
	}
	sidx := idx()
	for _, s := range secrets {
		if err := sidx.Add(s); err != nil {
			t.Fatal(err)
		}
	}
	r, err := podrequest.New(podrequest.Config{
		Secrets:    corev1listers.NewSecretLister(sidx),
		ConfigMaps: corev1listers.NewConfigMapLister(idx()),
		Services:   corev1listers.NewServiceLister(idx()),
	})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func basePod(containers ...corev1.Container) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "web", UID: "uid-1"},
		Spec:       corev1.PodSpec{NodeName: "kip", Containers: containers, EnableServiceLinks: ptrTo(false)},
	}
}

// envOf is the env the agent got for container.
func envOf(t *testing.T, req *cellapi.PodRequest, container string) map[string]string {
	t.Helper()
	for _, c := range req.Pod.Spec.Containers {
		if c.Name == container {
			out := map[string]string{}
			for _, e := range c.Env {
				out[e.Name] = e.Value
			}
			return out
		}
	}
	t.Fatalf("no container %s", container)
	return nil
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
	res := newResolver(t, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "db"}, Data: map[string][]byte{"password": []byte("s3cret")}})
	client := k8sfake.NewClientset(pod.DeepCopy())
	deleted := make(chan struct{}, 4)
	client.PrependReactor("delete", "pods", func(k8stesting.Action) (bool, k8sruntime.Object, error) {
		deleted <- struct{}{}
		return false, nil, nil
	})

	fc := cloudfake.New()
	agent := &cellapitest.Agent{}
	mgr := cells.New(cells.DefaultOptions(), cells.NodeInfo{Name: "kip", HostIP: "10.250.0.1"}, cells.Deps{
		Cloud: fc,
		Selector: cells.SelectFunc(func(_ *corev1.Pod, types []instancetype.InstanceType) (*selector.Choice, error) {
			return &selector.Choice{Candidate: selector.Candidate{Type: types[0], Offering: types[0].Offerings[0]}}, nil
		}),
		Resolver: res,
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
	got := envOf(t, agent.Request(), "app")
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
