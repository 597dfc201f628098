package provider

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/virtual-kubelet/virtual-kubelet/errdefs"
	"github.com/virtual-kubelet/virtual-kubelet/node/api"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8sruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	k8sfake "k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	clocktesting "k8s.io/utils/clock/testing"
	"k8s.io/utils/ptr"

	"github.com/kip-dev/kip/internal/cellapi"
	"github.com/kip-dev/kip/internal/cells"
	"github.com/kip-dev/kip/internal/podrequest"
)

func runningPod(ns, name string, containers ...string) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID("uid-" + name)},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning, StartTime: &metav1.Time{Time: time.Unix(1000, 0)}},
	}
	for _, c := range containers {
		p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: c})
		p.Status.ContainerStatuses = append(p.Status.ContainerStatuses, corev1.ContainerStatus{
			Name: c, State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{}},
		})
	}
	return p
}

func newTestProvider(t *testing.T, c Cells) (*Provider, *clocktesting.FakeClock) {
	t.Helper()
	clk := clocktesting.NewFakeClock(time.Unix(2000, 0))
	p, err := New(Config{NodeName: "kip", Cells: c, Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	return p, clk
}

func TestNewRequiresFields(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
	}{
		{"no cells", Config{NodeName: "kip"}},
		{"no node name", Config{Cells: newFakeCells()}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := New(tc.cfg); err == nil {
				t.Fatal("New accepted an incomplete config")
			}
		})
	}
}

func TestErrdefsMapping(t *testing.T) {
	ctx := context.Background()
	known := runningPod("ns", "web", "app")
	tests := []struct {
		name         string
		cellsErr     error
		call         func(p *Provider) error
		wantNotFound bool
		wantInvalid  bool
	}{
		{name: "GetPod unknown", call: func(p *Provider) error { _, err := p.GetPod(ctx, "ns", "nope"); return err }, wantNotFound: true},
		{name: "GetPodStatus unknown", call: func(p *Provider) error { _, err := p.GetPodStatus(ctx, "ns", "nope"); return err }, wantNotFound: true},
		{name: "DeletePod unknown", call: func(p *Provider) error { return p.DeletePod(ctx, runningPod("ns", "nope")) }, wantNotFound: true},
		{name: "logs of unknown pod", call: func(p *Provider) error {
			_, err := p.GetContainerLogs(ctx, "ns", "nope", "app", api.ContainerLogOpts{})
			return err
		}, wantNotFound: true},
		{name: "logs of unknown container", call: func(p *Provider) error {
			_, err := p.GetContainerLogs(ctx, "ns", "web", "sidecar", api.ContainerLogOpts{})
			return err
		}, wantNotFound: true},
		{name: "logs before the cell exists", call: func(p *Provider) error {
			_, err := p.GetContainerLogs(ctx, "ns", "web", "app", api.ContainerLogOpts{})
			return err
		}, wantNotFound: true},
		{name: "create with invalid spec", cellsErr: fmt.Errorf("instance type %q unknown: %w", "x1", cells.ErrInvalid),
			call: func(p *Provider) error { return p.CreatePod(ctx, runningPod("ns", "new")) }, wantInvalid: true},
		{name: "create with bad config", cellsErr: &podrequest.ConfigError{Reason: podrequest.ReasonCreateContainerConfigError, Message: "secret missing"},
			call: func(p *Provider) error { return p.CreatePod(ctx, runningPod("ns", "new")) }, wantInvalid: true},
		{name: "update of unknown pod (errdefs kind in chain)", cellsErr: fmt.Errorf("wrapped: %w", errdefs.NotFound("gone")),
			call: func(p *Provider) error { return p.UpdatePod(ctx, known) }, wantNotFound: true},
		{name: "update with agent not-found", cellsErr: cellapi.Errorf(cellapi.KindNotFound, "no pod"),
			call: func(p *Provider) error { return p.UpdatePod(ctx, known) }, wantNotFound: true},
		{name: "create with an internal error stays internal", cellsErr: errors.New("boom"),
			call: func(p *Provider) error { return p.CreatePod(ctx, runningPod("ns", "new")) }},
		{name: "exec before the cell exists", call: func(p *Provider) error {
			return p.RunInContainer(ctx, "ns", "web", "app", []string{"sh"}, nil)
		}, wantNotFound: true},
		{name: "exec in an unknown container", call: func(p *Provider) error {
			return p.RunInContainer(ctx, "ns", "web", "nope", []string{"sh"}, nil)
		}, wantNotFound: true},
		{name: "attach before the cell exists", call: func(p *Provider) error {
			return p.AttachToContainer(ctx, "ns", "web", "app", nil)
		}, wantNotFound: true},
		{name: "attach to an unknown container", call: func(p *Provider) error {
			return p.AttachToContainer(ctx, "ns", "web", "nope", nil)
		}, wantNotFound: true},
		{name: "port-forward to a bad port", call: func(p *Provider) error {
			return p.PortForward(ctx, "ns", "web", 0, nil)
		}, wantInvalid: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := newFakeCells(known.DeepCopy())
			c.nextErr = tc.cellsErr
			p, _ := newTestProvider(t, c)
			err := tc.call(p)
			if err == nil {
				t.Fatal("no error")
			}
			if got := errdefs.IsNotFound(err); got != tc.wantNotFound {
				t.Errorf("IsNotFound(%v) = %v, want %v", err, got, tc.wantNotFound)
			}
			if got := errdefs.IsInvalidInput(err); got != tc.wantInvalid {
				t.Errorf("IsInvalidInput(%v) = %v, want %v", err, got, tc.wantInvalid)
			}
		})
	}
}

