//go:build e2e

package e2e

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/kip-dev/kip/internal/syncbuf"
	"github.com/kip-dev/kip/test/e2e/framework"
)

// idle keeps a busybox container running and ends it at once on SIGTERM (sh as PID 1
// ignores SIGTERM without a trap).
const idle = `trap 'exit 0' TERM; while true; do sleep 1 & wait $!; done`

// TestLogsOptions: kubectl logs honours --tail, --timestamps, --since-time, --since,
// --limit-bytes, -c in a two-container pod and --previous after a restart.
func TestLogsOptions(t *testing.T) {
	e := need(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	ns := e.Namespace(t)

	// "a" prints three lines, then (8 s later) a fourth: the gap is what --since/--since-time
	// cut through.
	pod := framework.Pod("logs",
		framework.Busybox("a", `echo line-1; echo line-2; echo line-3; sleep 8; echo line-4; `+idle),
		framework.Busybox("b", `echo from-b; `+idle))
	pod.Spec.TerminationGracePeriodSeconds = ptr.To[int64](5)
	if _, err := e.Client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.WaitForPod(ctx, ns, "logs", podTimeout, framework.Running); err != nil {
		t.Fatalf("%v\nevents:\n%s", err, e.EventsFor(ctx, ns, "logs"))
	}
	all, err := waitLogs(ctx, e, time.Minute, "line-4", "-n", ns, "logs", "logs", "-c", "a")
	if err != nil {
		t.Fatal(err)
	}
	if want := "line-1\nline-2\nline-3\nline-4\n"; all != want {
		t.Errorf("logs -c a = %q, want %q", all, want)
	}

	check := func(name, want string, args ...string) {
		t.Helper()
		out, err := e.Kubectl(ctx, append([]string{"-n", ns, "logs", "logs"}, args...)...)
		if err != nil {
			t.Errorf("%s: %v", name, err)
		} else if out != want {
			t.Errorf("logs %s = %q, want %q", strings.Join(args, " "), out, want)
		}
	}
	check("tail", "line-3\nline-4\n", "-c", "a", "--tail=2")
	check("tail 0", "", "-c", "a", "--tail=0")
	check("tail and limit-bytes", "line-4", "-c", "a", "--tail=1", "--limit-bytes=6")
	check("limit-bytes", "line-1\nli", "-c", "a", "--limit-bytes=9")
	check("second container", "from-b\n", "-c", "b")

	// --timestamps: every line is "<RFC 3339 time> <line>", times in order and recent.
	out, err := e.Kubectl(ctx, "-n", ns, "logs", "logs", "-c", "a", "--timestamps")
	if err != nil {
		t.Fatal(err)
	}
	stamps, lines, err := splitTimestamps(out)
	if err != nil {
		t.Fatalf("--timestamps: %v", err)
	}
	if want := []string{"line-1", "line-2", "line-3", "line-4"}; strings.Join(lines, ",") != strings.Join(want, ",") {
		t.Fatalf("--timestamps lines %q, want %q", lines, want)
	}
	for i, ts := range stamps {
		if d := time.Since(ts); d < 0 || d > 5*time.Minute {
			t.Errorf("timestamp %v of %s is %v from now", ts, lines[i], d)
		}
		if i > 0 && ts.Before(stamps[i-1]) {
			t.Errorf("timestamp of %s (%v) before the previous line's (%v)", lines[i], ts, stamps[i-1])
		}
	}
	gap := stamps[3].Sub(stamps[2])
	if gap < 5*time.Second {
		t.Fatalf("line-3 → line-4 %v apart, the container sleeps 8 s", gap)
	}
	mid := stamps[2].Add(gap / 2)
	check("since-time", "line-4\n", "-c", "a", "--since-time="+mid.UTC().Format(time.RFC3339Nano))
	// --since is relative to the cell's clock when the request arrives: ask for the seconds
	// back to the middle of the gap, which leaves gap/2 (≥ 2.5 s) for kubectl to get there.
	since := int(math.Ceil(time.Since(mid).Seconds()))
	check("since", "line-4\n", "-c", "a", fmt.Sprintf("--since=%ds", since))

	// No earlier run to show: an error saying so, as kubelet gives.
	if out, err := e.Kubectl(ctx, "-n", ns, "logs", "logs", "-c", "a", "--previous"); err == nil || !strings.Contains(err.Error(), "previous terminated container") {
		t.Errorf("logs --previous of a container that never restarted: %q, %v", out, err)
	}

	t.Run("previous", func(t *testing.T) { testLogsPrevious(t, e, ns) })
}

// testLogsPrevious: a container counts its runs in an emptyDir, prints the number and exits 1
// on the first run; on the second it stays up. --previous shows run 1, the current log run 2.
func testLogsPrevious(t *testing.T, e *framework.Env, ns string) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	for _, policy := range []corev1.RestartPolicy{corev1.RestartPolicyOnFailure, corev1.RestartPolicyAlways} {
		name := "prev-" + strings.ToLower(string(policy))
		t.Run(string(policy), func(t *testing.T) {
			c := framework.Busybox("count", `n=$(cat /data/n 2>/dev/null || echo 0); n=$((n+1)); echo $n > /data/n; `+
				`echo run-$n; if [ $n -lt 2 ]; then exit 1; fi; `+idle)
			c.VolumeMounts = []corev1.VolumeMount{{Name: "data", MountPath: "/data"}}
			pod := framework.Pod(name, c)
			pod.Spec.RestartPolicy = policy
			pod.Spec.TerminationGracePeriodSeconds = ptr.To[int64](5)
			pod.Spec.Volumes = []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}}
			if _, err := e.Client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
			got, err := e.WaitForPod(ctx, ns, name, podTimeout, func(p *corev1.Pod) bool {
				for _, cs := range p.Status.ContainerStatuses {
					if cs.RestartCount >= 1 && cs.State.Running != nil {
						return true
					}
				}
				return false
			})
			if err != nil {
				t.Fatalf("%v\nevents:\n%s", err, e.EventsFor(ctx, ns, name))
			}
			cs := got.Status.ContainerStatuses[0]
			if cs.RestartCount != 1 {
				t.Errorf("restartCount %d, want 1", cs.RestartCount)
			}
			if lt := cs.LastTerminationState.Terminated; lt == nil || lt.ExitCode != 1 {
				t.Errorf("lastState %+v, want terminated with exit code 1", cs.LastTerminationState)
			}
			cur, err := waitLogs(ctx, e, 30*time.Second, "run-2", "-n", ns, "logs", name)
			if err != nil {
				t.Fatal(err)
			}
			if cur != "run-2\n" {
				t.Errorf("current log %q, want run-2", cur)
			}
			prev, err := e.Kubectl(ctx, "-n", ns, "logs", name, "--previous")
			if err != nil {
				t.Fatalf("logs --previous: %v", err)
			}
			if prev != "run-1\n" {
				t.Errorf("logs --previous = %q, want run-1", prev)
			}
			if err := e.Client.CoreV1().Pods(ns).Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
				t.Error(err)
			}
		})
	}
}

