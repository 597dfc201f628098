package cells

import (
	"context"
	"errors"
	"maps"
	"slices"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/kip-dev/kip/internal/annotations"
	"github.com/kip-dev/kip/internal/cellapi"
	"github.com/kip-dev/kip/internal/cloud"
	"github.com/kip-dev/kip/internal/cloud/fake"
)

// withStandby configures the harness's manager with pools.
func withStandby(pools ...StandbyPool) func(*harness) {
	return func(h *harness) {
		h.options = func(o *Options) { o.Standby = pools }
	}
}

// waitStandby waits until n standby cells are ready and returns their ids.
func (h *harness) waitStandby(n int) []string {
	h.t.Helper()
	var ids []string
	h.waitFor("standby cells ready", func() bool {
		ids = ids[:0]
		for id, ready := range h.m.StandbyCells() {
			if ready {
				ids = append(ids, id)
			}
		}
		return len(ids) == n
	})
	return ids
}

// instanceOfCell returns the live instance of cell id, or nil.
func (h *harness) instanceOfCell(id string) *cloud.Instance {
	for _, in := range h.live() {
		if in.CellID == id {
			return in
		}
	}
	return nil
}

// launchedFor returns the cells launched for pod (LaunchSpec with its derived cell id).
func (h *harness) launchedFor(pod *corev1.Pod) int {
	n := 0
	for _, c := range h.cloud.Calls() {
		if spec, ok := c.Arg.(cloud.LaunchSpec); ok && c.Method == fake.MethodLaunch && spec.CellID == CellID(pod.UID) {
			n++
		}
	}
	return n
}

// podCell waits until pod runs on a cell (its agent streams its status) and returns the
// cell's id.
func (h *harness) podCell(pod *corev1.Pod) string {
	h.t.Helper()
	var id string
	h.waitFor("pod "+pod.Name+" on a cell", func() bool {
		for _, tm := range h.m.Timings() {
			if tm.UID == pod.UID {
				id = tm.CellID
			}
		}
		return id != "" && h.agent(id).watcherCount() > 0
	})
	return id
}

// podCells counts the live instances tagged with pod's UID.
func (h *harness) podCells(pod *corev1.Pod) int {
	n := 0
	for _, in := range h.live() {
		if in.Tags[cloud.TagPodUID] == string(pod.UID) {
			n++
		}
	}
	return n
}

func TestStandbyPoolFillsAndGCKeepsIt(t *testing.T) {
	h := newHarness(t, withStandby(StandbyPool{InstanceType: "fake.small", Count: 2}, StandbyPool{InstanceType: "fake.medium", Spot: true, Count: 1}))
	h.m.StartStandby()
	ids := h.waitStandby(3)
	live := h.live()
	if len(live) != 3 {
		t.Fatalf("%d instances live, want 3: %+v", len(live), live)
	}
	types := map[string]int{}
	for _, in := range live {
		if in.Tags[cloud.TagStandby] != "true" || in.Tags[cloud.TagPodUID] != "" || in.Tags[cloud.TagCellID] != in.CellID {
			t.Errorf("standby instance tags %v", in.Tags)
		}
		key := in.InstanceType
		if in.Spot {
			key += "/spot"
		}
		types[key]++
	}
	if types["fake.small"] != 2 || types["fake.medium/spot"] != 1 {
		t.Errorf("pool types %v, want 2 fake.small and 1 spot fake.medium", types)
	}
	for _, id := range ids {
		h.waitFor("Cell "+id+" Standby", func() bool {
			info, ok := h.mirror.get(id)
			return ok && info.Phase == PhaseStandby
		})
		if info, _ := h.mirror.get(id); info.PodName != "" || info.IP == "" || info.PricePerHour <= 0 {
			t.Errorf("Cell %s mirrored as %+v", id, info)
		}
	}
	// The pools stay full: nothing more is launched, and garbage collection (a pass every
	// 10 s) leaves standby cells alone.
	h.startControllers()
	launches := h.cloud.CallCount(fake.MethodLaunch)
	for range 5 {
		h.clock.Step(10 * time.Second)
		time.Sleep(20 * time.Millisecond)
	}
	if got := len(h.live()); got != 3 {
		t.Errorf("%d instances live after gc passes, want the 3 standby cells", got)
	}
	if n := h.cloud.CallCount(fake.MethodLaunch); n != launches {
		t.Errorf("%d launches with full pools", n-launches)
	}
}

