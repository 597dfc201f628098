//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/utils/ptr"

	"github.com/kip-dev/kip/internal/cloud"
	"github.com/kip-dev/kip/internal/metrics"
	"github.com/kip-dev/kip/test/e2e/framework"
)

const (
	// podTimeout bounds a pod reaching Running/Succeeded: scheduling, a cell boot, an image
	// pull from the local registry and a container start, on a loaded 2-core machine.
	podTimeout = 2 * time.Minute
	// cellGoneTimeout bounds a finished pod's cell being terminated ("within seconds").
	cellGoneTimeout = 30 * time.Second
)

// TestJobEcho: a Job echoing hello-kip completes, its logs say so, its cell is gone right
// after, and the pod's Events tell the story.
func TestJobEcho(t *testing.T) {
	e := need(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	ns := e.Namespace(t)

	before, err := kipMetrics(ctx, e)
	if err != nil {
		t.Fatalf("kip's metrics before the job: %v", err)
	}
	tmpl := framework.Pod("", framework.Busybox("echo", "echo hello-kip"))
	job := &batchv1.Job{
		ObjectMeta: metav1.ObjectMeta{Name: "hello"},
		Spec: batchv1.JobSpec{
			BackoffLimit: ptr.To[int32](0),
			Template:     corev1.PodTemplateSpec{Spec: tmpl.Spec},
		},
	}
	if _, err := e.Client.BatchV1().Jobs(ns).Create(ctx, job, metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating job: %v", err)
	}
	wctx, wcancel := context.WithTimeout(ctx, podTimeout)
	defer wcancel()
	_, err = framework.Until(wctx, e.Client.BatchV1().Jobs(ns), fields.OneTermEqualSelector("metadata.name", "hello"),
		func(ev watch.Event) (bool, error) {
			j, ok := ev.Object.(*batchv1.Job)
			if !ok {
				return false, nil
			}
			for _, c := range j.Status.Conditions {
				if c.Status == corev1.ConditionTrue && c.Type == batchv1.JobFailed {
					return false, fmt.Errorf("job failed: %s: %s", c.Reason, c.Message)
				}
			}
			for _, c := range j.Status.Conditions {
				if c.Status == corev1.ConditionTrue && c.Type == batchv1.JobComplete {
					return true, nil
				}
			}
			return false, nil
		})
	pods, lerr := e.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "job-name=hello"})
	if lerr != nil || len(pods.Items) != 1 {
		t.Fatalf("listing the job's pods: %v (%d pods)", lerr, len(pods.Items))
	}
	pod := &pods.Items[0]
	if err != nil {
		t.Fatalf("waiting for job Complete: %v; pod: %s\nevents:\n%s", err, framework.DescribePod(pod), e.EventsFor(ctx, ns, pod.Name))
	}
	if pod.Spec.NodeName != e.NodeName {
		t.Errorf("pod ran on node %q, want %q", pod.Spec.NodeName, e.NodeName)
	}
	if pod.Status.PodIP == "" || pod.Status.PodIP == e.BridgeIP.String() {
		t.Errorf("pod IP %q: want the cell's own address", pod.Status.PodIP)
	}

	out, err := e.Kubectl(ctx, "-n", ns, "logs", "job/hello")
	if err != nil {
		t.Errorf("kubectl logs: %v", err)
	} else if strings.TrimSpace(out) != "hello-kip" {
		t.Errorf("kubectl logs = %q, want hello-kip", out)
	}

	// kip's own metrics, read through the node proxy, counted the pod's start phases.
	waitMetricsGrew(t, ctx, e, before)
	// kubelet's own /metrics, which clients of any node scrape, counts the start too.
	kubelet, err := nodeMetrics(ctx, e, metrics.KubeletPath)
	if err != nil {
		t.Fatalf("kubelet's metrics: %v", err)
	}
	const podStarts = metrics.KubeletPodStartDuration + "_count"
	if kubelet[podStarts] <= before[podStarts] {
		t.Errorf("%s = %v after the job, was %v before: the start was not counted", podStarts, kubelet[podStarts], before[podStarts])
	}

	if _, err := e.WaitForCells(ctx, framework.PodCells(ns, pod.Name), cellGoneTimeout, framework.NoCells); err != nil {
		t.Errorf("cell not terminated after the job completed: %v", err)
	}

	// The story: scheduled by the scheduler, then kip's steps and kubelet-style container events.
	for _, reason := range []string{"Scheduled", "InstanceTypeSelected", "CellLaunched", "CellReady", "Pulled", "Started", "CellTerminated"} {
		if _, err := e.WaitForEvent(ctx, ns, pod.Name, reason, 30*time.Second); err != nil {
			t.Errorf("no %s event: %v", reason, err)
		}
	}
	t.Logf("events of %s:\n%s", pod.Name, e.EventsFor(ctx, ns, pod.Name))
}

