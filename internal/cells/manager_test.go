package cells

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"k8s.io/utils/ptr"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/kip-dev/kip/internal/cellapi"
	"github.com/kip-dev/kip/internal/cloud"
	"github.com/kip-dev/kip/internal/cloud/fake"
)

func TestHappyPathRunsCompletesAndTerminates(t *testing.T) {
	h := newHarness(t)
	pod := testPod("job")
	if err := h.m.CreatePod(context.Background(), pod); err != nil {
		t.Fatal(err)
	}
	cellID := CellID(pod.UID)
	a := h.agent(cellID)
	h.waitFor("the agent to get the pod", func() bool { a.mu.Lock(); defer a.mu.Unlock(); return a.req != nil })
	h.waitFor("a status watch", func() bool { return a.watcherCount() > 0 })

	// The launch spec: token and tags derived from the pod, bootstrap naming the cell.
	var spec cloud.LaunchSpec
	for _, c := range h.cloud.Calls() {
		if c.Method == fake.MethodLaunch {
			spec = c.Arg.(cloud.LaunchSpec)
		}
	}
	if spec.CellID != cellID || spec.ClientToken != clientToken(pod.UID, "fake.small", spec.Zone) || spec.InstanceType != "fake.small" {
		t.Errorf("launch spec = %+v", spec)
	}
	if spec.Tags[cloud.TagPodUID] != string(pod.UID) || spec.Tags[cloud.TagCluster] != "kip" || spec.Tags[cloud.TagNode] != "kip" || spec.Tags[cloud.TagCellID] != cellID {
		t.Errorf("tags = %v", spec.Tags)
	}
	var boot cellapi.Bootstrap
	if err := json.Unmarshal(spec.BootstrapData, &boot); err != nil {
		t.Fatalf("bootstrap data: %v", err)
	}
	blk, _ := pem.Decode(boot.Cert)
	cert, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cert.Verify(x509.VerifyOptions{DNSName: cellID, Roots: h.ca.Pool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		t.Errorf("cell certificate does not verify for %s: %v", cellID, err)
	}

	a.set(&cellapi.PodStatus{Phase: corev1.PodRunning, ContainerStatuses: []corev1.ContainerStatus{running("main", true)}})
	got := h.waitPod(pod, "Running", func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodRunning })
	inst := h.live()[0]
	if got.Status.PodIP != inst.PrivateIP || got.Status.HostIP != "10.250.0.1" || got.Status.StartTime == nil {
		t.Errorf("podIP %q hostIP %q startTime %v; instance IP %s", got.Status.PodIP, got.Status.HostIP, got.Status.StartTime, inst.PrivateIP)
	}
	if c := findCondition(got.Status.Conditions, corev1.PodReady); c == nil || c.Status != corev1.ConditionTrue {
		t.Errorf("Ready condition = %+v", c)
	}
	h.waitFor("the mirror to show the ready cell", func() bool {
		ci, ok := h.mirror.get(cellID)
		return ok && ci.Phase == PhaseReady && ci.IP == inst.PrivateIP && ci.InstanceType == "fake.small" && ci.PricePerHour == 0.01 &&
			ci.PodName == "job" && ci.InstanceID == inst.ID
	})
	if n := h.lastNotified("job"); n == nil || n.Status.Phase != corev1.PodRunning {
		t.Errorf("last notified = %+v", n)
	}

	a.mu.Lock()
	a.logs = map[string]string{"main": "2026-01-01T00:00:01.5Z hello-kip\n"}
	a.mu.Unlock()
	a.set(&cellapi.PodStatus{Phase: corev1.PodSucceeded, ContainerStatuses: []corev1.ContainerStatus{exited("main", 0)}})
	got = h.waitPod(pod, "Succeeded and the cell gone", func(p *corev1.Pod) bool {
		return p.Status.Phase == corev1.PodSucceeded && len(h.live()) == 0
	})
	if cs := got.Status.ContainerStatuses[0]; cs.State.Terminated == nil || cs.State.Terminated.Reason != "Completed" {
		t.Errorf("container status = %+v", cs)
	}
	h.waitFor("the mirror to drop the cell", func() bool { _, ok := h.mirror.get(cellID); return !ok })
	h.waitFor("the terminal notification", func() bool {
		n := h.lastNotified("job")
		return n != nil && n.Status.Phase == corev1.PodSucceeded
	})
	for _, want := range []string{"Normal InstanceTypeSelected", "Normal CellLaunched", "Normal CellReady", "Normal Pulling", "Normal Pulled", "Normal Started", "Normal CellTerminated"} {
		if !h.hasEvent(want) {
			t.Errorf("no %q event in %v", want, h.allEvents())
		}
	}

	// Logs survive the cell.
	ag, err := h.m.Agent("default", "job")
	if err != nil {
		t.Fatal(err)
	}
	rc, err := ag.Logs(context.Background(), "main", cellapi.LogOptions{})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(rc)
	if string(b) != "hello-kip\n" {
		t.Errorf("saved log = %q", b)
	}
	h.mu.Lock()
	observed := append([]Timing(nil), h.observed...)
	h.mu.Unlock()
	if len(observed) < 4 || observed[len(observed)-1].Finished.IsZero() || observed[0].Launched.IsZero() || !observed[0].AgentReady.IsZero() {
		t.Errorf("observed timings %+v", observed)
	}
	tm := h.m.Timings()
	if len(tm) != 1 || tm[0].Launched.IsZero() || tm[0].AgentReady.IsZero() || tm[0].Pulled.IsZero() || tm[0].Started.IsZero() || tm[0].Finished.IsZero() {
		t.Errorf("timings = %+v", tm)
	}

	// Deleting the completed pod forgets it.
	if err := h.m.DeletePod(context.Background(), pod); err != nil {
		t.Fatal(err)
	}
	if _, ok := h.m.GetPod("default", "job"); ok {
		t.Error("pod still known after delete")
	}
	if err := h.m.DeletePod(context.Background(), pod); !IsNotFound(err) {
		t.Errorf("second delete: %v, want not found", err)
	}
	if n := h.cloud.CallCount(fake.MethodLaunch); n != 1 {
		t.Errorf("%d launches, want 1", n)
	}
}

