package metrics

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"k8s.io/apimachinery/pkg/types"

	"github.com/kip-dev/kip/internal/cells"
	"github.com/kip-dev/kip/internal/cloud"
	"github.com/kip-dev/kip/internal/cloud/fake"
)

var t0 = time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)

func at(d time.Duration) time.Time { return t0.Add(d) }

// full is a pod that went through every phase: scheduled 1 s before kip got it, launched in
// 50 ms, agent ready 200 ms later, images pulled 2 s later, started 100 ms later.
var full = cells.Timing{
	Namespace: "ns", Name: "web", UID: "uid-1", CellID: "c-1", InstanceType: "fake.small",
	Scheduled:  at(-time.Second),
	Created:    at(0),
	Launched:   at(50 * time.Millisecond),
	AgentReady: at(250 * time.Millisecond),
	Pulled:     at(2250 * time.Millisecond),
	Started:    at(2350 * time.Millisecond),
	Finished:   at(time.Minute),
}

// upTo returns t as the cells manager reports it once the phase ending at last was reached:
// the later times are zero.
func upTo(t cells.Timing, last string) cells.Timing {
	order := []*time.Time{&t.Launched, &t.AgentReady, &t.Pulled, &t.Started, &t.Finished}
	names := []string{"launched", "agentReady", "pulled", "started", "finished"}
	zero := false
	for i, p := range order {
		if zero {
			*p = time.Time{}
		}
		if names[i] == last {
			zero = true
		}
	}
	return t
}

func TestObserve(t *testing.T) {
	adopted := full
	adopted.Launched = time.Time{}
	unscheduled := full
	unscheduled.Scheduled = time.Time{}
	together := full
	together.Started = together.Pulled
	startedFirst := full
	startedFirst.Pulled = full.Started.Add(time.Second)
	startedFirstReport := upTo(full, "started")
	startedFirstReport.Pulled = time.Time{}
	neverLaunched := cells.Timing{Namespace: "ns", Name: "bad", UID: "uid-2", Created: at(0), Finished: at(time.Millisecond)}

	all := map[string][]float64{
		PhaseSchedule: {1}, PhaseLaunch: {0.05}, PhaseAgentReady: {0.2}, PhaseImagePull: {2},
		PhaseContainerStart: {0.1}, PhaseTotal: {2.35},
	}
	tests := []struct {
		name    string
		reports []cells.Timing
		// cells is kip_cells after each report.
		cells []float64
		want  map[string][]float64
	}{{
		name: "each phase once although every report repeats the earlier ones",
		reports: []cells.Timing{
			upTo(full, "launched"), upTo(full, "agentReady"), upTo(full, "pulled"),
			upTo(full, "started"), upTo(full, "started"), full, full,
		},
		cells: []float64{1, 1, 1, 1, 1, 0, 0},
		want:  all,
	}, {
		name:    "images pulled and containers started in one status",
		reports: []cells.Timing{upTo(together, "launched"), upTo(together, "agentReady"), upTo(together, "started"), together},
		cells:   []float64{1, 1, 1, 0},
		want: map[string][]float64{
			PhaseSchedule: {1}, PhaseLaunch: {0.05}, PhaseAgentReady: {0.2}, PhaseImagePull: {2},
			PhaseContainerStart: {0}, PhaseTotal: {2.25},
		},
	}, {
		name:    "a cell adopted after a restart is counted but not timed",
		reports: []cells.Timing{upTo(adopted, "agentReady"), upTo(adopted, "started"), adopted},
		cells:   []float64{1, 1, 0},
		want:    map[string][]float64{},
	}, {
		name:    "a pod that failed before its launch is neither timed nor counted",
		reports: []cells.Timing{neverLaunched},
		cells:   []float64{0},
		want:    map[string][]float64{},
	}, {
		name:    "no PodScheduled condition: no schedule sample",
		reports: []cells.Timing{upTo(unscheduled, "launched"), unscheduled},
		cells:   []float64{1, 0},
		want: map[string][]float64{
			PhaseLaunch: {0.05}, PhaseAgentReady: {0.2}, PhaseImagePull: {2},
			PhaseContainerStart: {0.1}, PhaseTotal: {2.35},
		},
	}, {
		name:    "containers reported started before every image: no negative container_start",
		reports: []cells.Timing{upTo(startedFirstReport, "agentReady"), startedFirstReport, upTo(startedFirst, "started"), startedFirst},
		cells:   []float64{1, 1, 1, 0},
		want: map[string][]float64{
			PhaseSchedule: {1}, PhaseLaunch: {0.05}, PhaseAgentReady: {0.2}, PhaseImagePull: {3.1},
			PhaseTotal: {2.35},
		},
	}, {
		name:    "a report racing the final one changes nothing",
		reports: []cells.Timing{upTo(full, "launched"), full, upTo(full, "started"), upTo(full, "launched")},
		cells:   []float64{1, 0, 0, 0},
		want:    all,
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reg := prometheus.NewPedanticRegistry()
			m, err := New(reg)
			if err != nil {
				t.Fatal(err)
			}
			for i, r := range tt.reports {
				m.Observe(r)
				if got := testutil.ToFloat64(m.cells); got != tt.cells[i] {
					t.Errorf("after report %d: kip_cells = %v, want %v", i, got, tt.cells[i])
				}
			}
			for _, p := range phases {
				want := tt.want[p.name]
				count, sum := histogram(t, reg, p.name)
				var wantSum float64
				for _, v := range want {
					wantSum += v
				}
				if count != uint64(len(want)) || math.Abs(sum-wantSum) > 1e-9 {
					t.Errorf("phase %s: %d samples summing to %v s, want %d summing to %v s", p.name, count, sum, len(want), wantSum)
				}
			}
			// kubelet's pod start histogram has the total phase's samples.
			want := tt.want[PhaseTotal]
			if got := testutil.CollectAndCount(m.podStart); got != 1 {
				t.Fatalf("%s: %d series", KubeletPodStartDuration, got)
			}
			var pb dto.Metric
			if err := m.podStart.Write(&pb); err != nil {
				t.Fatal(err)
			}
			var wantSum float64
			for _, v := range want {
				wantSum += v
			}
			if h := pb.GetHistogram(); h.GetSampleCount() != uint64(len(want)) || math.Abs(h.GetSampleSum()-wantSum) > 1e-9 {
				t.Errorf("%s: %d samples summing to %v s, want %d summing to %v s", KubeletPodStartDuration, h.GetSampleCount(), h.GetSampleSum(), len(want), wantSum)
			}
		})
	}
}