func TestPodBindsToStandbyCellAndPoolRefills(t *testing.T) {
	h := newHarness(t, withStandby(StandbyPool{InstanceType: "fake.small", Count: 1}))
	h.m.StartStandby()
	warm := h.waitStandby(1)[0]
	inst := h.instanceOfCell(warm)

	pod := testPod("warm")
	if err := h.m.CreatePod(context.Background(), pod); err != nil {
		t.Fatal(err)
	}
	a := h.agent(warm)
	h.waitFor("the pod on the standby cell", func() bool { return a.watcherCount() > 0 })
	a.set(&cellapi.PodStatus{Phase: corev1.PodRunning, ContainerStatuses: []corev1.ContainerStatus{running("main", true)}})
	got := h.waitPod(pod, "Running", func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodRunning })

	if n := h.launchedFor(pod); n != 0 {
		t.Errorf("%d cells launched for the pod, want none (it binds)", n)
	}
	if got.Status.PodIP != inst.PrivateIP {
		t.Errorf("pod IP %q, want the standby cell's %q", got.Status.PodIP, inst.PrivateIP)
	}
	if a.req == nil || a.req.Pod.UID != pod.UID || a.req.Pod.Status.PodIP != inst.PrivateIP {
		t.Errorf("the standby agent got %+v", a.req)
	}
	tags := h.instanceOfCell(warm).Tags
	if tags[cloud.TagPodUID] != string(pod.UID) || tags[cloud.TagPodName] != "warm" || tags[cloud.TagPodNamespace] != "default" || tags[cloud.TagStandby] != "true" {
		t.Errorf("bound instance tags %v", tags)
	}
	if !h.hasEvent("Normal CellBound Bound standby cell " + warm) {
		t.Errorf("no CellBound event: %v", h.allEvents())
	}
	tm := h.m.Timings()[0]
	if tm.CellID != warm || tm.Launched.IsZero() || tm.AgentReady.IsZero() {
		t.Errorf("timing %+v", tm)
	}
	if info, _ := h.mirror.get(warm); info.PodName != "warm" || info.Phase != PhaseReady {
		t.Errorf("bound Cell mirrored as %+v", info)
	}

	// The pool refills with a new cell.
	refill := h.waitStandby(1)[0]
	if refill == warm {
		t.Fatalf("the bound cell %s is back in the pool", warm)
	}
}

func TestBoundStandbyCellIsTerminatedAndNeverReused(t *testing.T) {
	h := newHarness(t, withStandby(StandbyPool{InstanceType: "fake.small", Count: 1}))
	h.m.StartStandby()
	first := h.waitStandby(1)[0]
	pod1 := testPod("one", func(p *corev1.Pod) { p.Spec.RestartPolicy = corev1.RestartPolicyAlways })
	if err := h.m.CreatePod(context.Background(), pod1); err != nil {
		t.Fatal(err)
	}
	a1 := h.agent(first)
	h.waitFor("pod one on the standby cell", func() bool { return a1.watcherCount() > 0 })
	if err := h.m.DeletePod(context.Background(), pod1); err != nil {
		t.Fatal(err)
	}
	h.waitFor("the bound cell terminated", func() bool { return h.instanceOfCell(first) == nil })

	second := h.waitStandby(1)[0]
	pod2 := testPod("two")
	if err := h.m.CreatePod(context.Background(), pod2); err != nil {
		t.Fatal(err)
	}
	a2 := h.agent(second)
	h.waitFor("pod two on the new standby cell", func() bool { return a2.watcherCount() > 0 })
	if second == first || a1.puts != 1 {
		t.Errorf("cell %s reused (puts on it %d)", first, a1.puts)
	}
	if _, ok := h.m.StandbyCells()[first]; ok {
		t.Errorf("terminated cell %s still in the pool", first)
	}
}