// waitLogs runs kubectl with args until its output contains want (the line may not be
// written yet) or timeout passes; it returns that output.
func waitLogs(ctx context.Context, e *framework.Env, timeout time.Duration, want string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	var out string
	var err error
	for {
		out, err = e.Kubectl(ctx, args...)
		if err == nil && strings.Contains(out, want) {
			return out, nil
		}
		select {
		case <-ctx.Done():
			return out, fmt.Errorf("kubectl %s never showed %q: last output %q, error %v", strings.Join(args, " "), want, out, err)
		case <-tick.C:
		}
	}
}

// splitTimestamps splits "<RFC 3339 time> <text>" lines.
func splitTimestamps(out string) ([]time.Time, []string, error) {
	var stamps []time.Time
	var lines []string
	for _, l := range strings.Split(strings.TrimSuffix(out, "\n"), "\n") {
		ts, text, ok := strings.Cut(l, " ")
		if !ok {
			return nil, nil, fmt.Errorf("line %q has no timestamp", l)
		}
		tm, err := time.Parse(time.RFC3339Nano, ts)
		if err != nil {
			return nil, nil, fmt.Errorf("line %q: %w", l, err)
		}
		stamps = append(stamps, tm)
		lines = append(lines, text)
	}
	return stamps, lines, nil
}

