package kipnode

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/record"

	"github.com/kip-dev/kip/internal/cellapi"
	"github.com/kip-dev/kip/internal/servicetable"
)

// fakeNodePortHost records what runNodePorts programs; the first apply can be made to fail.
type fakeNodePortHost struct {
	mu        sync.Mutex
	forwarded bool
	failFirst bool
	applies   [][]cellapi.Service
}

func (h *fakeNodePortHost) EnableNodePortForwarding() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.forwarded = true
	return nil
}

func (h *fakeNodePortHost) SetNodePorts(_ context.Context, svcs []cellapi.Service) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.failFirst {
		h.failFirst = false
		return errors.New("nft said no")
	}
	h.applies = append(h.applies, svcs)
	return nil
}

func (h *fakeNodePortHost) last() ([]cellapi.Service, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.applies) == 0 {
		return nil, h.forwarded
	}
	return h.applies[len(h.applies)-1], h.forwarded
}

// TestRunNodePorts: the host gets forwarding once and the whole table after each version (a
// failed apply is retried), so a new NodePort Service reaches it.
func TestRunNodePorts(t *testing.T) {
	client := fake.NewClientset()
	ctx, cancel := context.WithCancel(context.Background())
	factory := informers.NewSharedInformerFactory(client, 0)
	table, err := servicetable.New(servicetable.Config{
		Services: factory.Core().V1().Services(), EndpointSlices: factory.Discovery().V1().EndpointSlices(),
		NodeName: "kip", Events: record.NewFakeRecorder(10), Log: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	h := &fakeNodePortHost{failFirst: true}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); table.Run(ctx) }()
	go func() { defer wg.Done(); runNodePorts(ctx, h, table, slog.New(slog.DiscardHandler)) }()
	factory.Start(ctx.Done())
	t.Cleanup(func() { cancel(); wg.Wait(); factory.Shutdown() })

	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "np"},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeNodePort, ClusterIP: "10.0.0.20", ClusterIPs: []string{"10.0.0.20"},
			Ports: []corev1.ServicePort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80, NodePort: 30080}}},
	}
	if _, err := client.CoreV1().Services("default").Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	err = wait.PollUntilContextTimeout(ctx, 10*time.Millisecond, wait.ForeverTestTimeout, true, func(context.Context) (bool, error) {
		svcs, _ := h.last()
		return len(svcs) == 1 && len(svcs[0].Ports) == 1 && svcs[0].Ports[0].NodePort == 30080, nil
	})
	svcs, forwarded := h.last()
	if err != nil || !forwarded {
		t.Fatalf("the host got %+v (forwarding enabled: %v), want the NodePort Service np after a failed first apply", svcs, forwarded)
	}
}