func TestPodNotMatchingStandbyLaunches(t *testing.T) {
	h := newHarness(t, withStandby(StandbyPool{InstanceType: "fake.small", Count: 1}))
	h.m.StartStandby()
	warm := h.waitStandby(1)[0]
	pods := []*corev1.Pod{
		// Another type (2 CPUs need fake.medium).
		testPod("big", func(p *corev1.Pod) {
			p.Spec.Containers[0].Resources.Requests = corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("2")}
		}),
		// A launch setting a standby cell cannot have.
		testPod("disk", func(p *corev1.Pod) {
			p.Annotations = map[string]string{annotations.VolumeSize: "20Gi"}
		}),
	}
	for _, pod := range pods {
		if err := h.m.CreatePod(context.Background(), pod); err != nil {
			t.Fatal(err)
		}
		a := h.agent(CellID(pod.UID))
		h.waitFor("pod "+pod.Name+" on its own cell", func() bool { return a.watcherCount() > 0 })
		if n := h.launchedFor(pod); n != 1 {
			t.Errorf("pod %s: %d launches, want 1", pod.Name, n)
		}
	}
	if ready := h.m.StandbyCells(); !ready[warm] || len(ready) != 1 {
		t.Errorf("pool %v, want %s untouched", ready, warm)
	}
	if h.agent(warm).puts != 0 {
		t.Errorf("a pod was put on the standby cell")
	}
}

func TestStandbyCellThatDoesNotAnswerIsReplacedAndPodLaunches(t *testing.T) {
	h := newHarness(t, withStandby(StandbyPool{InstanceType: "fake.small", Count: 1}))
	h.m.StartStandby()
	warm := h.waitStandby(1)[0]
	h.agent(warm).setHealth(errors.New("agent died"))
	pod := testPod("fallback")
	if err := h.m.CreatePod(context.Background(), pod); err != nil {
		t.Fatal(err)
	}
	// The pod runs on a launched cell, or on the pool's refill if it was ready first.
	if id := h.podCell(pod); id == warm {
		t.Fatalf("the pod runs on the dead standby cell")
	}
	h.waitFor("the dead standby cell terminated", func() bool { return h.instanceOfCell(warm) == nil })
	if n := h.podCells(pod); n != 1 {
		t.Errorf("%d live cells for the pod, want 1", n)
	}
	for id := range h.m.StandbyCells() {
		if id == warm {
			t.Errorf("the dead cell is back in the pool")
		}
	}
}

// tagFailCloud fails SetTags after (or before) writing the tags, as a lost answer would.
type tagFailCloud struct {
	*fake.Fake
	mu    sync.Mutex
	fails int
	write bool
}

func (c *tagFailCloud) SetTags(ctx context.Context, id string, tags map[string]string) error {
	c.mu.Lock()
	fail := c.fails > 0
	if fail {
		c.fails--
	}
	c.mu.Unlock()
	if !fail {
		return c.Fake.SetTags(ctx, id, tags)
	}
	if c.write {
		if err := c.Fake.SetTags(ctx, id, tags); err != nil {
			return err
		}
	}
	return errors.New("the answer was lost")
}

func TestFailedBindingTerminatesTheStandbyCellAndLaunches(t *testing.T) {
	for _, written := range []bool{false, true} {
		name := "tags not written"
		if written {
			name = "tags written, answer lost"
		}
		t.Run(name, func(t *testing.T) {
			tc := &tagFailCloud{fails: 1, write: written}
			h := newHarness(t, withStandby(StandbyPool{InstanceType: "fake.small", Count: 1}), func(h *harness) {
				tc.Fake = h.cloud
				h.cl = tc
			})
			h.m.StartStandby()
			warm := h.waitStandby(1)[0]
			pod := testPod("tagfail", func(p *corev1.Pod) { p.Spec.RestartPolicy = corev1.RestartPolicyAlways })
			if err := h.m.CreatePod(context.Background(), pod); err != nil {
				t.Fatal(err)
			}
			// A launched cell, or the pool's refill if it was ready first.
			if id := h.podCell(pod); id == warm {
				t.Fatalf("the pod runs on the standby cell whose binding failed")
			}
			h.waitFor("the standby cell terminated", func() bool { return h.instanceOfCell(warm) == nil })
			if h.agent(warm).puts != 0 {
				t.Errorf("the pod was put on the standby cell whose binding failed")
			}
			if n := h.podCells(pod); n != 1 {
				t.Errorf("%d live cells for the pod, want 1", n)
			}
		})
	}
}

// launchStandby makes, as a kip that then died would have, a running standby cell with tags
// (cluster, node, cell, standby) plus extra.
func (h *harness) launchStandby(id string, extra map[string]string) *cloud.Instance {
	h.t.Helper()
	tags := map[string]string{cloud.TagCluster: "kip", cloud.TagNode: "kip", cloud.TagCellID: id, cloud.TagStandby: "true"}
	maps.Copy(tags, extra)
	inst, err := h.cloud.Launch(context.Background(), cloud.LaunchSpec{CellID: id, ClientToken: "standby-" + id, InstanceType: "fake.small", Tags: tags})
	if err != nil {
		h.t.Fatal(err)
	}
	return inst
}

