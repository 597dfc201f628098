//go:build e2e

package e2e

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"

	"github.com/kip-dev/kip/test/e2e/framework"
)

// rbacKinds are the objects of an overlay that make up kip's identity and permissions.
var rbacKinds = map[string]bool{
	"ServiceAccount": true, "ClusterRole": true, "ClusterRoleBinding": true, "Role": true, "RoleBinding": true,
}

// renderOverlay renders deploy/overlays/<overlay> with kubectl's kustomize for node nodeName
// (the names the Roles grant follow the node name, as an installer sets them) and returns its
// objects.
func renderOverlay(ctx context.Context, t *testing.T, e *framework.Env, overlay, nodeName string) []*unstructured.Unstructured {
	t.Helper()
	abs, err := filepath.Abs(filepath.Join("..", "..", "deploy", "overlays", overlay))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	// kustomize takes another kustomization only by a relative path.
	rel, err := filepath.Rel(dir, abs)
	if err != nil {
		t.Fatal(err)
	}
	// JSON patches that first test the overlay's names, so a changed overlay fails loudly here.
	kust := fmt.Sprintf(`apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
- %s
patches:
- target: {kind: Role, name: kip, namespace: kube-system}
  patch: |-
    - {op: test, path: /rules/2/resourceNames, value: [kip-serving-kip, kip-enrollments-kip]}
    - {op: replace, path: /rules/2/resourceNames, value: [kip-serving-%[2]s, kip-enrollments-%[2]s]}
    - {op: test, path: /rules/4/resourceNames, value: [kip-kip]}
    - {op: replace, path: /rules/4/resourceNames, value: [kip-%[2]s]}
- target: {kind: Role, name: kip, namespace: kube-node-lease}
  patch: |-
    - {op: test, path: /rules/1/resourceNames, value: [kip]}
    - {op: replace, path: /rules/1/resourceNames, value: [%[2]s]}
`, rel, nodeName)
	if err := os.WriteFile(filepath.Join(dir, "kustomization.yaml"), []byte(kust), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := e.Kubectl(ctx, "kustomize", dir)
	if err != nil {
		t.Fatalf("rendering deploy/overlays/%s: %v", overlay, err)
	}
	var objs []*unstructured.Unstructured
	d := utilyaml.NewYAMLOrJSONDecoder(strings.NewReader(out), 4096)
	for {
		var obj map[string]any
		if err := d.Decode(&obj); err != nil {
			break
		}
		if obj != nil {
			objs = append(objs, &unstructured.Unstructured{Object: obj})
		}
	}
	return objs
}

// renderLocalRBAC renders deploy/overlays/local for node nodeName and returns its
// ServiceAccount and RBAC objects as one YAML stream.
func renderLocalRBAC(ctx context.Context, t *testing.T, e *framework.Env, nodeName string) []byte {
	t.Helper()
	var rbac bytes.Buffer
	for _, obj := range renderOverlay(ctx, t, e, "local", nodeName) {
		if !rbacKinds[obj.GetKind()] {
			continue
		}
		b, err := yaml.Marshal(obj.Object)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&rbac, "---\n%s", b)
	}
	if n := strings.Count(rbac.String(), "---\n"); n != 7 {
		t.Fatalf("deploy/overlays/local renders %d ServiceAccount and RBAC objects, want 7:\n%s", n, rbac.String())
	}
	return rbac.Bytes()
}