func TestCapacityFallbackAndMemory(t *testing.T) {
	h := newHarness(t)
	h.cloud.InjectError(fake.MethodLaunch, cloud.InsufficientCapacity("no fake.small left"))
	pod := testPod("a")
	if err := h.m.CreatePod(context.Background(), pod); err != nil {
		t.Fatal(err)
	}
	h.waitFor("a cell", func() bool { return len(h.live()) == 1 })
	if got := h.live()[0].InstanceType; got != "fake.medium" {
		t.Errorf("launched %s, want the fallback fake.medium", got)
	}
	h.waitFor("the capacity event", func() bool { return h.hasEvent("Warning InsufficientCapacity") })

	// The next pod tries the remembered type last.
	pod2 := testPod("b")
	if err := h.m.CreatePod(context.Background(), pod2); err != nil {
		t.Fatal(err)
	}
	h.waitFor("a second cell", func() bool { return len(h.live()) == 2 })
	launches := 0
	for _, c := range h.cloud.Calls() {
		if c.Method == fake.MethodLaunch {
			launches++
			if launches == 3 && c.Arg.(cloud.LaunchSpec).InstanceType != "fake.medium" {
				t.Errorf("second pod first tried %s, want fake.medium", c.Arg.(cloud.LaunchSpec).InstanceType)
			}
		}
	}
	if launches != 3 {
		t.Errorf("%d launches, want 3", launches)
	}
}