func TestLifecycleDelegatesToCells(t *testing.T) {
	ctx := context.Background()
	c := newFakeCells()
	p, _ := newTestProvider(t, c)
	pod := runningPod("ns", "web", "app")
	if err := p.CreatePod(ctx, pod); err != nil {
		t.Fatal(err)
	}
	got, err := p.GetPod(ctx, "ns", "web")
	if err != nil || got.UID != pod.UID {
		t.Fatalf("GetPod = %v, %v", got, err)
	}
	st, err := p.GetPodStatus(ctx, "ns", "web")
	if err != nil || st.Phase != corev1.PodRunning {
		t.Fatalf("GetPodStatus = %v, %v", st, err)
	}
	if err := p.UpdatePod(ctx, pod); err != nil {
		t.Fatal(err)
	}
	if err := p.DeletePod(ctx, pod); err != nil {
		t.Fatal(err)
	}
	want := []string{"create web", "update web", "delete web"}
	if fmt.Sprint(c.calls) != fmt.Sprint(want) {
		t.Errorf("calls = %v, want %v", c.calls, want)
	}
	var notified []string
	p.NotifyPods(ctx, func(p *corev1.Pod) { notified = append(notified, p.Name) })
	c.notify(pod)
	if len(notified) != 1 {
		t.Errorf("NotifyPods did not register the callback with the cells: %v", notified)
	}
}

func TestRunningPods(t *testing.T) {
	ctx := context.Background()
	waiting := runningPod("ns", "waiting", "app")
	waiting.Status.Phase = corev1.PodPending
	waiting.Status.ContainerStatuses[0].State = corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: podrequest.ReasonCreateContainerConfigError}}
	done := runningPod("ns", "done", "app")
	done.Status.Phase = corev1.PodSucceeded
	done.Status.ContainerStatuses[0].State = corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: 0}}
	terminating := runningPod("ns", "terminating", "app")
	terminating.DeletionTimestamp = &metav1.Time{Time: time.Unix(10, 0)}
	c := newFakeCells(runningPod("ns", "web", "app"), runningPod("ns", "deleted", "app"), waiting, done, terminating)
	p, _ := newTestProvider(t, c)
	if err := p.DeletePod(ctx, runningPod("ns", "deleted")); err != nil {
		t.Fatal(err)
	}
	pods, err := p.RunningPods(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, p := range pods {
		got[p.Name] = true
	}
	want := map[string]bool{"web": true, "done": true}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("RunningPods = %v, want %v", got, want)
	}
	all, _ := p.GetPods(ctx)
	if len(all) != 5 {
		t.Errorf("GetPods returned %d pods, want all 5", len(all))
	}
}

