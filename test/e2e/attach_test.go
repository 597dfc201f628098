//go:build e2e

package e2e

import (
	"bufio"
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/kip-dev/kip/test/e2e/framework"
)

// TestAttach: kubectl attach -i writes to a container's held-open stdin (stdinOnce closes
// it after the attach, so `read` returns and the container exits 0), and kubectl attach
// streams a running container's output.
func TestAttach(t *testing.T) {
	e := need(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	ns := e.Namespace(t)
	reader := framework.Busybox("reader", `read line; echo got:$line`)
	reader.Stdin, reader.StdinOnce = true, true
	ticker := framework.Busybox("ticker", `trap 'exit 0' TERM; i=0; while true; do echo tick-$i; i=$((i+1)); sleep 0.1; done`)
	term := framework.Busybox("term", `read line; echo term:$line; `+idle)
	term.Stdin, term.TTY = true, true
	pod := framework.Pod("attach", reader, ticker, term)
	pod.Spec.RestartPolicy = corev1.RestartPolicyNever
	pod.Spec.TerminationGracePeriodSeconds = ptr.To[int64](5)
	if _, err := e.Client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.WaitForPod(ctx, ns, "attach", podTimeout, framework.Running); err != nil {
		t.Fatalf("%v\nevents:\n%s", err, e.EventsFor(ctx, ns, "attach"))
	}

	t.Run("stdin", func(t *testing.T) {
		cctx, ccancel := context.WithTimeout(ctx, time.Minute)
		defer ccancel()
		stdout, stderr, code := kubectlRun(cctx, e, "hello\n", "-n", ns, "attach", "attach", "-i", "-c", "reader")
		if code != 0 || !strings.Contains(stdout, "got:hello") {
			t.Fatalf("kubectl attach -i: exit %d, stdout %q, stderr %q", code, stdout, stderr)
		}
		exited := func(p *corev1.Pod) bool {
			for _, cs := range p.Status.ContainerStatuses {
				if cs.Name == "reader" {
					return cs.State.Terminated != nil
				}
			}
			return false
		}
		p, err := e.WaitForPod(ctx, ns, "attach", time.Minute, exited)
		if err != nil {
			t.Fatal(err)
		}
		for _, cs := range p.Status.ContainerStatuses {
			if cs.Name == "reader" && cs.State.Terminated.ExitCode != 0 {
				t.Fatalf("reader exited %d (%s)", cs.State.Terminated.ExitCode, cs.State.Terminated.Reason)
			}
		}
		if out, err := waitLogs(ctx, e, 30*time.Second, "got:hello\n", "-n", ns, "logs", "attach", "-c", "reader"); err != nil {
			t.Fatalf("logs %q: %v", out, err)
		}
		// An exited container cannot be attached to: a clear error, not a hang.
		_, stderr, code = kubectlRun(cctx, e, "", "-n", ns, "attach", "attach", "-c", "reader")
		if code == 0 {
			t.Fatalf("attach to an exited container succeeded (stderr %q)", stderr)
		}
	})

	// A terminal container reads its input through its terminal and writes its output there.
	t.Run("tty", func(t *testing.T) {
		cctx, ccancel := context.WithTimeout(ctx, time.Minute)
		defer ccancel()
		if _, stderr, code := kubectlRun(cctx, e, "hello\n", "-n", ns, "attach", "attach", "-i", "-c", "term"); code != 0 {
			t.Fatalf("kubectl attach -i: exit %d, stderr %q", code, stderr)
		}
		if out, err := waitLogs(ctx, e, 30*time.Second, "term:hello", "-n", ns, "logs", "attach", "-c", "term"); err != nil {
			t.Fatalf("logs %q: %v", out, err)
		}
	})

	t.Run("output", func(t *testing.T) {
		cctx, ccancel := context.WithTimeout(ctx, time.Minute)
		defer ccancel()
		cmd := exec.CommandContext(cctx, e.CP.Kubectl(), "--kubeconfig", e.CP.AdminKubeconfig(), "-n", ns, "attach", "attach", "-c", "ticker")
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
		var ticks []string
		sc := bufio.NewScanner(out)
		for len(ticks) < 3 && sc.Scan() {
			if strings.HasPrefix(sc.Text(), "tick-") {
				ticks = append(ticks, sc.Text())
			}
		}
		if len(ticks) < 3 {
			t.Fatalf("kubectl attach streamed %q before ending (%v)", ticks, sc.Err())
		}
	})
}
