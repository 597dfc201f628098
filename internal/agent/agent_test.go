package agent_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/kip-dev/kip/internal/agent"
	"github.com/kip-dev/kip/internal/agent/image"
	"github.com/kip-dev/kip/internal/agent/pod"
	"github.com/kip-dev/kip/internal/agent/runtime"
	"github.com/kip-dev/kip/internal/cellapi"
	"github.com/kip-dev/kip/internal/cgroups"
	"github.com/kip-dev/kip/internal/logctx"
	"github.com/kip-dev/kip/internal/pki"
	"github.com/kip-dev/kip/internal/registry"
	"github.com/kip-dev/kip/internal/testenv"
)

// harness is one in-process agent with real runc, a real image store pulling from an
// in-process registry, and the real HTTPS handler behind mTLS on 127.0.0.1.
type harness struct {
	t        testing.TB
	tag      string
	ca       *pki.CA
	srv      *httptest.Server
	client   *cellapi.Client
	agent    *agent.Agent
	rt       *runtime.Runc
	cg       *cgroups.FS
	parent   string
	stateDir string
	reg      string // registry host
}

func randTag() string {
	b := make([]byte, 3)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// newHarness starts an agent (its Config changed by opts) behind a TLS server.
func newHarness(t testing.TB, backOff pod.BackOff, opts ...func(*agent.Config)) *harness {
	t.Helper()
	testenv.RequireRunc(t)
	h := &harness{t: t, tag: randTag()}
	h.stateDir = t.TempDir()
	h.parent = "kiptest-" + h.tag

	reg, err := registry.Start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { reg.Close() })
	h.reg = reg.Host()
	if err := registry.SeedBusybox(t.Context(), h.reg, nil, "library/busybox:latest", "library/sleeper:latest"); err != nil {
		t.Fatal(err)
	}
	images, err := image.NewStore(image.Config{Root: filepath.Join(h.stateDir, "images"), DefaultRegistry: h.reg, Insecure: []string{h.reg}})
	if err != nil {
		t.Fatal(err)
	}
	// As kip-cell: runc's state and the bundles on the agent's tmpfs.
	if err := agent.MountRunDir(h.runDir()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { agent.UnmountRunDir(h.runDir()) })
	if h.rt, err = runtime.NewRunc("", filepath.Join(h.runDir(), "runc")); err != nil {
		t.Fatal(err)
	}
	if h.cg, err = cgroups.Open("/sys/fs/cgroup", "/proc/self/cgroup"); err != nil {
		t.Fatal(err)
	}
	quiet := logctx.Into(context.Background(), slog.New(slog.DiscardHandler))
	cfg := agent.Config{
		CellID: "cell-" + h.tag, StateDir: h.stateDir, Runtime: h.rt, Images: images,
		Cgroups: h.cg, CgroupParent: h.parent, BackOff: backOff, PodIP: "10.250.9.9",
		RunDir: filepath.Join(h.runDir(), "bundles"),
	}
	for _, o := range opts {
		o(&cfg)
	}
	h.agent, err = agent.New(quiet, cfg)
	if err != nil {
		t.Fatal(err)
	}

	h.ca, err = pki.NewCA("kip-test")
	if err != nil {
		t.Fatal(err)
	}
	cert, key, err := h.ca.Issue(pki.LeafSpec{CommonName: "cell-" + h.tag, DNSNames: []string{"cell-" + h.tag}, Server: true})
	if err != nil {
		t.Fatal(err)
	}
	stls, err := pki.ServerTLS(h.ca.CertPEM, cert, key)
	if err != nil {
		t.Fatal(err)
	}
	h.srv = httptest.NewUnstartedServer(cellapi.Handler(h.agent, cellapi.HandlerOptions{}))
	h.srv.TLS = stls
	h.srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	h.srv.StartTLS()
	h.client = h.newClient(h.ca)

	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		if err := h.agent.DeletePod(ctx, 0); err != nil {
			t.Errorf("deleting pod at cleanup: %v", err)
		}
		h.srv.Close()
		h.assertClean()
		if err := h.cg.Remove(h.parent); err != nil {
			t.Errorf("removing cgroup parent: %v", err)
		}
		if h.cg.Exists(h.parent) {
			t.Errorf("cgroup %s left behind", h.parent)
		}
	})
	return h
}

// runDir is the agent's tmpfs, as kip-cell's <state>/run.
func (h *harness) runDir() string { return filepath.Join(h.stateDir, "run") }

func (h *harness) newClient(signer *pki.CA) *cellapi.Client {
	cert, key, err := signer.Issue(pki.LeafSpec{CommonName: "kip", Client: true})
	if err != nil {
		h.t.Fatal(err)
	}
	ctls, err := pki.ClientTLS(h.ca.CertPEM, cert, key, "cell-"+h.tag)
	if err != nil {
		h.t.Fatal(err)
	}
	c := cellapi.NewClient(h.srv.URL, ctls)
	h.t.Cleanup(c.Close)
	return c
}