func TestGetContainerLogs(t *testing.T) {
	ctx := context.Background()
	c := newFakeCells(runningPod("ns", "web", "app"))
	agent := &fakeAgent{logs: "hello-kip\n"}
	c.agents["ns/web"] = agent
	p, _ := newTestProvider(t, c)
	since := time.Unix(1234, 0)
	rc, err := p.GetContainerLogs(ctx, "ns", "web", "app", api.ContainerLogOpts{
		Tail: 5, LimitBytes: 100, Timestamps: true, Follow: true, Previous: true, SinceSeconds: 7, SinceTime: since,
	})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(rc)
	rc.Close()
	if string(b) != "hello-kip\n" {
		t.Errorf("logs = %q", b)
	}
	o := agent.lastLogs
	if !o.Follow || !o.Previous || !o.Timestamps || *o.TailLines != 5 || *o.LimitBytes != 100 || *o.SinceSeconds != 7 || !o.SinceTime.Equal(since) {
		t.Errorf("agent got options %+v", o)
	}

	// Zero values mean "not set".
	if _, err := p.GetContainerLogs(ctx, "ns", "web", "app", api.ContainerLogOpts{}); err != nil {
		t.Fatal(err)
	}
	if o := agent.lastLogs; o.TailLines != nil || o.LimitBytes != nil || o.SinceSeconds != nil || o.SinceTime != nil {
		t.Errorf("unset options were sent: %+v", o)
	}

	// An ephemeral container's logs, as kubelet serves them; an unknown container is NotFound.
	pod, _ := c.GetPod("ns", "web")
	pod.Spec.EphemeralContainers = []corev1.EphemeralContainer{{EphemeralContainerCommon: corev1.EphemeralContainerCommon{Name: "dbg", Image: "busybox"}}}
	c.pods["ns/web"] = pod
	if _, err := p.GetContainerLogs(ctx, "ns", "web", "dbg", api.ContainerLogOpts{}); err != nil {
		t.Errorf("logs of ephemeral container dbg: %v", err)
	}
	if _, err := p.GetContainerLogs(ctx, "ns", "web", "nope", api.ContainerLogOpts{}); !errdefs.IsNotFound(err) {
		t.Errorf("logs of unknown container = %v, want NotFound", err)
	}

	agent.logsErr = cellapi.Errorf(cellapi.KindInvalid, "previous terminated container not found")
	if _, err := p.GetContainerLogs(ctx, "ns", "web", "app", api.ContainerLogOpts{Previous: true}); !errdefs.IsInvalidInput(err) {
		t.Errorf("agent's invalid error mapped to %v", err)
	}
}

func statsFor(at time.Time, cpuNanos uint64, containers ...string) *cellapi.Stats {
	s := &cellapi.Stats{Time: at, Cell: cellapi.Usage{CPUUsageNanoSeconds: cpuNanos * 10, MemoryWorkingSetBytes: 1000, MemoryUsageBytes: 2000}}
	for i, c := range containers {
		s.Containers = append(s.Containers, cellapi.ContainerStats{
			Name: c, StartTime: time.Unix(1500, 0),
			Usage: cellapi.Usage{CPUUsageNanoSeconds: cpuNanos * uint64(i+1), MemoryWorkingSetBytes: 100 * uint64(i+1), MemoryUsageBytes: 200},
		})
	}
	return s
}

