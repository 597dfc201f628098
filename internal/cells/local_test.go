package cells

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/tools/record"
	"k8s.io/utils/clock"

	"github.com/kip-dev/kip/internal/annotations"
	"github.com/kip-dev/kip/internal/cellapi"
	"github.com/kip-dev/kip/internal/cloud/local"
	"github.com/kip-dev/kip/internal/controllers/gc"
	"github.com/kip-dev/kip/internal/pki"
	"github.com/kip-dev/kip/internal/podstatus"
	"github.com/kip-dev/kip/internal/registry"
	"github.com/kip-dev/kip/internal/testenv"
)

// TestLocalCells runs pods through the manager on real local cells: network namespaces on a
// bridge, the real kip-cell agent over mutual TLS, runc, and images pulled from a registry
// on the bridge. Needs root and runc; builds cmd/kip-cell unless KIP_CELL_BIN is set.
func TestLocalCells(t *testing.T) {
	ctx := context.Background()
	b, reg, ca, tag := localSetup(t)

	var mu sync.Mutex
	notified := map[string]*corev1.Pod{}
	cfg := DefaultOptions()
	cfg.ClusterName = "t" + tag
	const statusInterval = time.Second
	rec := record.NewFakeRecorder(100000)
	var events []string
	sawEvent := func(prefix, contains string) bool {
		for {
			select {
			case e := <-rec.Events:
				events = append(events, e)
				continue
			default:
			}
			break
		}
		for _, e := range events {
			if strings.HasPrefix(e, prefix) && strings.Contains(e, contains) {
				return true
			}
		}
		return false
	}
	var stopControllers func()
	newManager := func(pods []*corev1.Pod) *Manager {
		m := New(cfg, NodeInfo{Name: "kip-" + tag, HostIP: b.BridgeIP().String()}, Deps{
			Cloud:    b,
			Selector: SelectFunc(testSelect),
			CA:       ca,
			Events:   rec,
			Clock:    clock.RealClock{},
			Registry: cellapi.RegistryConfig{DefaultRegistry: reg.Host(), Insecure: []string{reg.Host()}},
		})
		t.Cleanup(m.Close)
		m.NotifyPods(func(p *corev1.Pod) {
			mu.Lock()
			defer mu.Unlock()
			notified[p.Name] = p
		})
		if err := m.Recover(ctx, pods); err != nil {
			t.Fatalf("Recover: %v", err)
		}
		// The controller kip run starts after Recover: orphans, vanished instances.
		cctx, cancel := context.WithCancel(ctx)
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			gc.New(gc.Options{Interval: statusInterval, ClusterName: cfg.ClusterName, NodeName: "kip-" + tag}, m, b, nil, nil, nil).Run(cctx)
		}()
		stopControllers = func() { cancel(); wg.Wait() }
		t.Cleanup(stopControllers)
		return m
	}
	m := newManager(nil)
	t.Cleanup(func() {
		// Whatever happened, no cell of this test may outlive it.
		for _, p := range m.ListPods() {
			_ = m.DeletePod(context.Background(), p)
		}
		waitReal(t, 30*time.Second, "every cell terminated", func() bool {
			insts, err := b.List(context.Background(), map[string]string{"kip.dev/cluster": cfg.ClusterName})
			return err == nil && len(insts) == 0
		})
	})
	live := func() int {
		insts, err := b.List(ctx, map[string]string{"kip.dev/cluster": cfg.ClusterName})
		if err != nil {
			t.Fatal(err)
		}
		return len(insts)
	}
	sh := func(name string, policy corev1.RestartPolicy, script string) *corev1.Pod {
		return testPod(name, func(p *corev1.Pod) {
			p.Spec.RestartPolicy = policy
			p.Spec.Containers[0].Command = []string{"sh", "-c", script}
		})
	}

	t.Run("job completes, logs survive the cell", func(t *testing.T) {
		pod := sh("hello", corev1.RestartPolicyNever, "echo hello-kip")
		if err := m.CreatePod(ctx, pod); err != nil {
			t.Fatal(err)
		}
		got := waitManagerPod(t, m, pod, 90*time.Second, "Succeeded", func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodSucceeded })
		cs := got.Status.ContainerStatuses[0]
		if cs.State.Terminated == nil || cs.State.Terminated.ExitCode != 0 || cs.ImageID == "" {
			t.Errorf("container status %+v", cs)
		}
		if got.Status.PodIP == "" || got.Status.HostIP != b.BridgeIP().String() {
			t.Errorf("podIP %q hostIP %q", got.Status.PodIP, got.Status.HostIP)
		}
		waitReal(t, 30*time.Second, "the cell to be terminated", func() bool { return live() == 0 })
		a, err := m.Agent("default", "hello")
		if err != nil {
			t.Fatal(err)
		}
		rc, err := a.Logs(ctx, "main", cellapi.LogOptions{})
		if err != nil {
			t.Fatal(err)
		}
		out, _ := io.ReadAll(rc)
		if strings.TrimSpace(string(out)) != "hello-kip" {
			t.Errorf("logs = %q", out)
		}
		// CellTerminated is recorded right after the cloud reports the instance gone.
		if !pollUntil(10*time.Second, func() bool { return sawEvent("Normal CellTerminated", "") }) {
			t.Errorf("no CellTerminated event: %v", events)
		}
		for _, want := range []string{"Normal InstanceTypeSelected", "Normal CellLaunched", "Normal CellReady", "Normal Pulling", "Normal Pulled", "Normal Started"} {
			if !sawEvent(want, "") {
				t.Errorf("no %s event: %v", want, events)
			}
		}
		tm := m.Timings()
		t.Logf("timings: launched %v, agent ready %v, pulled %v, started %v after create",
			tm[0].Launched.Sub(tm[0].Created), tm[0].AgentReady.Sub(tm[0].Created), tm[0].Pulled.Sub(tm[0].Created), tm[0].Started.Sub(tm[0].Created))
		if err := m.DeletePod(ctx, pod); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("exit 3 fails the pod", func(t *testing.T) {
		pod := sh("three", corev1.RestartPolicyNever, "exit 3")
		if err := m.CreatePod(ctx, pod); err != nil {
			t.Fatal(err)
		}
		got := waitManagerPod(t, m, pod, 90*time.Second, "Failed", func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodFailed })
		if term := got.Status.ContainerStatuses[0].State.Terminated; term == nil || term.ExitCode != 3 || term.Reason != "Error" {
			t.Errorf("container state %+v", got.Status.ContainerStatuses[0].State)
		}
		waitReal(t, 30*time.Second, "the cell to be terminated", func() bool { return live() == 0 })
		if err := m.DeletePod(ctx, pod); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("delete sends SIGTERM and removes the cell", func(t *testing.T) {
		pod := sh("server", corev1.RestartPolicyAlways, `trap 'echo got-TERM; exit 0' TERM; echo up; while true; do sleep 0.1; done`)
		if err := m.CreatePod(ctx, pod); err != nil {
			t.Fatal(err)
		}
		waitManagerPod(t, m, pod, 90*time.Second, "Running", func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodRunning })
		grace := int64(10)
		del := pod.DeepCopy()
		del.DeletionGracePeriodSeconds = &grace
		if err := m.DeletePod(ctx, del); err != nil {
			t.Fatal(err)
		}
		waitReal(t, 60*time.Second, "the pod to be gone", func() bool { _, ok := m.GetPod("default", "server"); return !ok })
		if live() != 0 {
			t.Error("the cell outlived the pod")
		}
		mu.Lock()
		final := notified["server"]
		mu.Unlock()
		if final == nil || final.Status.Phase != corev1.PodSucceeded {
			t.Fatalf("final status %+v", final)
		}
		if term := final.Status.ContainerStatuses[0].State.Terminated; term == nil || term.ExitCode != 0 {
			t.Errorf("container state %+v (the trap should exit 0 on SIGTERM)", final.Status.ContainerStatuses[0].State)
		}
	})

	t.Run("a missing image waits with ErrImagePull, no crash", func(t *testing.T) {
		pod := testPod("noimage", func(p *corev1.Pod) { p.Spec.Containers[0].Image = "library/does-not-exist:1" })
		if err := m.CreatePod(ctx, pod); err != nil {
			t.Fatal(err)
		}
		got := waitManagerPod(t, m, pod, 60*time.Second, "ErrImagePull", func(p *corev1.Pod) bool {
			w := p.Status.ContainerStatuses[0].State.Waiting
			return w != nil && (w.Reason == "ErrImagePull" || w.Reason == "ImagePullBackOff")
		})
		if got.Status.Phase != corev1.PodPending {
			t.Errorf("phase %s", got.Status.Phase)
		}
		if !sawEvent("Warning Failed", "") {
			t.Errorf("no Warning Failed event for the pull: %v", events)
		}
		if err := m.DeletePod(ctx, pod); err != nil {
			t.Fatal(err)
		}
		waitReal(t, 30*time.Second, "the cell to be terminated", func() bool { return live() == 0 })
	})

	t.Run("kip restarts while a pod runs: adopted, not relaunched", func(t *testing.T) {
		pod := sh("survivor", corev1.RestartPolicyAlways, `echo up; while true; do sleep 0.1; done`)
		if err := m.CreatePod(ctx, pod); err != nil {
			t.Fatal(err)
		}
		before := waitManagerPod(t, m, pod, 90*time.Second, "Running", func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodRunning })
		insts, _ := b.List(ctx, map[string]string{"kip.dev/cluster": cfg.ClusterName})
		stopControllers()
		m.Close() // kip dies; the cell keeps running
		m = newManager([]*corev1.Pod{before})
		after, ok := m.GetPod("default", "survivor")
		if !ok || after.Status.Phase != corev1.PodRunning || after.Status.PodIP != before.Status.PodIP {
			t.Fatalf("after restart: %+v", after)
		}
		if err := m.CreatePod(ctx, pod); err != nil { // virtual-kubelet resyncs
			t.Fatal(err)
		}
		// The adopted pod keeps its container (same start time, no restart).
		waitReal(t, 30*time.Second, "the adopted cell's agent", func() bool {
			a, err := m.Agent("default", "survivor")
			if err != nil {
				return false
			}
			st, err := a.GetPod(ctx)
			return err == nil && st.ContainerStatuses[0].State.Running != nil && st.ContainerStatuses[0].RestartCount == 0
		})
		got, _ := m.GetPod("default", "survivor")
		if got.Status.ContainerStatuses[0].State.Running == nil ||
			!got.Status.ContainerStatuses[0].State.Running.StartedAt.Equal(&before.Status.ContainerStatuses[0].State.Running.StartedAt) {
			t.Errorf("container restarted: before %+v after %+v", before.Status.ContainerStatuses[0].State, got.Status.ContainerStatuses[0].State)
		}
		now, _ := b.List(ctx, map[string]string{"kip.dev/cluster": cfg.ClusterName})
		if len(now) != 1 || len(insts) != 1 || now[0].ID != insts[0].ID {
			t.Errorf("instances before %d, after %d (a cell launched twice or lost)", len(insts), len(now))
		}
		// sh as PID 1 ignores SIGTERM: a short grace period ends it with SIGKILL.
		grace := int64(1)
		del := pod.DeepCopy()
		del.DeletionGracePeriodSeconds = &grace
		if err := m.DeletePod(ctx, del); err != nil {
			t.Fatal(err)
		}
		waitReal(t, 30*time.Second, "the pod to be gone", func() bool { _, ok := m.GetPod("default", "survivor"); return !ok })
		if live() != 0 {
			t.Error("the cell outlived the pod")
		}
		mu.Lock()
		final := notified["survivor"]
		mu.Unlock()
		if term := final.Status.ContainerStatuses[0].State.Terminated; final.Status.Phase != corev1.PodFailed || term == nil || term.ExitCode != 137 {
			t.Errorf("final status: phase %s, container %+v", final.Status.Phase, final.Status.ContainerStatuses[0].State)
		}
	})

	ready := func(p *corev1.Pod) bool {
		c := findCondition(p.Status.Conditions, corev1.PodReady)
		return p.Status.Phase == corev1.PodRunning && c != nil && c.Status == corev1.ConditionTrue &&
			len(p.Status.ContainerStatuses) == 1 && p.Status.ContainerStatuses[0].Ready
	}
	notReady := func(p *corev1.Pod) bool {
		c := findCondition(p.Status.Conditions, corev1.PodReady)
		return p.Status.Phase == corev1.PodRunning && c != nil && c.Status == corev1.ConditionFalse &&
			c.Reason == podstatus.ReasonCellUnreachable && len(p.Status.ContainerStatuses) == 1 && !p.Status.ContainerStatuses[0].Ready
	}

	t.Run("a cell cut off the network for less than its lost timeout keeps its containers", func(t *testing.T) {
		pod := sh("ferry", corev1.RestartPolicyAlways, `while true; do sleep 0.1; done`)
		pod.Annotations = map[string]string{annotations.LostTimeout: "2m"}
		if err := m.CreatePod(ctx, pod); err != nil {
			t.Fatal(err)
		}
		before := waitManagerPod(t, m, pod, 90*time.Second, "Ready", ready)
		insts, _ := b.List(ctx, map[string]string{"kip.dev/cluster": cfg.ClusterName})
		if len(insts) != 1 {
			t.Fatalf("%d instances", len(insts))
		}
		cut := time.Now()
		if err := b.Partition(ctx, insts[0].ID); err != nil {
			t.Fatal(err)
		}
		waitManagerPod(t, m, pod, 90*time.Second, "NotReady while cut off", notReady)
		t.Logf("NotReady %s after the cut", time.Since(cut).Round(time.Millisecond))
		// The fault lasts long enough for kip to drop the hung connection and probe afresh
		// (its HTTP/2 pings close it after a few seconds), well short of the lost timeout.
		time.Sleep(15 * time.Second)
		if p, _ := m.GetPod(pod.Namespace, pod.Name); !notReady(p) {
			t.Fatalf("a cell still cut off is not NotReady: %+v", p.Status)
		}
		healed := time.Now()
		if err := b.Heal(ctx, insts[0].ID); err != nil {
			t.Fatal(err)
		}
		after := waitManagerPod(t, m, pod, 90*time.Second, "Ready again", ready)
		t.Logf("Ready %s after the heal (cut off %s)", time.Since(healed).Round(time.Millisecond), healed.Sub(cut).Round(time.Millisecond))
		bc, ac := before.Status.ContainerStatuses[0], after.Status.ContainerStatuses[0]
		if ac.ContainerID != bc.ContainerID || ac.RestartCount != bc.RestartCount || ac.State.Running == nil ||
			!ac.State.Running.StartedAt.Equal(&bc.State.Running.StartedAt) {
			t.Errorf("the container changed: before %s restarts %d %+v, after %s restarts %d %+v",
				bc.ContainerID, bc.RestartCount, bc.State, ac.ContainerID, ac.RestartCount, ac.State)
		}
		if now, _ := b.List(ctx, map[string]string{"kip.dev/cluster": cfg.ClusterName}); len(now) != 1 || now[0].ID != insts[0].ID {
			t.Errorf("cells before %v, after %v", insts, now)
		}
		if !sawEvent("Warning CellUnreachable", "") || !sawEvent("Normal CellReachable", "") {
			t.Errorf("events: %v", events)
		}
		grace := int64(1)
		del := pod.DeepCopy()
		del.DeletionGracePeriodSeconds = &grace
		if err := m.DeletePod(ctx, del); err != nil {
			t.Fatal(err)
		}
		waitReal(t, 30*time.Second, "the pod to be gone", func() bool { _, ok := m.GetPod("default", "ferry"); return !ok })
		waitReal(t, 30*time.Second, "the cell to be terminated", func() bool { return live() == 0 })
	})

	t.Run("a cell cut off the network past its lost timeout fails its pod and is terminated", func(t *testing.T) {
		pod := sh("island", corev1.RestartPolicyAlways, `while true; do sleep 0.1; done`)
		pod.Annotations = map[string]string{annotations.LostTimeout: "8s"}
		if err := m.CreatePod(ctx, pod); err != nil {
			t.Fatal(err)
		}
		waitManagerPod(t, m, pod, 90*time.Second, "Ready", ready)
		insts, _ := b.List(ctx, map[string]string{"kip.dev/cluster": cfg.ClusterName})
		if len(insts) != 1 {
			t.Fatalf("%d instances", len(insts))
		}
		cut := time.Now()
		if err := b.Partition(ctx, insts[0].ID); err != nil {
			t.Fatal(err)
		}
		waitManagerPod(t, m, pod, 60*time.Second, "NotReady while cut off", notReady)
		t.Logf("NotReady %s after the cut", time.Since(cut).Round(time.Millisecond))
		got := waitManagerPod(t, m, pod, 60*time.Second, "Failed", func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodFailed })
		t.Logf("Failed %s after the cut", time.Since(cut).Round(time.Millisecond))
		if got.Status.Reason != ReasonCellLost || !strings.Contains(got.Status.Message, "lost timeout 8s") {
			t.Errorf("reason %q message %q", got.Status.Reason, got.Status.Message)
		}
		if term := got.Status.ContainerStatuses[0].State.Terminated; term == nil || term.ExitCode != 137 || term.Reason != ReasonCellLost {
			t.Errorf("container %+v", got.Status.ContainerStatuses[0].State)
		}
		waitReal(t, 30*time.Second, "the cell to be terminated", func() bool { return live() == 0 })
		if err := m.DeletePod(ctx, pod); err != nil {
			t.Fatal(err)
		}
	})
}

