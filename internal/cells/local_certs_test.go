package cells

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/utils/clock"

	"github.com/kip-dev/kip/internal/cellapi"
	"github.com/kip-dev/kip/internal/controllers/loop"
)

// TestLocalCellCertRenewal runs a pod on a real local cell (the real kip-cell in its network
// namespace) with 12-second certificates and kip's renewal loop: the agent serves a new
// certificate before the first one expires, and kip reaches the agent over new connections
// after that expiry. Needs root and runc; builds cmd/kip-cell unless KIP_CELL_BIN is set.
func TestLocalCellCertRenewal(t *testing.T) {
	ctx := context.Background()
	b, reg, ca, tag := localSetup(t)
	cfg := DefaultOptions()
	cfg.ClusterName = "r" + tag
	cfg.CertLifetime = 12 * time.Second
	m := New(cfg, NodeInfo{Name: "kip-" + tag, HostIP: b.BridgeIP().String()}, Deps{
		Cloud: b, Selector: SelectFunc(testSelect), CA: ca, Clock: clock.RealClock{},
		Registry: cellapi.RegistryConfig{DefaultRegistry: reg.Host(), Insecure: []string{reg.Host()}},
	})
	t.Cleanup(m.Close)
	lctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); loop.Run(lctx, "agent-certs", nil, 0, m.RenewAgentCerts) }()
	t.Cleanup(func() { cancel(); wg.Wait() })

	pod := testPod("renew", func(p *corev1.Pod) {
		p.Spec.RestartPolicy = corev1.RestartPolicyAlways
		p.Spec.Containers[0].Command = []string{"sh", "-c", "while true; do sleep 1; done"}
	})
	if err := m.CreatePod(ctx, pod); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		grace := int64(0)
		d := pod.DeepCopy()
		d.DeletionGracePeriodSeconds = &grace
		_ = m.DeletePod(context.Background(), d)
		waitReal(t, 30*time.Second, "the cell terminated", func() bool {
			insts, err := b.List(context.Background(), map[string]string{"kip.dev/cluster": cfg.ClusterName})
			return err == nil && len(insts) == 0
		})
	})
	waitManagerPod(t, m, pod, 90*time.Second, "Running", func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodRunning })
	insts, err := b.List(ctx, map[string]string{"kip.dev/cluster": cfg.ClusterName})
	if err != nil || len(insts) != 1 {
		t.Fatalf("cells: %v, %v", insts, err)
	}
	inst, cellID := insts[0], CellID(pod.UID)
	addr := net.JoinHostPort(inst.PrivateIP, strconv.Itoa(cellapi.DefaultPort))
	served := func() *x509.Certificate {
		conn, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: ca.Pool(), ServerName: cellID})
		if err != nil {
			t.Fatalf("dialing the agent: %v", err)
		}
		defer conn.Close()
		return conn.ConnectionState().PeerCertificates[0]
	}
	orig := served()
	var renewed *x509.Certificate
	waitReal(t, time.Until(orig.NotAfter), "the agent to serve a renewed certificate before the first expires", func() bool {
		renewed = served()
		return renewed.SerialNumber.Cmp(orig.SerialNumber) != 0
	})
	if !renewed.NotAfter.After(orig.NotAfter) {
		t.Errorf("renewed certificate expires %v, not after the original's %v", renewed.NotAfter, orig.NotAfter)
	}
	waitUntil(t, orig.NotAfter.Add(time.Second))
	fresh, err := m.dial(ctx, inst, cellID)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fresh.GetPod(ctx); err != nil {
		t.Errorf("a new connection to the agent after its first certificate expired: %v", err)
	}
	if p, ok := m.GetPod(pod.Namespace, pod.Name); !ok || p.Status.Phase != corev1.PodRunning {
		t.Errorf("pod after the first certificate expired: %+v", p)
	}
}
