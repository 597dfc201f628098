//go:build e2e

package e2e

import (
	"context"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/kip-dev/kip/test/e2e/framework"
)

// ephemeralState returns the status of the pod's ephemeral container name, or nil.
func ephemeralState(p *corev1.Pod, name string) *corev1.ContainerStatus {
	for i := range p.Status.EphemeralContainerStatuses {
		if p.Status.EphemeralContainerStatuses[i].Name == name {
			return &p.Status.EphemeralContainerStatuses[i]
		}
	}
	return nil
}

// TestEphemeralContainers: kubectl debug adds an ephemeral container to a running pod; it runs
// once, in the target container's process namespace (it sees the target's process), its status
// reaches ephemeralContainerStatuses and kubectl logs reads it; kubectl debug -i attaches to a
// second one's stdin.
func TestEphemeralContainers(t *testing.T) {
	e := need(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	ns := e.Namespace(t)
	pod := framework.Pod("debugme", framework.Busybox("app", `echo app-marker-process; `+idle))
	pod.Spec.RestartPolicy = corev1.RestartPolicyNever
	pod.Spec.TerminationGracePeriodSeconds = ptr.To[int64](5)
	if _, err := e.Client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.WaitForPod(ctx, ns, "debugme", podTimeout, framework.Running); err != nil {
		t.Fatalf("%v\nevents:\n%s", err, e.EventsFor(ctx, ns, "debugme"))
	}
	terminated := func(name string) func(*corev1.Pod) bool {
		return func(p *corev1.Pod) bool {
			cs := ephemeralState(p, name)
			return cs != nil && cs.State.Terminated != nil
		}
	}

	t.Run("debug", func(t *testing.T) {
		out, err := e.Kubectl(ctx, "-n", ns, "debug", "debugme", "--image=busybox", "-c", "dbg", "--target=app",
			"--", "sh", "-c", "echo debug-ok; ps -o args | grep -c '^sh -c echo app-marker'; sleep 1")
		if err != nil {
			t.Fatalf("kubectl debug: %v: %s", err, out)
		}
		p, err := e.WaitForPod(ctx, ns, "debugme", 2*time.Minute, terminated("dbg"))
		if err != nil {
			t.Fatalf("%v\nevents:\n%s", err, e.EventsFor(ctx, ns, "debugme"))
		}
		if cs := ephemeralState(p, "dbg"); cs.State.Terminated.ExitCode != 0 || cs.RestartCount != 0 {
			t.Fatalf("dbg ended %+v, want exit 0 without restarts", cs.State.Terminated)
		}
		// debug-ok, then 1: the app's process is visible through the shared PID namespace.
		if out, err := waitLogs(ctx, e, 30*time.Second, "debug-ok\n1\n", "-n", ns, "logs", "debugme", "-c", "dbg"); err != nil {
			t.Fatalf("logs %q: %v", out, err)
		}
		if p.Status.Phase != corev1.PodRunning || p.Status.ContainerStatuses[0].State.Running == nil {
			t.Fatalf("pod %s, app %+v: the ephemeral container must leave the pod running", p.Status.Phase, p.Status.ContainerStatuses[0].State)
		}
	})

	// A reference that cannot be resolved: the container waits with kubelet's
	// CreateContainerConfigError and starts once the Secret exists.
	t.Run("unresolved reference", func(t *testing.T) {
		p, err := e.Client.CoreV1().Pods(ns).Get(ctx, "debugme", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		p.Spec.EphemeralContainers = append(p.Spec.EphemeralContainers, corev1.EphemeralContainer{
			EphemeralContainerCommon: corev1.EphemeralContainerCommon{
				Name: "dbg-secret", Image: "busybox", Command: []string{"sh", "-c", "echo token:$TOKEN"},
				Env: []corev1.EnvVar{{Name: "TOKEN", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{
					LocalObjectReference: corev1.LocalObjectReference{Name: "eph-secret"}, Key: "token",
				}}}},
			},
		})
		if _, err := e.Client.CoreV1().Pods(ns).UpdateEphemeralContainers(ctx, "debugme", p, metav1.UpdateOptions{}); err != nil {
			t.Fatalf("adding dbg-secret: %v", err)
		}
		if _, err := e.WaitForPod(ctx, ns, "debugme", time.Minute, func(p *corev1.Pod) bool {
			cs := ephemeralState(p, "dbg-secret")
			return cs != nil && cs.State.Waiting != nil && cs.State.Waiting.Reason == "CreateContainerConfigError"
		}); err != nil {
			t.Fatalf("%v\nevents:\n%s", err, e.EventsFor(ctx, ns, "debugme"))
		}
		secret := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "eph-secret"}, StringData: map[string]string{"token": "s3cr3t"}}
		if _, err := e.Client.CoreV1().Secrets(ns).Create(ctx, secret, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		p, err = e.WaitForPod(ctx, ns, "debugme", 2*time.Minute, terminated("dbg-secret"))
		if err != nil {
			t.Fatalf("%v\nevents:\n%s", err, e.EventsFor(ctx, ns, "debugme"))
		}
		if cs := ephemeralState(p, "dbg-secret"); cs.State.Terminated.ExitCode != 0 {
			t.Fatalf("dbg-secret ended %+v, want exit 0", cs.State.Terminated)
		}
		if out, err := waitLogs(ctx, e, 30*time.Second, "token:s3cr3t", "-n", ns, "logs", "debugme", "-c", "dbg-secret"); err != nil {
			t.Fatalf("logs %q: %v", out, err)
		}
	})

	t.Run("interactive", func(t *testing.T) {
		cctx, ccancel := context.WithTimeout(ctx, 2*time.Minute)
		defer ccancel()
		stdout, stderr, code := kubectlRun(cctx, e, "hello\n", "-n", ns, "debug", "debugme", "-i", "--image=busybox", "-c", "dbg-i",
			"--", "sh", "-c", "read line; echo eph:$line")
		if code != 0 {
			t.Fatalf("kubectl debug -i: exit %d, stdout %q, stderr %q", code, stdout, stderr)
		}
		p, err := e.WaitForPod(ctx, ns, "debugme", time.Minute, terminated("dbg-i"))
		if err != nil {
			t.Fatalf("%v\nevents:\n%s", err, e.EventsFor(ctx, ns, "debugme"))
		}
		if cs := ephemeralState(p, "dbg-i"); cs.State.Terminated.ExitCode != 0 {
			t.Fatalf("dbg-i ended %+v, want exit 0", cs.State.Terminated)
		}
		if out, err := waitLogs(ctx, e, 30*time.Second, "eph:hello", "-n", ns, "logs", "debugme", "-c", "dbg-i"); err != nil {
			t.Fatalf("logs %q: %v (kubectl stdout %q)", out, err, stdout)
		}
		// The first one is still there, still terminated: nothing restarted it.
		if cs := ephemeralState(p, "dbg"); cs == nil || cs.State.Terminated == nil || cs.RestartCount != 0 {
			t.Fatalf("dbg is now %+v, want still terminated", cs)
		}
	})
}
