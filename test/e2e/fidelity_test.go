//go:build e2e

package e2e

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/kip-dev/kip/internal/imagebuild"
	"github.com/kip-dev/kip/internal/registry"
	"github.com/kip-dev/kip/test/e2e/framework"
)

// Kubelet fidelity (issue 11) for the items no conformance spec exercises; the audit in
// docs/design/fidelity-audit.md maps each item to its test.

// TestRunAsNonRoot: runAsNonRoot against an image that runs as root leaves the container
// waiting CreateContainerConfigError with kubelet's message and a Warning Failed event, and
// it never runs (the pod stays Pending, as kubelet retries); with a non-root runAsUser the same image runs.
func TestRunAsNonRoot(t *testing.T) {
	e := need(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	ns := e.Namespace(t)
	refused := framework.Pod("as-root", framework.Busybox("main", "echo ran"))
	refused.Spec.SecurityContext = &corev1.PodSecurityContext{RunAsNonRoot: ptr.To(true)}
	allowed := framework.Pod("as-user", framework.Busybox("main", "id -u"))
	allowed.Spec.SecurityContext = &corev1.PodSecurityContext{RunAsNonRoot: ptr.To(true), RunAsUser: ptr.To[int64](1000)}
	for _, p := range []*corev1.Pod{refused, allowed} {
		if _, err := e.Client.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	got, err := e.WaitForPod(ctx, ns, "as-root", podTimeout, func(p *corev1.Pod) bool {
		return len(p.Status.ContainerStatuses) == 1 && p.Status.ContainerStatuses[0].State.Waiting != nil &&
			p.Status.ContainerStatuses[0].State.Waiting.Reason == "CreateContainerConfigError"
	})
	if err != nil {
		t.Fatalf("%v\nevents:\n%s", err, e.EventsFor(ctx, ns, "as-root"))
	}
	want := `container has runAsNonRoot and image will run as root (pod: "as-root_` + ns + "(" + string(got.UID) + `)", container: main)`
	if msg := got.Status.ContainerStatuses[0].State.Waiting.Message; msg != want {
		t.Errorf("waiting message %q, want kubelet's %q", msg, want)
	}
	if got.Status.Phase != corev1.PodPending {
		t.Errorf("phase %s, want Pending (kubelet keeps retrying)", got.Status.Phase)
	}
	if ev, err := e.WaitForEvent(ctx, ns, "as-root", "Failed", 30*time.Second); err != nil {
		t.Error(err)
	} else if ev.Type != corev1.EventTypeWarning || !strings.Contains(ev.Message, want) {
		t.Errorf("event %s %q, want a Warning with %q", ev.Type, ev.Message, want)
	}

	done, err := e.WaitForPod(ctx, ns, "as-user", podTimeout, framework.Finished)
	if err != nil {
		t.Fatalf("%v\nevents:\n%s", err, e.EventsFor(ctx, ns, "as-user"))
	}
	if done.Status.Phase != corev1.PodSucceeded {
		t.Errorf("the non-root pod: %s", framework.DescribePod(done))
	} else if out, err := e.Kubectl(ctx, "-n", ns, "logs", "as-user"); err != nil || strings.TrimSpace(out) != "1000" {
		t.Errorf("id -u printed %q (%v), want 1000", out, err)
	}
	if out, err := e.Kubectl(ctx, "-n", ns, "logs", "as-root"); err == nil && strings.Contains(out, "ran") {
		t.Errorf("the refused container ran: %q", out)
	}

	if err := e.Client.CoreV1().Pods(ns).Delete(ctx, "as-root", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := e.WaitForPodGone(ctx, ns, "as-root", time.Minute); err != nil {
		t.Error(err)
	}
	if _, err := e.WaitForCells(ctx, framework.PodCells(ns, "as-root"), cellGoneTimeout, framework.NoCells); err != nil {
		t.Errorf("cell of the deleted pod not terminated: %v", err)
	}
}

// TestSeccompProfiles: seccomp RuntimeDefault (pod level) refuses a new user namespace that
// the same image creates under Unconfined (container level, overriding the pod's); a
// Localhost profile kip reads under node.seccompProfileRoot is applied (it refuses mkdir); a
// missing one fails the pod before any cell launches, with an Event and a message naming the
// field and the file.
func TestSeccompProfiles(t *testing.T) {
	e := need(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	ns := e.Namespace(t)
	const script = `unshare -r true 2>&1 && echo allowed`
	pod := framework.Pod("seccomp", framework.Busybox("confined", script), framework.Busybox("unconfined", script))
	pod.Spec.SecurityContext = &corev1.PodSecurityContext{SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault}}
	pod.Spec.Containers[1].SecurityContext = &corev1.SecurityContext{SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeUnconfined}}
	profile := `{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO"}]}`
	if err := os.WriteFile(filepath.Join(e.SeccompProfileRoot, "deny-mkdir.json"), []byte(profile), 0o644); err != nil {
		t.Fatal(err)
	}
	denied := framework.Pod("denymkdir", framework.Busybox("main", `mkdir /tmp/d 2>&1 || echo mkdir-refused; touch /tmp/f && echo touch-ok`))
	denied.Spec.Containers[0].SecurityContext = &corev1.SecurityContext{SeccompProfile: &corev1.SeccompProfile{
		Type: corev1.SeccompProfileTypeLocalhost, LocalhostProfile: ptr.To("deny-mkdir.json")}}
	local := framework.Pod("localhost", framework.Busybox("main", "true"))
	local.Spec.SecurityContext = &corev1.PodSecurityContext{SeccompProfile: &corev1.SeccompProfile{
		Type: corev1.SeccompProfileTypeLocalhost, LocalhostProfile: ptr.To("no-such-profile.json")}}
	for _, p := range []*corev1.Pod{pod, denied, local} {
		if _, err := e.Client.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := e.WaitForPod(ctx, ns, "seccomp", podTimeout, framework.Finished); err != nil {
		t.Fatalf("%v\nevents:\n%s", err, e.EventsFor(ctx, ns, "seccomp"))
	}
	if out, err := e.Kubectl(ctx, "-n", ns, "logs", "seccomp", "-c", "confined"); err != nil || !strings.Contains(out, "Operation not permitted") {
		t.Errorf("RuntimeDefault: unshare -r printed %q (%v), want EPERM", out, err)
	}
	if out, err := e.Kubectl(ctx, "-n", ns, "logs", "seccomp", "-c", "unconfined"); err != nil || strings.TrimSpace(out) != "allowed" {
		t.Errorf("Unconfined: unshare -r printed %q (%v), want allowed", out, err)
	}

	if _, err := e.WaitForPod(ctx, ns, "denymkdir", podTimeout, framework.Finished); err != nil {
		t.Fatalf("%v\nevents:\n%s", err, e.EventsFor(ctx, ns, "denymkdir"))
	}
	if out, err := e.Kubectl(ctx, "-n", ns, "logs", "denymkdir"); err != nil || !strings.Contains(out, "Operation not permitted") ||
		!strings.Contains(out, "mkdir-refused") || !strings.Contains(out, "touch-ok") {
		t.Errorf("Localhost deny-mkdir.json: the container printed %q (%v); want mkdir refused (EPERM) and touch allowed", out, err)
	}

	failed, err := e.WaitForPod(ctx, ns, "localhost", podTimeout, framework.Failed)
	if err != nil {
		t.Fatalf("%v\nevents:\n%s", err, e.EventsFor(ctx, ns, "localhost"))
	}
	if !strings.Contains(failed.Status.Message, "spec.securityContext.seccompProfile.localhostProfile") ||
		!strings.Contains(failed.Status.Message, filepath.Join(e.SeccompProfileRoot, "no-such-profile.json")) || failed.Status.Reason == "" {
		t.Errorf("reason %q message %q: want a reason, the field and the file named", failed.Status.Reason, failed.Status.Message)
	}
	if _, err := e.WaitForEvent(ctx, ns, "localhost", failed.Status.Reason, 30*time.Second); err != nil {
		t.Error(err)
	}
	if cells, err := e.Cells(ctx, framework.PodCells(ns, "localhost")); err != nil || len(cells) != 0 {
		t.Errorf("cells for a refused pod: %v %v", cells, err)
	}
}

// TestShareProcessNamespace: as under kubelet, with shareProcessNamespace the pod's
// containers share one PID namespace whose PID 1 is a holder (kubelet's pause): the main
// container sees the sidecar's process, and neither its own shell nor the sidecar is PID 1.
// Without it, as before, the container's first process is PID 1. Either way the pod's
// containers share one UTS namespace: a hostname the sidecar sets is the main container's.
func TestShareProcessNamespace(t *testing.T) {
	e := need(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	ns := e.Namespace(t)
	// $$$$ is the shell's $$ kubelet's variable expansion turns $$ into $.
	const script = `echo "self=$$$$"; echo "pid1=$(tr '\0' ' ' </proc/1/cmdline)"; echo "host=$(hostname)"; ps -o pid,args`
	newPod := func(name string, share bool) *corev1.Pod {
		sidecar := framework.Busybox("sidecar", `hostname kip-renamed && exec sleep 3600`)
		sidecar.RestartPolicy = ptr.To(corev1.ContainerRestartPolicyAlways)
		sidecar.SecurityContext = &corev1.SecurityContext{Capabilities: &corev1.Capabilities{Add: []corev1.Capability{"SYS_ADMIN"}}}
		// Started only once the hostname is set, so the main container starts after it.
		sidecar.StartupProbe = &corev1.Probe{PeriodSeconds: 1, FailureThreshold: 60, ProbeHandler: corev1.ProbeHandler{
			Exec: &corev1.ExecAction{Command: []string{"sh", "-c", "test \"$(hostname)\" = kip-renamed"}}}}
		p := framework.Pod(name, framework.Busybox("main", script))
		p.Spec.InitContainers = []corev1.Container{sidecar}
		p.Spec.ShareProcessNamespace = ptr.To(share)
		p.Spec.TerminationGracePeriodSeconds = ptr.To[int64](1)
		return p
	}
	logs := map[string]string{}
	for _, p := range []*corev1.Pod{newPod("sharepid", true), newPod("ownpid", false)} {
		if _, err := e.Client.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	for _, name := range []string{"sharepid", "ownpid"} {
		got, err := e.WaitForPod(ctx, ns, name, podTimeout, framework.Finished)
		if err != nil {
			t.Fatalf("%v\nevents:\n%s", err, e.EventsFor(ctx, ns, name))
		}
		if got.Status.Phase != corev1.PodSucceeded {
			t.Fatalf("%s: phase %s: %s", name, got.Status.Phase, framework.DescribePod(got))
		}
		out, err := e.Kubectl(ctx, "-n", ns, "logs", name, "-c", "main")
		if err != nil {
			t.Fatal(err)
		}
		logs[name] = out
		if !strings.Contains(out, "host=kip-renamed") {
			t.Errorf("%s: the main container printed %q; want the hostname the sidecar set (host=kip-renamed)", name, out)
		}
	}
	share := logs["sharepid"]
	if strings.Contains(share, "self=1\n") || strings.Contains(share, "pid1=sh ") || strings.Contains(share, "pid1=sleep") {
		t.Errorf("shared: the main container printed %q; want PID 1 to be neither its shell nor the sidecar", share)
	}
	if !strings.Contains(share, "sleep 3600") {
		t.Errorf("shared: ps printed %q; want the sidecar's sleep 3600", share)
	}
	own := logs["ownpid"]
	if !strings.Contains(own, "self=1\n") || strings.Contains(own, "sleep 3600") {
		t.Errorf("not shared: the main container printed %q; want its shell as PID 1 and no sidecar process", own)
	}
}

// TestReadOnlyRootFilesystem: with readOnlyRootFilesystem the container cannot write its root
// filesystem (EROFS) but can write an emptyDir mounted in it.
func TestReadOnlyRootFilesystem(t *testing.T) {
	e := need(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	ns := e.Namespace(t)
	c := framework.Busybox("main", `touch /rootfile 2>&1; touch /scratch/file && echo scratch-ok`)
	c.SecurityContext = &corev1.SecurityContext{ReadOnlyRootFilesystem: ptr.To(true)}
	c.VolumeMounts = []corev1.VolumeMount{{Name: "scratch", MountPath: "/scratch"}}
	pod := framework.Pod("readonly", c)
	pod.Spec.Volumes = []corev1.Volume{{Name: "scratch", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}}
	if _, err := e.Client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.WaitForPod(ctx, ns, "readonly", podTimeout, framework.Finished); err != nil {
		t.Fatalf("%v\nevents:\n%s", err, e.EventsFor(ctx, ns, "readonly"))
	}
	out, err := e.Kubectl(ctx, "-n", ns, "logs", "readonly")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "Read-only file system") || !strings.Contains(out, "scratch-ok") {
		t.Errorf("the container printed %q: want EROFS for / and scratch-ok for the emptyDir", out)
	}
}

// TestKubectlCp: kubectl cp copies a file and a directory into a running container and back
// out, byte for byte (it runs tar through exec, as on any node).
func TestKubectlCp(t *testing.T) {
	e := need(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	ns := e.Namespace(t)
	pod := framework.Pod("cp", framework.Busybox("main", "exec sleep 3600"))
	pod.Spec.TerminationGracePeriodSeconds = ptr.To[int64](1) // sleep as PID 1 ignores SIGTERM
	if _, err := e.Client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.WaitForPod(ctx, ns, "cp", podTimeout, framework.Running); err != nil {
		t.Fatalf("%v\nevents:\n%s", err, e.EventsFor(ctx, ns, "cp"))
	}
	local := t.TempDir()
	content := []byte("kip cp\x00\xff binary-safe\n" + strings.Repeat("0123456789", 10000))
	if err := os.WriteFile(filepath.Join(local, "file"), content, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(local, "dir", "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(local, "dir", "sub", "nested"), []byte("nested\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	if out, err := e.Kubectl(ctx, "-n", ns, "cp", filepath.Join(local, "file"), "cp:/tmp/file"); err != nil {
		t.Fatalf("kubectl cp a file in: %v\n%s", err, out)
	}
	if out, err := e.Kubectl(ctx, "-n", ns, "cp", filepath.Join(local, "dir"), "cp:/tmp/dir"); err != nil {
		t.Fatalf("kubectl cp a directory in: %v\n%s", err, out)
	}
	if out, err := e.Kubectl(ctx, "-n", ns, "exec", "cp", "--", "cat", "/tmp/dir/sub/nested"); err != nil || out != "nested\n" {
		t.Errorf("the copied directory holds %q (%v), want nested", out, err)
	}

	back := t.TempDir()
	if out, err := e.Kubectl(ctx, "-n", ns, "cp", "cp:/tmp/file", filepath.Join(back, "file")); err != nil {
		t.Fatalf("kubectl cp a file out: %v\n%s", err, out)
	}
	if got, err := os.ReadFile(filepath.Join(back, "file")); err != nil || string(got) != string(content) {
		t.Errorf("the file came back with %d bytes (%v), want the %d sent", len(got), err, len(content))
	}
	if out, err := e.Kubectl(ctx, "-n", ns, "cp", "cp:/tmp/dir", filepath.Join(back, "dir")); err != nil {
		t.Fatalf("kubectl cp a directory out: %v\n%s", err, out)
	}
	if got, err := os.ReadFile(filepath.Join(back, "dir", "sub", "nested")); err != nil || string(got) != "nested\n" {
		t.Errorf("the directory came back with %q (%v)", got, err)
	}

	if err := e.Client.CoreV1().Pods(ns).Delete(ctx, "cp", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.WaitForCells(ctx, framework.PodCells(ns, "cp"), time.Minute, framework.NoCells); err != nil {
		t.Errorf("cell of the deleted pod not terminated: %v", err)
	}
}

// TestLivenessKillRunsPreStop: as kubelet's killContainer, a container killed for a failed
// liveness probe runs its preStop hook first (it leaves a mark in an emptyDir that the next
// run prints), and the kill uses the probe's terminationGracePeriodSeconds (1s; the floor is
// kubelet's 2s) rather than the pod's 600s, so the container, which ignores SIGTERM, is
// restarted long before the pod's grace period could end.
func TestLivenessKillRunsPreStop(t *testing.T) {
	e := need(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	ns := e.Namespace(t)
	c := framework.Busybox("main", `echo "run: $(cat /data/marks 2>/dev/null)"; exec sleep 3600`)
	c.VolumeMounts = []corev1.VolumeMount{{Name: "data", MountPath: "/data"}}
	c.LivenessProbe = &corev1.Probe{
		ProbeHandler:  corev1.ProbeHandler{Exec: &corev1.ExecAction{Command: []string{"false"}}},
		PeriodSeconds: 1, FailureThreshold: 1, TerminationGracePeriodSeconds: ptr.To[int64](1),
	}
	c.Lifecycle = &corev1.Lifecycle{PreStop: &corev1.LifecycleHandler{Exec: &corev1.ExecAction{
		Command: []string{"sh", "-c", "echo -n prestop >> /data/marks"}}}}
	pod := framework.Pod("prestop", c)
	pod.Spec.RestartPolicy = corev1.RestartPolicyAlways
	pod.Spec.TerminationGracePeriodSeconds = ptr.To[int64](600)
	pod.Spec.Volumes = []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}}
	if _, err := e.Client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// Deleted with a short grace period however the test ends: its own is 600s.
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		_ = e.Client.CoreV1().Pods(ns).Delete(ctx, "prestop", metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](1)})
		if _, err := e.WaitForCells(ctx, framework.PodCells(ns, "prestop"), time.Minute, framework.NoCells); err != nil {
			t.Errorf("cell of the deleted pod not terminated: %v", err)
		}
	})
	// Well inside the pod's 600s grace period: only the probe's can have let it restart.
	if _, err := e.WaitForPod(ctx, ns, "prestop", 3*time.Minute, func(p *corev1.Pod) bool {
		return len(p.Status.ContainerStatuses) == 1 && p.Status.ContainerStatuses[0].RestartCount >= 1 &&
			p.Status.ContainerStatuses[0].State.Running != nil
	}); err != nil {
		t.Fatalf("not restarted after its liveness kill: %v\nevents:\n%s", err, e.EventsFor(ctx, ns, "prestop"))
	}
	if out, err := waitLogs(ctx, e, 30*time.Second, "run: prestop", "-n", ns, "logs", "prestop"); err != nil {
		t.Errorf("the second run printed %q (%v): want the first run's preStop mark", out, err)
	}
}

// TestSupplementalGroupsPolicy: as under kubelet and containerd, a container's user gets the
// groups the image's /etc/group lists it in (root in wheel, gid 10, as in Docker Hub's
// busybox) besides the pod's supplementalGroups, unless supplementalGroupsPolicy is Strict.
func TestSupplementalGroupsPolicy(t *testing.T) {
	e := need(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	ns := e.Namespace(t)
	img, err := imagebuild.Busybox(imagebuild.Options{Files: []imagebuild.File{
		{Path: "/etc/group", Data: []byte("root:x:0:\nwheel:x:10:root\nnogroup:x:65534:\n")}}})
	if err != nil {
		t.Fatal(err)
	}
	const repo = "kip-e2e/wheel:latest"
	if _, err := registry.Push(ctx, e.Registry.Host(), repo, img, e.Registry.Auth()); err != nil {
		t.Fatal(err)
	}
	idG := corev1.Container{Name: "main", Image: e.Registry.Host() + "/" + repo, Command: []string{"id", "-G"}}
	merge := framework.Pod("merge", idG)
	merge.Spec.SecurityContext = &corev1.PodSecurityContext{SupplementalGroups: []int64{4000}}
	strict := framework.Pod("strict", idG)
	strict.Spec.SecurityContext = &corev1.PodSecurityContext{SupplementalGroups: []int64{4000},
		SupplementalGroupsPolicy: ptr.To(corev1.SupplementalGroupsPolicyStrict)}
	for _, p := range []*corev1.Pod{merge, strict} {
		if _, err := e.Client.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	for name, want := range map[string]string{"merge": "0 10 4000", "strict": "0 4000"} {
		got, err := e.WaitForPod(ctx, ns, name, podTimeout, framework.Finished)
		if err != nil {
			t.Fatalf("%v\nevents:\n%s", err, e.EventsFor(ctx, ns, name))
		}
		if got.Status.Phase != corev1.PodSucceeded {
			t.Errorf("%s: %s", name, framework.DescribePod(got))
			continue
		}
		out, err := e.Kubectl(ctx, "-n", ns, "logs", name)
		ids := strings.Fields(out)
		slices.Sort(ids)
		if err != nil || strings.Join(ids, " ") != want {
			t.Errorf("%s: id -G printed %q (%v), want %s", name, out, err, want)
		}
	}
}