// assertClean checks that no container, mount, pod cgroup or pod file is left.
func (h *harness) assertClean() {
	t := h.t
	t.Helper()
	if ids, err := h.rt.List(context.Background()); err != nil || len(ids) != 0 {
		t.Errorf("runc containers left: %v (%v)", ids, err)
	}
	mi, _ := os.ReadFile("/proc/self/mountinfo")
	for _, line := range strings.Split(string(mi), "\n") {
		if f := strings.Fields(line); len(f) > 4 && strings.HasPrefix(f[4], h.stateDir) && f[4] != h.runDir() {
			t.Errorf("mount left: %s", line)
		}
	}
	entries, _ := os.ReadDir(filepath.Join(h.stateDir, "pods"))
	for _, e := range entries {
		t.Errorf("pod directory left: %s", e.Name())
	}
	bundles, _ := os.ReadDir(filepath.Join(h.runDir(), "bundles"))
	for _, e := range bundles {
		t.Errorf("bundle left: %s", e.Name())
	}
	for _, ctl := range []string{"memory", "cpu", "cpuacct", "pids"} {
		if d := h.cg.Dir(ctl, h.parent); d != "" {
			sub, _ := os.ReadDir(d)
			for _, e := range sub {
				if e.IsDir() {
					t.Errorf("pod cgroup left: %s/%s", d, e.Name())
				}
			}
		}
	}
}

func (h *harness) img(name string) string { return h.reg + "/library/" + name + ":latest" }

func newPod(name string, policy corev1.RestartPolicy, containers ...corev1.Container) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default", UID: types.UID("uid-" + randTag())},
		Spec:       corev1.PodSpec{RestartPolicy: policy, Containers: containers},
	}
}

func shell(name, image, script string) corev1.Container {
	return corev1.Container{Name: name, Image: image, Command: []string{"/bin/sh", "-c", script}}
}

// watchUntil follows the status stream until cond holds, returning every status seen.
func (h *harness) watchUntil(timeout time.Duration, cond func(*cellapi.PodStatus) bool) []*cellapi.PodStatus {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(h.t.Context(), timeout)
	defer cancel()
	ch, err := h.client.WatchPod(ctx)
	if err != nil {
		h.t.Fatal(err)
	}
	var seen []*cellapi.PodStatus
	var last uint64
	for st := range ch {
		if st.Seq <= last {
			h.t.Fatalf("status seq went from %d to %d", last, st.Seq)
		}
		last = st.Seq
		seen = append(seen, st)
		if cond(st) {
			return seen
		}
	}
	if len(seen) > 0 {
		h.t.Fatalf("condition not reached in %s; last status: %s", timeout, describe(seen[len(seen)-1]))
	}
	h.t.Fatalf("condition not reached in %s; no status", timeout)
	return nil
}

func describe(st *cellapi.PodStatus) string {
	var b strings.Builder
	fmt.Fprintf(&b, "seq=%d phase=%s", st.Seq, st.Phase)
	for _, cs := range append(append([]corev1.ContainerStatus(nil), st.InitContainerStatuses...), st.ContainerStatuses...) {
		fmt.Fprintf(&b, " [%s restarts=%d %s]", cs.Name, cs.RestartCount, stateString(cs.State))
	}
	return b.String()
}

func stateString(s corev1.ContainerState) string {
	switch {
	case s.Waiting != nil:
		return "waiting:" + s.Waiting.Reason + ":" + s.Waiting.Message
	case s.Running != nil:
		return "running"
	case s.Terminated != nil:
		return fmt.Sprintf("terminated:%s:%d:%s", s.Terminated.Reason, s.Terminated.ExitCode, s.Terminated.Message)
	}
	return "none"
}