func TestPodThatCannotRunFailsWithoutLaunching(t *testing.T) {
	tests := []struct {
		name       string
		mutate     func(*corev1.Pod)
		wantReason string
		wantInMsg  string
		// bySelector: refused by the instance type selector, after admission (the
		// request is being resolved by then); every other case is refused by admission.
		bySelector bool
	}{
		{"too big", func(p *corev1.Pod) {
			p.Spec.Containers[0].Resources.Requests = corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("64")}
		}, ReasonNoInstanceType, "requests cpu 64", true},
		{"bad annotation", func(p *corev1.Pod) {
			p.Annotations = map[string]string{"pod.kip.dev/volume-size": "huge"}
		}, ReasonInvalidAnnotation, "pod.kip.dev/volume-size", false},
		{"selector refuses an annotation", func(p *corev1.Pod) {
			p.Annotations = map[string]string{"test/selector": "bad-annotation"}
		}, ReasonInvalidAnnotation, "pod.kip.dev/instance-type", true},
		{"selector refuses a field", func(p *corev1.Pod) {
			p.Annotations = map[string]string{"test/selector": "bad-pod"}
		}, ReasonInvalidSpec, "spec.overhead", true},
		{"a PersistentVolumeClaim", func(p *corev1.Pod) {
			p.Spec.Volumes = []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{
				PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: "data"}}}}
		}, ReasonInvalidSpec, "spec.volumes[0].persistentVolumeClaim", false},
		{"a hostPath", func(p *corev1.Pod) {
			p.Spec.Volumes = []corev1.Volume{{Name: "root", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: "/"}}}}
		}, ReasonInvalidSpec, "spec.volumes[0].hostPath", false},
		{"privileged without node.allowPrivileged", func(p *corev1.Pod) {
			p.Spec.Containers[0].SecurityContext = &corev1.SecurityContext{Privileged: ptr.To(true)}
		}, ReasonInvalidSpec, "spec.containers[0].securityContext.privileged", false},
		{"a missing Localhost seccomp profile", func(p *corev1.Pod) {
			p.Spec.SecurityContext = &corev1.PodSecurityContext{SeccompProfile: &corev1.SeccompProfile{
				Type: corev1.SeccompProfileTypeLocalhost, LocalhostProfile: ptr.To("no-such-profile.json")}}
		}, ReasonInvalidSpec, `spec.securityContext.seccompProfile.localhostProfile: cannot load seccomp profile "no-such-profile.json"`, false},
		{"bad legacy annotation", func(p *corev1.Pod) {
			p.Annotations = map[string]string{"pod.elotl.co/healthcheck-healthy-timeout": "soon"}
		}, ReasonInvalidAnnotation, "pod.elotl.co/healthcheck-healthy-timeout", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var resolves atomic.Int32
			h := newHarness(t, func(h *harness) {
				h.resolver = ResolverFunc(func(ctx context.Context, pod *corev1.Pod) (*cellapi.PodRequest, error) {
					resolves.Add(1)
					return &cellapi.PodRequest{Pod: pod}, nil
				})
			})
			pod := testPod("p", tt.mutate)
			if err := h.m.CreatePod(context.Background(), pod); err != nil {
				t.Fatal(err)
			}
			got := h.waitPod(pod, "Failed", func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodFailed })
			if got.Status.Reason != tt.wantReason || !strings.Contains(got.Status.Message, tt.wantInMsg) {
				t.Errorf("reason %q message %q", got.Status.Reason, got.Status.Message)
			}
			if cs := got.Status.ContainerStatuses[0]; cs.State.Terminated == nil || cs.State.Terminated.Reason != tt.wantReason {
				t.Errorf("container status %+v", cs.State)
			}
			if n := h.cloud.CallCount(fake.MethodLaunch); n != 0 {
				t.Errorf("%d launches, want none", n)
			}
			// A pod refused by admission costs no API call for its request.
			if !tt.bySelector && resolves.Load() != 0 {
				t.Errorf("the request of a pod refused by admission was resolved %d times", resolves.Load())
			}
			h.mirror.mu.Lock()
			if len(h.mirror.cells) != 0 || len(h.mirror.deleted) != 0 {
				t.Errorf("mirror touched for a pod that never had a cell: %v %v", h.mirror.cells, h.mirror.deleted)
			}
			h.mirror.mu.Unlock()
			if !h.hasEvent("Warning " + tt.wantReason) {
				t.Errorf("no warning event: %v", h.allEvents())
			}
		})
	}
}

func TestAgentNeverHealthyFailsAndTerminates(t *testing.T) {
	h := newHarness(t, func(h *harness) {
		h.newAgent = func(id string) *testAgent { return &testAgent{cellID: id, healthErr: errors.New("connection refused")} }
	})
	pod := testPod("sick")
	if err := h.m.CreatePod(context.Background(), pod); err != nil {
		t.Fatal(err)
	}
	got := h.waitPod(pod, "Failed", func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodFailed })
	if got.Status.Reason != ReasonCellUnhealthy || !strings.Contains(got.Status.Message, "connection refused") {
		t.Errorf("reason %q message %q", got.Status.Reason, got.Status.Message)
	}
	h.waitFor("the cell to be terminated", func() bool { return len(h.live()) == 0 && len(h.cloud.Instances()) == 1 })
	if !h.hasEvent("Warning CellUnhealthy") {
		t.Errorf("events %v", h.allEvents())
	}
}

// blockingCloud makes Launch wait until released, to delete a pod mid-launch.
type blockingCloud struct {
	*fake.Fake
	entered chan struct{}
	release chan struct{}
}

func (b *blockingCloud) Launch(ctx context.Context, spec cloud.LaunchSpec) (*cloud.Instance, error) {
	b.entered <- struct{}{}
	<-b.release
	return b.Fake.Launch(ctx, spec)
}