// TestRecoverAfterCrashMidBind restarts kip at each point of a binding: before the pod's tags
// were written (the cell is still the pool's), after (the pod's), after the pod was put; and
// checks the pod ends up on exactly one cell, with no cell launched for it.
func TestRecoverAfterCrashMidBind(t *testing.T) {
	for _, tc := range []struct {
		name   string
		tagged bool // the binding tags were written
		put    bool // the pod was put on the agent
	}{
		{"before the tags", false, false},
		{"after the tags", true, false},
		{"after the put", true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, withStandby(StandbyPool{InstanceType: "fake.small", Count: 1}))
			pod := testPod("crash")
			var extra map[string]string
			if tc.tagged {
				extra = bindingTags(pod)
			}
			h.launchStandby("w-000000000001", extra)
			a := h.agent("w-000000000001")
			if tc.put {
				if _, err := a.PutPod(context.Background(), &cellapi.PodRequest{Pod: pod}); err != nil {
					t.Fatal(err)
				}
			}
			launches := h.cloud.CallCount(fake.MethodLaunch)
			if err := h.m.Recover(context.Background(), []*corev1.Pod{pod}); err != nil {
				t.Fatal(err)
			}
			h.m.StartStandby()
			// The pool is ready (with the recovered cell if it is still the pool's) before
			// virtual-kubelet hands the pod over again.
			h.waitStandby(1)
			if err := h.m.CreatePod(context.Background(), pod); err != nil {
				t.Fatal(err)
			}
			h.waitFor("the pod on the standby cell", func() bool { return a.watcherCount() > 0 })
			a.set(&cellapi.PodStatus{Phase: corev1.PodRunning, ContainerStatuses: []corev1.ContainerStatus{running("main", true)}})
			got := h.waitPod(pod, "Running", func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodRunning })
			if n := h.launchedFor(pod); n != 0 {
				t.Errorf("%d cells launched for the pod", n)
			}
			if a.puts != 1 {
				t.Errorf("pod put %d times, want once", a.puts)
			}
			inst := h.instanceOfCell("w-000000000001")
			if inst == nil || got.Status.PodIP != inst.PrivateIP || inst.Tags[cloud.TagPodUID] != string(pod.UID) {
				t.Errorf("pod IP %s on instance %+v", got.Status.PodIP, inst)
			}
			// The pool refills beside it; the bound cell is never in it.
			refill := h.waitStandby(1)[0]
			if refill == "w-000000000001" {
				t.Errorf("the bound cell is in the pool")
			}
			n := 0
			for _, in := range h.live() {
				if in.Tags[cloud.TagPodUID] == string(pod.UID) {
					n++
				}
			}
			if n != 1 || h.cloud.CallCount(fake.MethodLaunch) != launches+1 {
				t.Errorf("%d cells for the pod and %d launches (the refill's only wanted)", n, h.cloud.CallCount(fake.MethodLaunch)-launches)
			}
		})
	}
}