func (h *harness) logs(container string, opts cellapi.LogOptions) string {
	h.t.Helper()
	rc, err := h.client.Logs(h.t.Context(), container, opts)
	if err != nil {
		h.t.Fatal(err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		h.t.Fatal(err)
	}
	return string(b)
}

func (h *harness) deletePod(grace time.Duration) {
	h.t.Helper()
	if err := h.client.DeletePod(h.t.Context(), grace); err != nil {
		h.t.Fatal(err)
	}
	h.assertClean()
	if _, err := h.client.GetPod(h.t.Context()); !cellapi.IsNotFound(err) {
		h.t.Errorf("GetPod after delete: %v, want NotFound", err)
	}
}

var fastBackOff = pod.BackOff{Base: 200 * time.Millisecond, Max: 2 * time.Second, Reset: time.Minute}

func TestEchoExitsZeroWithLogs(t *testing.T) {
	h := newHarness(t, fastBackOff)
	p := newPod("echo", corev1.RestartPolicyNever, shell("app", h.img("busybox"), "echo hello; echo to-stderr >&2; cat /etc/hostname"))
	st, err := h.client.PutPod(t.Context(), &cellapi.PodRequest{Pod: p})
	if err != nil {
		t.Fatal(err)
	}
	if st.UID != string(p.UID) || st.Phase != corev1.PodPending {
		t.Fatalf("first status %s", describe(st))
	}
	// Idempotent put.
	if again, err := h.client.PutPod(t.Context(), &cellapi.PodRequest{Pod: p}); err != nil || again.UID != st.UID {
		t.Fatalf("second put: %v", err)
	}
	final := h.watchUntil(60*time.Second, func(s *cellapi.PodStatus) bool { return s.Phase == corev1.PodSucceeded })
	last := final[len(final)-1]
	term := last.ContainerStatuses[0].State.Terminated
	if term == nil || term.ExitCode != 0 || term.Reason != "Completed" || !strings.HasPrefix(term.ContainerID, "runc://") {
		t.Fatalf("terminated state %+v", term)
	}
	if term.StartedAt.IsZero() || term.FinishedAt.Before(&term.StartedAt) {
		t.Errorf("times started %v finished %v", term.StartedAt, term.FinishedAt)
	}
	if id := last.ContainerStatuses[0].ImageID; !strings.Contains(id, "@sha256:") {
		t.Errorf("imageID %q", id)
	}
	// stdout and stderr are separate pipes, so only the order within a stream is defined.
	got := h.logs("app", cellapi.LogOptions{})
	var stdout []string
	for _, l := range strings.Split(strings.TrimSuffix(got, "\n"), "\n") {
		if l != "to-stderr" {
			stdout = append(stdout, l)
		}
	}
	if !strings.Contains(got, "to-stderr\n") || strings.Join(stdout, ",") != "hello,echo" {
		t.Errorf("logs %q, want hello and echo (in that order) and to-stderr", got)
	}
	if ts := h.logs("app", cellapi.LogOptions{Timestamps: true}); !strings.Contains(ts, "Z hello\n") {
		t.Errorf("timestamped logs %q", ts)
	}
	if _, err := h.client.PutPod(t.Context(), &cellapi.PodRequest{Pod: newPod("other", "", shell("x", h.img("busybox"), "true"))}); !cellapi.IsConflict(err) {
		t.Errorf("put of another pod: %v, want Conflict", err)
	}
	h.deletePod(time.Second)
}

func TestExitCode3FailsPod(t *testing.T) {
	h := newHarness(t, fastBackOff)
	p := newPod("exit3", corev1.RestartPolicyNever, shell("app", h.img("busybox"), "exit 3"))
	if _, err := h.client.PutPod(t.Context(), &cellapi.PodRequest{Pod: p}); err != nil {
		t.Fatal(err)
	}
	seen := h.watchUntil(60*time.Second, func(s *cellapi.PodStatus) bool { return s.Phase == corev1.PodFailed })
	term := seen[len(seen)-1].ContainerStatuses[0].State.Terminated
	if term == nil || term.ExitCode != 3 || term.Reason != "Error" {
		t.Fatalf("terminated %+v", term)
	}
	h.deletePod(time.Second)
}

func TestSidecarRunsBesideAppAndStopsAfter(t *testing.T) {
	h := newHarness(t, fastBackOff)
	always := corev1.ContainerRestartPolicyAlways
	side := corev1.Container{Name: "side", Image: h.img("sleeper"), RestartPolicy: &always,
		VolumeMounts: []corev1.VolumeMount{{Name: "shared", MountPath: "/shared"}}}
	side.Command = []string{"/bin/sh", "-c", `trap "exit 0" TERM; echo up > /shared/side; while true; do sleep 1; done`}
	side.StartupProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{Exec: &corev1.ExecAction{Command: []string{"cat", "/shared/side"}}}, PeriodSeconds: 1}
	check := shell("check", h.img("busybox"), "cat /shared/side")
	check.VolumeMounts = side.VolumeMounts
	app := shell("app", h.img("busybox"), "cat /shared/side; echo app done")
	app.VolumeMounts = side.VolumeMounts
	p := newPod("sidecar", corev1.RestartPolicyNever, app)
	p.Spec.InitContainers = []corev1.Container{side, check}
	p.Spec.Volumes = []corev1.Volume{{Name: "shared", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}}
	if _, err := h.client.PutPod(t.Context(), &cellapi.PodRequest{Pod: p}); err != nil {
		t.Fatal(err)
	}
	seen := h.watchUntil(60*time.Second, func(s *cellapi.PodStatus) bool {
		return s.Phase == corev1.PodSucceeded && s.InitContainerStatuses[0].State.Terminated != nil
	})
	last := seen[len(seen)-1]
	if term := last.InitContainerStatuses[0].State.Terminated; term.ExitCode != 0 {
		t.Errorf("sidecar ended %+v, want exit 0 from its TERM trap", term)
	}
	if term := last.InitContainerStatuses[1].State.Terminated; term == nil || term.ExitCode != 0 {
		t.Errorf("init after the sidecar: %+v", last.InitContainerStatuses[1].State)
	}
	if got := h.logs("app", cellapi.LogOptions{}); got != "up\napp done\n" {
		t.Errorf("app logs %q", got)
	}
	h.deletePod(time.Second)
}