func TestDeleteDuringLaunchLeaksNothing(t *testing.T) {
	bc := &blockingCloud{entered: make(chan struct{}, 1), release: make(chan struct{})}
	h := newHarness(t, func(h *harness) {
		bc.Fake = h.cloud
		h.cl = bc
	})
	pod := testPod("quick")
	if err := h.m.CreatePod(context.Background(), pod); err != nil {
		t.Fatal(err)
	}
	<-bc.entered
	got, _ := h.m.GetPod("default", "quick")
	if got.Status.Phase != corev1.PodPending || got.Status.Reason != ReasonCellLaunching ||
		got.Status.ContainerStatuses[0].State.Waiting.Reason != "ContainerCreating" {
		t.Errorf("status while launching: %+v", got.Status)
	}
	if err := h.m.DeletePod(context.Background(), pod); err != nil {
		t.Fatal(err)
	}
	close(bc.release)
	h.waitFor("the pod to be gone", func() bool { _, ok := h.m.GetPod("default", "quick"); return !ok })
	if live := h.live(); len(live) != 0 {
		t.Errorf("leaked %d instances", len(live))
	}
	n := h.lastNotified("quick")
	if n == nil || !isTerminal(n.Status.Phase) || n.Status.ContainerStatuses[0].State.Terminated == nil {
		t.Errorf("last notification %+v", n)
	}
}

func TestDeleteRunningPodStopsGracefully(t *testing.T) {
	h := newHarness(t)
	grace := int64(7)
	pod := testPod("web", func(p *corev1.Pod) { p.Spec.RestartPolicy = corev1.RestartPolicyAlways })
	a := h.runPod(pod)
	a.mu.Lock()
	a.onDelete = func(a *testAgent) {
		a.setLocked(&cellapi.PodStatus{Phase: corev1.PodFailed, ContainerStatuses: []corev1.ContainerStatus{exited("main", 143)}})
	}
	a.mu.Unlock()

	del := pod.DeepCopy()
	del.DeletionGracePeriodSeconds = &grace
	if err := h.m.DeletePod(context.Background(), del); err != nil {
		t.Fatal(err)
	}
	h.waitFor("the pod to be gone", func() bool { _, ok := h.m.GetPod("default", "web"); return !ok })
	a.mu.Lock()
	deletes := append([]int64(nil), 0)
	deletes = deletes[:0]
	for _, d := range a.deletes {
		deletes = append(deletes, int64(d.Seconds()))
	}
	a.mu.Unlock()
	if len(deletes) != 1 || deletes[0] != 7 {
		t.Errorf("agent DeletePod graces %v, want [7]", deletes)
	}
	if len(h.live()) != 0 {
		t.Error("cell not terminated")
	}
	n := h.lastNotified("web")
	if n.Status.Phase != corev1.PodFailed || n.Status.ContainerStatuses[0].State.Terminated.ExitCode != 143 {
		t.Errorf("final status %+v", n.Status)
	}
}

func TestWatchReconnects(t *testing.T) {
	h := newHarness(t)
	pod := testPod("long", func(p *corev1.Pod) { p.Spec.RestartPolicy = corev1.RestartPolicyAlways })
	if err := h.m.CreatePod(context.Background(), pod); err != nil {
		t.Fatal(err)
	}
	a := h.agent(CellID(pod.UID))
	h.waitFor("a status watch", func() bool { return a.watcherCount() > 0 })
	a.dropWatchers()
	h.waitFor("a new watch", func() bool { return a.watcherCount() > 0 })
	a.set(&cellapi.PodStatus{Phase: corev1.PodRunning, ContainerStatuses: []corev1.ContainerStatus{running("main", true)}})
	h.waitPod(pod, "Running after the reconnect", func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodRunning })
	if n := h.cloud.CallCount(fake.MethodLaunch); n != 1 {
		t.Errorf("%d launches", n)
	}
}

func TestLostCellFailsPod(t *testing.T) {
	h := newHarness(t)
	pod := testPod("fragile", func(p *corev1.Pod) { p.Spec.RestartPolicy = corev1.RestartPolicyAlways })
	a := h.runPod(pod)

	// The instance dies behind kip's back.
	if err := h.cloud.SetState(h.live()[0].ID, cloud.StateTerminated); err != nil {
		t.Fatal(err)
	}
	a.setHealth(errors.New("no route to host"))
	a.dropWatchers()
	got := h.waitPod(pod, "Failed", func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodFailed })
	if got.Status.Reason != ReasonCellLost {
		t.Errorf("reason %q message %q", got.Status.Reason, got.Status.Message)
	}
	cs := got.Status.ContainerStatuses[0]
	if cs.State.Terminated == nil || cs.State.Terminated.ExitCode != 137 || cs.Ready {
		t.Errorf("container %+v", cs)
	}
}