// TestExitCode: a container exiting 3 with restartPolicy Never fails the pod with exit code 3
// and reason Error, as kubelet reports it.
func TestExitCode(t *testing.T) {
	e := need(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	ns := e.Namespace(t)
	pod := framework.Pod("exit3", framework.Busybox("main", "echo bye; exit 3"))
	if _, err := e.Client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	got, err := e.WaitForPod(ctx, ns, "exit3", podTimeout, framework.Finished)
	if err != nil {
		t.Fatalf("%v\nevents:\n%s", err, e.EventsFor(ctx, ns, "exit3"))
	}
	if got.Status.Phase != corev1.PodFailed {
		t.Errorf("phase %s, want Failed: %s", got.Status.Phase, framework.DescribePod(got))
	}
	if len(got.Status.ContainerStatuses) != 1 || got.Status.ContainerStatuses[0].State.Terminated == nil {
		t.Fatalf("no terminated container status: %s", framework.DescribePod(got))
	}
	term := got.Status.ContainerStatuses[0].State.Terminated
	if term.ExitCode != 3 || term.Reason != "Error" {
		t.Errorf("terminated exit %d reason %q, want 3 Error", term.ExitCode, term.Reason)
	}
	if _, err := e.WaitForCells(ctx, framework.PodCells(ns, "exit3"), cellGoneTimeout, framework.NoCells); err != nil {
		t.Errorf("cell of the failed pod not terminated: %v", err)
	}
}

// TestEnvExpandedOnce: env reaches the container exactly as kubelet builds it: a Secret value
// is never $(VAR)-expanded ("pa$$word" stays), a value referring to it expands once, "$$" in a
// literal value becomes "$", and $(VAR) in args expands from the pod's env, not the image's.
func TestEnvExpandedOnce(t *testing.T) {
	e := need(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	ns := e.Namespace(t)
	secret := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "creds"}, StringData: map[string]string{"password": "pa$$word"}}
	if _, err := e.Client.CoreV1().Secrets(ns).Create(ctx, secret, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	c := corev1.Container{Name: "main", Image: "busybox",
		Command: []string{"sh", "-c", `printf '%s|%s|%s|%s\n' "$S" "$E" "$L" "$1"`, "sh", "$(S)/$(PATH)"},
		Env: []corev1.EnvVar{
			{Name: "S", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{
				LocalObjectReference: corev1.LocalObjectReference{Name: "creds"}, Key: "password"}}},
			{Name: "E", Value: "$(S)-x"},
			{Name: "L", Value: "a$$b"},
		}}
	pod := framework.Pod("env", c)
	if _, err := e.Client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	got, err := e.WaitForPod(ctx, ns, "env", podTimeout, framework.Finished)
	if err != nil {
		t.Fatalf("%v\nevents:\n%s", err, e.EventsFor(ctx, ns, "env"))
	}
	if got.Status.Phase != corev1.PodSucceeded {
		t.Fatalf("phase %s: %s", got.Status.Phase, framework.DescribePod(got))
	}
	out, err := e.Kubectl(ctx, "-n", ns, "logs", "env")
	if err != nil {
		t.Fatalf("kubectl logs: %v", err)
	}
	if want := "pa$$word|pa$$word-x|a$b|pa$$word/$(PATH)"; strings.TrimSpace(out) != want {
		t.Errorf("the container saw %q, want %q", strings.TrimSpace(out), want)
	}
}

