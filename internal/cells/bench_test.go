package cells

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/utils/clock"

	"github.com/kip-dev/kip/internal/cellapi"
	"github.com/kip-dev/kip/internal/cloud"
	"github.com/kip-dev/kip/internal/cloud/fake"
	"github.com/kip-dev/kip/internal/pki"
)

// runningAgent reports every pod Running as soon as it is put.
type runningAgent struct{ testAgent }

func (a *runningAgent) PutPod(ctx context.Context, req *cellapi.PodRequest) (*cellapi.PodStatus, error) {
	if _, err := a.testAgent.PutPod(ctx, req); err != nil {
		return nil, err
	}
	a.set(&cellapi.PodStatus{Phase: corev1.PodRunning, ContainerStatuses: []corev1.ContainerStatus{running("main", true)}})
	return a.GetPod(ctx)
}

// BenchmarkCreateToRunning measures the state machine's own overhead from CreatePod to the
// Running notification, with an in-memory cloud and agents (no boot, no pull), for bursts
// of 20 pods. It prints p50/p99 per pod.
func BenchmarkCreateToRunning(b *testing.B) {
	ca, err := pki.NewCA("bench")
	if err != nil {
		b.Fatal(err)
	}
	var lat []time.Duration
	for i := 0; i < b.N; i++ {
		var mu sync.Mutex
		agents := map[string]*runningAgent{}
		m := New(DefaultOptions(), NodeInfo{Name: "kip", HostIP: "10.250.0.1"}, Deps{
			Cloud:    fake.New(),
			Selector: SelectFunc(testSelect),
			CA:       ca,
			Clock:    clock.RealClock{},
			Dial: func(_ context.Context, _ *cloud.Instance, id string) (cellapi.Agent, error) {
				mu.Lock()
				defer mu.Unlock()
				if agents[id] == nil {
					agents[id] = &runningAgent{testAgent{cellID: id}}
				}
				return agents[id], nil
			},
		})
		const burst = 20
		start := map[string]time.Time{}
		done := make(chan struct{}, burst)
		seen := map[string]bool{}
		m.NotifyPods(func(p *corev1.Pod) {
			if p.Status.Phase != corev1.PodRunning {
				return
			}
			mu.Lock()
			defer mu.Unlock()
			if !seen[p.Name] {
				seen[p.Name] = true
				lat = append(lat, time.Since(start[p.Name]))
				done <- struct{}{}
			}
		})
		for j := 0; j < burst; j++ {
			p := testPod(fmt.Sprintf("b%d", j))
			mu.Lock()
			start[p.Name] = time.Now()
			mu.Unlock()
			if err := m.CreatePod(context.Background(), p); err != nil {
				b.Fatal(err)
			}
		}
		for j := 0; j < burst; j++ {
			<-done
		}
		m.Close()
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	p := func(q float64) time.Duration { return lat[int(q*float64(len(lat)-1))] }
	b.ReportMetric(float64(p(0.5).Microseconds()), "p50-µs")
	b.ReportMetric(float64(p(0.99).Microseconds()), "p99-µs")
	b.Logf("CreatePod → Running (state machine only, %d pods): p50 %v, p99 %v", len(lat), p(0.5), p(0.99))
}