func TestTerminationMessages(t *testing.T) {
	h := newHarness(t, fastBackOff)
	fallback := shell("fallback", h.img("busybox"), "echo line1; echo host=$HOSTNAME; exit 2")
	fallback.TerminationMessagePolicy = corev1.TerminationMessageFallbackToLogsOnError
	custom := shell("custom", h.img("busybox"), "printf bye > /tmp/why; exit 1")
	custom.TerminationMessagePath = "/tmp/why"
	p := newPod("msgs", corev1.RestartPolicyNever, shell("file", h.img("busybox"), "echo -n 'disk full' > /dev/termination-log; exit 1"), fallback, custom)
	if _, err := h.client.PutPod(t.Context(), &cellapi.PodRequest{Pod: p}); err != nil {
		t.Fatal(err)
	}
	seen := h.watchUntil(60*time.Second, func(s *cellapi.PodStatus) bool { return s.Phase == corev1.PodFailed })
	want := map[string]string{"file": "disk full", "fallback": "line1\nhost=msgs\n", "custom": "bye"}
	for _, cs := range seen[len(seen)-1].ContainerStatuses {
		if term := cs.State.Terminated; term == nil || term.Message != want[cs.Name] {
			t.Errorf("%s: terminated %+v, want message %q", cs.Name, term, want[cs.Name])
		}
	}
	h.deletePod(0)
}

func TestInitContainerSharesEmptyDir(t *testing.T) {
	h := newHarness(t, fastBackOff)
	p := newPod("init", corev1.RestartPolicyNever, shell("app", h.img("busybox"), "cat /work/msg; cat /cfg/sub/greeting"))
	p.Spec.InitContainers = []corev1.Container{shell("prepare", h.img("busybox"), "echo from-init > /data/msg")}
	p.Spec.InitContainers[0].VolumeMounts = []corev1.VolumeMount{{Name: "shared", MountPath: "/data"}}
	p.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{
		{Name: "shared", MountPath: "/work", ReadOnly: true},
		{Name: "cfg", MountPath: "/cfg", ReadOnly: true},
	}
	p.Spec.Volumes = []corev1.Volume{
		{Name: "shared", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
		{Name: "cfg", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{}}},
	}
	req := &cellapi.PodRequest{Pod: p, Volumes: map[string]cellapi.VolumeFiles{
		"cfg": {Files: map[string]cellapi.File{"sub/greeting": {Data: []byte("hi from configmap\n"), Mode: 0o644}}},
	}}
	if _, err := h.client.PutPod(t.Context(), req); err != nil {
		t.Fatal(err)
	}
	seen := h.watchUntil(60*time.Second, func(s *cellapi.PodStatus) bool { return s.Phase == corev1.PodSucceeded || s.Phase == corev1.PodFailed })
	last := seen[len(seen)-1]
	if last.Phase != corev1.PodSucceeded {
		t.Fatalf("pod %s", describe(last))
	}
	if it := last.InitContainerStatuses[0].State.Terminated; it == nil || it.Reason != "Completed" {
		t.Errorf("init status %+v", last.InitContainerStatuses[0].State)
	}
	// While the init container ran, the app container waited with PodInitializing.
	sawInitializing := false
	for _, s := range seen {
		if w := s.ContainerStatuses[0].State.Waiting; w != nil && w.Reason == "PodInitializing" {
			sawInitializing = true
		}
	}
	if !sawInitializing {
		t.Error("app container never waited with PodInitializing")
	}
	if got, want := h.logs("app", cellapi.LogOptions{}), "from-init\nhi from configmap\n"; got != want {
		t.Errorf("app logs %q, want %q", got, want)
	}
	h.deletePod(time.Second)
}

func TestOnFailureRestartsWithGrowingBackOff(t *testing.T) {
	bo := pod.BackOff{Base: 300 * time.Millisecond, Max: 10 * time.Second, Reset: time.Minute}
	h := newHarness(t, bo)
	p := newPod("crash", corev1.RestartPolicyOnFailure, shell("app", h.img("busybox"), "echo run; exit 1"))
	if _, err := h.client.PutPod(t.Context(), &cellapi.PodRequest{Pod: p}); err != nil {
		t.Fatal(err)
	}
	type obs struct {
		msg string
		at  time.Time
	}
	var backoffs []obs
	var starts []time.Time
	lastRestart := int32(-1)
	h.watchUntil(60*time.Second, func(s *cellapi.PodStatus) bool {
		cs := s.ContainerStatuses[0]
		if w := cs.State.Waiting; w != nil && w.Reason == "CrashLoopBackOff" && (len(backoffs) == 0 || backoffs[len(backoffs)-1].msg != w.Message) {
			backoffs = append(backoffs, obs{w.Message, time.Now()})
			if cs.LastTerminationState.Terminated == nil || cs.LastTerminationState.Terminated.ExitCode != 1 {
				t.Errorf("CrashLoopBackOff without lastState exit 1: %+v", cs.LastTerminationState)
			}
		}
		if cs.State.Running != nil && cs.RestartCount != lastRestart {
			lastRestart = cs.RestartCount
			starts = append(starts, time.Now())
		}
		if s.Phase == corev1.PodFailed || s.Phase == corev1.PodSucceeded {
			t.Fatalf("OnFailure pod reached %s", s.Phase)
		}
		return cs.RestartCount >= 4 && len(backoffs) >= 3
	})
	want := []string{"back-off 300ms", "back-off 600ms", "back-off 1.2s"}
	for i, w := range want {
		if !strings.HasPrefix(backoffs[i].msg, w) {
			t.Errorf("back-off %d message %q, want prefix %q", i, backoffs[i].msg, w)
		}
	}
	// As kubelet, the first crash restarts at once: the first back-off comes after restart 1.
	if len(starts) < 2 || !backoffs[0].at.After(starts[1]) {
		t.Errorf("the first restart waited a back-off (restarts at %v, back-offs %v)", starts, backoffs)
	}
	// Each later restart came no sooner than its back-off asked.
	for i := 2; i < len(starts) && i-1 <= len(want); i++ {
		gap := starts[i].Sub(backoffs[i-2].at)
		min := bo.Base << (i - 2)
		if gap < min-50*time.Millisecond {
			t.Errorf("restart %d came %s after back-off began, want at least %s", i, gap, min)
		}
	}
	got := h.logs("app", cellapi.LogOptions{Previous: true})
	if got != "run\n" {
		t.Errorf("previous logs %q", got)
	}
	// Only the current and the previous run keep their logs.
	for _, c := range []string{"app"} {
		dir := filepath.Join(h.stateDir, "pods", string(p.UID), "logs", c)
		ents, _ := os.ReadDir(dir)
		var runs []string
		for _, e := range ents {
			if strings.HasSuffix(e.Name(), ".log") {
				runs = append(runs, e.Name())
			}
		}
		if len(runs) > 2 {
			t.Errorf("logs kept for runs %v, want at most the last two", runs)
		}
	}
	h.deletePod(0)
}

