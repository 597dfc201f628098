package clusterdns

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/kip-dev/kip/internal/controlplane"
	"github.com/kip-dev/kip/internal/syncbuf"
)

// TestCoreDNSAgainstControlPlane runs the CoreDNS kip builds, with the Corefile kip deploys
// (only its kubeconfig and listen addresses changed to run on the host), against a real
// control plane, and resolves what cluster DNS must: a Service's name to its cluster IP,
// a headless Service's name to its endpoints' addresses and an endpoint's hostname to its
// own, and a pod's dashed-IP name (pods insecure).
func TestCoreDNSAgainstControlPlane(t *testing.T) {
	if testing.Short() {
		t.Skip("skipping in -short: builds CoreDNS and starts a control plane")
	}
	cpBin, err := controlplane.FindBinDir()
	if err != nil {
		if os.Getenv(controlplane.BinDirEnv) != "" {
			t.Fatalf("%s is set but unusable: %v", controlplane.BinDirEnv, err)
		}
		t.Skipf("skipping: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	bin, err := Binary(ctx, BuildOptions{Log: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	cp, err := controlplane.Start(ctx, controlplane.Options{BinDir: cpBin, Dir: filepath.Join(t.TempDir(), "cp")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cp.Stop)
	client, err := kubernetes.NewForConfig(cp.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}

	// The objects to resolve.
	const ns = "dnstest"
	if _, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	web, err := client.CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec:       corev1.ServiceSpec{Selector: map[string]string{"app": "web"}, Ports: []corev1.ServicePort{{Name: "http", Port: 80}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := client.CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "db"},
		Spec:       corev1.ServiceSpec{ClusterIP: corev1.ClusterIPNone, Ports: []corev1.ServicePort{{Name: "sql", Port: 5432}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	ready := true
	port, proto := int32(5432), corev1.ProtocolTCP
	if _, err := client.DiscoveryV1().EndpointSlices(ns).Create(ctx, &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: "db-1", Labels: map[string]string{discoveryv1.LabelServiceName: "db", discoveryv1.LabelManagedBy: "kip-test"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints: []discoveryv1.Endpoint{
			{Addresses: []string{"10.250.9.11"}, Hostname: ptr.To("db-0"), Conditions: discoveryv1.EndpointConditions{Ready: &ready}},
			{Addresses: []string{"10.250.9.12"}, Hostname: ptr.To("db-1"), Conditions: discoveryv1.EndpointConditions{Ready: &ready}},
		},
		Ports: []discoveryv1.EndpointPort{{Name: ptr.To("sql"), Port: &port, Protocol: &proto}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	// CoreDNS on free loopback ports.
	dnsAddr, healthAddr, readyAddr, metricsAddr := freeAddr(t), freeAddr(t), freeAddr(t), freeAddr(t)
	_, dnsPort, _ := net.SplitHostPort(dnsAddr)
	var p int
	fmt.Sscan(dnsPort, &p)
	corefile := Corefile(CorefileOptions{Port: p, Kubeconfig: cp.AdminKubeconfig(), HealthAddr: healthAddr, ReadyAddr: readyAddr, MetricsAddr: metricsAddr})
	cfPath := filepath.Join(t.TempDir(), "Corefile")
	if err := os.WriteFile(cfPath, []byte(corefile), 0o644); err != nil {
		t.Fatal(err)
	}
	var out syncbuf.Buffer
	cmd := exec.CommandContext(ctx, bin, "-conf", cfPath)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := http.Get("http://" + readyAddr + "/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("CoreDNS not ready within 60s; its output:\n%s", out.String())
		}
		time.Sleep(200 * time.Millisecond)
	}

	r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, network, dnsAddr)
	}}
	lookup := func(name string, want ...string) {
		t.Helper()
		var got []string
		var err error
		// The kubernetes plugin sees new objects through its watch: give it a moment.
		for end := time.Now().Add(20 * time.Second); ; time.Sleep(200 * time.Millisecond) {
			got, err = r.LookupHost(ctx, name)
			slices.Sort(got)
			if (err == nil && slices.Equal(got, want)) || time.Now().After(end) {
				break
			}
		}
		if err != nil || !slices.Equal(got, want) {
			t.Errorf("%s: got %v, %v; want %v\nCoreDNS output:\n%s", name, got, err, want, out.String())
		}
	}
	lookup("kubernetes.default.svc.cluster.local.", "10.0.0.1")
	lookup("web.dnstest.svc.cluster.local.", web.Spec.ClusterIP)
	lookup("db.dnstest.svc.cluster.local.", "10.250.9.11", "10.250.9.12")
	lookup("db-1.db.dnstest.svc.cluster.local.", "10.250.9.12")
	lookup("10-250-9-77.dnstest.pod.cluster.local.", "10.250.9.77")
	if _, err := r.LookupHost(ctx, "nothere.dnstest.svc.cluster.local."); err == nil {
		t.Error("a Service that does not exist resolved")
	} else if de, ok := err.(*net.DNSError); !ok || !de.IsNotFound {
		t.Errorf("a Service that does not exist: %v, want NXDOMAIN", err)
	}
}

// freeAddr returns a loopback address with a port free for TCP and UDP right now.
func freeAddr(t *testing.T) string {
	t.Helper()
	for range 20 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		l.Close()
		if u, err := net.ListenPacket("udp", addr); err == nil {
			u.Close()
			return addr
		}
	}
	t.Fatal("no free port")
	return ""
}
