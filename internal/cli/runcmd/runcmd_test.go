package runcmd

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/virtual-kubelet/virtual-kubelet/node/nodeutil"
	authzv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/rest"

	"github.com/kip-dev/kip/internal/cloud"
	cloudfake "github.com/kip-dev/kip/internal/cloud/fake"
	"github.com/kip-dev/kip/internal/config"
	"github.com/kip-dev/kip/internal/pki"
)

// sarServer is an API server that only answers SubjectAccessReviews: allowed when
// allow(user, subresource) says so for node "kip". The webhook authorizer talks REST
// directly, so a fake clientset cannot stand in.
func sarServer(t *testing.T, allow func(user, subresource string) bool) kubernetes.Interface {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/apis/authorization.k8s.io/v1/subjectaccessreviews" {
			http.Error(w, "not found", http.StatusNotFound)
			return
		}
		var sar authzv1.SubjectAccessReview
		if err := json.NewDecoder(r.Body).Decode(&sar); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		ra := sar.Spec.ResourceAttributes
		sar.Status.Allowed = ra != nil && ra.Resource == "nodes" && ra.Name == "kip" && allow(sar.Spec.User, ra.Subresource)
		sar.APIVersion, sar.Kind = "authorization.k8s.io/v1", "SubjectAccessReview"
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(&sar)
	}))
	t.Cleanup(srv.Close)
	c, err := kubernetes.NewForConfig(&rest.Config{Host: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestKubeletAuth(t *testing.T) {
	clusterCA, err := pki.NewCA("cluster")
	if err != nil {
		t.Fatal(err)
	}
	otherCA, err := pki.NewCA("other")
	if err != nil {
		t.Fatal(err)
	}
	clientCert := func(ca *pki.CA, cn string, orgs ...string) tls.Certificate {
		c, k, err := ca.Issue(pki.LeafSpec{CommonName: cn, Organization: orgs, Client: true})
		if err != nil {
			t.Fatal(err)
		}
		pair, err := tls.X509KeyPair(c, k)
		if err != nil {
			t.Fatal(err)
		}
		return pair
	}
	apiserver := clientCert(clusterCA, "kube-apiserver-kubelet-client", "system:masters")
	nobody := clientCert(clusterCA, "nobody")
	forged := clientCert(otherCA, "kube-apiserver-kubelet-client", "system:masters")
	allow := func(user, sub string) bool {
		return user == "kube-apiserver-kubelet-client" || (user == "system:anonymous" && sub == "stats")
	}

	tests := []struct {
		name      string
		anonymous []string
		cert      *tls.Certificate
		path      string
		want      int
	}{
		{"anonymous refused", nil, nil, "/pods", http.StatusUnauthorized},
		{"anonymous refused on stats by default", nil, nil, "/stats/summary", http.StatusUnauthorized},
		{"certificate of another CA", nil, &forged, "/pods", http.StatusUnauthorized},
		{"apiserver's kubelet client", nil, &apiserver, "/containerLogs/ns/p/c", http.StatusOK},
		{"authenticated but not authorized", nil, &nobody, "/pods", http.StatusForbidden},
		{"anonymous on an opened path, authorized by SAR", []string{"/stats/summary"}, nil, "/stats/summary", http.StatusOK},
		{"anonymous on an opened path, denied by SAR", []string{"/metrics/resource"}, nil, "/metrics/resource", http.StatusForbidden},
		{"anonymous elsewhere still refused", []string{"/stats/summary"}, nil, "/pods", http.StatusUnauthorized},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			auth, err := kubeletAuth(sarServer(t, allow), "kip", clusterCA.CertPEM, tc.anonymous)
			if err != nil {
				t.Fatal(err)
			}
			srv := httptest.NewUnstartedServer(nodeutil.WithAuth(auth, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				w.WriteHeader(http.StatusOK)
			})))
			srv.TLS = &tls.Config{ClientAuth: tls.RequestClientCert}
			srv.StartTLS()
			defer srv.Close()
			tr := srv.Client().Transport.(*http.Transport).Clone()
			if tc.cert != nil {
				tr.TLSClientConfig.Certificates = []tls.Certificate{*tc.cert}
			}
			resp, err := (&http.Client{Transport: tr}).Get(srv.URL + tc.path)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Errorf("GET %s = %d, want %d", tc.path, resp.StatusCode, tc.want)
			}
		})
	}
	if _, err := kubeletAuth(sarServer(t, allow), "kip", []byte("not a cert"), nil); err == nil {
		t.Error("kubeletAuth accepted a CA bundle without certificates")
	}
}

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

func TestUsableServing(t *testing.T) {
	ca, err := pki.NewCA("cluster")
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, err := ca.Issue(pki.LeafSpec{CommonName: "system:node:kip", IPs: []net.IP{net.ParseIP("10.250.0.1")}, Server: true, Validity: 48 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	if _, ok := usableServing(certPEM, keyPEM, "10.250.0.1", now); !ok {
		t.Error("a valid certificate for the address was refused")
	}
	if _, ok := usableServing(certPEM, keyPEM, "10.250.0.2", now); ok {
		t.Error("a certificate for another address was accepted")
	}
	if _, ok := usableServing(certPEM, keyPEM, "10.250.0.1", now.Add(30*time.Hour)); ok {
		t.Error("a certificate expiring within a day was accepted")
	}
	_, otherKey, _ := ca.Issue(pki.LeafSpec{CommonName: "x"})
	if _, ok := usableServing(certPEM, otherKey, "10.250.0.1", now); ok {
		t.Error("a certificate with the wrong key was accepted")
	}
}

func TestEnsureCAIsCreatedOnceAndReused(t *testing.T) {
	ctx := context.Background()
	client := fake.NewClientset()
	first, err := ensureCA(ctx, client)
	if err != nil {
		t.Fatal(err)
	}
	second, err := ensureCA(ctx, client)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(first.CertPEM, second.CertPEM) {
		t.Error("a second start made a new CA instead of reusing the Secret's")
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