func TestMemoryLimitOOMKilled(t *testing.T) {
	h := newHarness(t, fastBackOff)
	c := shell("hog", h.img("busybox"), "dd if=/dev/zero of=/dev/null bs=64M count=1")
	c.Resources.Limits = corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("16Mi"), corev1.ResourceCPU: resource.MustParse("500m")}
	p := newPod("oom", corev1.RestartPolicyNever, c)
	if _, err := h.client.PutPod(t.Context(), &cellapi.PodRequest{Pod: p}); err != nil {
		t.Fatal(err)
	}
	seen := h.watchUntil(60*time.Second, func(s *cellapi.PodStatus) bool { return s.Phase == corev1.PodFailed })
	term := seen[len(seen)-1].ContainerStatuses[0].State.Terminated
	if term == nil || term.Reason != "OOMKilled" || term.ExitCode != 137 {
		t.Fatalf("terminated %+v, want OOMKilled 137", term)
	}
	h.deletePod(0)
}

// TestLimitsAboveCell: a container whose CPU and memory limits exceed its cell's starts
// (cgroup v1 refuses a CPU quota above a parent's with EINVAL) and runs under the cell's: its
// quota and its container cgroup's memory limit are the cell's.
func TestLimitsAboveCell(t *testing.T) {
	h := newHarness(t, fastBackOff)
	dirs, err := h.cg.Dirs(h.parent)
	if err != nil {
		t.Fatal(err)
	}
	// The pods parent sized like a quarter-CPU, 64 MiB cell (the harness removes it).
	if err := h.cg.Create(dirs, cgroups.Limits{CPUs: 0.25, MemoryBytes: 64 << 20}); err != nil {
		t.Fatal(err)
	}
	c := shell("app", h.img("busybox"), "cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us 2>/dev/null || cut -d' ' -f1 /sys/fs/cgroup/cpu.max")
	c.Resources.Requests = corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("100m"), corev1.ResourceMemory: resource.MustParse("16Mi")}
	c.Resources.Limits = corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("64"), corev1.ResourceMemory: resource.MustParse("64Gi")}
	p := newPod("big", corev1.RestartPolicyNever, c)
	if _, err := h.client.PutPod(t.Context(), &cellapi.PodRequest{Pod: p}); err != nil {
		t.Fatal(err)
	}
	seen := h.watchUntil(60*time.Second, func(s *cellapi.PodStatus) bool { return s.Phase == corev1.PodSucceeded || s.Phase == corev1.PodFailed })
	if last := seen[len(seen)-1]; last.Phase != corev1.PodSucceeded {
		t.Fatalf("pod %s", describe(last))
	}
	if got := strings.TrimSpace(h.logs("app", cellapi.LogOptions{})); got != "25000" {
		t.Errorf("the container's CPU quota is %q, want the cell's 25000", got)
	}
	file := "memory.limit_in_bytes"
	if h.cg.Mode() == cgroups.Unified {
		file = "memory.max"
	}
	mem := filepath.Join(h.cg.Dir("memory", cgroups.ContainerPath(h.parent, string(p.UID), "app")), file)
	if b, err := os.ReadFile(mem); err != nil || strings.TrimSpace(string(b)) != strconv.Itoa(64<<20) {
		t.Errorf("%s = %q (%v), want the cell's %d", mem, b, err, 64<<20)
	}
	h.deletePod(0)
}

