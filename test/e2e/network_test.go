//go:build e2e

package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kip-dev/kip/internal/registry"
	"github.com/kip-dev/kip/test/e2e/framework"
)

// TestWgetBetweenCells: a pod on one cell serves HTTP (the seeded nginx image, busybox httpd)
// and a pod on another cell fetches its page with the seeded busybox's wget, by pod IP and by
// a name from its hostAliases (glibc's files lookup inside the image).
func TestWgetBetweenCells(t *testing.T) {
	e := need(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	ns := e.Namespace(t)

	web := framework.Pod("web", corev1.Container{Name: "nginx", Image: "nginx"})
	if _, err := e.Client.CoreV1().Pods(ns).Create(ctx, web, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	running, err := e.WaitForPod(ctx, ns, "web", podTimeout, framework.Running)
	if err != nil {
		t.Fatal(err)
	}
	ip := running.Status.PodIP
	// The server may not listen yet when the pod turns Running: retry each fetch a while.
	script := `for url in http://` + ip + `/ http://web.kip.test/; do
  ok=; for i in $(seq 1 50); do if wget -q -O- "$url"; then ok=1; break; fi; sleep 0.2; done
  [ -n "$ok" ] || { echo "FAILED $url"; exit 1; }
done`
	client := framework.Pod("client", framework.Busybox("wget", script))
	client.Spec.HostAliases = []corev1.HostAlias{{IP: ip, Hostnames: []string{"web.kip.test"}}}
	if _, err := e.Client.CoreV1().Pods(ns).Create(ctx, client, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	done, err := e.WaitForPod(ctx, ns, "client", podTimeout, framework.Finished)
	logs, lerr := e.Kubectl(ctx, "-n", ns, "logs", "client")
	if err != nil {
		t.Fatalf("%v\nlogs (%v):\n%s", err, lerr, logs)
	}
	if done.Status.PodIP == ip {
		t.Fatalf("client and web share IP %s: want two cells", ip)
	}
	if done.Status.Phase != corev1.PodSucceeded {
		t.Fatalf("client %s: %s\nlogs:\n%s\n%s", done.Status.Phase, framework.DescribePod(done), logs, e.EventsFor(ctx, ns, "client"))
	}
	if got := strings.Count(logs, strings.TrimSpace(registry.NginxIndex)); got != 2 {
		t.Errorf("client logs hold the nginx page %d times, want 2 (by IP, by alias):\n%s", got, logs)
	}
}