func TestGetStatsSummary(t *testing.T) {
	ctx := context.Background()
	web := runningPod("ns", "web", "app", "sidecar")
	db := runningPod("ns", "db", "pg")
	c := newFakeCells(web, db)
	webAgent := &fakeAgent{stats: statsFor(time.Unix(2000, 0), 1e9, "app", "sidecar")}
	c.agents["ns/web"] = webAgent
	c.agents["ns/db"] = &fakeAgent{statsErr: errors.New("cell unreachable")}
	p, clk := newTestProvider(t, c)

	sum, err := p.GetStatsSummary(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if sum.Node.NodeName != "kip" {
		t.Errorf("node name %q", sum.Node.NodeName)
	}
	if len(sum.Pods) != 1 {
		t.Fatalf("got %d pod stats, want 1 (the unreachable cell is left out): %+v", len(sum.Pods), sum.Pods)
	}
	ps := sum.Pods[0]
	if ps.PodRef.Name != "web" || ps.PodRef.UID != "uid-web" || ps.PodRef.Namespace != "ns" {
		t.Errorf("pod ref %+v", ps.PodRef)
	}
	if len(ps.Containers) != 2 {
		t.Fatalf("got %d container stats, want 2", len(ps.Containers))
	}
	if got := *ps.CPU.UsageCoreNanoSeconds; got != 3e9 {
		t.Errorf("pod cpu = %d, want the containers' sum 3e9", got)
	}
	if got := *ps.Memory.WorkingSetBytes; got != 300 {
		t.Errorf("pod working set = %d, want 300", got)
	}
	if ps.CPU.UsageNanoCores != nil {
		t.Errorf("a first reading cannot have a rate")
	}
	if got := *sum.Node.CPU.UsageCoreNanoSeconds; got != 1e10 {
		t.Errorf("node cpu = %d, want the cell totals 1e10", got)
	}

	// A second reading one second later with one more CPU-second per container unit.
	clk.Step(time.Second)
	webAgent.stats = statsFor(time.Unix(2001, 0), 2e9, "app", "sidecar")
	sum, err = p.GetStatsSummary(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if nc := sum.Pods[0].Containers[0].CPU.UsageNanoCores; nc == nil || *nc != 1e9 {
		t.Errorf("app's rate = %v, want 1e9 nanocores", nc)
	}
	if nc := sum.Pods[0].CPU.UsageNanoCores; nc == nil || *nc != 3e9 {
		t.Errorf("pod rate = %v, want 3e9 nanocores", nc)
	}
}

func TestGetMetricsResource(t *testing.T) {
	ctx := context.Background()
	web := runningPod("ns", "web", "app", "sidecar")
	db := runningPod("ns", "db", "pg")
	c := newFakeCells(web, db)
	c.agents["ns/web"] = &fakeAgent{stats: statsFor(time.Unix(2000, 0), 1e9, "app", "sidecar")}
	c.agents["ns/db"] = &fakeAgent{statsErr: errors.New("cell unreachable")}
	p, _ := newTestProvider(t, c)

	mfs, err := p.GetMetricsResource(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// Round-trip through the text format as /metrics/resource serves it.
	var buf bytes.Buffer
	enc := expfmt.NewEncoder(&buf, expfmt.NewFormat(expfmt.TypeTextPlain))
	for _, mf := range mfs {
		if err := enc.Encode(mf); err != nil {
			t.Fatal(err)
		}
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	got, err := parser.TextToMetricFamilies(&buf)
	if err != nil {
		t.Fatalf("parsing %s: %v", buf.String(), err)
	}
	for _, name := range []string{"node_cpu_usage_seconds_total", "node_memory_working_set_bytes", "container_cpu_usage_seconds_total",
		"container_memory_working_set_bytes", "container_start_time_seconds", "pod_cpu_usage_seconds_total", "pod_memory_working_set_bytes", "scrape_error"} {
		if _, ok := got[name]; !ok {
			t.Errorf("family %s missing", name)
		}
	}
	tests := []struct {
		family string
		labels []string
		value  float64
	}{
		{"container_cpu_usage_seconds_total", []string{"namespace", "pod", "container"}, 1},
		{"container_memory_working_set_bytes", []string{"namespace", "pod", "container"}, 100},
		{"container_start_time_seconds", []string{"namespace", "pod", "container"}, 1500},
		{"pod_cpu_usage_seconds_total", []string{"namespace", "pod"}, 3},
		{"pod_memory_working_set_bytes", []string{"namespace", "pod"}, 300},
	}
	for _, tc := range tests {
		t.Run(tc.family, func(t *testing.T) {
			mf := got[tc.family]
			if mf == nil || len(mf.Metric) == 0 {
				t.Fatalf("no samples")
			}
			m := mf.Metric[0]
			if len(m.Label) != len(tc.labels) {
				t.Fatalf("labels %v", m.Label)
			}
			for i, l := range tc.labels {
				if m.Label[i].GetName() != l {
					t.Errorf("label %d is %s, want %s (order namespace, pod, container)", i, m.Label[i].GetName(), l)
				}
			}
			if m.Label[1].GetValue() != "web" {
				t.Errorf("Label[1] = %s, want the pod name", m.Label[1].GetValue())
			}
			v := m.GetCounter().GetValue() + m.GetGauge().GetValue()
			if v != tc.value {
				t.Errorf("value %v, want %v", v, tc.value)
			}
		})
	}
	if n := len(got["container_cpu_usage_seconds_total"].Metric); n != 2 {
		t.Errorf("%d container samples, want 2", n)
	}
	if v := got["scrape_error"].Metric[0].GetGauge().GetValue(); v != 1 {
		t.Errorf("scrape_error = %v, want 1 (one cell unreachable)", v)
	}
	if v := got["node_cpu_usage_seconds_total"].Metric[0].GetCounter().GetValue(); v != 10 {
		t.Errorf("node cpu = %v, want 10", v)
	}
}

func TestFinishDeletion(t *testing.T) {
	deleting := metav1.NewTime(time.Unix(50, 0))
	stopped := func() *corev1.Pod {
		p := runningPod("ns", "web", "app")
		p.DeletionTimestamp = &deleting
		p.Status.ContainerStatuses[0].State = corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: 0}}
		return p
	}
	tests := []struct {
		name       string
		pod        func() *corev1.Pod
		wantDelete bool
	}{
		{"deleted and stopped", stopped, true},
		{"deleted, never started", func() *corev1.Pod {
			p := stopped()
			p.Status.ContainerStatuses[0].State = corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "CellLaunching"}}
			return p
		}, true},
		{"deleted but still running (grace period)", func() *corev1.Pod {
			p := stopped()
			p.Status.ContainerStatuses[0].State = corev1.ContainerState{Running: &corev1.ContainerStateRunning{}}
			return p
		}, false},
		{"completed, not deleted", func() *corev1.Pod {
			p := stopped()
			p.DeletionTimestamp = nil
			return p
		}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			pod := tc.pod()
			client := k8sfake.NewClientset(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "web", UID: pod.UID}})
			deleted := make(chan struct{}, 4)
			client.PrependReactor("delete", "pods", func(k8stesting.Action) (bool, k8sruntime.Object, error) {
				deleted <- struct{}{}
				return false, nil, nil // let the tracker delete it
			})
			c := newFakeCells()
			p, err := New(Config{NodeName: "kip", Cells: c, Pods: client.CoreV1()})
			if err != nil {
				t.Fatal(err)
			}
			var seen []*corev1.Pod
			p.NotifyPods(context.Background(), func(p *corev1.Pod) { seen = append(seen, p) })
			c.notify(pod)
			c.notify(pod) // a repeated status must not delete twice
			if len(seen) != 2 {
				t.Fatalf("virtual-kubelet's callback got %d pods, want 2", len(seen))
			}
			deletes := func() []k8stesting.DeleteActionImpl {
				var out []k8stesting.DeleteActionImpl
				for _, a := range client.Actions() {
					if d, ok := a.(k8stesting.DeleteActionImpl); ok {
						out = append(out, d)
					}
				}
				return out
			}
			if !tc.wantDelete {
				// The decision is synchronous; only the API call is asynchronous.
				if d := deletes(); len(d) != 0 {
					t.Fatalf("deleted %v", d)
				}
				return
			}
			select {
			case <-deleted:
			case <-time.After(10 * time.Second):
				t.Fatal("the pod object was never deleted")
			}
			d := deletes()
			if len(d) != 1 {
				t.Fatalf("%d deletes, want 1", len(d))
			}
			o := d[0].DeleteOptions
			if d[0].Name != "web" || o.GracePeriodSeconds == nil || *o.GracePeriodSeconds != 0 ||
				o.Preconditions == nil || o.Preconditions.UID == nil || *o.Preconditions.UID != pod.UID {
				t.Errorf("delete %+v", d[0])
			}
		})
	}
}