func TestMissingImagePullBackOff(t *testing.T) {
	h := newHarness(t, pod.BackOff{Base: 500 * time.Millisecond, Max: time.Second, Reset: time.Minute})
	p := newPod("missing", corev1.RestartPolicyAlways, corev1.Container{Name: "app", Image: h.img("does-not-exist")})
	if _, err := h.client.PutPod(t.Context(), &cellapi.PodRequest{Pod: p}); err != nil {
		t.Fatal(err)
	}
	var reasons []string
	h.watchUntil(60*time.Second, func(s *cellapi.PodStatus) bool {
		w := s.ContainerStatuses[0].State.Waiting
		if w != nil && w.Reason != "ContainerCreating" && (len(reasons) == 0 || reasons[len(reasons)-1] != w.Reason) {
			reasons = append(reasons, w.Reason)
			if !strings.Contains(w.Message, "does-not-exist") {
				t.Errorf("%s message %q does not name the image", w.Reason, w.Message)
			}
		}
		if s.Phase != corev1.PodPending {
			t.Fatalf("phase %s", s.Phase)
		}
		return len(reasons) >= 4
	})
	want := []string{"ErrImagePull", "ImagePullBackOff", "ErrImagePull", "ImagePullBackOff"}
	if strings.Join(reasons, ",") != strings.Join(want, ",") {
		t.Errorf("waiting reasons %v, want %v", reasons, want)
	}
	h.deletePod(0)
}

func TestBadInputKeepsServing(t *testing.T) {
	h := newHarness(t, fastBackOff)
	cert, key, _ := h.ca.Issue(pki.LeafSpec{CommonName: "kip", Client: true})
	ctls, _ := pki.ClientTLS(h.ca.CertPEM, cert, key, "cell-"+h.tag)
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: ctls}}
	defer hc.CloseIdleConnections()
	for _, tc := range []struct{ name, body, want string }{
		{"malformed", `{"pod":`, "decoding pod request"},
		{"unknown field", `{"pod":{"metadata":{"uid":"u1"},"spec":{"containers":[{"name":"a","image":"x","comand":["x"]}]}}}`, `unknown field \"comand\"`},
		{"no containers", `{"pod":{"metadata":{"uid":"u1"},"spec":{}}}`, "pod.spec.containers"},
		{"no image", `{"pod":{"metadata":{"uid":"u1"},"spec":{"containers":[{"name":"a"}]}}}`, "pod.spec.containers[0].image: required"},
		{"no uid", `{"pod":{"spec":{"containers":[{"name":"a","image":"x"}]}}}`, "pod.metadata.uid: required"},
		{"bad mount", `{"pod":{"metadata":{"uid":"u1"},"spec":{"containers":[{"name":"a","image":"x","volumeMounts":[{"name":"v","mountPath":"/x"}]}]}}}`, `volume \"v\" is not declared`},
	} {
		req, _ := http.NewRequest("PUT", h.srv.URL+cellapi.PodPath, strings.NewReader(tc.body))
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 400 || !strings.Contains(string(b), tc.want) {
			t.Errorf("%s: %d %s; want 400 containing %s", tc.name, resp.StatusCode, b, tc.want)
		}
	}
	if _, err := h.client.GetPod(t.Context()); !cellapi.IsNotFound(err) {
		t.Fatalf("a rejected request left a pod: %v", err)
	}

	// An image reference that does not parse: InvalidImageName, and the pod stays Pending.
	p := newPod("badref", corev1.RestartPolicyNever, corev1.Container{Name: "app", Image: "UPPER/Case::nope"})
	if _, err := h.client.PutPod(t.Context(), &cellapi.PodRequest{Pod: p}); err != nil {
		t.Fatal(err)
	}
	h.watchUntil(30*time.Second, func(s *cellapi.PodStatus) bool {
		w := s.ContainerStatuses[0].State.Waiting
		return w != nil && w.Reason == "InvalidImageName"
	})
	h.deletePod(0)

	// A command that does not exist: the container cannot run, with runc's message.
	p = newPod("nocmd", corev1.RestartPolicyNever, corev1.Container{Name: "app", Image: h.img("busybox"), Command: []string{"/no/such/binary"}})
	if _, err := h.client.PutPod(t.Context(), &cellapi.PodRequest{Pod: p}); err != nil {
		t.Fatal(err)
	}
	seen := h.watchUntil(30*time.Second, func(s *cellapi.PodStatus) bool { return s.Phase == corev1.PodFailed })
	term := seen[len(seen)-1].ContainerStatuses[0].State.Terminated
	if term == nil || term.Reason != "ContainerCannotRun" || term.ExitCode != 128 || !strings.Contains(term.Message, "/no/such/binary") {
		t.Fatalf("terminated %+v", term)
	}
	h.deletePod(0)

	// With restartPolicy Always the same mistake shows RunContainerError between retries.
	p = newPod("nocmd2", corev1.RestartPolicyAlways, corev1.Container{Name: "app", Image: h.img("busybox"), Command: []string{"/no/such/binary"}})
	if _, err := h.client.PutPod(t.Context(), &cellapi.PodRequest{Pod: p}); err != nil {
		t.Fatal(err)
	}
	h.watchUntil(30*time.Second, func(s *cellapi.PodStatus) bool {
		w := s.ContainerStatuses[0].State.Waiting
		return w != nil && w.Reason == "RunContainerError" && strings.Contains(w.Message, "/no/such/binary")
	})
	h.deletePod(0)

	if hl, err := h.client.Health(t.Context()); err != nil || hl.CellID != "cell-"+h.tag {
		t.Fatalf("agent stopped serving: %v", err)
	}
}

