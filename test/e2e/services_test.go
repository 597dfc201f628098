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

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/utils/ptr"

	"github.com/kip-dev/kip/test/e2e/framework"
)

// TestServices: pods on cells reach ClusterIP Services as on any node. A 2-replica
// Deployment behind a Service (named and numeric target ports) answers a client pod on
// another cell through the cluster IP from its <SVC>_SERVICE_HOST/_PORT variables, spread
// over both replicas; sessionAffinity ClientIP sticks; a backend reaches itself through its
// own Service (hairpin); the client lists pods through Service `kubernetes` with its
// service-account token; scaled to 0 the Service rejects at once, scaled back it answers.
func TestServices(t *testing.T) {
	e := need(t)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	ns := e.Namespace(t)
	image, err := e.KipcheckImage(ctx)
	if err != nil {
		t.Fatal(err)
	}

	sel := map[string]string{"app": "web"}
	port := func(name string, p int32, target intstr.IntOrString) corev1.ServicePort {
		return corev1.ServicePort{Name: name, Port: p, TargetPort: target, Protocol: corev1.ProtocolTCP}
	}
	for _, svc := range []*corev1.Service{
		{ObjectMeta: metav1.ObjectMeta{Name: "web"}, Spec: corev1.ServiceSpec{Selector: sel, Ports: []corev1.ServicePort{
			port("http", 80, intstr.FromString("http")), port("alt", 81, intstr.FromInt32(8080))}}},
		{ObjectMeta: metav1.ObjectMeta{Name: "sticky"}, Spec: corev1.ServiceSpec{Selector: sel,
			SessionAffinity: corev1.ServiceAffinityClientIP,
			Ports:           []corev1.ServicePort{port("http", 80, intstr.FromString("http"))}}},
	} {
		if _, err := e.Client.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if err := grantPodReader(ctx, e, ns); err != nil {
		t.Fatal(err)
	}

	web := corev1.Container{
		Name: "web", Image: image, Command: []string{"kipcheck", "serve", ":8080"},
		Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}},
		ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{
			HTTPGet: &corev1.HTTPGetAction{Path: "/", Port: intstr.FromString("http")}}, PeriodSeconds: 1},
	}
	tmpl := framework.Pod("", web)
	tmpl.Spec.RestartPolicy = corev1.RestartPolicyAlways
	dep := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To[int32](2),
			Selector: &metav1.LabelSelector{MatchLabels: sel},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: sel}, Spec: tmpl.Spec},
		},
	}
	if _, err := e.Client.AppsV1().Deployments(ns).Create(ctx, dep, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	client := framework.Pod("client", corev1.Container{Name: "client", Image: image, Command: []string{"kipcheck", "sleep"}})
	watcher := framework.Pod("watcher", corev1.Container{Name: "watcher", Image: image, Command: []string{"sh", "-c",
		`while :; do if kipcheck get http://$WEB_SERVICE_HOST/ 2s >/dev/null 2>&1; then echo ok; else echo fail; fi; sleep 0.3; done`}})
	for _, p := range []*corev1.Pod{client, watcher} {
		if _, err := e.Client.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	backends, err := waitRunningPods(ctx, e, ns, labels.SelectorFromSet(sel).String(), 2)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, p := range backends {
		if _, err := e.WaitForPod(ctx, ns, p.Name, podTimeout, framework.Ready); err != nil {
			t.Fatal(err)
		}
		names = append(names, p.Name)
	}
	slices.Sort(names)
	for _, name := range []string{"client", "watcher"} {
		if _, err := e.WaitForPod(ctx, ns, name, podTimeout, framework.Running); err != nil {
			t.Fatal(err)
		}
	}
	svc, err := e.Client.CoreV1().Services(ns).Get(ctx, "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}

	t.Run("service variables", func(t *testing.T) {
		out := execOK(ctx, t, e, ns, "client", `echo "$WEB_SERVICE_HOST:$WEB_SERVICE_PORT $WEB_SERVICE_PORT_ALT"`)
		if want := fmt.Sprintf("%s:80 81", svc.Spec.ClusterIP); strings.TrimSpace(out) != want {
			t.Errorf("WEB_SERVICE_HOST:WEB_SERVICE_PORT WEB_SERVICE_PORT_ALT = %q, want %q", strings.TrimSpace(out), want)
		}
	})
	t.Run("spread over both replicas", func(t *testing.T) {
		seen := fetchMany(ctx, t, e, ns, "client", "http://$WEB_SERVICE_HOST/", 20)
		if !slices.Equal(seen, names) {
			t.Errorf("20 requests to the cluster IP reached %v, want both of %v", seen, names)
		}
	})
	t.Run("numeric target port", func(t *testing.T) {
		seen := fetchMany(ctx, t, e, ns, "client", "http://$WEB_SERVICE_HOST:81/", 3)
		if len(seen) == 0 {
			t.Error("port 81 (targetPort 8080) answered nothing")
		}
	})
	t.Run("session affinity", func(t *testing.T) {
		seen := fetchMany(ctx, t, e, ns, "client", "http://$STICKY_SERVICE_HOST/", 10)
		if len(seen) != 1 {
			t.Errorf("10 requests with sessionAffinity ClientIP reached %v, want one backend", seen)
		}
	})
	t.Run("hairpin", func(t *testing.T) {
		seen := fetchMany(ctx, t, e, ns, backends[0].Name, "http://$WEB_SERVICE_HOST/", 20)
		if !slices.Contains(seen, backends[0].Name) {
			t.Errorf("backend %s never reached itself through its Service in 20 requests (reached %v)", backends[0].Name, seen)
		}
	})
	t.Run("API server with the service-account token", func(t *testing.T) {
		out := execOK(ctx, t, e, ns, "client", "kipcheck api")
		if !strings.Contains(out, "\nclient\n") {
			t.Errorf("kipcheck api did not list pod client:\n%s", out)
		}
	})
	t.Run("nodePort on the node's address", func(t *testing.T) {
		np := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "np"}, Spec: corev1.ServiceSpec{Selector: sel,
			Type: corev1.ServiceTypeNodePort, Ports: []corev1.ServicePort{port("http", 80, intstr.FromString("http"))}}}
		np, err := e.Client.CoreV1().Services(ns).Create(ctx, np, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		url := "http://" + net.JoinHostPort(e.BridgeIP.String(), fmt.Sprint(np.Spec.Ports[0].NodePort)) + "/"
		body, err := getWithRetry(ctx, &http.Client{Timeout: 5 * time.Second}, url, ruleTimeout)
		if err != nil || !slices.Contains(names, strings.TrimSpace(body)) {
			t.Errorf("GET %s from the host: %q, %v; want a backend's name", url, body, err)
		}
		if seen := fetchMany(ctx, t, e, ns, "client", url, 3); len(seen) == 0 {
			t.Errorf("GET %s from a cell answered nothing", url)
		}

		// With sessionAffinity ClientIP the host's nodePort sticks too, from the host and
		// from a cell (the same rules as in the cells: 10 requests by chance alike, 1 in 512).
		sticky := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "np-sticky"}, Spec: corev1.ServiceSpec{Selector: sel,
			Type: corev1.ServiceTypeNodePort, SessionAffinity: corev1.ServiceAffinityClientIP,
			Ports: []corev1.ServicePort{port("http", 80, intstr.FromString("http"))}}}
		if sticky, err = e.Client.CoreV1().Services(ns).Create(ctx, sticky, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		url = "http://" + net.JoinHostPort(e.BridgeIP.String(), fmt.Sprint(sticky.Spec.Ports[0].NodePort)) + "/"
		hc := &http.Client{Timeout: 5 * time.Second}
		seen := map[string]bool{}
		for range 10 {
			body, err := getWithRetry(ctx, hc, url, ruleTimeout)
			if err != nil {
				t.Fatal(err)
			}
			seen[strings.TrimSpace(body)] = true
		}
		if len(seen) != 1 {
			t.Errorf("10 requests from the host to nodePort %s with sessionAffinity ClientIP reached %v, want one backend", url, seen)
		}
		if got := fetchMany(ctx, t, e, ns, "client", url, 10); len(got) != 1 {
			t.Errorf("10 requests from a cell to nodePort %s with sessionAffinity ClientIP reached %v, want one backend", url, got)
		}
	})
	t.Run("kip killed: the rules stay; restarted: what changed meanwhile arrives", func(t *testing.T) {
		killed := time.Now()
		e.Kip.Kill()
		time.Sleep(3 * time.Second)
		late := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "late"}, Spec: corev1.ServiceSpec{Selector: sel,
			Ports: []corev1.ServicePort{port("http", 80, intstr.FromString("http"))}}}
		late, err := e.Client.CoreV1().Services(ns).Create(ctx, late, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		restarted := time.Now()
		if err := e.Kip.Start(ctx); err != nil {
			t.Fatalf("restarting kip: %v", err)
		}
		// The watcher fetched through the cluster IP all along; kip's absence must not show.
		logs, err := e.Kubectl(ctx, "-n", ns, "logs", "--timestamps", "watcher")
		if err != nil {
			t.Fatal(err)
		}
		var ok, failed int
		for _, l := range strings.Split(strings.TrimSpace(logs), "\n") {
			ts, word, _ := strings.Cut(l, " ")
			at, err := time.Parse(time.RFC3339Nano, ts)
			if err != nil || at.Before(killed) || at.After(restarted) {
				continue
			}
			if strings.TrimSpace(word) == "ok" {
				ok++
			} else {
				failed++
			}
		}
		if ok < 3 || failed > 0 {
			t.Errorf("while kip was down the watcher's fetches through the cluster IP: %d ok, %d failed; want them all ok", ok, failed)
		}
		seen := fetchMany(ctx, t, e, ns, "client", "http://"+late.Spec.ClusterIP+"/", 3)
		if len(seen) == 0 {
			t.Error("a Service made while kip was down never answered after its restart")
		}
	})
	t.Run("no endpoints rejects at once, scaling back answers", func(t *testing.T) {
		if _, err := e.Kubectl(ctx, "-n", ns, "scale", "deployment/web", "--replicas=0"); err != nil {
			t.Fatal(err)
		}
		var last string
		err := wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, ruleTimeout+time.Minute, true, func(ctx context.Context) (bool, error) {
			stdout, stderr, code := kubectlRun(ctx, e, "", "-n", ns, "exec", "client", "--", "kipcheck", "get", "http://"+svc.Spec.ClusterIP+"/", "5s")
			last = stdout + stderr
			return code != 0 && strings.Contains(stderr, "connection refused"), nil
		})
		if err != nil {
			t.Fatalf("with no backends the cluster IP was never refused at once; last answer: %s", last)
		}
		if _, err := e.Kubectl(ctx, "-n", ns, "scale", "deployment/web", "--replicas=2"); err != nil {
			t.Fatal(err)
		}
		err = wait.PollUntilContextTimeout(ctx, time.Second, podTimeout+ruleTimeout, true, func(ctx context.Context) (bool, error) {
			stdout, stderr, code := kubectlRun(ctx, e, "", "-n", ns, "exec", "client", "--", "kipcheck", "get", "http://"+svc.Spec.ClusterIP+"/", "5s")
			last = stdout + stderr
			return code == 0, nil
		})
		if err != nil {
			t.Fatalf("scaled back to 2, the cluster IP never answered; last: %s", last)
		}
	})
}

// grantPodReader lets ns's default service account list its pods.
func grantPodReader(ctx context.Context, e *framework.Env, ns string) error {
	role := &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Name: "pod-reader"},
		Rules:      []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get", "list"}}},
	}
	if _, err := e.Client.RbacV1().Roles(ns).Create(ctx, role, metav1.CreateOptions{}); err != nil {
		return err
	}
	rb := &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "pod-reader"},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: "pod-reader"},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: "default", Namespace: ns}},
	}
	_, err := e.Client.RbacV1().RoleBindings(ns).Create(ctx, rb, metav1.CreateOptions{})
	return err
}