func TestDeleteOfUnknownPodRemovesTheObject(t *testing.T) {
	pod := runningPod("ns", "ghost", "app")
	pod.DeletionTimestamp = &metav1.Time{Time: time.Unix(50, 0)}
	client := k8sfake.NewClientset(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "ghost", UID: pod.UID}})
	deleted := make(chan struct{}, 4)
	client.PrependReactor("delete", "pods", func(k8stesting.Action) (bool, k8sruntime.Object, error) {
		deleted <- struct{}{}
		return false, nil, nil
	})
	p, err := New(Config{NodeName: "kip", Cells: newFakeCells(), Pods: client.CoreV1()})
	if err != nil {
		t.Fatal(err)
	}
	// The API still says Running (kip was down when its cell went away); nothing runs here.
	if err := p.DeletePod(context.Background(), pod); !errdefs.IsNotFound(err) {
		t.Fatalf("DeletePod = %v, want NotFound", err)
	}
	select {
	case <-deleted:
	case <-time.After(10 * time.Second):
		t.Fatal("the object of a pod kip does not run was left for its grace period")
	}
}

// TestWithLogQueryTailZero: tailLines=0 reaches the agent as 0 through the kubelet API
// (virtual-kubelet alone reads it as "not set"), other values as they are.
func TestWithLogQueryTailZero(t *testing.T) {
	c := newFakeCells(runningPod("ns", "web", "app"))
	agent := &fakeAgent{logs: "hello-kip\n"}
	c.agents["ns/web"] = agent
	p, _ := newTestProvider(t, c)
	srv := httptest.NewServer(WithLogQuery(api.PodHandler(api.PodHandlerConfig{GetContainerLogs: p.GetContainerLogs}, false)))
	defer srv.Close()
	tests := []struct {
		query string
		want  *int64 // nil: not set
	}{
		{"tailLines=0", ptr.To[int64](0)},
		{"tailLines=3", ptr.To[int64](3)},
		{"", nil},
		{"timestamps=true", nil},
	}
	for _, tt := range tests {
		t.Run(tt.query, func(t *testing.T) {
			agent.lastLogs = cellapi.LogOptions{}
			resp, err := http.Get(srv.URL + "/containerLogs/ns/web/app?" + tt.query)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("status %s", resp.Status)
			}
			got := agent.lastLogs.TailLines
			if (got == nil) != (tt.want == nil) || (got != nil && *got != *tt.want) {
				t.Errorf("agent got tailLines %v, want %v", ptrString(got), ptrString(tt.want))
			}
		})
	}
}