func TestClientFromOtherCARefused(t *testing.T) {
	h := newHarness(t, fastBackOff)
	other, err := pki.NewCA("intruder")
	if err != nil {
		t.Fatal(err)
	}
	intruder := h.newClient(other)
	if _, err := intruder.PutPod(t.Context(), &cellapi.PodRequest{Pod: newPod("x", "", shell("a", h.img("busybox"), "true"))}); err == nil {
		t.Fatal("agent accepted a client certificate from another CA")
	}
	if _, err := h.client.GetPod(t.Context()); !cellapi.IsNotFound(err) {
		t.Fatalf("the refused request created a pod: %v", err)
	}
}

func TestDeleteStopsRunningContainers(t *testing.T) {
	h := newHarness(t, fastBackOff)
	// "sleeper" traps SIGTERM and exits 0; "stubborn" ignores it (sleep as PID 1).
	p := newPod("long", corev1.RestartPolicyAlways,
		corev1.Container{Name: "sleeper", Image: h.img("sleeper")},
		corev1.Container{Name: "stubborn", Image: h.img("busybox"), Command: []string{"sleep", "1000"}},
	)
	if _, err := h.client.PutPod(t.Context(), &cellapi.PodRequest{Pod: p}); err != nil {
		t.Fatal(err)
	}
	h.watchUntil(60*time.Second, func(s *cellapi.PodStatus) bool {
		return s.Phase == corev1.PodRunning && s.ContainerStatuses[0].Ready && s.ContainerStatuses[1].Ready
	})
	stats, err := h.client.Stats(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(stats.Containers) != 2 || stats.Cell.MemoryUsageBytes == 0 {
		t.Errorf("stats %+v", stats)
	}
	for _, c := range stats.Containers {
		if c.Usage.MemoryWorkingSetBytes == 0 || c.Usage.CPUUsageNanoSeconds == 0 {
			t.Errorf("container %s usage %+v", c.Name, c.Usage)
		}
	}

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	ch, err := h.client.WatchPod(ctx)
	if err != nil {
		t.Fatal(err)
	}
	h.deletePod(time.Second)
	var last *cellapi.PodStatus
	for st := range ch {
		last = st
		if st.ContainerStatuses[0].State.Terminated != nil && st.ContainerStatuses[1].State.Terminated != nil {
			break
		}
	}
	if last == nil {
		t.Fatal("no status after delete")
	}
	if t0 := last.ContainerStatuses[0].State.Terminated; t0 == nil || t0.ExitCode != 0 {
		t.Errorf("sleeper %s, want exit 0 on SIGTERM", stateString(last.ContainerStatuses[0].State))
	}
	if t1 := last.ContainerStatuses[1].State.Terminated; t1 == nil || t1.ExitCode != 137 || t1.Reason != "Error" {
		t.Errorf("stubborn %s, want SIGKILL after the grace period (137, Error)", stateString(last.ContainerStatuses[1].State))
	}
}

func TestReadinessProbeAndPreStopHook(t *testing.T) {
	h := newHarness(t, fastBackOff)
	var preStops atomic.Int32
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/prestop" {
			preStops.Add(1)
		}
	}))
	defer hook.Close()
	_, port, _ := net.SplitHostPort(strings.TrimPrefix(hook.URL, "http://"))
	portNum, _ := strconv.Atoi(port)

	c := shell("app", h.img("busybox"), `trap "exit 0" TERM; sleep 1; touch /tmp/ready; while true; do sleep 1; done`)
	c.ReadinessProbe = &corev1.Probe{
		ProbeHandler:  corev1.ProbeHandler{Exec: &corev1.ExecAction{Command: []string{"cat", "/tmp/ready"}}},
		PeriodSeconds: 1,
	}
	c.Lifecycle = &corev1.Lifecycle{PreStop: &corev1.LifecycleHandler{
		HTTPGet: &corev1.HTTPGetAction{Path: "/prestop", Port: intstr.FromInt(portNum)},
	}}
	p := newPod("probed", corev1.RestartPolicyAlways, c)
	if _, err := h.client.PutPod(t.Context(), &cellapi.PodRequest{Pod: p}); err != nil {
		t.Fatal(err)
	}
	seen := h.watchUntil(60*time.Second, func(s *cellapi.PodStatus) bool { return s.ContainerStatuses[0].Ready })
	sawRunningUnready := false
	for _, s := range seen {
		if cs := s.ContainerStatuses[0]; cs.State.Running != nil && !cs.Ready {
			sawRunningUnready = true
		}
	}
	if !sawRunningUnready {
		t.Error("the container was ready before its readiness probe passed")
	}
	if last := seen[len(seen)-1]; last.Phase != corev1.PodRunning {
		t.Errorf("phase %s", last.Phase)
	}

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	ch, err := h.client.WatchPod(ctx)
	if err != nil {
		t.Fatal(err)
	}
	h.deletePod(20 * time.Second)
	if preStops.Load() != 1 {
		t.Errorf("preStop hook called %d times, want 1", preStops.Load())
	}
	for st := range ch {
		if term := st.ContainerStatuses[0].State.Terminated; term != nil {
			if term.ExitCode != 0 {
				t.Errorf("terminated %+v, want exit 0 from the TERM trap", term)
			}
			break
		}
	}
}