// TestActiveDeadline: a pod running past spec.activeDeadlineSeconds is stopped and ends
// Failed with kubelet's reason DeadlineExceeded; its cell is terminated and its logs stay.
func TestActiveDeadline(t *testing.T) {
	e := need(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	ns := e.Namespace(t)
	pod := framework.Pod("deadline", framework.Busybox("main", "echo started; exec sleep 3600"))
	pod.Spec.ActiveDeadlineSeconds = ptr.To[int64](5)
	pod.Spec.TerminationGracePeriodSeconds = ptr.To[int64](1)
	if _, err := e.Client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	got, err := e.WaitForPod(ctx, ns, "deadline", podTimeout, framework.Failed)
	if err != nil {
		t.Fatalf("%v\nevents:\n%s", err, e.EventsFor(ctx, ns, "deadline"))
	}
	if got.Status.Reason != "DeadlineExceeded" || !strings.Contains(got.Status.Message, "longer than the specified deadline") {
		t.Errorf("reason %q message %q, want kubelet's DeadlineExceeded", got.Status.Reason, got.Status.Message)
	}
	if term := got.Status.ContainerStatuses[0].State.Terminated; term == nil {
		t.Errorf("container not terminated: %s", framework.DescribePod(got))
	}
	if _, err := e.WaitForCells(ctx, framework.PodCells(ns, "deadline"), cellGoneTimeout, framework.NoCells); err != nil {
		t.Errorf("cell not terminated after the deadline: %v", err)
	}
	if out, err := e.Kubectl(ctx, "-n", ns, "logs", "deadline"); err != nil || strings.TrimSpace(out) != "started" {
		t.Errorf("kubectl logs of the killed pod = %q, %v; want started", out, err)
	}
	if _, err := e.WaitForEvent(ctx, ns, "deadline", "DeadlineExceeded", 30*time.Second); err != nil {
		t.Error(err)
	}
}

// TestSecurityContext: the pod-level securityContext reaches every container (runAsUser,
// runAsGroup, supplementalGroups, fsGroup), allowPrivilegeEscalation: false sets no_new_privs,
// and capabilities drop/add shape the bounding set; a privileged container (allowed by the
// suite's node.allowPrivileged) runs privileged.
func TestSecurityContext(t *testing.T) {
	e := need(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	ns := e.Namespace(t)
	c := framework.Busybox("main", `echo "$(id -u) $(id -g) $(id -G)"; grep -E '^(NoNewPrivs|CapBnd)' /proc/self/status`)
	c.SecurityContext = &corev1.SecurityContext{
		AllowPrivilegeEscalation: ptr.To(false),
		Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}, Add: []corev1.Capability{"NET_BIND_SERVICE"}},
	}
	pod := framework.Pod("secure", c)
	pod.Spec.SecurityContext = &corev1.PodSecurityContext{
		RunAsUser: ptr.To[int64](1000), RunAsGroup: ptr.To[int64](3000),
		SupplementalGroups: []int64{4000}, FSGroup: ptr.To[int64](2000),
	}
	if _, err := e.Client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	got, err := e.WaitForPod(ctx, ns, "secure", podTimeout, framework.Finished)
	if err != nil {
		t.Fatalf("%v\nevents:\n%s", err, e.EventsFor(ctx, ns, "secure"))
	}
	if got.Status.Phase != corev1.PodSucceeded {
		t.Fatalf("phase %s: %s", got.Status.Phase, framework.DescribePod(got))
	}
	out, err := e.Kubectl(ctx, "-n", ns, "logs", "secure")
	if err != nil {
		t.Fatalf("kubectl logs: %v", err)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	fields := map[string]string{}
	for _, l := range lines[1:] {
		k, v, _ := strings.Cut(l, ":")
		fields[k] = strings.TrimSpace(v)
	}
	ids := strings.Fields(lines[0])
	if len(ids) > 2 {
		slices.Sort(ids[2:]) // the kernel keeps groups sorted
	}
	if len(lines) != 3 || strings.Join(ids, " ") != "1000 3000 2000 3000 4000" {
		t.Errorf("id: %q, want uid 1000, gid 3000, groups 2000 3000 4000 (all output: %q)", lines[0], out)
	}
	if fields["NoNewPrivs"] != "1" {
		t.Errorf("NoNewPrivs %q, want 1 (allowPrivilegeEscalation: false)", fields["NoNewPrivs"])
	}
	if fields["CapBnd"] != "0000000000000400" {
		t.Errorf("CapBnd %q, want only CAP_NET_BIND_SERVICE (0x400)", fields["CapBnd"])
	}

	// The suite's kip has node.allowPrivileged (main_test.go): a privileged container runs
	// as runc's do under containerd, with every capability, no seccomp filter (even under
	// RuntimeDefault), a writable /sys, /proc unmasked and the cell's devices.
	script := `grep -E '^(CapBnd|Seccomp):' /proc/self/status; ` +
		`grep -E ' /proc/(sys|kcore|keys|bus) ' /proc/mounts || echo proc-unmasked; grep -E ' /sys (sysfs|cgroup) ' /proc/mounts; ls /dev`
	priv := framework.Pod("privileged", framework.Busybox("main", script))
	priv.Spec.SecurityContext = &corev1.PodSecurityContext{SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault}}
	priv.Spec.Containers[0].SecurityContext = &corev1.SecurityContext{Privileged: ptr.To(true)}
	if _, err := e.Client.CoreV1().Pods(ns).Create(ctx, priv, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	got, err = e.WaitForPod(ctx, ns, "privileged", podTimeout, framework.Finished)
	if err != nil {
		t.Fatalf("%v\nevents:\n%s", err, e.EventsFor(ctx, ns, "privileged"))
	}
	out, err = e.Kubectl(ctx, "-n", ns, "logs", "privileged")
	if err != nil {
		t.Fatal(err)
	}
	lines = strings.Split(strings.TrimSpace(out), "\n")
	pfields := map[string]string{}
	for _, l := range lines {
		if k, v, ok := strings.Cut(l, ":"); ok {
			pfields[k] = strings.TrimSpace(v)
		}
	}
	// Every capability the cell has: on the local backend, this process's (the host's).
	self, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	want := ""
	for _, l := range strings.Split(string(self), "\n") {
		if v, ok := strings.CutPrefix(l, "CapBnd:"); ok {
			want = strings.TrimSpace(v)
		}
	}
	if pfields["CapBnd"] != want {
		t.Errorf("privileged: CapBnd %q, want every capability the cell has, %s", pfields["CapBnd"], want)
	}
	if pfields["Seccomp"] != "0" {
		t.Errorf("privileged: Seccomp %q, want 0 (no filter) even under the pod's RuntimeDefault", pfields["Seccomp"])
	}
	if !strings.Contains(out, "proc-unmasked") {
		t.Errorf("privileged: /proc has masked or read-only paths mounted: %q", out)
	}
	if strings.Contains(out, " /sys sysfs ro") {
		t.Errorf("privileged: /sys is read-only: %q", out)
	}
	// A device of the cell (the host's /dev on the local backend) that runc gives no
	// unprivileged container.
	if _, err := os.Stat("/dev/kmsg"); err == nil && !slices.Contains(strings.Fields(out), "kmsg") {
		t.Errorf("privileged: /dev lacks the cell's kmsg: %q", out)
	}
}

// TestSysctls: kubelet's safe sysctls reach the pod (net.* in the cell's network namespace,
// kernel.shm_rmid_forced in the container's IPC one); an unsafe one fails the pod with
// kubelet's SysctlForbidden before any cell launches.
func TestSysctls(t *testing.T) {
	e := need(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	ns := e.Namespace(t)
	pod := framework.Pod("sysctls", framework.Busybox("main",
		`cat /proc/sys/net/ipv4/ip_local_port_range /proc/sys/kernel/shm_rmid_forced`))
	pod.Spec.SecurityContext = &corev1.PodSecurityContext{Sysctls: []corev1.Sysctl{
		{Name: "net.ipv4.ip_local_port_range", Value: "20000 30000"},
		{Name: "kernel.shm_rmid_forced", Value: "1"},
	}}
	if _, err := e.Client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	got, err := e.WaitForPod(ctx, ns, "sysctls", podTimeout, framework.Finished)
	if err != nil {
		t.Fatalf("%v\nevents:\n%s", err, e.EventsFor(ctx, ns, "sysctls"))
	}
	if got.Status.Phase != corev1.PodSucceeded {
		t.Fatalf("phase %s: %s", got.Status.Phase, framework.DescribePod(got))
	}
	out, err := e.Kubectl(ctx, "-n", ns, "logs", "sysctls")
	if err != nil {
		t.Fatalf("kubectl logs: %v", err)
	}
	if f := strings.Fields(out); strings.Join(f, " ") != "20000 30000 1" {
		t.Errorf("the container saw %q, want 20000 30000 and 1", out)
	}

	unsafe := framework.Pod("unsafe", framework.Busybox("main", "true"))
	unsafe.Spec.SecurityContext = &corev1.PodSecurityContext{Sysctls: []corev1.Sysctl{{Name: "kernel.msgmax", Value: "1"}}}
	if _, err := e.Client.CoreV1().Pods(ns).Create(ctx, unsafe, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	failed, err := e.WaitForPod(ctx, ns, "unsafe", podTimeout, framework.Failed)
	if err != nil {
		t.Fatalf("%v\nevents:\n%s", err, e.EventsFor(ctx, ns, "unsafe"))
	}
	if failed.Status.Reason != "SysctlForbidden" || !strings.Contains(failed.Status.Message, "spec.securityContext.sysctls[0]") {
		t.Errorf("reason %q message %q, want SysctlForbidden naming the field", failed.Status.Reason, failed.Status.Message)
	}
	if cells, err := e.Cells(ctx, framework.PodCells(ns, "unsafe")); err != nil || len(cells) != 0 {
		t.Errorf("cells for a refused pod: %v %v", cells, err)
	}
}

// TestPodSharesIPC: as on kubelet, a pod's containers share one IPC namespace: a POSIX
// message queue an init container creates is there for the main container.
func TestPodSharesIPC(t *testing.T) {
	e := need(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	ns := e.Namespace(t)
	pod := framework.Pod("ipc", framework.Busybox("main", "ls /dev/mqueue"))
	pod.Spec.InitContainers = []corev1.Container{framework.Busybox("mkqueue", "touch /dev/mqueue/kip-shared")}
	if _, err := e.Client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	got, err := e.WaitForPod(ctx, ns, "ipc", podTimeout, framework.Finished)
	if err != nil {
		t.Fatalf("%v\nevents:\n%s", err, e.EventsFor(ctx, ns, "ipc"))
	}
	if got.Status.Phase != corev1.PodSucceeded {
		t.Fatalf("phase %s: %s", got.Status.Phase, framework.DescribePod(got))
	}
	out, err := e.Kubectl(ctx, "-n", ns, "logs", "ipc", "-c", "main")
	if err != nil || !strings.Contains(out, "kip-shared") {
		t.Errorf("the main container's /dev/mqueue lists %q (%v); want the init container's queue", out, err)
	}
}

// TestReadinessGate: a pod whose readiness gate another controller has not set is not Ready,
// however ready its containers; setting the condition in the API makes it Ready, and kip's
// status updates keep the condition.
func TestReadinessGate(t *testing.T) {
	e := need(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	ns := e.Namespace(t)
	const gate corev1.PodConditionType = "example.com/lb-ready"
	pod := framework.Pod("gated", framework.Busybox("main", "exec sleep 3600"))
	pod.Spec.RestartPolicy = corev1.RestartPolicyAlways
	pod.Spec.ReadinessGates = []corev1.PodReadinessGate{{ConditionType: gate}}
	pod.Spec.TerminationGracePeriodSeconds = ptr.To[int64](1) // sleep as PID 1 ignores SIGTERM
	if _, err := e.Client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	condition := func(p *corev1.Pod, typ corev1.PodConditionType) *corev1.PodCondition {
		for i := range p.Status.Conditions {
			if p.Status.Conditions[i].Type == typ {
				return &p.Status.Conditions[i]
			}
		}
		return nil
	}
	got, err := e.WaitForPod(ctx, ns, "gated", podTimeout, func(p *corev1.Pod) bool {
		c := condition(p, corev1.ContainersReady)
		return c != nil && c.Status == corev1.ConditionTrue
	})
	if err != nil {
		t.Fatalf("%v\nevents:\n%s", err, e.EventsFor(ctx, ns, "gated"))
	}
	if c := condition(got, corev1.PodReady); c == nil || c.Status != corev1.ConditionFalse || c.Reason != "ReadinessGatesNotReady" {
		t.Errorf("Ready %+v with the gate unset, want False ReadinessGatesNotReady", c)
	}
	patch := fmt.Sprintf(`{"status":{"conditions":[{"type":%q,"status":"True"}]}}`, gate)
	if _, err := e.Client.CoreV1().Pods(ns).Patch(ctx, "gated", types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{}, "status"); err != nil {
		t.Fatal(err)
	}
	got, err = e.WaitForPod(ctx, ns, "gated", 30*time.Second, func(p *corev1.Pod) bool {
		c := condition(p, corev1.PodReady)
		return c != nil && c.Status == corev1.ConditionTrue
	})
	if err != nil {
		t.Fatalf("the pod did not become Ready once its gate was True: %v", err)
	}
	if c := condition(got, gate); c == nil || c.Status != corev1.ConditionTrue {
		t.Errorf("the gate's condition was overwritten: %+v", got.Status.Conditions)
	}
}

// TestProbeEvents: a failing liveness probe makes kubelet's events: Unhealthy ("Liveness
// probe failed: ...") and Killing, and the container restarts.
func TestProbeEvents(t *testing.T) {
	e := need(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	ns := e.Namespace(t)
	c := framework.Busybox("main", "exec sleep 3600")
	c.LivenessProbe = &corev1.Probe{
		ProbeHandler:  corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt32(1)}},
		PeriodSeconds: 1, FailureThreshold: 1,
	}
	pod := framework.Pod("unhealthy", c)
	pod.Spec.RestartPolicy = corev1.RestartPolicyAlways
	pod.Spec.TerminationGracePeriodSeconds = ptr.To[int64](1) // sleep as PID 1 ignores SIGTERM
	if _, err := e.Client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	ev, err := e.WaitForEvent(ctx, ns, "unhealthy", "Unhealthy", podTimeout)
	if err != nil {
		t.Fatalf("%v\nevents:\n%s", err, e.EventsFor(ctx, ns, "unhealthy"))
	}
	if ev.Type != corev1.EventTypeWarning || !strings.HasPrefix(ev.Message, "Liveness probe failed: ") {
		t.Errorf("Unhealthy event %s %q", ev.Type, ev.Message)
	}
	if ev, err := e.WaitForEvent(ctx, ns, "unhealthy", "Killing", 30*time.Second); err != nil {
		t.Error(err)
	} else if !strings.Contains(ev.Message, "failed liveness probe, will be restarted") {
		t.Errorf("Killing event %q", ev.Message)
	}
	if _, err := e.WaitForPod(ctx, ns, "unhealthy", 30*time.Second, func(p *corev1.Pod) bool {
		return len(p.Status.ContainerStatuses) == 1 && p.Status.ContainerStatuses[0].RestartCount >= 1
	}); err != nil {
		t.Errorf("the container was not restarted: %v", err)
	}
}

// TestImagePullPolicyNever: as kubelet, a container with imagePullPolicy Never runs an image
// the cell already has (its init container pulled it) and otherwise waits ErrImageNeverPull,
// with kubelet's message and Event, without pulling.
func TestImagePullPolicyNever(t *testing.T) {
	e := need(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	ns := e.Namespace(t)
	never := framework.Busybox("main", "echo from-the-cell")
	never.ImagePullPolicy = corev1.PullNever
	have := framework.Pod("present", never)
	have.Spec.InitContainers = []corev1.Container{framework.Busybox("pull", "true")}
	if _, err := e.Client.CoreV1().Pods(ns).Create(ctx, have, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	absent := framework.Pod("absent", never)
	if _, err := e.Client.CoreV1().Pods(ns).Create(ctx, absent, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	got, err := e.WaitForPod(ctx, ns, "present", podTimeout, framework.Finished)
	if err != nil || got.Status.Phase != corev1.PodSucceeded {
		t.Errorf("the pod whose image the cell has: %v %s", err, framework.DescribePod(got))
	}
	waiting, err := e.WaitForPod(ctx, ns, "absent", podTimeout, func(p *corev1.Pod) bool {
		return len(p.Status.ContainerStatuses) == 1 && p.Status.ContainerStatuses[0].State.Waiting != nil &&
			p.Status.ContainerStatuses[0].State.Waiting.Reason == "ErrImageNeverPull"
	})
	if err != nil {
		t.Fatalf("%v\nevents:\n%s", err, e.EventsFor(ctx, ns, "absent"))
	}
	if msg := waiting.Status.ContainerStatuses[0].State.Waiting.Message; !strings.Contains(msg, "is not present with pull policy of Never") {
		t.Errorf("waiting message %q", msg)
	}
	if _, err := e.WaitForEvent(ctx, ns, "absent", "ErrImageNeverPull", 30*time.Second); err != nil {
		t.Error(err)
	}
}

// TestDeploymentHTTP: 3 replicas of busybox httpd run on 3 cells with 3 addresses, each
// answering from the host; scaling to 0 leaves no cell.
func TestDeploymentHTTP(t *testing.T) {
	e := need(t)
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	ns := e.Namespace(t)
	sel := map[string]string{"app": "web"}
	tmpl := framework.Pod("", framework.Busybox("httpd",
		`mkdir -p /www && echo "kip-web $(hostname)" > /www/index.html && exec httpd -f -p 8080 -h /www`))
	tmpl.Spec.RestartPolicy = corev1.RestartPolicyAlways
	// httpd as PID 1 ignores SIGTERM, so scaling down waits out the grace period: keep it short.
	tmpl.Spec.TerminationGracePeriodSeconds = ptr.To[int64](3)
	dep := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To[int32](3),
			Selector: &metav1.LabelSelector{MatchLabels: sel},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: sel}, Spec: tmpl.Spec},
		},
	}
	if _, err := e.Client.AppsV1().Deployments(ns).Create(ctx, dep, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	running, err := waitRunningPods(ctx, e, ns, labels.SelectorFromSet(sel).String(), 3)
	if err != nil {
		t.Fatal(err)
	}
	ips := map[string]string{}
	for _, p := range running {
		if prev, dup := ips[p.Status.PodIP]; dup {
			t.Errorf("pods %s and %s share IP %s", prev, p.Name, p.Status.PodIP)
		}
		ips[p.Status.PodIP] = p.Name
	}
	client := &http.Client{Timeout: 5 * time.Second}
	for ip, name := range ips {
		body, err := getWithRetry(ctx, client, "http://"+ip+":8080/", 30*time.Second)
		if err != nil {
			t.Errorf("pod %s at %s: %v", name, ip, err)
			continue
		}
		if !strings.HasPrefix(body, "kip-web") {
			t.Errorf("pod %s at %s answered %q", name, ip, body)
		}
	}
	if out, err := e.Kubectl(ctx, "-n", ns, "get", "pods", "-o", "wide"); err == nil {
		t.Logf("kubectl get pods -o wide:\n%s", out)
	}

	if _, err := e.Kubectl(ctx, "-n", ns, "scale", "deployment/web", "--replicas=0"); err != nil {
		t.Fatal(err)
	}
	for _, p := range running {
		if err := e.WaitForPodGone(ctx, ns, p.Name, time.Minute); err != nil {
			t.Error(err)
		}
	}
	if _, err := e.WaitForCells(ctx, map[string]string{cloud.TagPodNamespace: ns}, cellGoneTimeout,
		framework.NoCells); err != nil {
		t.Errorf("cells left after scaling to 0: %v", err)
	}
}

// TestDeleteSendsSIGTERM: deleting a running pod delivers SIGTERM to its container (which logs
// it) before the cell goes away.
func TestDeleteSendsSIGTERM(t *testing.T) {
	e := need(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	ns := e.Namespace(t)
	script := `trap 'echo got-SIGTERM; exit 0' TERM; echo started; while true; do sleep 1 & wait $!; done`
	pod := framework.Pod("term", framework.Busybox("main", script))
	pod.Spec.TerminationGracePeriodSeconds = ptr.To[int64](30)
	if _, err := e.Client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.WaitForPod(ctx, ns, "term", podTimeout, framework.Running); err != nil {
		t.Fatalf("%v\nevents:\n%s", err, e.EventsFor(ctx, ns, "term"))
	}
	// Follow the logs from before the delete until the container ends.
	cmd := exec.CommandContext(ctx, e.CP.Kubectl(), "--kubeconfig", e.CP.AdminKubeconfig(), "-n", ns, "logs", "-f", "term")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	lines := make(chan string, 16)
	go func() {
		defer close(lines)
		buf := make([]byte, 4096)
		var acc string
		for {
			n, err := stdout.Read(buf)
			acc += string(buf[:n])
			for {
				i := strings.IndexByte(acc, '\n')
				if i < 0 {
					break
				}
				lines <- acc[:i]
				acc = acc[i+1:]
			}
			if err != nil {
				return
			}
		}
	}()
	if err := expectLine(ctx, lines, "started", time.Minute); err != nil {
		t.Fatalf("before delete: %v", err)
	}
	deleted := time.Now()
	if err := e.Client.CoreV1().Pods(ns).Delete(ctx, "term", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := expectLine(ctx, lines, "got-SIGTERM", time.Minute); err != nil {
		t.Errorf("after delete: %v", err)
	}
	t.Logf("SIGTERM logged %v after the delete", time.Since(deleted).Round(time.Millisecond))
	if err := e.WaitForPodGone(ctx, ns, "term", time.Minute); err != nil {
		t.Error(err)
	}
	t.Logf("pod gone %v after the delete (grace period 30s; the container exits at once)", time.Since(deleted).Round(time.Millisecond))
	if _, err := e.WaitForCells(ctx, framework.PodCells(ns, "term"), cellGoneTimeout, framework.NoCells); err != nil {
		t.Errorf("cell of the deleted pod not terminated: %v", err)
	}
}

// TestImagePullError: a nonexistent image leaves the pod Pending with ErrImagePull or
// ImagePullBackOff and a Warning event; kip keeps running.
func TestImagePullError(t *testing.T) {
	e := need(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	ns := e.Namespace(t)
	pod := framework.Pod("nopull", corev1.Container{Name: "main", Image: "no-such-image-kip:v0"})
	if _, err := e.Client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	got, err := e.WaitForPod(ctx, ns, "nopull", podTimeout, func(p *corev1.Pod) bool {
		for _, cs := range p.Status.ContainerStatuses {
			if w := cs.State.Waiting; w != nil && (w.Reason == "ErrImagePull" || w.Reason == "ImagePullBackOff") {
				return true
			}
		}
		return false
	})
	if err != nil {
		t.Fatalf("%v\nevents:\n%s", err, e.EventsFor(ctx, ns, "nopull"))
	}
	if got.Status.Phase != corev1.PodPending {
		t.Errorf("phase %s, want Pending", got.Status.Phase)
	}
	if _, err := e.WaitForEvent(ctx, ns, "nopull", "Failed", time.Minute); err != nil {
		t.Error(err)
	}
	if err := e.Kip.Exited(); err != nil {
		t.Fatalf("kip died: %v", err)
	}
	if err := e.Client.CoreV1().Pods(ns).Delete(ctx, "nopull", metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.WaitForCells(ctx, framework.PodCells(ns, "nopull"), cellGoneTimeout, framework.NoCells); err != nil {
		t.Errorf("cell of the deleted pod not terminated: %v", err)
	}
}

// TestUnrunnablePods: pods that can never run fail with a message naming what is wrong, and
// no cell is launched for them.
func TestUnrunnablePods(t *testing.T) {
	e := need(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	ns := e.Namespace(t)
	big := framework.Busybox("main", "true")
	big.Resources.Requests = corev1.ResourceList{
		corev1.ResourceCPU: resource.MustParse("16"), corev1.ResourceMemory: resource.MustParse("32Gi"),
	}
	// A PersistentVolumeClaim bound to a PersistentVolume, so the scheduler places its pod.
	pv := &corev1.PersistentVolume{ObjectMeta: metav1.ObjectMeta{Name: "kip-e2e-" + ns},
		Spec: corev1.PersistentVolumeSpec{
			Capacity:                      corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")},
			AccessModes:                   []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			PersistentVolumeReclaimPolicy: corev1.PersistentVolumeReclaimRetain,
			StorageClassName:              "",
			PersistentVolumeSource:        corev1.PersistentVolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: "/tmp/kip-e2e-pv"}},
		}}
	if _, err := e.Client.CoreV1().PersistentVolumes().Create(ctx, pv, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = e.Client.CoreV1().PersistentVolumes().Delete(context.Background(), pv.Name, metav1.DeleteOptions{})
	})
	pvc := &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Name: "data"},
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			StorageClassName: ptr.To(""),
			VolumeName:       pv.Name,
			Resources:        corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")}},
		}}
	if _, err := e.Client.CoreV1().PersistentVolumeClaims(ns).Create(ctx, pvc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		c, err := e.Client.CoreV1().PersistentVolumeClaims(ns).Get(ctx, "data", metav1.GetOptions{})
		return err == nil && c.Status.Phase == corev1.ClaimBound, nil
	}); err != nil {
		t.Fatalf("the claim never bound: %v", err)
	}
	claimVolume := []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{
		PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: "data"}}}}
	hostVolume := []corev1.Volume{{Name: "root", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: "/"}}}}

	tests := []struct {
		name        string
		annotations map[string]string
		container   corev1.Container
		want        []string // substrings of the pod's status message
		volumes     []corev1.Volume
	}{
		{"too-big", nil, big, []string{"asked", "largest: local.xlarge"}, nil},
		{"bad-volume-size", map[string]string{"pod.kip.dev/volume-size": "lots"}, framework.Busybox("main", "true"), []string{"volume-size", "lots"}, nil},
		{"bad-launch-type", map[string]string{"pod.kip.dev/launch-type": "sometimes"}, framework.Busybox("main", "true"), []string{"launch-type", "sometimes"}, nil},
		{"unknown-instance-type", map[string]string{"pod.kip.dev/instance-type": "z9.huge"}, framework.Busybox("main", "true"), []string{"z9.huge"}, nil},
		{"claim", nil, framework.Busybox("main", "true"), []string{"spec.volumes[0].persistentVolumeClaim"}, claimVolume},
		{"host-path", nil, framework.Busybox("main", "true"), []string{"spec.volumes[0].hostPath"}, hostVolume},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pod := framework.Pod(tt.name, tt.container)
			pod.Annotations = tt.annotations
			pod.Spec.Volumes = tt.volumes
			if _, err := e.Client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
			got, err := e.WaitForPod(ctx, ns, tt.name, podTimeout, framework.Failed)
			if err != nil {
				t.Fatalf("%v\nevents:\n%s", err, e.EventsFor(ctx, ns, tt.name))
			}
			for _, w := range tt.want {
				if !strings.Contains(got.Status.Message, w) {
					t.Errorf("status message %q does not mention %q (reason %q)", got.Status.Message, w, got.Status.Reason)
				}
			}
			if got.Status.Reason == "" {
				t.Errorf("failed pod has no reason: %s", framework.DescribePod(got))
			}
			// The failure is also an Event (recorded asynchronously: wait for it).
			if ev, err := e.WaitForEvent(ctx, ns, tt.name, got.Status.Reason, 30*time.Second); err != nil {
				t.Error(err)
			} else if ev.Type != corev1.EventTypeWarning {
				t.Errorf("event %s is %s, want Warning", ev.Reason, ev.Type)
			}
			if cells, err := e.Cells(ctx, framework.PodCells(ns, tt.name)); err != nil || len(cells) != 0 {
				t.Errorf("cells for an unrunnable pod: %v %v", cells, err)
			}
		})
	}
}