// kubectlRun runs kubectl with stdin and returns stdout, stderr and its exit code (-1 when it
// did not run to an exit).
func kubectlRun(ctx context.Context, e *framework.Env, stdin string, args ...string) (string, string, int) {
	cmd := exec.CommandContext(ctx, e.CP.Kubectl(), append([]string{"--kubeconfig", e.CP.AdminKubeconfig()}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		code = ee.ExitCode()
	case err != nil:
		code = -1
	}
	return out.String(), errb.String(), code
}

// TestExec: kubectl exec prints the command's output, propagates its exit code, feeds it
// stdin and gives it a terminal with -it.
func TestExec(t *testing.T) {
	e := need(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	ns := e.Namespace(t)
	pod := framework.Pod("exec", framework.Busybox("main", idle), framework.Busybox("side", idle))
	pod.Spec.TerminationGracePeriodSeconds = ptr.To[int64](5)
	if _, err := e.Client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.WaitForPod(ctx, ns, "exec", podTimeout, framework.Running); err != nil {
		t.Fatalf("%v\nevents:\n%s", err, e.EventsFor(ctx, ns, "exec"))
	}
	tests := []struct {
		name           string
		stdin          string
		args           []string
		stdout, stderr string // stderr: a substring
		code           int
	}{
		{"output", "", []string{"-c", "main", "--", "echo", "hello-exec"}, "hello-exec\n", "", 0},
		{"other container", "", []string{"-c", "side", "--", "sh", "-c", "echo $HOSTNAME-side"}, "exec-side\n", "", 0},
		{"stderr", "", []string{"-c", "main", "--", "sh", "-c", "echo oops >&2"}, "", "oops", 0},
		{"exit code", "", []string{"-c", "main", "--", "sh", "-c", "exit 7"}, "", "", 7},
		{"stdin", "line one\nline two\n", []string{"-i", "-c", "main", "--", "cat"}, "line one\nline two\n", "", 0},
		{"stdin to wc", "a\nb\nc\n", []string{"-i", "-c", "main", "--", "wc", "-l"}, "3\n", "", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cctx, ccancel := context.WithTimeout(ctx, time.Minute)
			defer ccancel()
			stdout, stderr, code := kubectlRun(cctx, e, tt.stdin, append([]string{"-n", ns, "exec", "exec"}, tt.args...)...)
			if code != tt.code {
				t.Errorf("exit code %d, want %d (stderr %q)", code, tt.code, stderr)
			}
			if strings.TrimLeft(stdout, " ") != tt.stdout {
				t.Errorf("stdout %q, want %q", stdout, tt.stdout)
			}
			if !strings.Contains(stderr, tt.stderr) {
				t.Errorf("stderr %q does not contain %q", stderr, tt.stderr)
			}
		})
	}
	t.Run("tty", func(t *testing.T) { testExecTTY(ctx, t, e, ns) })
	// A container that is not in the pod is a clear error, not a hang.
	_, stderr, code := kubectlRun(ctx, e, "", "-n", ns, "exec", "exec", "-c", "nope", "--", "true")
	if code == 0 || !strings.Contains(stderr, "nope") {
		t.Errorf("exec in a missing container: exit %d, stderr %q", code, stderr)
	}
}

// testExecTTY: `kubectl exec -it` gives the command a terminal of the size of kubectl's own.
// kubectl only asks for a TTY when its stdin is a terminal, so it runs under script(1) in a
// pty of 30x100 whose input stays open (at EOF script would type into the terminal).
func testExecTTY(ctx context.Context, t *testing.T, e *framework.Env, ns string) {
	script, err := exec.LookPath("script")
	if err != nil {
		t.Skipf("no script(1) to give kubectl a terminal: %v", err)
	}
	kubectl := fmt.Sprintf("stty rows 30 cols 100; %s --kubeconfig %s -n %s exec -it exec -c main -- sh -c 'tty; stty size; exit 4'",
		e.CP.Kubectl(), e.CP.AdminKubeconfig(), ns)
	cctx, ccancel := context.WithTimeout(ctx, time.Minute)
	defer ccancel()
	cmd := exec.CommandContext(cctx, script, "-qec", kubectl, "/dev/null")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	defer stdin.Close()
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 4 {
		t.Errorf("exit: %v, want exit code 4 (output %q)", err, out)
	}
	if !regexp.MustCompile(`^/dev/pts/\d+\r\n30 100\r\n`).Match(out) {
		t.Errorf("output %q, want a /dev/pts terminal of 30 rows and 100 columns", out)
	}
}

// TestPortForward: kubectl port-forward to busybox httpd in a cell, and an HTTP GET through
// the forwarded local port.
func TestPortForward(t *testing.T) {
	e := need(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	ns := e.Namespace(t)
	pod := framework.Pod("pf", framework.Busybox("httpd",
		`mkdir -p /www && echo kip-port-forward > /www/index.html && exec httpd -f -p 8080 -h /www`))
	pod.Spec.TerminationGracePeriodSeconds = ptr.To[int64](3) // httpd as PID 1 ignores SIGTERM
	if _, err := e.Client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.WaitForPod(ctx, ns, "pf", podTimeout, framework.Running); err != nil {
		t.Fatalf("%v\nevents:\n%s", err, e.EventsFor(ctx, ns, "pf"))
	}
	port, _ := portForward(ctx, t, e, ns, "pf", 8080)
	client := &http.Client{Timeout: 10 * time.Second}
	body, err := getWithRetry(ctx, client, "http://127.0.0.1:"+port+"/", 30*time.Second)
	if err != nil {
		t.Fatalf("through port-forward: %v", err)
	}
	if body != "kip-port-forward\n" {
		t.Errorf("body %q, want kip-port-forward", body)
	}
	// A second request over a fresh connection through the same forward.
	if body, err := getWithRetry(ctx, client, "http://127.0.0.1:"+port+"/index.html", 10*time.Second); err != nil || body != "kip-port-forward\n" {
		t.Errorf("second request: %q, %v", body, err)
	}

	// Nothing listens on 9999: the connection fails and kubectl reports why, as with kubelet.
	refused, stderr := portForward(ctx, t, e, ns, "pf", 9999)
	if body, err := (&http.Client{Timeout: 10 * time.Second}).Get("http://127.0.0.1:" + refused + "/"); err == nil {
		body.Body.Close()
		t.Errorf("GET through a forward to a closed port answered %s", body.Status)
	}
	wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
	defer wcancel()
	for !strings.Contains(stderr(), "connection refused") {
		select {
		case <-wctx.Done():
			t.Fatalf("kubectl port-forward to a closed port did not report the refusal: stderr %q", stderr())
		case <-time.After(100 * time.Millisecond):
		}
	}
	t.Logf("kubectl port-forward to a closed port: %s", strings.TrimSpace(stderr()))
}

// portForward runs `kubectl port-forward pod/<pod> :<port>` until t ends and returns the local
// port it listens on and a function returning its stderr so far.
func portForward(ctx context.Context, t *testing.T, e *framework.Env, ns, pod string, port int) (string, func() string) {
	t.Helper()
	cmd := exec.CommandContext(ctx, e.CP.Kubectl(), "--kubeconfig", e.CP.AdminKubeconfig(), "-n", ns,
		"port-forward", "pod/"+pod, "--address=127.0.0.1", fmt.Sprintf(":%d", port))
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr := &syncbuf.Buffer{}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	// "Forwarding from 127.0.0.1:41234 -> 8080"
	re := regexp.MustCompile(fmt.Sprintf(`Forwarding from 127\.0\.0\.1:(\d+) -> %d`, port))
	ports := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if m := re.FindStringSubmatch(sc.Text()); m != nil {
				ports <- m[1]
				break
			}
		}
		close(ports)
		for sc.Scan() { // keep draining so kubectl never blocks on its stdout
		}
	}()
	select {
	case p, ok := <-ports:
		if !ok {
			t.Fatalf("kubectl port-forward ended without forwarding: %s", stderr.String())
		}
		return p, stderr.String
	case <-time.After(time.Minute):
		t.Fatalf("kubectl port-forward printed no local port within a minute: %s", stderr.String())
	}
	return "", nil
}