func TestRecoverAdoptsAndTerminatesOrphans(t *testing.T) {
	h := newHarness(t)
	keep := testPod("keep", func(p *corev1.Pod) { p.Spec.RestartPolicy = corev1.RestartPolicyAlways })
	gone := testPod("gone", func(p *corev1.Pod) { p.Spec.RestartPolicy = corev1.RestartPolicyAlways })
	for _, p := range []*corev1.Pod{keep, gone} {
		if err := h.m.CreatePod(context.Background(), p); err != nil {
			t.Fatal(err)
		}
	}
	a := h.agent(CellID(keep.UID))
	h.waitFor("both cells to run their pods", func() bool {
		return a.watcherCount() > 0 && h.agent(CellID(gone.UID)).watcherCount() > 0
	})
	a.set(&cellapi.PodStatus{Phase: corev1.PodRunning, ContainerStatuses: []corev1.ContainerStatus{running("main", true)}})
	runningPod := h.waitPod(keep, "Running", func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodRunning })

	// kip stops; "gone" is deleted from the API meanwhile.
	h.m.Close()
	h.waitFor("closing the manager to end the watch", func() bool { return a.watcherCount() == 0 })
	launches := h.cloud.CallCount(fake.MethodLaunch)
	m2 := h.newManager()
	t.Cleanup(m2.Close)
	h.m = m2
	if err := m2.Recover(context.Background(), []*corev1.Pod{runningPod}); err != nil {
		t.Fatal(err)
	}
	live := h.live()
	if len(live) != 1 || live[0].CellID != CellID(keep.UID) {
		t.Fatalf("live after recover: %+v", live)
	}
	got, ok := m2.GetPod("default", "keep")
	if !ok || got.Status.Phase != corev1.PodRunning || got.Status.PodIP != live[0].PrivateIP {
		t.Errorf("recovered pod %+v", got)
	}
	h.waitFor("the adopted watch", func() bool { return a.watcherCount() > 0 })
	// CreatePod for the adopted pod (virtual-kubelet resyncs) launches nothing.
	if err := m2.CreatePod(context.Background(), runningPod); err != nil {
		t.Fatal(err)
	}
	a.set(&cellapi.PodStatus{Phase: corev1.PodRunning, ContainerStatuses: []corev1.ContainerStatus{running("main", false)}})
	h.waitPod(keep, "the new status", func(p *corev1.Pod) bool {
		c := findCondition(p.Status.Conditions, corev1.PodReady)
		return c != nil && c.Status == corev1.ConditionFalse
	})
	if n := h.cloud.CallCount(fake.MethodLaunch); n != launches {
		t.Errorf("recover launched %d cells", n-launches)
	}
	if a.puts != 1 {
		t.Errorf("pod put %d times on the adopted cell, want once", a.puts)
	}
}

// hidingCloud hides instances from List, like an eventually consistent cloud right after a
// launch.
type hidingCloud struct {
	*fake.Fake
	mu   sync.Mutex
	hide bool
}

func (c *hidingCloud) List(ctx context.Context, tags map[string]string) ([]*cloud.Instance, error) {
	c.mu.Lock()
	hide := c.hide
	c.mu.Unlock()
	if hide {
		return nil, nil
	}
	return c.Fake.List(ctx, tags)
}

func TestCrashBetweenLaunchAndRecordLaunchesOnce(t *testing.T) {
	for _, listed := range []bool{true, false} {
		name := "recover finds the cell"
		if !listed {
			name = "idempotency token returns the cell"
		}
		t.Run(name, func(t *testing.T) {
			hc := &hidingCloud{}
			h := newHarness(t, func(h *harness) {
				hc.Fake = h.cloud
				h.cl = hc
				// The agent is not up yet when kip "crashes".
				h.newAgent = func(id string) *testAgent { return &testAgent{cellID: id, healthErr: errors.New("booting")} }
			})
			pod := testPod("once")
			if err := h.m.CreatePod(context.Background(), pod); err != nil {
				t.Fatal(err)
			}
			h.waitFor("the launch", func() bool { return len(h.cloud.Instances()) == 1 })
			h.m.Close()

			hc.mu.Lock()
			hc.hide = !listed
			hc.mu.Unlock()
			m2 := h.newManager()
			t.Cleanup(m2.Close)
			h.m = m2
			if err := m2.Recover(context.Background(), []*corev1.Pod{pod}); err != nil {
				t.Fatal(err)
			}
			if err := m2.CreatePod(context.Background(), pod); err != nil {
				t.Fatal(err)
			}
			a := h.agent(CellID(pod.UID))
			a.setHealth(nil)
			h.waitFor("the pod on the cell", func() bool { return a.watcherCount() > 0 })
			if n := len(h.cloud.Instances()); n != 1 {
				t.Errorf("%d instances exist, want 1", n)
			}
		})
	}
}

