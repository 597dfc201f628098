package provider

import (
	"context"
	"k8s.io/utils/ptr"

	dto "github.com/prometheus/client_model/go"
)

// GetMetricsResource serves /metrics/resource as kubelet does, for metrics-server and
// `kubectl top`: cumulative CPU seconds and working-set bytes for the node, each pod and each
// container, container start times, and scrape_error (1 when some cell could not be read).
// Labels come in the order namespace, pod, container.
func (p *Provider) GetMetricsResource(ctx context.Context) ([]*dto.MetricFamily, error) {
	all := p.collect(ctx)
	now := p.clock.Now()
	var (
		nodeCPU, nodeWS    uint64
		scrapeErr          float64
		cCPU, cMem, cStart []*dto.Metric
		podCPU, podMem     []*dto.Metric
	)
	for _, cs := range all {
		if cs.err != nil {
			scrapeErr = 1
		}
		if cs.stats == nil {
			continue
		}
		pod, st := cs.pod, cs.stats
		ms := st.Time.UnixMilli()
		if st.Time.IsZero() {
			ms = now.UnixMilli()
		}
		var pc, pw uint64
		for _, c := range st.Containers {
			l := labelPairs("namespace", pod.Namespace, "pod", pod.Name, "container", c.Name)
			cCPU = append(cCPU, counter(l, float64(c.Usage.CPUUsageNanoSeconds)/1e9, ms))
			cMem = append(cMem, gauge(l, float64(c.Usage.MemoryWorkingSetBytes), ms))
			if !c.StartTime.IsZero() {
				cStart = append(cStart, gauge(l, float64(c.StartTime.UnixNano())/1e9, ms))
			}
			pc += c.Usage.CPUUsageNanoSeconds
			pw += c.Usage.MemoryWorkingSetBytes
		}
		l := labelPairs("namespace", pod.Namespace, "pod", pod.Name)
		podCPU = append(podCPU, counter(l, float64(pc)/1e9, ms))
		podMem = append(podMem, gauge(l, float64(pw), ms))
		nodeCPU += st.Cell.CPUUsageNanoSeconds
		nodeWS += st.Cell.MemoryWorkingSetBytes
	}
	nowMS := now.UnixMilli()
	return []*dto.MetricFamily{
		family("node_cpu_usage_seconds_total", "Cumulative cpu time consumed by the node in core-seconds", dto.MetricType_COUNTER,
			counter(nil, float64(nodeCPU)/1e9, nowMS)),
		family("node_memory_working_set_bytes", "Current working set of the node in bytes", dto.MetricType_GAUGE,
			gauge(nil, float64(nodeWS), nowMS)),
		family("container_cpu_usage_seconds_total", "Cumulative cpu time consumed by the container in core-seconds", dto.MetricType_COUNTER, cCPU...),
		family("container_memory_working_set_bytes", "Current working set of the container in bytes", dto.MetricType_GAUGE, cMem...),
		family("container_start_time_seconds", "Start time of the container since unix epoch in seconds", dto.MetricType_GAUGE, cStart...),
		family("pod_cpu_usage_seconds_total", "Cumulative cpu time consumed by the pod in core-seconds", dto.MetricType_COUNTER, podCPU...),
		family("pod_memory_working_set_bytes", "Current working set of the pod in bytes", dto.MetricType_GAUGE, podMem...),
		family("scrape_error", "1 if there was an error while getting container metrics, 0 otherwise", dto.MetricType_GAUGE,
			gauge(nil, scrapeErr, 0)),
	}, nil
}

// labelPairs builds label pairs in the order given (name, value, name, value...).
func labelPairs(kv ...string) []*dto.LabelPair {
	out := make([]*dto.LabelPair, 0, len(kv)/2)
	for i := 0; i+1 < len(kv); i += 2 {
		out = append(out, &dto.LabelPair{Name: ptr.To(kv[i]), Value: ptr.To(kv[i+1])})
	}
	return out
}

func counter(l []*dto.LabelPair, v float64, ms int64) *dto.Metric {
	m := &dto.Metric{Label: l, Counter: &dto.Counter{Value: ptr.To(v)}}
	if ms != 0 {
		m.TimestampMs = ptr.To(ms)
	}
	return m
}

func gauge(l []*dto.LabelPair, v float64, ms int64) *dto.Metric {
	m := &dto.Metric{Label: l, Gauge: &dto.Gauge{Value: ptr.To(v)}}
	if ms != 0 {
		m.TimestampMs = ptr.To(ms)
	}
	return m
}

func family(name, help string, t dto.MetricType, ms ...*dto.Metric) *dto.MetricFamily {
	return &dto.MetricFamily{Name: ptr.To(name), Help: ptr.To(help), Type: t.Enum(), Metric: ms}
}