func ptrString(p *int64) string {
	if p == nil {
		return "unset"
	}
	return strconv.FormatInt(*p, 10)
}

// TestGetContainerLogsFromTheArchive: a completed pod's cell is terminated right after its logs
// are archived; a logs request that reached the agent just before, and found it gone (at the
// call or at the stream's first read), is served from the archive.
func TestGetContainerLogsFromTheArchive(t *testing.T) {
	for _, tc := range []struct {
		name  string
		agent *fakeAgent
	}{
		{"the call fails", &fakeAgent{logsErr: errors.New("connection refused")}},
		{"the stream fails", &fakeAgent{streamErr: errors.New("connection reset by peer")}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newFakeCells(runningPod("ns", "web", "app"))
			c.agents["ns/web"] = tc.agent
			archive := &fakeAgent{logs: "kept\n"}
			tc.agent.onLogs = func() {
				c.mu.Lock()
				c.agents["ns/web"] = archive
				c.mu.Unlock()
			}
			p, _ := newTestProvider(t, c)
			rc, err := p.GetContainerLogs(context.Background(), "ns", "web", "app", api.ContainerLogOpts{})
			if err != nil {
				t.Fatal(err)
			}
			b, err := io.ReadAll(rc)
			rc.Close()
			if err != nil || string(b) != "kept\n" {
				t.Errorf("logs %q, %v; want the archive's", b, err)
			}
		})
	}
	// Without an archive, the agent's error stands.
	c := newFakeCells(runningPod("ns", "web", "app"))
	c.agents["ns/web"] = &fakeAgent{logsErr: errors.New("connection refused")}
	p, _ := newTestProvider(t, c)
	if _, err := p.GetContainerLogs(context.Background(), "ns", "web", "app", api.ContainerLogOpts{}); err == nil {
		t.Error("logs of an unreachable agent without an archive: no error")
	}
}

// TestFinishedIsPruned: the UIDs of finished deletions are forgotten once their pods' cells
// are gone, so the set does not grow with every pod ever deleted; a pod the cells still know
// keeps its UID (no second delete while its cell drains).
func TestFinishedIsPruned(t *testing.T) {
	live := runningPod("ns", "draining", "app")
	c := newFakeCells(live)
	p, err := New(Config{NodeName: "kip", Cells: c, Pods: k8sfake.NewClientset().CoreV1()})
	if err != nil {
		t.Fatal(err)
	}
	p.removeObject(context.Background(), live)
	for i := range 10 * minPruneAt {
		gone := runningPod("ns", fmt.Sprintf("gone-%d", i), "app")
		gone.UID = types.UID(fmt.Sprintf("gone-%d", i))
		p.removeObject(context.Background(), gone)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if n := len(p.finished); n > minPruneAt+1 {
		t.Errorf("%d finished UIDs kept after %d deletions of pods whose cells are gone, want at most %d", n, 10*minPruneAt, minPruneAt+1)
	}
	if _, ok := p.finished[live.UID]; !ok {
		t.Error("the UID of a pod whose cell still drains was forgotten")
	}
}