// localSetup makes a local backend on its own bridge, subnet and cgroup parent, a registry
// on the bridge seeded with busybox, and a CA. Everything is removed in t.Cleanup.
func localSetup(t testing.TB) (*local.Backend, *registry.Registry, *pki.CA, string) {
	t.Helper()
	testenv.RequireRunc(t)
	if testing.Short() && os.Getenv("KIP_CELL_BIN") == "" {
		t.Skip("skipping in -short mode: it builds cmd/kip-cell (set KIP_CELL_BIN to use a built one)")
	}
	bin := os.Getenv("KIP_CELL_BIN")
	if bin == "" {
		bin = filepath.Join(t.TempDir(), "kip-cell")
		var out []byte
		var err error
		for try := 0; try < 2; try++ { // a build cache shared with parallel builds can hiccup
			if out, err = exec.Command("go", "build", "-o", bin, "github.com/kip-dev/kip/cmd/kip-cell").CombinedOutput(); err == nil {
				break
			}
		}
		if err != nil {
			t.Fatalf("building cmd/kip-cell: %v\n%s", err, out)
		}
	}
	ctx := context.Background()
	tag := randHex(t)
	b, err := local.New(local.Config{
		StateDir:     filepath.Join(t.TempDir(), "state"),
		Bridge:       "kc" + tag,
		Subnet:       fmt.Sprintf("10.250.%d.0/24", randInt(t, 2, 254)),
		AgentCommand: []string{bin},
		CgroupParent: "kip-c" + tag,
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Setup(ctx); err != nil {
		t.Fatalf("Setup: %v", err)
	}
	t.Cleanup(func() {
		if err := b.Teardown(context.Background()); err != nil {
			t.Errorf("Teardown: %v", err)
		}
	})
	reg, err := registry.Start(net.JoinHostPort(b.BridgeIP().String(), "0"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { reg.Close() })
	if err := registry.SeedBusybox(ctx, reg.Host(), reg.Auth(), "library/busybox:latest"); err != nil {
		t.Fatal(err)
	}
	ca, err := pki.NewCA("kip-cells-test")
	if err != nil {
		t.Fatal(err)
	}
	return b, reg, ca, tag
}

func waitManagerPod(t *testing.T, m *Manager, pod *corev1.Pod, d time.Duration, what string, cond func(*corev1.Pod) bool) *corev1.Pod {
	t.Helper()
	var got *corev1.Pod
	ok := pollUntil(d, func() bool {
		p, ok := m.GetPod(pod.Namespace, pod.Name)
		got = p
		return ok && cond(p)
	})
	if !ok {
		t.Fatalf("timed out waiting for %s %s; last status %+v", pod.Name, what, got)
	}
	return got
}

func waitReal(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	if !pollUntil(d, cond) {
		t.Fatalf("timed out waiting for %s", what)
	}
}

func pollUntil(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
	return true
}

func randHex(t testing.TB) string {
	b := make([]byte, 3)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

func randInt(t testing.TB, lo, hi int64) int64 {
	n, err := rand.Int(rand.Reader, big.NewInt(hi-lo+1))
	if err != nil {
		t.Fatal(err)
	}
	return lo + n.Int64()
}

// BenchmarkLocalBurst creates 20 pods at once on real local cells (busybox from the bridge
// registry) and prints, over all pods of all iterations, p50/p99 of each start phase from
// CreatePod, and the time until the whole burst runs. Needs root and runc.
func BenchmarkLocalBurst(b *testing.B) {
	ctx := context.Background()
	backend, reg, ca, tag := localSetup(b)
	const burst = 20
	var phases = map[string][]time.Duration{}
	var bursts []time.Duration
	for i := 0; i < b.N; i++ {
		cfg := DefaultOptions()
		cfg.ClusterName = "b" + tag
		m := New(cfg, NodeInfo{Name: "kip-" + tag, HostIP: backend.BridgeIP().String()}, Deps{
			Cloud: backend, Selector: SelectFunc(testSelect), CA: ca, Clock: clock.RealClock{},
			Registry: cellapi.RegistryConfig{DefaultRegistry: reg.Host(), Insecure: []string{reg.Host()}},
		})
		var pods []*corev1.Pod
		start := time.Now()
		for j := 0; j < burst; j++ {
			p := testPod(fmt.Sprintf("burst-%d-%d", i, j), func(p *corev1.Pod) {
				p.Spec.RestartPolicy = corev1.RestartPolicyAlways
				p.Spec.Containers[0].Command = []string{"sh", "-c", "while true; do sleep 1; done"}
			})
			pods = append(pods, p)
			if err := m.CreatePod(ctx, p); err != nil {
				b.Fatal(err)
			}
		}
		if !pollUntil(120*time.Second, func() bool {
			for _, p := range pods {
				got, ok := m.GetPod(p.Namespace, p.Name)
				if !ok || got.Status.Phase != corev1.PodRunning {
					return false
				}
			}
			return true
		}) {
			b.Fatalf("the burst never ran")
		}
		bursts = append(bursts, time.Since(start))
		for _, tm := range m.Timings() {
			phases["launched"] = append(phases["launched"], tm.Launched.Sub(tm.Created))
			phases["agent ready"] = append(phases["agent ready"], tm.AgentReady.Sub(tm.Created))
			phases["pulled"] = append(phases["pulled"], tm.Pulled.Sub(tm.Created))
			phases["started"] = append(phases["started"], tm.Started.Sub(tm.Created))
		}
		grace := int64(0)
		for _, p := range pods {
			d := p.DeepCopy()
			d.DeletionGracePeriodSeconds = &grace
			_ = m.DeletePod(ctx, d)
		}
		if !pollUntil(60*time.Second, func() bool { return len(m.ListPods()) == 0 }) {
			b.Fatalf("the burst's pods were never deleted")
		}
		m.Close()
	}
	pct := func(ds []time.Duration, q float64) time.Duration {
		s := append([]time.Duration(nil), ds...)
		slices.Sort(s)
		return s[int(q*float64(len(s)-1))]
	}
	for _, name := range []string{"launched", "agent ready", "pulled", "started"} {
		b.Logf("CreatePod → %-11s p50 %8v  p99 %8v  (%d pods)", name, pct(phases[name], 0.5).Round(time.Millisecond), pct(phases[name], 0.99).Round(time.Millisecond), len(phases[name]))
	}
	b.Logf("%d pods at once → all Running: p50 %v (%d bursts)", burst, pct(bursts, 0.5).Round(time.Millisecond), len(bursts))
	b.ReportMetric(float64(pct(phases["started"], 0.5).Milliseconds()), "p50-started-ms")
	b.ReportMetric(float64(pct(phases["started"], 0.99).Milliseconds()), "p99-started-ms")
}