func TestCreatePodIsIdempotentAndUpdateKeepsStatus(t *testing.T) {
	h := newHarness(t)
	pod := testPod("same", func(p *corev1.Pod) { p.Spec.RestartPolicy = corev1.RestartPolicyAlways })
	for i := 0; i < 3; i++ {
		if err := h.m.CreatePod(context.Background(), pod); err != nil {
			t.Fatal(err)
		}
	}
	a := h.agent(CellID(pod.UID))
	h.waitFor("a status watch", func() bool { return a.watcherCount() > 0 })
	a.set(&cellapi.PodStatus{Phase: corev1.PodRunning, ContainerStatuses: []corev1.ContainerStatus{running("main", true)}})
	h.waitPod(pod, "Running", func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodRunning })
	upd := pod.DeepCopy()
	upd.Labels = map[string]string{"v": "2"}
	if err := h.m.UpdatePod(context.Background(), upd); err != nil {
		t.Fatal(err)
	}
	got, _ := h.m.GetPod("default", "same")
	if got.Labels["v"] != "2" || got.Status.Phase != corev1.PodRunning {
		t.Errorf("after update: labels %v phase %s", got.Labels, got.Status.Phase)
	}
	// A spec update (a generation bump) is acknowledged in the status at once, as kubelet's
	// status manager does, though nothing else changed.
	gen := upd.DeepCopy()
	gen.Generation = 7
	gen.Spec.ActiveDeadlineSeconds = ptr.To[int64](5000)
	if err := h.m.UpdatePod(context.Background(), gen); err != nil {
		t.Fatal(err)
	}
	if n := h.lastNotified("same"); n == nil || n.Status.ObservedGeneration != 7 {
		t.Errorf("after a generation bump the notified status is %v, want observedGeneration 7", n)
	}
	if n := h.cloud.CallCount(fake.MethodLaunch); n != 1 {
		t.Errorf("%d launches, want 1", n)
	}
	if err := h.m.UpdatePod(context.Background(), testPod("unknown")); !IsNotFound(err) {
		t.Errorf("update of unknown pod: %v", err)
	}
	if len(h.m.ListPods()) != 1 {
		t.Errorf("ListPods = %d pods", len(h.m.ListPods()))
	}
}

func TestRecoverFailsPodsWhoseCellVanishedAndReplaysOnNotify(t *testing.T) {
	h := newHarness(t)
	m := h.newManager()
	t.Cleanup(m.Close)
	m.NotifyPods(nil) // as at kip's start: Recover runs before virtual-kubelet subscribes
	ran := testPod("ran", func(p *corev1.Pod) {
		p.Spec.RestartPolicy = corev1.RestartPolicyAlways
		p.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.0.0.9"}
	})
	pending := testPod("pending")
	done := testPod("done", func(p *corev1.Pod) { p.Status.Phase = corev1.PodSucceeded })
	if err := m.Recover(context.Background(), []*corev1.Pod{ran, pending, done}); err != nil {
		t.Fatal(err)
	}
	if _, ok := m.GetPod("default", "pending"); ok {
		t.Error("a pending pod without a cell was registered; CreatePod should launch it")
	}
	if p, ok := m.GetPod("default", "done"); !ok || p.Status.Phase != corev1.PodSucceeded {
		t.Errorf("completed pod %+v", p)
	}
	var got []*corev1.Pod
	m.NotifyPods(func(p *corev1.Pod) { got = append(got, p) })
	var failed *corev1.Pod
	for _, p := range got {
		if p.Name == "ran" {
			failed = p
		}
	}
	if failed == nil || failed.Status.Phase != corev1.PodFailed || failed.Status.Reason != ReasonCellLost {
		t.Fatalf("replayed statuses %+v", got)
	}
	if n := h.cloud.CallCount(fake.MethodLaunch); n != 0 {
		t.Errorf("%d launches", n)
	}
}

func TestRecoverTwiceKeepsRunningCells(t *testing.T) {
	h := newHarness(t)
	pod := testPod("steady", func(p *corev1.Pod) { p.Spec.RestartPolicy = corev1.RestartPolicyAlways })
	if err := h.m.CreatePod(context.Background(), pod); err != nil {
		t.Fatal(err)
	}
	a := h.agent(CellID(pod.UID))
	h.waitFor("a status watch", func() bool { return a.watcherCount() > 0 })
	// A stale pod list (without the pod) and a repeated call must not touch its cell.
	for _, pods := range [][]*corev1.Pod{nil, {pod}} {
		if err := h.m.Recover(context.Background(), pods); err != nil {
			t.Fatal(err)
		}
	}
	if len(h.live()) != 1 || h.cloud.CallCount(fake.MethodTerminate) != 0 {
		t.Errorf("live %d, terminates %d", len(h.live()), h.cloud.CallCount(fake.MethodTerminate))
	}
	a.set(&cellapi.PodStatus{Phase: corev1.PodRunning, ContainerStatuses: []corev1.ContainerStatus{running("main", true)}})
	h.waitPod(pod, "Running", func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodRunning })
}

