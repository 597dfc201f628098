package provider

import (
	"context"
	"k8s.io/utils/ptr"
	"log/slog"
	"time"

	"golang.org/x/sync/errgroup"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	statsv1alpha1 "k8s.io/kubelet/pkg/apis/stats/v1alpha1"

	"github.com/kip-dev/kip/internal/cellapi"
)

// statsTimeout bounds one agent's stats call so a dead cell cannot stall a scrape.
const statsTimeout = 5 * time.Second

// cellStats is one running pod's reading, or why there is none.
type cellStats struct {
	pod   *corev1.Pod
	stats *cellapi.Stats
	err   error
}

// cpuSample is a cumulative CPU reading kept to turn the next one into a rate.
type cpuSample struct {
	at    time.Time
	nanos uint64
}

// collect asks the agent of every pod with running containers for its stats, in parallel
// (bounded). Pods whose agent fails are returned with err set.
func (p *Provider) collect(ctx context.Context) []cellStats {
	running, _ := p.RunningPods(ctx)
	out := make([]cellStats, len(running))
	g, ctx := errgroup.WithContext(ctx)
	g.SetLimit(p.cfg.StatsConcurrency)
	for i, pod := range running {
		out[i].pod = pod
		if pod.Status.Phase != corev1.PodRunning {
			continue
		}
		g.Go(func() error {
			agent, err := p.cells.Agent(pod.Namespace, pod.Name)
			if err != nil {
				out[i].err = err
				return nil
			}
			cctx, cancel := context.WithTimeout(ctx, statsTimeout)
			defer cancel()
			out[i].stats, out[i].err = agent.Stats(cctx)
			if out[i].err != nil {
				slog.Debug("reading cell stats", "pod", pod.Namespace+"/"+pod.Name, "err", out[i].err)
			}
			return nil
		})
	}
	_ = g.Wait() // the workers never return errors; failures are per pod
	return out
}

// GetStatsSummary serves /stats/summary from the agents' cgroup readings: per container, per
// pod (the sum of its containers) and for the node (the sum of whole cells, agents included).
func (p *Provider) GetStatsSummary(ctx context.Context) (*statsv1alpha1.Summary, error) {
	all := p.collect(ctx)
	now := p.clock.Now()
	sum := &statsv1alpha1.Summary{Node: statsv1alpha1.NodeStats{
		NodeName:  p.cfg.NodeName,
		StartTime: metav1.NewTime(p.start),
	}}
	var nodeCPU, nodeWS, nodeUsage uint64
	sum.Pods = make([]statsv1alpha1.PodStats, 0, len(all))
	for _, cs := range all {
		if cs.stats == nil {
			continue
		}
		pod, st := cs.pod, cs.stats
		at := st.Time
		if at.IsZero() {
			at = now
		}
		ps := statsv1alpha1.PodStats{
			PodRef:     statsv1alpha1.PodReference{Name: pod.Name, Namespace: pod.Namespace, UID: string(pod.UID)},
			Containers: make([]statsv1alpha1.ContainerStats, 0, len(st.Containers)),
		}
		if pod.Status.StartTime != nil {
			ps.StartTime = *pod.Status.StartTime
		}
		var podCPU, podWS, podUsage uint64
		for _, c := range st.Containers {
			key := statsKey(pod, c.Name)
			ps.Containers = append(ps.Containers, statsv1alpha1.ContainerStats{
				Name:      c.Name,
				StartTime: metav1.NewTime(c.StartTime),
				CPU:       p.cpuStats(key, at, c.Usage.CPUUsageNanoSeconds),
				Memory:    memStats(at, c.Usage),
			})
			podCPU += c.Usage.CPUUsageNanoSeconds
			podWS += c.Usage.MemoryWorkingSetBytes
			podUsage += c.Usage.MemoryUsageBytes
		}
		ps.CPU = p.cpuStats(statsKey(pod, ""), at, podCPU)
		ps.Memory = memStats(at, cellapi.Usage{MemoryWorkingSetBytes: podWS, MemoryUsageBytes: podUsage})
		sum.Pods = append(sum.Pods, ps)
		nodeCPU += st.Cell.CPUUsageNanoSeconds
		nodeWS += st.Cell.MemoryWorkingSetBytes
		nodeUsage += st.Cell.MemoryUsageBytes
	}
	sum.Node.CPU = p.cpuStats("node", now, nodeCPU)
	sum.Node.Memory = memStats(now, cellapi.Usage{MemoryWorkingSetBytes: nodeWS, MemoryUsageBytes: nodeUsage})
	p.forgetStale(all)
	return sum, nil
}

func statsKey(pod *corev1.Pod, container string) string {
	return string(pod.UID) + "/" + container
}

// cpuStats reports the cumulative figure and, from the previous reading of the same key, the
// current rate in nanocores.
func (p *Provider) cpuStats(key string, at time.Time, nanos uint64) *statsv1alpha1.CPUStats {
	out := &statsv1alpha1.CPUStats{Time: metav1.NewTime(at), UsageCoreNanoSeconds: ptr.To(nanos)}
	p.mu.Lock()
	prev, ok := p.cpu[key]
	p.cpu[key] = cpuSample{at: at, nanos: nanos}
	p.mu.Unlock()
	if ok && at.After(prev.at) && nanos >= prev.nanos {
		rate := uint64(float64(nanos-prev.nanos) / at.Sub(prev.at).Seconds())
		out.UsageNanoCores = &rate
	}
	return out
}

// forgetStale drops remembered CPU readings of pods no longer running.
func (p *Provider) forgetStale(all []cellStats) {
	live := map[string]bool{"node": true}
	for _, cs := range all {
		live[string(cs.pod.UID)] = true
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for key := range p.cpu {
		uid, _, _ := cutSlash(key)
		if !live[uid] && key != "node" {
			delete(p.cpu, key)
		}
	}
}

func cutSlash(s string) (string, string, bool) {
	for i := 0; i < len(s); i++ {
		if s[i] == '/' {
			return s[:i], s[i+1:], true
		}
	}
	return s, "", false
}

func memStats(at time.Time, u cellapi.Usage) *statsv1alpha1.MemoryStats {
	return &statsv1alpha1.MemoryStats{
		Time:            metav1.NewTime(at),
		WorkingSetBytes: ptr.To(u.MemoryWorkingSetBytes),
		UsageBytes:      ptr.To(u.MemoryUsageBytes),
	}
}
