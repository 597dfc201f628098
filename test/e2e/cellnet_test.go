//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kip-dev/kip/test/e2e/framework"
)

// ruleTimeout bounds a Service, endpoint or security group change reaching a cell's rules
// (the design target is p99 ≤ 1 s; this only guards against never).
const ruleTimeout = 30 * time.Second

// TestSecurityGroups: pod.kip.dev/security-groups means on the local backend what it means
// on EC2. Group e2e-web admits TCP 8080 from group e2e-client only (main_test.go configures
// both): a client pod in e2e-client reaches a server in e2e-web, a pod in no group is refused;
// a server in no group (the default) admits both. A pod naming an unknown group is refused
// before any cell launches, naming the annotation.
func TestSecurityGroups(t *testing.T) {
	e := need(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	ns := e.Namespace(t)
	image, err := e.KipcheckImage(ctx)
	if err != nil {
		t.Fatal(err)
	}
	pod := func(name, groups string, args ...string) *corev1.Pod {
		p := framework.Pod(name, corev1.Container{Name: "main", Image: image, Command: append([]string{"kipcheck"}, args...)})
		if groups != "" {
			p.Annotations = map[string]string{"pod.kip.dev/security-groups": groups}
		}
		return p
	}
	for _, p := range []*corev1.Pod{
		pod("guarded", "e2e-web", "serve", ":8080"),
		pod("open", "", "serve", ":8080"),
		pod("member", "e2e-client", "sleep"),
		pod("stranger", "", "sleep"),
	} {
		if _, err := e.Client.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	ips := map[string]string{}
	for _, name := range []string{"guarded", "open", "member", "stranger"} {
		p, err := e.WaitForPod(ctx, ns, name, podTimeout, framework.Running)
		if err != nil {
			t.Fatal(err)
		}
		ips[name] = p.Status.PodIP
	}
	url := func(server string) string { return "http://" + net.JoinHostPort(ips[server], "8080") + "/" }
	for _, client := range []string{"member", "stranger"} {
		execOK(ctx, t, e, ns, client, "kipcheck get "+url("open"))
	}
	if out := execOK(ctx, t, e, ns, "member", "kipcheck get "+url("guarded")); strings.TrimSpace(out) != "guarded" {
		t.Errorf("member → guarded answered %q", out)
	}
	stdout, stderr, code := kubectlRun(ctx, e, "", "-n", ns, "exec", "stranger", "--", "kipcheck", "get", url("guarded"), "3s")
	if code == 0 {
		t.Errorf("a pod in no group reached a cell of e2e-web, which admits only e2e-client: %s", stdout)
	} else {
		t.Logf("stranger → guarded refused as it should be: %s", strings.TrimSpace(stderr))
	}

	bad := pod("unknown-group", "e2e-nope", "sleep")
	if _, err := e.Client.CoreV1().Pods(ns).Create(ctx, bad, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	got, err := e.WaitForPod(ctx, ns, "unknown-group", podTimeout, framework.Failed)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(got.Status.Message, "pod.kip.dev/security-groups") || !strings.Contains(got.Status.Message, "e2e-nope") {
		t.Errorf("unknown group: status message %q does not name the annotation and the group", got.Status.Message)
	}
	if cells, _ := e.Cells(ctx, framework.PodCells(ns, "unknown-group")); len(cells) != 0 {
		t.Errorf("a pod naming an unknown group launched %d cells", len(cells))
	}
}

// execOK runs script with sh -c in pod's first container, retrying failures for ruleTimeout
// (rules reach a new cell asynchronously), and returns its stdout.
func execOK(ctx context.Context, t *testing.T, e *framework.Env, ns, pod, script string) string {
	t.Helper()
	deadline := time.Now().Add(ruleTimeout)
	for {
		stdout, stderr, code := kubectlRun(ctx, e, "", "-n", ns, "exec", pod, "--", "sh", "-c", script)
		if code == 0 {
			return stdout
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			t.Fatalf("exec %q in %s: exit %d: %s%s", script, pod, code, stdout, stderr)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// fetchMany fetches url n times from pod and returns the distinct answers (backends'
// hostnames), sorted.
func fetchMany(ctx context.Context, t *testing.T, e *framework.Env, ns, pod, url string, n int) []string {
	t.Helper()
	out := execOK(ctx, t, e, ns, pod, fmt.Sprintf(`for i in $(seq %d); do kipcheck get %s || exit 1; done`, n, url))
	var seen []string
	for _, l := range strings.Fields(out) {
		if !slices.Contains(seen, l) {
			seen = append(seen, l)
		}
	}
	slices.Sort(seen)
	return seen
}

// TestHostNetworkAndHostPort: one pod owns its cell, so a hostNetwork pod's host is its cell
// (pod IP = host IP = the cell's address, where it answers), and a hostPort maps to its
// containerPort on the cell's address, from the host and from another cell.
func TestHostNetworkAndHostPort(t *testing.T) {
	e := need(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	ns := e.Namespace(t)
	image, err := e.KipcheckImage(ctx)
	if err != nil {
		t.Fatal(err)
	}
	hostnet := framework.Pod("hostnet", corev1.Container{Name: "web", Image: image, Command: []string{"kipcheck", "serve", ":8080"},
		Ports: []corev1.ContainerPort{{ContainerPort: 8080}}})
	hostnet.Spec.HostNetwork = true
	hostport := framework.Pod("hostport", corev1.Container{Name: "web", Image: image, Command: []string{"kipcheck", "serve", ":8080"},
		Ports: []corev1.ContainerPort{{ContainerPort: 8080, HostPort: 9090}}})
	client := framework.Pod("client", corev1.Container{Name: "client", Image: image, Command: []string{"kipcheck", "sleep"}})
	for _, p := range []*corev1.Pod{hostnet, hostport, client} {
		if _, err := e.Client.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	pods := map[string]*corev1.Pod{}
	for _, name := range []string{"hostnet", "hostport", "client"} {
		p, err := e.WaitForPod(ctx, ns, name, podTimeout, framework.Running)
		if err != nil {
			t.Fatal(err)
		}
		pods[name] = p
	}
	hn := pods["hostnet"].Status
	if hn.HostIP == "" || hn.HostIP != hn.PodIP {
		t.Errorf("hostNetwork pod: hostIP %q, podIP %q; want both the cell's address", hn.HostIP, hn.PodIP)
	}
	if hp := pods["hostport"].Status; hp.HostIP != e.BridgeIP.String() {
		t.Errorf("pod without hostNetwork: hostIP %q, want the node's %s", hp.HostIP, e.BridgeIP)
	}
	hc := &http.Client{Timeout: 5 * time.Second}
	for _, url := range []string{
		"http://" + net.JoinHostPort(hn.HostIP, "8080") + "/",
		"http://" + net.JoinHostPort(pods["hostport"].Status.PodIP, "9090") + "/",
	} {
		body, err := getWithRetry(ctx, hc, url, 30*time.Second)
		if err != nil {
			t.Errorf("from the host: %v", err)
			continue
		}
		t.Logf("GET %s from the host: %s", url, strings.TrimSpace(body))
		out := execOK(ctx, t, e, ns, "client", "kipcheck get "+url)
		if strings.TrimSpace(out) != strings.TrimSpace(body) {
			t.Errorf("GET %s from another cell = %q, from the host %q", url, out, body)
		}
	}
}
