package controlplane

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	certv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	watchtools "k8s.io/client-go/tools/watch"
)

// binDir returns the control plane binaries or skips with a hint. When KIP_CP_BIN is set the
// binaries must be there: a broken build must not turn into a silent skip.
func binDir(t *testing.T) string {
	t.Helper()
	dir, err := FindBinDir()
	if err != nil {
		if os.Getenv(BinDirEnv) != "" {
			t.Fatalf("%s is set but unusable: %v", BinDirEnv, err)
		}
		t.Skipf("skipping: %v", err)
	}
	return dir
}

func TestStartRejectsBadOptions(t *testing.T) {
	empty := t.TempDir()
	tests := []struct {
		name string
		opts Options
		want string
	}{
		{"no bin dir", Options{Dir: t.TempDir()}, "Options.BinDir"},
		{"no dir", Options{BinDir: empty}, "Options.Dir"},
		{"binaries missing", Options{BinDir: empty, Dir: t.TempDir()}, "kube-apiserver"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cp, err := Start(context.Background(), tt.opts)
			if err == nil {
				cp.Stop()
				t.Fatal("Start succeeded, want an error")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %q does not name %q", err, tt.want)
			}
		})
	}
}

func TestStartStop(t *testing.T) {
	bin := binDir(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var log strings.Builder
	started := time.Now()
	cp, err := Start(ctx, Options{BinDir: bin, Dir: t.TempDir(), Log: &log})
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Logf("control plane ready in %v", time.Since(started))
	t.Cleanup(cp.Stop)
	if !strings.Contains(log.String(), "ready") {
		t.Errorf("progress log has no ready line:\n%s", log.String())
	}

	cs, err := kubernetes.NewForConfig(cp.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "kip-cp-test"}}
	if _, err := cs.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating namespace: %v", err)
	}
	if _, err := cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{}); err != nil {
		t.Fatalf("listing nodes: %v", err)
	}
	if _, err := os.Stat(cp.Kubectl()); err == nil {
		out, err := exec.CommandContext(ctx, cp.Kubectl(), "--kubeconfig", cp.AdminKubeconfig(), "get", "ns", "kip-cp-test", "-o", "name").CombinedOutput()
		if err != nil || strings.TrimSpace(string(out)) != "namespace/kip-cp-test" {
			t.Errorf("kubectl get ns: %v: %s", err, out)
		}
	}

	t.Run("kubelet serving CSR is signed by the cluster CA", func(t *testing.T) {
		testKubeletCSR(ctx, t, cs, cp)
	})

	pids := cp.PIDs()
	if len(pids) != len(Binaries) {
		t.Fatalf("PIDs() = %v, want one per component", pids)
	}
	cp.Stop()
	for name, pid := range pids {
		if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
			t.Errorf("%s (pid %d) still exists after Stop: kill(0) = %v", name, pid, err)
		}
	}
	if _, err := os.Stat(filepath.Join(cp.Dir(), stateFile)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("state file left after Stop: %v", err)
	}
}

// testKubeletCSR does what kip does for its kubelet API certificate: a CSR with the
// kubelet-serving signer, approved, then issued by the controller-manager.
func testKubeletCSR(ctx context.Context, t *testing.T, cs kubernetes.Interface, cp *ControlPlane) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject:     pkix.Name{CommonName: "system:node:kip-test", Organization: []string{"system:nodes"}},
		IPAddresses: []net.IP{net.ParseIP("10.250.0.1")},
	}, key)
	if err != nil {
		t.Fatal(err)
	}
	csr := &certv1.CertificateSigningRequest{
		ObjectMeta: metav1.ObjectMeta{Name: "kip-test-serving"},
		Spec: certv1.CertificateSigningRequestSpec{
			Request:    pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}),
			SignerName: certv1.KubeletServingSignerName,
			Usages:     []certv1.KeyUsage{certv1.UsageDigitalSignature, certv1.UsageServerAuth},
		},
	}
	created, err := cs.CertificatesV1().CertificateSigningRequests().Create(ctx, csr, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating CSR: %v", err)
	}
	created.Status.Conditions = append(created.Status.Conditions, certv1.CertificateSigningRequestCondition{
		Type: certv1.CertificateApproved, Status: corev1.ConditionTrue, Reason: "Test", Message: "approved by test",
	})
	if _, err := cs.CertificatesV1().CertificateSigningRequests().UpdateApproval(ctx, created.Name, created, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("approving CSR: %v", err)
	}
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	w, err := cs.CertificatesV1().CertificateSigningRequests().Watch(wctx, metav1.ListOptions{
		FieldSelector: fields.OneTermEqualSelector("metadata.name", created.Name).String(),
	})
	if err != nil {
		t.Fatal(err)
	}
	ev, err := watchtools.UntilWithoutRetry(wctx, w, func(ev watch.Event) (bool, error) {
		c, ok := ev.Object.(*certv1.CertificateSigningRequest)
		return ok && len(c.Status.Certificate) > 0, nil
	})
	if err != nil {
		t.Fatalf("waiting for the CSR to be signed: %v", err)
	}
	block, _ := pem.Decode(ev.Object.(*certv1.CertificateSigningRequest).Status.Certificate)
	if block == nil {
		t.Fatal("issued certificate is not PEM")
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: cp.CA().Pool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		t.Errorf("issued certificate does not verify against CA(): %v", err)
	}
}

func TestStopLeftovers(t *testing.T) {
	dir := t.TempDir()
	sp := newSpawner()
	defer sp.close()
	live, err := startProcess(sp, "sleeper", "/bin/sleep", []string{"300"}, filepath.Join(dir, "sleeper.log"))
	if err != nil {
		t.Fatal(err)
	}
	other, err := startProcess(sp, "other", "/bin/sleep", []string{"300"}, filepath.Join(dir, "other.log"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { other.stop(time.Second); live.stop(time.Second) })
	// "other" is recorded with a wrong start time, as if its PID had been reused: it must live.
	other.start++
	if err := writeState(dir, []*process{live, other}); err != nil {
		t.Fatal(err)
	}
	stopped, err := StopLeftovers(dir, 5*time.Second)
	if err != nil {
		t.Fatalf("StopLeftovers: %v", err)
	}
	if len(stopped) != 1 || stopped[0] != "sleeper" {
		t.Errorf("stopped %v, want [sleeper]", stopped)
	}
	select {
	case <-live.done:
	case <-time.After(10 * time.Second):
		t.Error("sleeper still running after StopLeftovers")
	}
	if other.exited() {
		t.Error("a process whose start time did not match was stopped")
	}
	if _, err := os.Stat(filepath.Join(dir, stateFile)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("state file not removed: %v", err)
	}
	// Nothing recorded: a no-op.
	if stopped, err := StopLeftovers(dir, time.Second); err != nil || len(stopped) != 0 {
		t.Errorf("second StopLeftovers = %v, %v; want nothing", stopped, err)
	}
}

func TestProcStat(t *testing.T) {
	start, state, err := procStat(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if start == 0 || state == "" {
		t.Errorf("procStat(self) = %d, %q", start, state)
	}
	if _, _, err := procStat(-1); err == nil {
		t.Error("procStat(-1) succeeded")
	}
}