// TestBadConfig: kip refuses a config with a bad value and names the field.
func TestBadConfig(t *testing.T) {
	e := need(t)
	tests := []struct{ name, yaml, want string }{
		{"bad port", "apiVersion: kip.dev/v1alpha1\nkind: ProviderConfig\nnode:\n  kubeletPort: -1\n", "node.kubeletPort"},
		{"unknown field", "apiVersion: kip.dev/v1alpha1\nkind: ProviderConfig\ncells:\n  healthyTimout: 1s\n", "healthyTimout"},
		{"bad duration", "apiVersion: kip.dev/v1alpha1\nkind: ProviderConfig\ncells:\n  healthyTimeout: soon\n", "cells.healthyTimeout"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "kip.yaml")
			if err := os.WriteFile(path, []byte(tt.yaml), 0o600); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			out, err := exec.CommandContext(ctx, filepath.Join(e.BinDir, "kip"), "run", "--config", path,
				"--kubeconfig", e.CP.AdminKubeconfig()).CombinedOutput()
			if err == nil {
				t.Fatalf("kip run accepted a bad config:\n%s", out)
			}
			if !strings.Contains(string(out), tt.want) {
				t.Errorf("kip run output does not name %q:\n%s", tt.want, out)
			}
			if strings.Contains(string(out), "panic") {
				t.Errorf("kip panicked:\n%s", out)
			}
		})
	}
}

