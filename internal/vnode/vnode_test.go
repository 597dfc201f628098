package vnode

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/virtual-kubelet/virtual-kubelet/errdefs"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/record"

	"github.com/kip-dev/kip/internal/pki"
)

// fakePods is a node.PodLifecycleHandler that keeps the pods it is given.
type fakePods struct {
	mu   sync.Mutex
	pods map[string]*corev1.Pod
}

func (f *fakePods) CreatePod(_ context.Context, p *corev1.Pod) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.pods[p.Namespace+"/"+p.Name] = p.DeepCopy()
	return nil
}
func (f *fakePods) UpdatePod(ctx context.Context, p *corev1.Pod) error { return f.CreatePod(ctx, p) }
func (f *fakePods) DeletePod(_ context.Context, p *corev1.Pod) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.pods, p.Namespace+"/"+p.Name)
	return nil
}
func (f *fakePods) GetPod(_ context.Context, ns, name string) (*corev1.Pod, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if p, ok := f.pods[ns+"/"+name]; ok {
		return p.DeepCopy(), nil
	}
	return nil, errdefs.NotFound("no such pod")
}
func (f *fakePods) GetPodStatus(ctx context.Context, ns, name string) (*corev1.PodStatus, error) {
	p, err := f.GetPod(ctx, ns, name)
	if err != nil {
		return nil, err
	}
	return &p.Status, nil
}
func (f *fakePods) GetPods(context.Context) ([]*corev1.Pod, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []*corev1.Pod
	for _, p := range f.pods {
		out = append(out, p.DeepCopy())
	}
	return out, nil
}

func (f *fakePods) has(key string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, ok := f.pods[key]
	return ok
}

// freeAddr returns a loopback address nothing listens on (for a moment).
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

func servingCert(t *testing.T) tls.Certificate {
	t.Helper()
	ca, err := pki.NewCA("vnode-test")
	if err != nil {
		t.Fatal(err)
	}
	c, k, err := ca.Issue(pki.LeafSpec{CommonName: "kip", IPs: []net.IP{net.ParseIP("127.0.0.1")}, Server: true})
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.X509KeyPair(c, k)
	if err != nil {
		t.Fatal(err)
	}
	return pair
}

func testNode() *corev1.Node {
	return &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: "kip"},
		Status: corev1.NodeStatus{
			Phase:      corev1.NodePending,
			Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionFalse, Reason: "KipStarting"}},
		},
	}
}

func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestNodeRuns: the node registers and turns Ready with a Lease, the kubelet API answers over
// TLS, pods bound to the node reach the provider, and each kind is watched once although
// both the pod controller and the resolver's listers read it.
func TestNodeRuns(t *testing.T) {
	client := fake.NewClientset(&corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "web", UID: "u1"},
		Spec:       corev1.PodSpec{NodeName: "kip", Containers: []corev1.Container{{Name: "app", Image: "busybox"}}},
	})
	inf := NewInformers(client, "kip")
	_ = inf.Secrets.Lister() // as the resolver does
	pods := &fakePods{pods: map[string]*corev1.Pod{}}
	addr := freeAddr(t)
	n, err := New(Config{
		Client:      client,
		Node:        testNode(),
		Pods:        pods,
		Informers:   inf,
		Events:      record.NewFakeRecorder(100),
		Workers:     2,
		ListenAddr:  addr,
		Certificate: servingCert(t),
		Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			io.WriteString(w, "kubelet API")
		}),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- n.Run(ctx) }()
	if err := n.WaitReady(ctx, 30*time.Second); err != nil {
		t.Fatal(err)
	}

	// The Ready status reaches the API server through the node controller, after WaitReady.
	waitFor(t, "the node Running and Ready", func() bool {
		got, err := client.CoreV1().Nodes().Get(ctx, "kip", metav1.GetOptions{})
		if err != nil || got.Status.Phase != corev1.NodeRunning {
			return false
		}
		for _, c := range got.Status.Conditions {
			if c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue && c.Reason == "KubeletReady" {
				return true
			}
		}
		return false
	})
	waitFor(t, "the node lease", func() bool {
		l, err := client.CoordinationV1().Leases(corev1.NamespaceNodeLease).Get(ctx, "kip", metav1.GetOptions{})
		return err == nil && l.Spec.HolderIdentity != nil && *l.Spec.HolderIdentity == "kip"
	})
	waitFor(t, "the pod on the provider", func() bool { return pods.has("ns/web") })
	if !inf.HasSynced() {
		t.Error("the resolver's caches have not synced once the node is ready")
	}

	tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}} //nolint:gosec // a test certificate
	resp, err := (&http.Client{Transport: tr}).Get("https://" + addr + "/pods")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "kubelet API" {
		t.Errorf("kubelet API answered %q", body)
	}

	watches := map[string]int{}
	for _, a := range client.Actions() {
		if a.GetVerb() == "watch" {
			watches[a.GetResource().Resource]++
		}
	}
	for _, kind := range []string{"pods", "secrets", "configmaps", "services", "endpointslices"} {
		if watches[kind] != 1 {
			t.Errorf("%d watches of %s, want 1 (all: %v)", watches[kind], kind, watches)
		}
	}

	cancel()
	select {
	case err := <-errc:
		if err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("Run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return once its context ended")
	}
	<-n.Done()
}