func TestRecoverTerminatesUnwantedAndSuspectStandbyCells(t *testing.T) {
	h := newHarness(t, withStandby(StandbyPool{InstanceType: "fake.small", Count: 2}))
	// Listed in this order: a standby cell whose agent runs a pod although no pod tags say so
	// (never reused), a clean one, one more than the pool wants, and the bound cell of a pod
	// that is gone.
	h.launchStandby("w-00000000000a", nil)
	h.launchStandby("w-00000000000b", nil)
	h.launchStandby("w-00000000000c", nil)
	h.launchStandby("w-00000000000d", bindingTags(testPod("gone")))
	if _, err := h.agent("w-00000000000a").PutPod(context.Background(), &cellapi.PodRequest{Pod: testPod("stray")}); err != nil {
		t.Fatal(err)
	}
	if err := h.m.Recover(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	h.m.StartStandby()
	ids := h.waitStandby(2)
	h.waitFor("the unwanted cells terminated", func() bool { return len(h.live()) == 2 })
	kept := map[string]bool{}
	for _, id := range ids {
		kept[id] = true
	}
	if !kept["w-00000000000b"] {
		t.Errorf("the clean standby cell was not kept: pool %v", ids)
	}
	for _, id := range []string{"w-00000000000a", "w-00000000000c", "w-00000000000d"} {
		if kept[id] || h.instanceOfCell(id) != nil {
			t.Errorf("cell %s kept", id)
		}
	}
}

func TestGCTerminatesStandbyCellsNoPoolOwns(t *testing.T) {
	h := newHarness(t, withStandby(StandbyPool{InstanceType: "fake.small", Count: 1}))
	h.m.StartStandby()
	owned := h.waitStandby(1)[0]
	// A standby cell of this node that neither a pool nor a pod owns (a kip that died before
	// Recover could see it, say).
	stray := h.launchStandby("w-0000000000ff", nil)
	h.startControllers()
	h.waitFor("the stray standby cell collected", func() bool {
		h.clock.Step(10 * time.Second)
		return h.instanceOfCell(stray.CellID) == nil
	})
	if h.instanceOfCell(owned) == nil {
		t.Errorf("gc terminated the pool's cell %s", owned)
	}
}

// TestElasticStandbyPoolFollowsDemand: a pool of count 1, max 3 grows to as many cells as pods
// asked for one within the window (3), and once the window has passed without asking,
// terminates its ready cells back down to 1.
func TestElasticStandbyPoolFollowsDemand(t *testing.T) {
	h := newHarness(t, func(h *harness) {
		h.options = func(o *Options) {
			o.Standby = []StandbyPool{{InstanceType: "fake.small", Count: 1, Max: 3}}
			o.StandbyDemandWindow = 24 * time.Hour // the harness steps its clock while anything waits
		}
	})
	h.m.StartStandby()
	first := h.waitStandby(1)[0]
	for _, name := range []string{"d1", "d2", "d3"} {
		if err := h.m.CreatePod(context.Background(), testPod(name)); err != nil {
			t.Fatal(err)
		}
	}
	h.waitFor("the pods on cells", func() bool { return len(h.m.Timings()) == 3 && h.agent(first).watcherCount() > 0 })
	grown := h.waitStandby(3)
	standbyLive := func() int {
		n := 0
		for _, in := range h.live() {
			if in.Tags[cloud.TagStandby] == "true" && in.Tags[cloud.TagPodUID] == "" {
				n++
			}
		}
		return n
	}
	if n := standbyLive(); n != 3 {
		t.Errorf("%d unbound standby instances live, want 3", n)
	}

	h.clock.Step(24*time.Hour + demandTick)
	h.waitFor("the pool back to one cell", func() bool { return len(h.m.StandbyCells()) == 1 && standbyLive() == 1 })
	kept := h.waitStandby(1)[0]
	if !slices.Contains(grown, kept) {
		t.Errorf("the cell kept, %s, is not one of the pool's %v", kept, grown)
	}
}

// TestStandbyRefillWaitsForThePodsStart: a pool does not boot the replacement of a cell taken
// from it while the bound pod's first container starts (on a small host the boot would take
// that start's CPU); it does once the agent reports the container running, and after
// warmStartGrace when the pod does not start (a slow pull).
func TestStandbyRefillWaitsForThePodsStart(t *testing.T) {
	for _, starts := range []bool{true, false} {
		h := newHarness(t, withStandby(StandbyPool{InstanceType: "fake.small", Count: 1}))
		h.m.StartStandby()
		first := h.waitStandby(1)[0]
		if err := h.m.CreatePod(context.Background(), testPod("p")); err != nil {
			t.Fatal(err)
		}
		// Wait in real time, without stepping the fake clock: the grace must not pass.
		waitReal(t, 10*time.Second, "the pod put on the standby cell", func() bool { return h.agent(first).watcherCount() > 0 })
		// The pool's filler, run now, sees the taken cell as still its own.
		h.m.fillStandby()
		if cells := h.m.StandbyCells(); len(cells) != 0 {
			t.Fatalf("starts=%v: the pool replaced the bound cell before its pod started: %v", starts, cells)
		}
		if starts {
			h.agent(first).set(&cellapi.PodStatus{Phase: corev1.PodRunning, ContainerStatuses: []corev1.ContainerStatus{running("main", true)}})
			// Replaced at once, before the grace (the fake clock does not move here).
			waitReal(t, 10*time.Second, "the pool to replace the cell of the started pod", func() bool { return len(h.m.StandbyCells()) == 1 })
		}
		// Once the pod runs (or the grace passed, as waitStandby steps the clock), the
		// pool has a new ready cell.
		if again := h.waitStandby(1)[0]; again == first {
			t.Errorf("starts=%v: the pool's ready cell is still the bound one", starts)
		}
	}
}
