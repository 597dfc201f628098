package clusterdns

import (
	"archive/tar"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/kip-dev/kip/internal/controlplane"
)

// TestObjects: the manifest parses into the objects of an ordinary CoreDNS install, named
// and wired as cluster DNS needs them.
func TestObjects(t *testing.T) {
	if _, err := Objects(Options{}); err == nil || !strings.Contains(err.Error(), "Image") {
		t.Errorf("no image: err %v, want one naming Image", err)
	}
	objs, err := Objects(Options{Image: "10.250.0.1:5000/kip/coredns@sha256:abc", Domain: "k.example"})
	if err != nil {
		t.Fatal(err)
	}
	var kinds []string
	for _, o := range objs {
		kinds = append(kinds, o.GetObjectKind().GroupVersionKind().Kind)
	}
	if want := []string{"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ConfigMap", "Deployment", "Service"}; !slices.Equal(kinds, want) {
		t.Fatalf("kinds %v, want %v", kinds, want)
	}
	sa := objs[0].(*corev1.ServiceAccount)
	role := objs[1].(*rbacv1.ClusterRole)
	binding := objs[2].(*rbacv1.ClusterRoleBinding)
	cm := objs[3].(*corev1.ConfigMap)
	dep := objs[4].(*appsv1.Deployment)
	svc := objs[5].(*corev1.Service)

	if sa.Namespace != "kube-system" || sa.Name != "coredns" {
		t.Errorf("service account %s/%s", sa.Namespace, sa.Name)
	}
	can := func(group, resource, verb string) bool {
		for _, r := range role.Rules {
			if slices.Contains(r.APIGroups, group) && slices.Contains(r.Resources, resource) && slices.Contains(r.Verbs, verb) {
				return true
			}
		}
		return false
	}
	for _, gr := range [][2]string{{"discovery.k8s.io", "endpointslices"}, {"", "services"}, {"", "namespaces"}, {"", "pods"}} {
		for _, verb := range []string{"list", "watch"} {
			if !can(gr[0], gr[1], verb) {
				t.Errorf("ClusterRole cannot %s %s.%s", verb, gr[1], gr[0])
			}
		}
	}
	if binding.RoleRef.Name != role.Name || len(binding.Subjects) != 1 || binding.Subjects[0].Name != sa.Name || binding.Subjects[0].Namespace != sa.Namespace {
		t.Errorf("binding %+v does not bind %s to %s/%s", binding, role.Name, sa.Namespace, sa.Name)
	}
	cf := cm.Data["Corefile"]
	for _, want := range []string{"kubernetes k.example in-addr.arpa ip6.arpa {", "pods insecure", "fallthrough in-addr.arpa ip6.arpa",
		"forward . /etc/resolv.conf", "cache 30", "health :8080", "ready :8181", "loop", "reload", "loadbalance", "errors", "prometheus :9153"} {
		if !strings.Contains(cf, want) {
			t.Errorf("Corefile lacks %q:\n%s", want, cf)
		}
	}
	if strings.Contains(cf, "kubeconfig") {
		t.Errorf("in-cluster Corefile names a kubeconfig:\n%s", cf)
	}

	if dep.Namespace != "kube-system" || dep.Name != "coredns" {
		t.Errorf("deployment %s/%s", dep.Namespace, dep.Name)
	}
	ps := dep.Spec.Template.Spec
	if ps.DNSPolicy != corev1.DNSDefault || ps.ServiceAccountName != sa.Name {
		t.Errorf("dnsPolicy %q, serviceAccountName %q", ps.DNSPolicy, ps.ServiceAccountName)
	}
	if ps.NodeSelector["type"] != "virtual-kubelet" {
		t.Errorf("nodeSelector %v does not pick Kip's node", ps.NodeSelector)
	}
	tolerates := false
	for _, tol := range ps.Tolerations {
		if tol.Key == "virtual-kubelet.io/provider" && tol.Operator == corev1.TolerationOpExists && tol.Effect == corev1.TaintEffectNoSchedule {
			tolerates = true
		}
	}
	if !tolerates {
		t.Errorf("tolerations %v do not tolerate Kip's node taint", ps.Tolerations)
	}
	c := ps.Containers[0]
	if c.Image != "10.250.0.1:5000/kip/coredns@sha256:abc" || !slices.Equal(c.Args, []string{"-conf", "/etc/coredns/Corefile"}) {
		t.Errorf("container image %q args %v", c.Image, c.Args)
	}
	if c.ReadinessProbe.HTTPGet.Port != intstr.FromInt32(8181) || c.LivenessProbe.HTTPGet.Port != intstr.FromInt32(8080) {
		t.Errorf("probes do not match the Corefile's ready/health ports")
	}
	if len(ps.Volumes) != 1 || ps.Volumes[0].ConfigMap == nil || ps.Volumes[0].ConfigMap.Name != cm.Name || c.VolumeMounts[0].MountPath != "/etc/coredns" {
		t.Errorf("the Corefile ConfigMap is not mounted at /etc/coredns: %+v %+v", ps.Volumes, c.VolumeMounts)
	}
	if sel := dep.Spec.Selector.MatchLabels["k8s-app"]; sel == "" || sel != dep.Spec.Template.Labels["k8s-app"] {
		t.Errorf("selector %v does not match template labels %v", dep.Spec.Selector.MatchLabels, dep.Spec.Template.Labels)
	}

	if svc.Namespace != "kube-system" || svc.Name != "kube-dns" || svc.Spec.ClusterIP != ServiceIP {
		t.Errorf("service %s/%s clusterIP %s", svc.Namespace, svc.Name, svc.Spec.ClusterIP)
	}
	if svc.Spec.Selector["k8s-app"] != dep.Spec.Template.Labels["k8s-app"] {
		t.Errorf("service selector %v does not select the deployment's pods %v", svc.Spec.Selector, dep.Spec.Template.Labels)
	}
	var ports []string
	for _, p := range svc.Spec.Ports {
		ports = append(ports, fmt.Sprintf("%s/%d", p.Protocol, p.Port))
	}
	if want := []string{"UDP/53", "TCP/53", "TCP/9153"}; !slices.Equal(ports, want) {
		t.Errorf("service ports %v, want %v", ports, want)
	}
}