// TestKipRestart: killing kip while pods run and starting it again keeps the pods running
// with the same status and cells; nothing is launched twice, nothing leaks.
func TestKipRestart(t *testing.T) {
	e := need(t)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	ns := e.Namespace(t)
	names := []string{"keep-a", "keep-b"}
	for _, n := range names {
		pod := framework.Pod(n, framework.Busybox("main", `echo up; while true; do sleep 1 & wait $!; done`))
		pod.Spec.TerminationGracePeriodSeconds = ptr.To[int64](3) // sh as PID 1 ignores SIGTERM
		if _, err := e.Client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	before := map[string]*corev1.Pod{}
	beforeCells := map[string]string{}
	for _, n := range names {
		p, err := e.WaitForPod(ctx, ns, n, podTimeout, framework.Running)
		if err != nil {
			t.Fatalf("%v\nevents:\n%s", err, e.EventsFor(ctx, ns, n))
		}
		before[n] = p
		cells, err := e.Cells(ctx, framework.PodCells(ns, n))
		if err != nil || len(cells) != 1 {
			t.Fatalf("pod %s has cells %v (%v), want exactly one", n, cells, err)
		}
		beforeCells[n] = cells[0].ID
	}
	all, err := e.Cells(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	total := len(all)

	t.Log("killing kip (SIGKILL)")
	e.Kip.Kill()
	if err := e.Kip.Start(ctx); err != nil {
		t.Fatalf("restarting kip: %v", err)
	}

	for _, n := range names {
		// Give the restarted kip the chance to (wrongly) change the pod: wait for it to have
		// reported on the pod again, i.e. for a status at least as new as the restart.
		p, err := e.WaitForPod(ctx, ns, n, podTimeout, framework.Running)
		if err != nil {
			t.Fatal(err)
		}
		b := before[n]
		if p.Status.PodIP != b.Status.PodIP {
			t.Errorf("pod %s IP changed across the restart: %s → %s", n, b.Status.PodIP, p.Status.PodIP)
		}
		if len(p.Status.ContainerStatuses) != 1 || p.Status.ContainerStatuses[0].RestartCount != 0 ||
			p.Status.ContainerStatuses[0].State.Running == nil {
			t.Errorf("pod %s container status after restart: %s", n, framework.DescribePod(p))
		} else if !p.Status.ContainerStatuses[0].State.Running.StartedAt.Equal(&b.Status.ContainerStatuses[0].State.Running.StartedAt) {
			t.Errorf("pod %s container restarted: started %v, was %v", n, p.Status.ContainerStatuses[0].State.Running.StartedAt, b.Status.ContainerStatuses[0].State.Running.StartedAt)
		}
		cells, err := e.Cells(ctx, framework.PodCells(ns, n))
		if err != nil || len(cells) != 1 || cells[0].ID != beforeCells[n] {
			t.Errorf("pod %s cells after restart %v (%v), want only %s", n, cells, err, beforeCells[n])
		}
	}
	t.Log("pods kept running with their cells across the restart")
	// kubectl logs still reaches the adopted cells.
	if out, err := e.Kubectl(ctx, "-n", ns, "logs", names[0]); err != nil || !strings.Contains(out, "up") {
		t.Errorf("kubectl logs after restart: %q, %v", out, err)
	}
	if all, err := e.Cells(ctx, nil); err != nil || len(all) != total {
		t.Errorf("cells after restart: %d (%v), want %d", len(all), err, total)
	}
	t.Log("deleting the pods")
	for _, n := range names {
		if err := e.Client.CoreV1().Pods(ns).Delete(ctx, n, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range names {
		if err := e.WaitForPodGone(ctx, ns, n, time.Minute); err != nil {
			t.Error(err)
		}
		if _, err := e.WaitForCells(ctx, framework.PodCells(ns, n), cellGoneTimeout, framework.NoCells); err != nil {
			t.Errorf("cell of %s not terminated: %v", n, err)
		}
	}
}

// waitRunningPods waits until n pods matching selector in ns are Running and Ready.
func waitRunningPods(ctx context.Context, e *framework.Env, ns, selector string, n int) ([]corev1.Pod, error) {
	ctx, cancel := context.WithTimeout(ctx, podTimeout+time.Minute)
	defer cancel()
	seen := map[string]corev1.Pod{}
	_, err := framework.UntilOpts(ctx, e.Client.CoreV1().Pods(ns), metav1.ListOptions{LabelSelector: selector},
		func(ev watch.Event) (bool, error) {
			p, ok := ev.Object.(*corev1.Pod)
			if !ok {
				return false, nil
			}
			if ev.Type == watch.Deleted || !framework.Running(p) || !framework.Ready(p) {
				delete(seen, p.Name)
			} else {
				seen[p.Name] = *p
			}
			return len(seen) >= n, nil
		})
	if err != nil {
		list, _ := e.Client.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{LabelSelector: selector})
		var b strings.Builder
		for i := range list.Items {
			fmt.Fprintf(&b, "  %s: %s\n%s", list.Items[i].Name, framework.DescribePod(&list.Items[i]), e.EventsFor(context.Background(), ns, list.Items[i].Name))
		}
		return nil, fmt.Errorf("waiting for %d running pods (%s): %w\n%s", n, selector, err, b.String())
	}
	out := make([]corev1.Pod, 0, len(seen))
	for _, p := range seen {
		out = append(out, p)
	}
	return out, nil
}

// getWithRetry GETs url until it answers 200 (a server in a freshly started container may
// not listen yet when the pod turns Running) or timeout passes.
func getWithRetry(ctx context.Context, c *http.Client, url string, timeout time.Duration) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := c.Do(req)
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return string(body), nil
			}
			err = fmt.Errorf("HTTP %d: %s", resp.StatusCode, body)
		}
		last = err
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("GET %s: %w (last: %v)", url, ctx.Err(), last)
		case <-tick.C:
		}
	}
}

// expectLine reads lines until one equals want, the stream ends or timeout passes.
func expectLine(ctx context.Context, lines <-chan string, want string, timeout time.Duration) error {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	var seen []string
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				return fmt.Errorf("log stream ended without %q (saw %q)", want, seen)
			}
			if strings.TrimSpace(l) == want {
				return nil
			}
			seen = append(seen, l)
		case <-timer.C:
			return fmt.Errorf("no %q within %v (saw %q)", want, timeout, seen)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
