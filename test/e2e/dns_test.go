//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/utils/ptr"

	"github.com/kip-dev/kip/internal/clusterdns"
	"github.com/kip-dev/kip/test/e2e/framework"
)

// coreDNSReadyTimeout bounds CoreDNS's pod becoming Ready: a cell, the image pull, and the
// kubernetes plugin's first sync with the API server (through the kubernetes Service).
const coreDNSReadyTimeout = 3 * time.Minute

// TestClusterDNS: with CoreDNS deployed as kip up deploys it, a ClusterFirst pod on a cell
// gets kubelet's resolv.conf and resolves the API server's Service, a Service by its short
// name and its FQDN, and a headless Service to its pod's IP (and the pod's own hostname).
//
// It needs the cell's service rules (ClusterIP → endpoints in the cell's namespace): CoreDNS
// reaches the API server through the kubernetes Service, and the pod reaches CoreDNS through
// kube-dns's cluster IP. Without them it fails, saying which step did not happen.
func TestClusterDNS(t *testing.T) {
	e := need(t)
	ctx, cancel := context.WithTimeout(context.Background(), 12*time.Minute)
	defer cancel()
	if len(e.ClusterDNS) == 0 {
		t.Fatal("the e2e environment runs kip without clusterDNS (framework.Options.ClusterDNS)")
	}

	objs, err := e.DeployClusterDNS(ctx)
	if err != nil {
		t.Fatalf("deploying CoreDNS: %v", err)
	}
	t.Cleanup(func() {
		cctx, ccancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer ccancel()
		if err := clusterdns.Delete(cctx, e.Client, objs); err != nil {
			t.Errorf("removing CoreDNS: %v", err)
		}
		// Its cell must be gone before TestZZNoLeaks looks.
		sel := labels.SelectorFromSet(labels.Set{"k8s-app": "kube-dns"}).String()
		for cctx.Err() == nil {
			pods, err := e.Client.CoreV1().Pods(clusterdns.Namespace).List(cctx, metav1.ListOptions{LabelSelector: sel})
			if err == nil && len(pods.Items) == 0 {
				return
			}
			time.Sleep(time.Second)
		}
		t.Errorf("CoreDNS's pods still exist 2 minutes after its Deployment was deleted")
	})

	// CoreDNS Ready: its kubernetes plugin has synced with the API server.
	sel := labels.SelectorFromSet(labels.Set{"k8s-app": "kube-dns"}).String()
	var dnsPod *corev1.Pod
	for end := time.Now().Add(coreDNSReadyTimeout); ; time.Sleep(2 * time.Second) {
		pods, err := e.Client.CoreV1().Pods(clusterdns.Namespace).List(ctx, metav1.ListOptions{LabelSelector: sel})
		if err == nil && len(pods.Items) > 0 {
			dnsPod = &pods.Items[0]
			if podReady(dnsPod) {
				break
			}
		}
		if time.Now().After(end) || ctx.Err() != nil {
			what := "no pod"
			logs := ""
			if dnsPod != nil {
				what = framework.DescribePod(dnsPod)
				b, _ := e.Client.CoreV1().Pods(dnsPod.Namespace).GetLogs(dnsPod.Name, &corev1.PodLogOptions{Container: "coredns"}).DoRaw(ctx)
				logs = tail(string(b), 30)
			}
			t.Fatalf("CoreDNS (kube-system/coredns) not Ready within %v: %s\nIts readiness needs the kubernetes plugin synced with the API server through Service kubernetes (10.0.0.1:443) from inside its cell, i.e. the cells' service rules.\nCoreDNS log tail:\n%s",
				coreDNSReadyTimeout, what, logs)
		}
	}

	ns := e.Namespace(t)
	// A backend for a Service and, as db-0 of subdomain db, a headless Service.
	backend := framework.Pod("db-0", corev1.Container{Name: "web", Image: "nginx"})
	backend.Labels = map[string]string{"app": "web"}
	backend.Spec.Hostname, backend.Spec.Subdomain = "db-0", "db"
	backend.Spec.RestartPolicy = corev1.RestartPolicyAlways
	if _, err := e.Client.CoreV1().Pods(ns).Create(ctx, backend, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	web, err := e.Client.CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec:       corev1.ServiceSpec{Selector: map[string]string{"app": "web"}, Ports: []corev1.ServicePort{{Name: "http", Port: 80}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.Client.CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "db"},
		Spec: corev1.ServiceSpec{ClusterIP: corev1.ClusterIPNone, Selector: map[string]string{"app": "web"},
			Ports: []corev1.ServicePort{{Name: "http", Port: 80}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	backend, err = e.WaitForPod(ctx, ns, "db-0", podTimeout, podReady)
	if err != nil {
		t.Fatalf("backend pod: %v", err)
	}

	// The client: kipcheck lookup, Go's own resolver (it follows resolv.conf's search and
	// ndots with no libc), retried for up to 30s per name.
	image, err := e.KipcheckImage(ctx)
	if err != nil {
		t.Fatal(err)
	}
	fqdn := func(s string) string { return fmt.Sprintf("%s.%s.svc.cluster.local", s, ns) }
	names := []string{"kubernetes.default.svc.cluster.local", "web", fqdn("web"), fqdn("db"), fqdn("db-0.db"), "kubernetes.default"}
	const script = `cat /etc/resolv.conf; echo ---
for n in "$@"; do
  i=0; until a=$(kipcheck lookup "$n" 2>&1); do i=$((i+1)); [ $i -ge 30 ] && break; sleep 1; done
  echo "$n" $(echo $a | tr ' ' ',')
done
echo ---
for u in http://web/ "http://web.$(cat /var/run/secrets/kubernetes.io/serviceaccount/namespace).svc.cluster.local/"; do
  if kipcheck get "$u" >/dev/null; then echo "kipcheck $u ok"; fi
  if wget -q -O /dev/null "$u"; then echo "wget $u ok"; fi
done`
	client := framework.Pod("client", corev1.Container{Name: "client", Image: image,
		Command: append([]string{"sh", "-c", script, "sh"}, names...)})
	if _, err := e.Client.CoreV1().Pods(ns).Create(ctx, client, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.WaitForPod(ctx, ns, "client", podTimeout+3*time.Minute, func(p *corev1.Pod) bool {
		return p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed
	}); err != nil {
		t.Fatalf("client pod: %v", err)
	}
	b, err := e.Client.CoreV1().Pods(ns).GetLogs("client", &corev1.PodLogOptions{}).DoRaw(ctx)
	if err != nil {
		t.Fatalf("client logs: %v", err)
	}
	resolvConf, results, _ := strings.Cut(string(b), "---\n")
	results, fetches, _ := strings.Cut(results, "---\n")

	// kubelet's resolv.conf: the cluster search path first, kube-dns, ndots:5.
	lines := strings.Split(strings.TrimSpace(resolvConf), "\n")
	wantSearch := fmt.Sprintf("search %s.svc.cluster.local svc.cluster.local cluster.local", ns)
	if len(lines) != 3 || !(lines[0] == wantSearch || strings.HasPrefix(lines[0], wantSearch+" ")) ||
		lines[1] != "nameserver "+clusterdns.ServiceIP || lines[2] != "options ndots:5" {
		t.Errorf("the pod's /etc/resolv.conf:\n%s\nwant kubelet's:\n%s [host searches]\nnameserver %s\noptions ndots:5", resolvConf, wantSearch, clusterdns.ServiceIP)
	}

	got := map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(results), "\n") {
		if name, v, ok := strings.Cut(l, " "); ok {
			got[name] = v
		}
	}
	want := map[string]string{
		"kubernetes.default.svc.cluster.local": "10.0.0.1",
		"kubernetes.default":                   "10.0.0.1", // through the search path
		"web":                                  web.Spec.ClusterIP,
		fqdn("web"):                            web.Spec.ClusterIP,
		fqdn("db"):                             backend.Status.PodIP,
		fqdn("db-0.db"):                        backend.Status.PodIP,
	}
	for name, w := range want {
		if got[name] != w {
			t.Errorf("%s resolved to %q, want %s", name, got[name], w)
		}
	}
	// The Service by its short name and FQDN over HTTP, with a Go client and busybox's wget.
	for _, u := range []string{"http://web/", "http://" + fqdn("web") + "/"} {
		for _, tool := range []string{"kipcheck", "wget"} {
			if !strings.Contains(fetches, tool+" "+u+" ok") {
				t.Errorf("%s %s from a pod on another cell failed", tool, u)
			}
		}
	}
	if t.Failed() {
		t.Logf("the client's output:\n%s", b)
	}
}

// TestPodDNSFiles: a pod on a cell sees the resolv.conf, /etc/hosts and hostname kubelet
// would give it: kip's clusterDNS and the cluster search path with ndots:5 (dnsConfig's
// options merged in), its FQDN in the cluster domain, and with setHostnameAsFQDN the FQDN as
// its kernel hostname and $HOSTNAME. Needs no DNS server.
func TestPodDNSFiles(t *testing.T) {
	e := need(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if len(e.ClusterDNS) == 0 {
		t.Fatal("the e2e environment runs kip without clusterDNS (framework.Options.ClusterDNS)")
	}
	ns := e.Namespace(t)
	p := framework.Pod("files", framework.Busybox("show", `cat /etc/resolv.conf; echo ---; cat /etc/hosts; echo ---; hostname; echo "$HOSTNAME"`))
	p.Spec.Hostname, p.Spec.Subdomain = "web-0", "db"
	p.Spec.SetHostnameAsFQDN = ptr.To(true)
	p.Spec.DNSConfig = &corev1.PodDNSConfig{Options: []corev1.PodDNSConfigOption{{Name: "edns0"}}}
	if _, err := e.Client.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	got, err := e.WaitForPod(ctx, ns, "files", podTimeout, func(p *corev1.Pod) bool {
		return p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed
	})
	if err != nil {
		t.Fatal(err)
	}
	if got.Status.Phase != corev1.PodSucceeded {
		t.Fatalf("pod: %s", framework.DescribePod(got))
	}
	b, err := e.Client.CoreV1().Pods(ns).GetLogs("files", &corev1.PodLogOptions{}).DoRaw(ctx)
	if err != nil {
		t.Fatal(err)
	}
	parts := strings.Split(string(b), "---\n")
	if len(parts) != 3 {
		t.Fatalf("output:\n%s", b)
	}
	resolv, hosts, names := parts[0], parts[1], strings.Fields(parts[2])
	lines := strings.Split(strings.TrimSpace(resolv), "\n")
	wantSearch := fmt.Sprintf("search %s.svc.cluster.local svc.cluster.local cluster.local", ns)
	if len(lines) != 3 || !(lines[0] == wantSearch || strings.HasPrefix(lines[0], wantSearch+" ")) ||
		lines[1] != "nameserver "+clusterdns.ServiceIP || lines[2] != "options ndots:5 edns0" {
		t.Errorf("/etc/resolv.conf:\n%s\nwant kubelet's:\n%s [host searches]\nnameserver %s\noptions ndots:5 edns0", resolv, wantSearch, clusterdns.ServiceIP)
	}
	fqdn := fmt.Sprintf("web-0.db.%s.svc.cluster.local", ns)
	if want := fmt.Sprintf("%s\t%s\tweb-0\n", got.Status.PodIP, fqdn); !strings.Contains(hosts, want) {
		t.Errorf("/etc/hosts:\n%s\nwant a line %q", hosts, want)
	}
	if len(names) != 2 || names[0] != fqdn || names[1] != fqdn {
		t.Errorf("hostname and $HOSTNAME %v, want %s (setHostnameAsFQDN)", names, fqdn)
	}
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func tail(s string, n int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}