// TestRecoverKeepsThePrice: a cell adopted after a restart shows the instance type and price
// per hour of the offering it was launched on, as before the restart (they were 0 and bare).
func TestRecoverKeepsThePrice(t *testing.T) {
	h := newHarness(t)
	pod := testPod("priced", func(p *corev1.Pod) { p.Spec.RestartPolicy = corev1.RestartPolicyAlways })
	if err := h.m.CreatePod(context.Background(), pod); err != nil {
		t.Fatal(err)
	}
	id := CellID(pod.UID)
	a := h.agent(id)
	h.waitFor("a status watch", func() bool { return a.watcherCount() > 0 })
	a.set(&cellapi.PodStatus{Phase: corev1.PodRunning, ContainerStatuses: []corev1.ContainerStatus{running("main", true)}})
	running := h.waitPod(pod, "Running", func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodRunning })
	var before CellInfo
	h.waitFor("the Cell to show the running cell", func() bool {
		before, _ = h.mirror.get(id)
		return before.Phase == PhaseReady && before.PricePerHour > 0
	})

	h.m.Close()
	h.waitFor("closing the manager to end the watch", func() bool { return a.watcherCount() == 0 })
	h.mirror.mu.Lock()
	h.mirror.cells = map[string]CellInfo{}
	h.mirror.mu.Unlock()
	m2 := h.newManager()
	t.Cleanup(m2.Close)
	h.m = m2
	if err := m2.Recover(context.Background(), []*corev1.Pod{running}); err != nil {
		t.Fatal(err)
	}
	var after CellInfo
	h.waitFor("the adopted cell's Cell to be Ready", func() bool {
		after, _ = h.mirror.get(id)
		return after.Phase == PhaseReady
	})
	if after.InstanceType != before.InstanceType || after.PricePerHour != before.PricePerHour || after.Spot != before.Spot {
		t.Errorf("adopted Cell shows %s $%v/h spot=%v, before the restart %s $%v/h spot=%v",
			after.InstanceType, after.PricePerHour, after.Spot, before.InstanceType, before.PricePerHour, before.Spot)
	}
}

// bootingCloud is a cloud whose launches stop half-way while their launcher is away, as the
// local backend's do when kip is killed mid-boot: an instance it marks stalled stays pending
// until the same launch (same client token) is asked again, which finishes it.
type bootingCloud struct {
	*fake.Fake
	mu      sync.Mutex
	stalled map[string]bool // client token -> stalled
}

func (c *bootingCloud) Launch(ctx context.Context, spec cloud.LaunchSpec) (*cloud.Instance, error) {
	in, err := c.Fake.Launch(ctx, spec)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stalled[spec.ClientToken] {
		delete(c.stalled, spec.ClientToken)
		if err := c.SetState(in.ID, cloud.StateRunning); err != nil {
			return nil, err
		}
		in.State = cloud.StateRunning
	}
	return in, nil
}

// TestRecoverResumesAPendingLaunch: a kip stopped while a cell was still launching leaves it
// pending; the next kip's Recover resumes that launch (the same launch, same client token,
// so no second cell) instead of waiting for a boot that nobody finishes and failing the pod
// CellUnhealthy.
// A resumed launch the cloud first refuses for capacity (the instance holds its capacity
// already) is asked again, not left pending until the pod fails CellUnhealthy.
func TestRecoverResumesAPendingLaunch(t *testing.T) {
	t.Run("at once", func(t *testing.T) { testResumePendingLaunch(t, 0) })
	t.Run("after capacity errors", func(t *testing.T) { testResumePendingLaunch(t, 2) })
}

