// Package metrics holds kip's own Prometheus metrics: how long each phase of a pod's start
// takes (from the cells manager's Timing reports), how cloud launches end, and how many cells
// kip runs. It registers them on a Registerer the caller owns and serves them with Handler.
package metrics

import (
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/kip-dev/kip/internal/cells"
)

// Path is where kip run serves these metrics on the kubelet API (authorized as
// nodes/metrics, like kubelet's own /metrics paths).
const Path = "/metrics/kip"

// KubeletPath is kubelet's own metrics path, which clients of a node (the e2e framework's
// failure dump among them) scrape; kip run serves the same registry there, with the kubelet
// metrics it has real values for (KubeletPodStartDuration).
const KubeletPath = "/metrics"

// KubeletPodStartDuration is kubelet's kubelet_pod_start_duration_seconds: from kubelet
// seeing a pod to its containers running. kip's value is the total phase's (kip asked to run
// the pod → every regular container started), in kubelet's buckets.
const KubeletPodStartDuration = "kubelet_pod_start_duration_seconds"

// kubeletPodStartBuckets are kubelet's buckets for KubeletPodStartDuration.
var kubeletPodStartBuckets = []float64{0.5, 1, 2, 3, 4, 5, 6, 8, 10, 20, 30, 45, 60, 120, 180, 240, 300, 360, 480, 600, 900, 1200, 1800, 2700, 3600}

// The phase label's values. Each is the time between two steps of a pod's start:
//
//	schedule         PodScheduled condition → kip asked to run the pod (1 s resolution: the
//	                 API server keeps condition times in whole seconds)
//	launch           kip asked to run the pod → the cloud returned the cell's instance
//	agent_ready      instance returned → the cell's agent answered
//	image_pull       agent answered → every container's image pulled
//	container_start  every image pulled → every regular container started
//	total            kip asked to run the pod → every regular container started
const (
	PhaseSchedule       = "schedule"
	PhaseLaunch         = "launch"
	PhaseAgentReady     = "agent_ready"
	PhaseImagePull      = "image_pull"
	PhaseContainerStart = "container_start"
	PhaseTotal          = "total"
)

// Buckets are the phase histogram's upper bounds in seconds: 1 ms to 5 min, about two to
// three per decade below 10 s and tighter where cold starts land.
var Buckets = []float64{
	0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
	1, 2, 3, 5, 7.5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 300,
}

// phase is one histogram series: the time from one Timing field to another.
type phase struct {
	name     string
	from, to func(*cells.Timing) time.Time
}

var phases = []phase{
	{PhaseSchedule, func(t *cells.Timing) time.Time { return t.Scheduled }, func(t *cells.Timing) time.Time { return t.Created }},
	{PhaseLaunch, func(t *cells.Timing) time.Time { return t.Created }, func(t *cells.Timing) time.Time { return t.Launched }},
	{PhaseAgentReady, func(t *cells.Timing) time.Time { return t.Launched }, func(t *cells.Timing) time.Time { return t.AgentReady }},
	{PhaseImagePull, func(t *cells.Timing) time.Time { return t.AgentReady }, func(t *cells.Timing) time.Time { return t.Pulled }},
	{PhaseContainerStart, func(t *cells.Timing) time.Time { return t.Pulled }, func(t *cells.Timing) time.Time { return t.Started }},
	{PhaseTotal, func(t *cells.Timing) time.Time { return t.Created }, func(t *cells.Timing) time.Time { return t.Started }},
}

// maxFinished is how many finished pods are remembered, so that a report racing the final
// one neither records a phase twice nor counts a cell again.
const maxFinished = 4096

// Metrics is kip's metrics. Its methods are safe for concurrent use.
type Metrics struct {
	phaseSeconds *prometheus.HistogramVec
	podStart     prometheus.Histogram
	launches     *prometheus.CounterVec
	cells        prometheus.Gauge

	mu   sync.Mutex
	pods map[string]*podState
	// finished lists finished pods' keys, oldest first; the oldest are forgotten past
	// maxFinished.
	finished    []string
	maxFinished int
}

// podState is what Observe remembers of one pod.
type podState struct {
	recorded uint // bit i: phases[i] was recorded
	live     bool // counted in kip_cells
	done     bool // its final report came
}

// New makes kip's metrics and registers them on reg.
func New(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		phaseSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "kip_pod_phase_duration_seconds",
			Help:    "Time each phase of a pod's start took on a cell kip launched: schedule, launch, agent_ready, image_pull, container_start, and total (launch through container_start).",
			Buckets: Buckets,
		}, []string{"phase"}),
		podStart: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    KubeletPodStartDuration,
			Help:    "Duration in seconds from kubelet (kip) seeing a pod for the first time to the pod starting to run: kip_pod_phase_duration_seconds{phase=\"total\"} in kubelet's buckets.",
			Buckets: kubeletPodStartBuckets,
		}),
		launches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kip_cell_launches_total",
			Help: "Cloud launch calls for cells, by instance type and result (success, insufficient_capacity, invalid_spec, throttled, error).",
		}, []string{"instance_type", "result"}),
		cells: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "kip_cells",
			Help: "Cells kip runs now: pods whose cell was launched (or adopted after a restart) and is not finished.",
		}),
		pods:        map[string]*podState{},
		maxFinished: maxFinished,
	}
	for _, c := range []prometheus.Collector{m.phaseSeconds, m.podStart, m.launches, m.cells} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("registering kip's metrics: %w", err)
		}
	}
	// Every phase shows up, with zero counts, before the first pod starts.
	for _, p := range phases {
		m.phaseSeconds.WithLabelValues(p.name)
	}
	return m, nil
}

// Observe records the phases t newly completed; it is the cells manager's Deps.Observe. The
// manager reports a pod again at each phase with every time so far, so each phase is recorded
// once per pod. Only pods kip launched itself (Launched set) are timed: a cell adopted after
// a restart has no start to measure. A phase whose end precedes its start is not recorded.
func (m *Metrics) Observe(t cells.Timing) {
	key := string(t.UID)
	if key == "" {
		key = t.Namespace + "/" + t.Name
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	st := m.pods[key]
	if st == nil {
		st = &podState{}
		m.pods[key] = st
		if t.Finished.IsZero() {
			st.live = true
			m.cells.Inc()
		}
	}
	if st.done {
		return
	}
	if !t.Launched.IsZero() {
		for i, p := range phases {
			if st.recorded&(1<<i) != 0 {
				continue
			}
			from, to := p.from(&t), p.to(&t)
			if from.IsZero() || to.IsZero() {
				continue
			}
			st.recorded |= 1 << i
			if d := to.Sub(from); d >= 0 {
				m.phaseSeconds.WithLabelValues(p.name).Observe(d.Seconds())
				if p.name == PhaseTotal {
					m.podStart.Observe(d.Seconds())
				}
			}
		}
	}
	if t.Finished.IsZero() {
		return
	}
	st.done = true
	if st.live {
		st.live = false
		m.cells.Dec()
	}
	m.finished = append(m.finished, key)
	if len(m.finished) > m.maxFinished {
		delete(m.pods, m.finished[0])
		m.finished = m.finished[1:]
	}
}

// Handler serves what g gathers in Prometheus' exposition formats.
func Handler(g prometheus.Gatherer) http.Handler {
	return promhttp.HandlerFor(g, promhttp.HandlerOpts{})
}