func TestExecAndPortForward(t *testing.T) {
	h := newHarness(t, fastBackOff)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	_, port, _ := net.SplitHostPort(addr)
	web := corev1.Container{Name: "web", Image: h.img("busybox"), Command: []string{"httpd", "-f", "-p", addr, "-h", "/etc"}}
	p := newPod("exec", corev1.RestartPolicyNever, web)
	if _, err := h.client.PutPod(t.Context(), &cellapi.PodRequest{Pod: p}); err != nil {
		t.Fatal(err)
	}
	h.watchUntil(60*time.Second, func(s *cellapi.PodStatus) bool { return s.ContainerStatuses[0].State.Running != nil })

	var out, errb bytes.Buffer
	code, err := h.client.Exec(t.Context(), "web", cellapi.ExecOptions{Command: []string{"sh", "-c", "echo out; echo err >&2; exit 7"}}, cellapi.ExecIO{Stdout: &out, Stderr: &errb})
	if err != nil || code != 7 || out.String() != "out\n" || errb.String() != "err\n" {
		t.Errorf("exec = %d, %v, stdout %q, stderr %q", code, err, out.String(), errb.String())
	}
	out.Reset()
	code, err = h.client.Exec(t.Context(), "web", cellapi.ExecOptions{Command: []string{"cat"}, Stdin: true}, cellapi.ExecIO{Stdin: strings.NewReader("from stdin"), Stdout: &out})
	if err != nil || code != 0 || out.String() != "from stdin" {
		t.Errorf("exec cat = %d, %v, %q", code, err, out.String())
	}
	out.Reset()
	resize := make(chan cellapi.TermSize, 1)
	resize <- cellapi.TermSize{Width: 100, Height: 40}
	code, err = h.client.Exec(t.Context(), "web", cellapi.ExecOptions{Command: []string{"sh", "-c", "sleep 0.2; tty; stty size"}, TTY: true}, cellapi.ExecIO{Stdout: &out, Resize: resize})
	if err != nil || code != 0 || !strings.HasPrefix(out.String(), "/dev/pts/") || !strings.Contains(out.String(), "40 100") {
		t.Errorf("exec with tty = %d, %v, %q", code, err, out.String())
	}
	if _, err := h.client.Exec(t.Context(), "nope", cellapi.ExecOptions{Command: []string{"true"}}, cellapi.ExecIO{}); !cellapi.IsNotFound(err) {
		t.Errorf("exec in a missing container: %v, want NotFound", err)
	}
	if _, err := h.client.Exec(t.Context(), "web", cellapi.ExecOptions{Command: []string{"/no/such"}}, cellapi.ExecIO{}); err == nil || !strings.Contains(err.Error(), "/no/such") {
		t.Errorf("exec of a missing binary: %v", err)
	}

	portNum, _ := strconv.Atoi(port)
	local, remote := net.Pipe()
	fwdDone := make(chan error, 1)
	go func() { fwdDone <- h.client.PortForward(t.Context(), int32(portNum), remote) }()
	local.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := io.WriteString(local, "GET /hostname HTTP/1.0\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, _ := io.ReadAll(local)
	local.Close()
	if !strings.Contains(string(resp), "200 OK") || !strings.HasSuffix(string(resp), "exec\n") {
		t.Errorf("port-forwarded response %q", resp)
	}
	if err := <-fwdDone; err != nil {
		t.Errorf("PortForward: %v", err)
	}
	h.deletePod(time.Second)
}

// BenchmarkContainerStart measures pod put → container running with a cached busybox image,
// and reports p50/p99 and the agent process's RSS.
func BenchmarkContainerStart(b *testing.B) {
	h := newHarness(b, fastBackOff)
	b.ResetTimer()
	var durs []time.Duration
	for i := 0; i < b.N; i++ {
		p := newPod("bench", corev1.RestartPolicyNever, corev1.Container{Name: "app", Image: h.img("busybox"), Command: []string{"sleep", "1000"}})
		start := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		ch, err := h.client.WatchPod(ctx)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := h.client.PutPod(ctx, &cellapi.PodRequest{Pod: p}); err != nil {
			b.Fatal(err)
		}
		for st := range ch {
			if st.UID == string(p.UID) && len(st.ContainerStatuses) > 0 && st.ContainerStatuses[0].State.Running != nil {
				break
			}
		}
		durs = append(durs, time.Since(start))
		cancel()
		if err := h.client.DeletePod(context.Background(), 0); err != nil {
			b.Fatal(err)
		}
	}
	reportPercentiles(b, durs)
	b.ReportMetric(float64(rssBytes())/(1<<20), "agent-rss-MiB")
}

func reportPercentiles(b *testing.B, durs []time.Duration) {
	if len(durs) == 0 {
		return
	}
	sorted := append([]time.Duration(nil), durs...)
	slices.Sort(sorted)
	pct := func(p float64) time.Duration { return sorted[int(p*float64(len(sorted)-1))] }
	b.ReportMetric(float64(pct(0.50).Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(pct(0.99).Microseconds())/1000, "p99-ms")
}

func rssBytes() int64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var kb int64
		if n, _ := fmt.Sscanf(sc.Text(), "VmRSS: %d kB", &kb); n == 1 {
			return kb << 10
		}
	}
	return 0
}