// TestServiceIPInServiceCIDR: kube-dns's fixed IP lies in the control plane's service range.
func TestServiceIPInServiceCIDR(t *testing.T) {
	if !strings.HasPrefix(ServiceIP, strings.TrimSuffix(controlplane.ServiceCIDR, "0/24")) {
		t.Errorf("ServiceIP %s is outside %s", ServiceIP, controlplane.ServiceCIDR)
	}
}

// TestImage: one layer holding /coredns, run as /coredns -conf /etc/coredns/Corefile; the
// same binary gives the same digest.
func TestImage(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "coredns")
	if err := os.WriteFile(bin, []byte("#!/bin/true\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	img, err := Image(bin)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(cf.Config.Entrypoint, []string{"/coredns"}) || !slices.Equal(cf.Config.Cmd, []string{"-conf", "/etc/coredns/Corefile"}) || cf.OS != "linux" {
		t.Errorf("config %+v", cf.Config)
	}
	layers, err := img.Layers()
	if err != nil || len(layers) != 1 {
		t.Fatalf("layers %v %v", layers, err)
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	tr := tar.NewReader(rc)
	found := false
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Name == "coredns" {
			b, _ := io.ReadAll(tr)
			found = string(b) == "#!/bin/true\n" && h.Mode == 0o755
		}
	}
	if !found {
		t.Error("the layer has no executable /coredns with the binary's bytes")
	}
	img2, _ := Image(bin)
	d1, _ := img.Digest()
	d2, _ := img2.Digest()
	if d1 != d2 {
		t.Errorf("digests differ: %s, %s", d1, d2)
	}
}

// TestBinaryCache: a binary cached for the module's inputs is reused without building; a
// change to main.go asks for another.
func TestBinaryCache(t *testing.T) {
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("no go command")
	}
	t.Setenv(BinaryEnv, "")
	src, cache := t.TempDir(), t.TempDir()
	for _, f := range sourceFiles {
		if err := os.WriteFile(filepath.Join(src, f), []byte("// "+f+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	gv, err := exec.Command("go", "env", "GOVERSION").Output()
	if err != nil {
		t.Fatal(err)
	}
	key, err := inputsHash(src, strings.TrimSpace(string(gv)))
	if err != nil {
		t.Fatal(err)
	}
	cached := filepath.Join(cache, key, "coredns")
	if err := os.MkdirAll(filepath.Dir(cached), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cached, []byte("bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	got, err := Binary(context.Background(), BuildOptions{SourceDir: src, CacheDir: cache})
	if err != nil || got != cached {
		t.Fatalf("Binary = %q, %v; want the cached %s", got, err, cached)
	}
	if err := os.WriteFile(filepath.Join(src, "main.go"), []byte("package main\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	key2, _ := inputsHash(src, strings.TrimSpace(string(gv)))
	if key2 == key {
		t.Error("changing main.go kept the cache key")
	}
	// The changed module is not a buildable one here: Binary must try to build and fail.
	if _, err := Binary(context.Background(), BuildOptions{SourceDir: src, CacheDir: cache}); err == nil || !strings.Contains(err.Error(), "building CoreDNS") {
		t.Errorf("changed main.go: err %v, want a build error", err)
	}
}

// TestSourceDirMissing names the environment variables to set.
func TestSourceDirMissing(t *testing.T) {
	t.Setenv(SourceEnv, filepath.Join(t.TempDir(), "nothing"))
	_, err := sourceDir("")
	if err == nil {
		t.Fatal("no error for a missing module")
	}
	t.Setenv(SourceEnv, "")
	if d, err := sourceDir(""); err != nil || !strings.HasSuffix(d, sourceRel) {
		t.Errorf("from the source tree: %q %v", d, err)
	}
}