// saKubeconfig writes a kubeconfig for ServiceAccount kube-system/kip with a token from the
// TokenRequest API: the admin kubeconfig's cluster, the ServiceAccount's credentials.
func saKubeconfig(ctx context.Context, t *testing.T, e *framework.Env) string {
	t.Helper()
	tok, err := e.Client.CoreV1().ServiceAccounts("kube-system").CreateToken(ctx, "kip",
		&authnv1.TokenRequest{Spec: authnv1.TokenRequestSpec{ExpirationSeconds: ptr.To[int64](3600)}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("requesting a token for kube-system/kip: %v", err)
	}
	cfg, err := clientcmd.LoadFromFile(e.CP.AdminKubeconfig())
	if err != nil {
		t.Fatal(err)
	}
	cfg.AuthInfos = map[string]*clientcmdapi.AuthInfo{"kip": {Token: tok.Status.Token}}
	for _, c := range cfg.Contexts {
		c.AuthInfo = "kip"
	}
	path := filepath.Join(t.TempDir(), "kip-sa.kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestLeastPrivilege: kip runs with the ServiceAccount and RBAC of deploy/overlays/local
// (server-side dry run, then applied) and a kubeconfig holding only that ServiceAccount's
// token; the pod suite's Job and Deployment run through it, and kip's log holds no Forbidden.
// The node, the node's heartbeat Lease and the cached serving certificate are deleted first, so
// kip registers the node, creates the Lease and gets its certificate through a CSR it approves
// under these permissions too.
func TestLeastPrivilege(t *testing.T) {
	e := need(t)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()

	rbac := renderLocalRBAC(ctx, t, e, e.NodeName)
	if out, err := e.KubectlStdin(ctx, rbac, "apply", "--server-side", "--dry-run=server", "-f", "-"); err != nil {
		t.Fatalf("server-side dry run of the overlay's RBAC: %v", err)
	} else {
		t.Logf("dry run:\n%s", out)
	}
	if _, err := e.Client.CoreV1().ServiceAccounts("kube-system").Get(ctx, "kip", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Fatalf("after the dry run, ServiceAccount kube-system/kip: %v, want NotFound", err)
	}
	if out, err := e.KubectlStdin(ctx, rbac, "apply", "--server-side", "-f", "-"); err != nil {
		t.Fatalf("applying the overlay's RBAC: %v", err)
	} else {
		t.Logf("applied:\n%s", out)
	}
	t.Cleanup(func() {
		if _, err := e.KubectlStdin(context.Background(), rbac, "delete", "--ignore-not-found", "-f", "-"); err != nil {
			t.Errorf("deleting the overlay's RBAC: %v", err)
		}
	})

	kubeconfig := saKubeconfig(ctx, t, e)
	for _, ns := range []string{"default", "kube-system", "kube-node-lease"} {
		out, err := e.Kubectl(ctx, "--kubeconfig", kubeconfig, "auth", "can-i", "--list", "-n", ns)
		if err != nil {
			t.Fatalf("kubectl auth can-i --list as kube-system/kip: %v", err)
		}
		t.Logf("kubectl auth can-i --list -n %s (as system:serviceaccount:kube-system:kip):\n%s", ns, out)
	}
	if out, err := e.Kubectl(ctx, "--kubeconfig", kubeconfig, "auth", "whoami"); err == nil {
		t.Logf("kubectl auth whoami:\n%s", out)
	}

	// Restart kip as the ServiceAccount; the admin-run kip comes back for the tests after this.
	if err := e.Kip.Stop(); err != nil {
		t.Fatal(err)
	}
	admin := e.Kip.Kubeconfig
	t.Cleanup(func() {
		if err := e.Kip.Stop(); err != nil {
			t.Error(err)
		}
		e.Kip.Kubeconfig = admin
		if err := e.Kip.Start(context.Background()); err != nil {
			t.Errorf("restarting kip with the admin kubeconfig: %v", err)
		}
	})
	if err := e.Client.CoreV1().Secrets("kube-system").Delete(ctx, "kip-serving-"+e.NodeName, metav1.DeleteOptions{}); err != nil {
		t.Fatalf("deleting the cached serving certificate: %v", err)
	}
	if err := e.Client.CoreV1().Nodes().Delete(ctx, e.NodeName, metav1.DeleteOptions{}); err != nil {
		t.Fatalf("deleting node %s: %v", e.NodeName, err)
	}
	err := e.Client.CoordinationV1().Leases("kube-node-lease").Delete(ctx, e.NodeName, metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		t.Fatalf("deleting the node's Lease: %v", err)
	}
	e.Kip.Kubeconfig = kubeconfig
	if err := e.Kip.Start(ctx); err != nil {
		t.Fatalf("starting kip as kube-system/kip: %v", err)
	}
	log := e.Kip.LogPath()

	t.Run("JobEcho", TestJobEcho)
	t.Run("DeploymentHTTP", TestDeploymentHTTP)

	csrs, err := e.Client.CertificatesV1().CertificateSigningRequests().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	approvedBySA := false
	for _, c := range csrs.Items {
		if c.Spec.Username == "system:serviceaccount:kube-system:kip" && len(c.Status.Certificate) > 0 {
			approvedBySA = true
		}
	}
	if !approvedBySA {
		t.Errorf("no signed CSR requested by system:serviceaccount:kube-system:kip among %d", len(csrs.Items))
	}

	f, err := os.Open(log)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var forbidden []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if strings.Contains(strings.ToLower(sc.Text()), "forbidden") {
			forbidden = append(forbidden, sc.Text())
		}
	}
	if len(forbidden) > 0 {
		t.Errorf("kip, as kube-system/kip, was refused %d times (log %s):\n%s", len(forbidden), log, strings.Join(forbidden, "\n"))
	}
}