func TestObserveTwoPods(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	m, err := New(reg)
	if err != nil {
		t.Fatal(err)
	}
	other := full
	other.UID, other.Name = "uid-other", "other"
	other.Launched = at(3 * time.Millisecond)
	m.Observe(upTo(full, "launched"))
	m.Observe(upTo(other, "launched"))
	if got := testutil.ToFloat64(m.cells); got != 2 {
		t.Errorf("kip_cells = %v, want 2", got)
	}
	m.Observe(full)
	if got := testutil.ToFloat64(m.cells); got != 1 {
		t.Errorf("kip_cells = %v after one finished, want 1", got)
	}
	// 50 ms and 3 ms launches: 3 ms falls in le=0.005, not le=0.0025; 50 ms in le=0.05.
	buckets := histogramBuckets(t, reg, PhaseLaunch)
	for le, want := range map[float64]uint64{0.0025: 0, 0.005: 1, 0.025: 1, 0.05: 2, 300: 2} {
		if buckets[le] != want {
			t.Errorf("launch bucket le=%v holds %d, want %d", le, buckets[le], want)
		}
	}
}

func TestForgetsOldFinishedPods(t *testing.T) {
	m, err := New(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	m.maxFinished = 3
	for i := range 10 {
		tm := full
		tm.UID = types.UID(fmt.Sprintf("uid-%d", i))
		m.Observe(upTo(tm, "launched"))
		m.Observe(tm)
	}
	if len(m.pods) != 3 || len(m.finished) != 3 {
		t.Errorf("remembers %d pods (%d finished), want 3", len(m.pods), len(m.finished))
	}
	if got := testutil.ToFloat64(m.cells); got != 0 {
		t.Errorf("kip_cells = %v, want 0", got)
	}
}

func TestInstrumentCloud(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	m, err := New(reg)
	if err != nil {
		t.Fatal(err)
	}
	f := fake.New()
	c := m.InstrumentCloud(f)
	f.InjectError(fake.MethodLaunch, cloud.InsufficientCapacity("no fake.small left"))
	f.InjectError(fake.MethodLaunch, cloud.Throttled("slow down"))
	f.InjectError(fake.MethodLaunch, errors.New("connection reset"))
	ctx := context.Background()
	launches := []cloud.LaunchSpec{
		{CellID: "c-1", InstanceType: "fake.small"}, // insufficient capacity
		{CellID: "c-1", InstanceType: "fake.small"}, // throttled
		{CellID: "c-1", InstanceType: "fake.small"}, // error
		{CellID: "c-1", InstanceType: "fake.small"},
		{CellID: "c-2", InstanceType: "fake.large"},
		{CellID: "c-3", InstanceType: "fake.huge"}, // unknown: invalid spec
	}
	for _, s := range launches {
		c.Launch(ctx, s) //nolint:errcheck // the results are what is counted
	}
	want := `
# HELP kip_cell_launches_total Cloud launch calls for cells, by instance type and result (success, insufficient_capacity, invalid_spec, throttled, error).
# TYPE kip_cell_launches_total counter
kip_cell_launches_total{instance_type="fake.huge",result="invalid_spec"} 1
kip_cell_launches_total{instance_type="fake.large",result="success"} 1
kip_cell_launches_total{instance_type="fake.small",result="error"} 1
kip_cell_launches_total{instance_type="fake.small",result="insufficient_capacity"} 1
kip_cell_launches_total{instance_type="fake.small",result="success"} 1
kip_cell_launches_total{instance_type="fake.small",result="throttled"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "kip_cell_launches_total"); err != nil {
		t.Error(err)
	}
	// The other methods are the wrapped cloud's.
	if c.Name() != "fake" {
		t.Errorf("Name() = %q, want the wrapped cloud's", c.Name())
	}
	if got := len(f.Instances()); got != 2 {
		t.Errorf("the fake holds %d instances, want 2", got)
	}
}

func TestNewRegistersOnce(t *testing.T) {
	reg := prometheus.NewRegistry()
	if _, err := New(reg); err != nil {
		t.Fatal(err)
	}
	if _, err := New(reg); err == nil {
		t.Error("registering kip's metrics twice on one registry: no error")
	}
}

func TestLint(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	m, err := New(reg)
	if err != nil {
		t.Fatal(err)
	}
	m.Observe(full)
	m.InstrumentCloud(fake.New()).Launch(context.Background(), cloud.LaunchSpec{CellID: "c", InstanceType: "fake.small"}) //nolint:errcheck
	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("%s: %s", p.Metric, p.Text)
	}
}

func TestHandler(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := New(reg)
	if err != nil {
		t.Fatal(err)
	}
	m.Observe(upTo(full, "launched"))
	srv := httptest.NewServer(Handler(reg))
	defer srv.Close()
	resp, err := http.Get(srv.URL + Path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		`kip_pod_phase_duration_seconds_bucket{phase="launch",le="0.05"} 1`,
		`kip_pod_phase_duration_seconds_count{phase="image_pull"} 0`,
		`kip_cells 1`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("the handler's answer lacks %q:\n%s", want, body)
		}
	}
}

// histogram returns the sample count and sum of one phase's series.
func histogram(t *testing.T, g prometheus.Gatherer, phase string) (uint64, float64) {
	t.Helper()
	h := phaseSeries(t, g, phase)
	return h.GetSampleCount(), h.GetSampleSum()
}

// histogramBuckets returns one phase's cumulative bucket counts by upper bound.
func histogramBuckets(t *testing.T, g prometheus.Gatherer, phase string) map[float64]uint64 {
	t.Helper()
	out := map[float64]uint64{}
	for _, b := range phaseSeries(t, g, phase).GetBucket() {
		out[b.GetUpperBound()] = b.GetCumulativeCount()
	}
	return out
}

func phaseSeries(t *testing.T, g prometheus.Gatherer, phase string) *dto.Histogram {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "kip_pod_phase_duration_seconds" {
			continue
		}
		for _, mt := range mf.GetMetric() {
			for _, l := range mt.GetLabel() {
				if l.GetName() == "phase" && l.GetValue() == phase {
					return mt.GetHistogram()
				}
			}
		}
	}
	t.Fatalf("no kip_pod_phase_duration_seconds series for phase %q", phase)
	return nil
}
