package kipnode

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/kip-dev/kip/internal/cloud"
	cloudfake "github.com/kip-dev/kip/internal/cloud/fake"
	"github.com/kip-dev/kip/internal/config"
)

func TestNodeSpec(t *testing.T) {
	cfg := config.NewDefault()
	cfg.Node.Name = "vk"
	cfg.Node.Labels = map[string]string{"team": "infra"}
	n := nodeSpec(cfg, "10.250.0.1")
	for k, v := range map[string]string{
		"type": "virtual-kubelet", "kubernetes.io/role": "agent", "kubernetes.io/hostname": "vk",
		"kubernetes.io/os": "linux", "team": "infra",
	} {
		if n.Labels[k] != v {
			t.Errorf("label %s = %q, want %q", k, n.Labels[k], v)
		}
	}
	if n.Labels["kubernetes.io/arch"] == "" {
		t.Error("no kubernetes.io/arch label")
	}
	if len(n.Spec.Taints) != 1 || n.Spec.Taints[0].Key != config.TaintKey || n.Spec.Taints[0].Effect != corev1.TaintEffectNoSchedule {
		t.Errorf("taints %v", n.Spec.Taints)
	}
	for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory, corev1.ResourcePods} {
		c, a := n.Status.Capacity[r], n.Status.Allocatable[r]
		if c.IsZero() || c.Cmp(a) != 0 {
			t.Errorf("%s: capacity %v allocatable %v", r, c.String(), a.String())
		}
	}
	if n.Status.Addresses[0].Type != corev1.NodeInternalIP || n.Status.Addresses[0].Address != "10.250.0.1" {
		t.Errorf("addresses %v", n.Status.Addresses)
	}
	if n.Status.DaemonEndpoints.KubeletEndpoint.Port != 10250 {
		t.Errorf("kubelet port %d", n.Status.DaemonEndpoints.KubeletEndpoint.Port)
	}

	cfg.Node.Taints = []corev1.Taint{}
	if n := nodeSpec(cfg, "10.250.0.1"); len(n.Spec.Taints) != 0 {
		t.Errorf("an explicit empty taint list gave %v", n.Spec.Taints)
	}
}

// bridgedFake is the fake backend with a bridge address, like the local backend.
type bridgedFake struct {
	*cloudfake.Fake
	ip net.IP
}

func (b bridgedFake) BridgeIP() net.IP { return b.ip }

func TestNodeIP(t *testing.T) {
	tests := []struct {
		name, cfgIP string
		bridge      net.IP
		host        string // a global address of the host besides loopback
		want        string
		wantErr     bool
	}{
		{"configured", "10.1.2.3", nil, "", "10.1.2.3", false},
		{"bridge default", "", net.ParseIP("10.250.0.1"), "192.168.7.9", "10.250.0.1", false},
		{"loopback refused", "127.0.0.1", nil, "", "", true},
		{"unspecified refused", "0.0.0.0", nil, "", "", true},
		{"not an IP", "kip.local", nil, "", "", true},
		{"nothing to default to", "", nil, "", "", true},
		{"host address", "", nil, "192.168.7.9", "192.168.7.9", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := config.NewDefault()
			cfg.Node.InternalIP = tc.cfgIP
			r := &runner{cfg: cfg, interfaceAddrs: func() ([]net.Addr, error) {
				addrs := []net.Addr{&net.IPNet{IP: net.ParseIP("127.0.0.1"), Mask: net.CIDRMask(8, 32)}}
				if tc.host != "" {
					addrs = append(addrs, &net.IPNet{IP: net.ParseIP(tc.host), Mask: net.CIDRMask(24, 32)})
				}
				return addrs, nil
			}}
			var b cloud.Cloud = cloudfake.New()
			if tc.bridge != nil {
				b = bridgedFake{cloudfake.New(), tc.bridge}
			}
			got, err := r.nodeIP(b)
			if (err != nil) != tc.wantErr || got != tc.want {
				t.Errorf("nodeIP = %q, %v; want %q (error %v)", got, err, tc.want, tc.wantErr)
			}
			if err != nil && !bytes.Contains([]byte(err.Error()), []byte("node.internalIP")) {
				t.Errorf("error %q does not name the field", err)
			}
		})
	}
}

func TestDemotedLogging(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(demoted{slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo})})
	log.Info("cache synced")
	log.Warn("watch failed")
	log.Error("broken")
	out := buf.String()
	if bytes.Contains(buf.Bytes(), []byte("cache synced")) {
		t.Errorf("an info line passed an info-level handler: %s", out)
	}
	for _, want := range []string{"level=WARN msg=\"watch failed\"", "level=ERROR msg=broken"} {
		if !bytes.Contains(buf.Bytes(), []byte(want)) {
			t.Errorf("missing %q in %s", want, out)
		}
	}
}

func TestRecreateNode(t *testing.T) {
	ctx := context.Background()
	client := fake.NewClientset()
	cfg := config.NewDefault()
	r := &runner{cfg: cfg, client: client, log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	spec := nodeSpec(cfg, "10.250.0.1")
	spec.ResourceVersion = "42"
	handle := r.recreateNode(spec)

	other := errors.New("apiserver unavailable")
	if err := handle(ctx, other); err != other {
		t.Errorf("a non-NotFound error was handled: %v", err)
	}
	gone := apierrors.NewNotFound(schema.GroupResource{Resource: "nodes"}, spec.Name)
	if err := handle(ctx, gone); err != nil {
		t.Fatalf("re-registering: %v", err)
	}
	n, err := client.CoreV1().Nodes().Get(ctx, spec.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("the node was not registered again: %v", err)
	}
	if n.Labels["type"] != "virtual-kubelet" {
		t.Errorf("re-registered node lost its labels: %v", n.Labels)
	}
	if err := handle(ctx, gone); err != nil {
		t.Errorf("a second NotFound while the node exists: %v", err)
	}
}