func testResumePendingLaunch(t *testing.T, refusals int) {
	bc := &bootingCloud{stalled: map[string]bool{}}
	h := newHarness(t, func(h *harness) {
		bc.Fake = h.cloud
		h.cl = bc
		// The agent is not up yet when kip is stopped.
		h.newAgent = func(id string) *testAgent { return &testAgent{cellID: id, healthErr: errors.New("booting")} }
	})
	pod := testPod("resume", func(p *corev1.Pod) { p.Spec.RestartPolicy = corev1.RestartPolicyAlways })
	if err := h.m.CreatePod(context.Background(), pod); err != nil {
		t.Fatal(err)
	}
	h.waitFor("the launch", func() bool { return len(h.live()) == 1 })
	inst := h.live()[0]
	var token string
	for _, c := range h.cloud.Calls() {
		if c.Method == fake.MethodLaunch {
			token = c.Arg.(cloud.LaunchSpec).ClientToken
		}
	}
	// kip is stopped before the boot finished: the instance stays pending.
	h.m.Close()
	if err := h.cloud.SetState(inst.ID, cloud.StatePending); err != nil {
		t.Fatal(err)
	}
	bc.mu.Lock()
	bc.stalled[token] = true
	bc.mu.Unlock()
	snap := h.lastNotified("resume")

	launches := h.cloud.CallCount(fake.MethodLaunch)
	for range refusals {
		h.cloud.InjectError(fake.MethodLaunch, cloud.InsufficientCapacity("injected: no capacity"))
	}
	h.m = h.newManager()
	t.Cleanup(h.m.Close)
	if err := h.m.Recover(context.Background(), []*corev1.Pod{snap}); err != nil {
		t.Fatal(err)
	}
	h.waitFor("the resumed launch", func() bool { return h.cloud.CallCount(fake.MethodLaunch) > launches+refusals })
	h.agent(CellID(pod.UID)).setHealth(nil)
	a := h.agent(CellID(pod.UID))
	h.waitFor("the pod put on the resumed cell", func() bool { return a.watcherCount() > 0 })
	a.set(&cellapi.PodStatus{Phase: corev1.PodRunning, ContainerStatuses: []corev1.ContainerStatus{running("main", true)}})
	got := h.waitPod(pod, "Running", func(p *corev1.Pod) bool { return p.Status.Phase != corev1.PodPending })
	if got.Status.Phase != corev1.PodRunning {
		t.Fatalf("pod after the resumed launch: %s %s: %s", got.Status.Phase, got.Status.Reason, got.Status.Message)
	}
	if live := h.live(); len(live) != 1 || live[0].ID != inst.ID {
		t.Errorf("instances after the resumed launch: %+v, want only %s", live, inst.ID)
	}
	calls := h.cloud.Calls()
	var resumed []string
	for _, c := range calls {
		if c.Method == fake.MethodLaunch {
			resumed = append(resumed, c.Arg.(cloud.LaunchSpec).ClientToken)
		}
	}
	if len(resumed) != launches+refusals+1 {
		t.Errorf("launch tokens %v, want the first (%s) asked %d more times", resumed, token, refusals+1)
	}
	for _, tok := range resumed[launches:] {
		if tok != token {
			t.Errorf("launch tokens %v, want only the first (%s) after the restart", resumed, token)
			break
		}
	}
}

// TestRequestResolvedAheadGetsTheCellAddress: a new cell's request is resolved while the cell
// launches, before it has an address. The agent still gets the pod with the cell's address;
// a pod whose env reads status.podIP is resolved again, once the address is known.
func TestRequestResolvedAheadGetsTheCellAddress(t *testing.T) {
	var mu sync.Mutex
	var resolved []string // the pod IP each resolution saw
	h := newHarness(t, func(h *harness) {
		h.resolver = ResolverFunc(func(ctx context.Context, pod *corev1.Pod) (*cellapi.PodRequest, error) {
			mu.Lock()
			defer mu.Unlock()
			resolved = append(resolved, pod.Status.PodIP)
			return &cellapi.PodRequest{Pod: pod.DeepCopy()}, nil
		})
	})
	for _, tt := range []struct {
		name    string
		readsIP bool
	}{{"plain", false}, {"reads-ip", true}} {
		mu.Lock()
		resolved = nil
		mu.Unlock()
		pod := testPod(tt.name, func(p *corev1.Pod) {
			if tt.readsIP {
				p.Spec.Containers[0].Env = []corev1.EnvVar{{Name: "MY_IP", ValueFrom: &corev1.EnvVarSource{
					FieldRef: &corev1.ObjectFieldSelector{FieldPath: "status.podIP"}}}}
			}
		})
		a := h.runPod(pod)
		inst := h.live()[len(h.live())-1]
		a.mu.Lock()
		req := a.req
		a.mu.Unlock()
		if req == nil {
			t.Fatalf("%s: no request put", tt.name)
		}
		if st := req.Pod.Status; st.PodIP != inst.PrivateIP || len(st.PodIPs) != 1 || st.PodIPs[0].IP != inst.PrivateIP {
			t.Errorf("%s: the agent got pod IP %q (IPs %v), want the cell's %s", tt.name, st.PodIP, st.PodIPs, inst.PrivateIP)
		}
		mu.Lock()
		got := slices.Clone(resolved)
		mu.Unlock()
		want := []string{""}
		if tt.readsIP {
			want = []string{"", inst.PrivateIP}
		}
		if !slices.Equal(got, want) {
			t.Errorf("%s: resolutions saw pod IPs %q, want %q", tt.name, got, want)
		}
	}
}