// TestWaitReadyWhenRunFails: a kubelet API address in use stops Run before the node is ready,
// and WaitReady says so.
func TestWaitReadyWhenRunFails(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	client := fake.NewClientset()
	n, err := New(Config{
		Client: client, Node: testNode(), Pods: &fakePods{pods: map[string]*corev1.Pod{}},
		Informers: NewInformers(client, "kip"), Events: record.NewFakeRecorder(10),
		ListenAddr: l.Addr().String(), Certificate: servingCert(t), Handler: http.NotFoundHandler(),
	})
	if err != nil {
		t.Fatal(err)
	}
	go n.Run(context.Background()) //nolint:errcheck // WaitReady reports it
	err = n.WaitReady(context.Background(), 10*time.Second)
	if err == nil || !strings.Contains(err.Error(), "controller exited before ready") || !strings.Contains(err.Error(), "listening for the kubelet API") {
		t.Errorf("WaitReady: %v", err)
	}
}

func TestNewRequiresFields(t *testing.T) {
	client := fake.NewClientset()
	full := Config{
		Client: client, Node: testNode(), Pods: &fakePods{}, Informers: NewInformers(client, "kip"),
		Events: record.NewFakeRecorder(1), ListenAddr: "127.0.0.1:10250", Handler: http.NotFoundHandler(),
	}
	tests := []struct {
		name   string
		mutate func(*Config)
		want   string
	}{
		{"no client", func(c *Config) { c.Client = nil }, "Client"},
		{"no node", func(c *Config) { c.Node = nil }, "Node"},
		{"no pods", func(c *Config) { c.Pods = nil }, "Pods"},
		{"no informers", func(c *Config) { c.Informers = nil }, "Informers"},
		{"no handler", func(c *Config) { c.Handler = nil }, "Handler"},
		{"bad address", func(c *Config) { c.ListenAddr = "10250" }, "kubelet API address"},
		{"complete", func(*Config) {}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := full
			tt.mutate(&cfg)
			_, err := New(cfg)
			if tt.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %v, want one naming %s", err, tt.want)
			}
		})
	}
}

// replayingPods is a provider that, like kip's cells manager, hands every status it already
// knows to the callback as soon as it is registered.
type replayingPods struct {
	*fakePods
	known []*corev1.Pod
}

func (r *replayingPods) NotifyPods(_ context.Context, f func(*corev1.Pod)) {
	for _, p := range r.known {
		f(p.DeepCopy())
	}
}

// TestReplayedStatusesReachTheAPI: statuses a provider replays when virtual-kubelet registers
// (those of the cells kip adopted at startup) reach the API server. virtual-kubelet registers
// before its pod cache syncs and drops a status whose pod it does not know within 3 s; a
// replay made synchronously would be dropped, pod by pod (and hold the node 3 s per pod).
func TestReplayedStatusesReachTheAPI(t *testing.T) {
	bound := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "adopted", UID: "u1"},
		Spec:       corev1.PodSpec{NodeName: "kip", Containers: []corev1.Container{{Name: "app", Image: "busybox"}}},
	}
	client := fake.NewClientset(bound)
	running := bound.DeepCopy()
	running.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.0.0.5"}
	pods := &replayingPods{fakePods: &fakePods{pods: map[string]*corev1.Pod{}}, known: []*corev1.Pod{running}}
	n, err := New(Config{
		Client: client, Node: testNode(), Pods: pods, Informers: NewInformers(client, "kip"),
		Events: record.NewFakeRecorder(100), ListenAddr: freeAddr(t), Certificate: servingCert(t),
		Handler: http.NotFoundHandler(),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go n.Run(ctx) //nolint:errcheck // stopped by cancel
	if err := n.WaitReady(ctx, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the replayed status in the API", func() bool {
		p, err := client.CoreV1().Pods("ns").Get(ctx, "adopted", metav1.GetOptions{})
		return err == nil && p.Status.PodIP == "10.0.0.5" && p.Status.Phase == corev1.PodRunning
	})
	cancel()
	<-n.Done()
}
