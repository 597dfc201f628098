// Package cellapitest is an in-process cellapi.Agent for unit tests of kip's host side
// (the provider, `kip run`): PutPod runs the pod's containers at once, WatchPod streams every
// status change, and DeletePod stops the containers with exit code 0, as a healthy cell
// running a well-behaved pod would. It sends no heartbeats: kip probes it as an older agent.
// Tests that drive a pod's status by hand keep fakes of their own.
package cellapitest

import (
	"context"
	"io"
	"slices"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/kip-dev/kip/internal/cellapi"
)

// Agent is a fake cell agent; the zero value is ready to use. It is safe for concurrent use.
type Agent struct {
	// CellID is what Health reports; empty reports none (kip then does not check it).
	CellID string

	mu       sync.Mutex
	req      *cellapi.PodRequest
	status   *cellapi.PodStatus
	watchers []chan *cellapi.PodStatus // no goroutine each: see WatchPod
	deletes  int
}

var _ cellapi.Agent = (*Agent)(nil)

// Health reports the agent healthy, as cell CellID, version "test".
func (a *Agent) Health(context.Context) (*cellapi.Health, error) {
	return &cellapi.Health{CellID: a.CellID, Version: "test"}, nil
}

// PutPod records req and reports the pod Running with every container started and ready.
// Putting the same pod (by UID) again returns its status unchanged.
func (a *Agent) PutPod(_ context.Context, req *cellapi.PodRequest) (*cellapi.PodStatus, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.status != nil && a.status.UID == string(req.Pod.UID) {
		return a.status, nil
	}
	a.req = req
	now := time.Now()
	st := &cellapi.PodStatus{UID: string(req.Pod.UID), Phase: corev1.PodRunning, StartTime: now}
	for _, c := range req.Pod.Spec.Containers {
		st.ContainerStatuses = append(st.ContainerStatuses, corev1.ContainerStatus{
			Name: c.Name, Image: c.Image, ImageID: "sha256:1", Ready: true, Started: ptr.To(true),
			State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: metav1.NewTime(now)}},
		})
	}
	a.publishLocked(st)
	return st, nil
}

// publishLocked makes st the current status (with the next sequence number) and sends it to
// every watcher; a watcher whose buffer is full misses it and re-reads with GetPod.
func (a *Agent) publishLocked(st *cellapi.PodStatus) {
	st.Seq = 1
	if a.status != nil {
		st.Seq = a.status.Seq + 1
	}
	a.status = st
	for _, w := range a.watchers {
		select {
		case w <- st:
		default:
		}
	}
}

// GetPod returns the current status, or a KindNotFound error before the first PutPod.
func (a *Agent) GetPod(context.Context) (*cellapi.PodStatus, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.status == nil {
		return nil, cellapi.Errorf(cellapi.KindNotFound, "no pod")
	}
	return a.status, nil
}

// WatchPod streams the current status, if any, then every change until ctx ends, when it
// closes the channel. The stream holds no goroutine (context.AfterFunc ends it), so a
// simulation of thousands of cells costs the process hosting them only their channels.
func (a *Agent) WatchPod(ctx context.Context) (<-chan *cellapi.PodStatus, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	ch := make(chan *cellapi.PodStatus, 64)
	if a.status != nil {
		ch <- a.status
	}
	a.watchers = append(a.watchers, ch)
	context.AfterFunc(ctx, func() {
		a.mu.Lock()
		defer a.mu.Unlock()
		a.watchers = slices.DeleteFunc(a.watchers, func(w chan *cellapi.PodStatus) bool { return w == ch })
		close(ch)
	})
	return ch, nil
}

// DeletePod counts the call and reports the pod Succeeded, every container terminated with
// exit code 0 (whatever the grace period).
func (a *Agent) DeletePod(context.Context, time.Duration) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.deletes++
	if a.status == nil {
		return nil
	}
	st := *a.status
	st.Phase = corev1.PodSucceeded
	st.ContainerStatuses = nil
	for _, cs := range a.status.ContainerStatuses {
		started := time.Now()
		if cs.State.Running != nil {
			started = cs.State.Running.StartedAt.Time
		}
		cs.Ready, cs.Started = false, ptr.To(false)
		cs.State = corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{
			ExitCode: 0, Reason: "Completed", StartedAt: metav1.NewTime(started), FinishedAt: metav1.Now()}}
		st.ContainerStatuses = append(st.ContainerStatuses, cs)
	}
	a.publishLocked(&st)
	return nil
}

// Logs serves one line for any container: "hello from <container>\n".
func (a *Agent) Logs(_ context.Context, container string, _ cellapi.LogOptions) (io.ReadCloser, error) {
	return io.NopCloser(strings.NewReader("hello from " + container + "\n")), nil
}

// Stats reports fixed usage: 5s of CPU and 64 MiB for the cell, 1s and 32 MiB for each
// container of the pod put last.
func (a *Agent) Stats(context.Context) (*cellapi.Stats, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	s := &cellapi.Stats{Time: time.Now(), Cell: cellapi.Usage{CPUUsageNanoSeconds: 5e9, MemoryWorkingSetBytes: 64 << 20}}
	if a.req == nil {
		return s, nil
	}
	for _, c := range a.req.Pod.Spec.Containers {
		s.Containers = append(s.Containers, cellapi.ContainerStats{Name: c.Name, StartTime: a.status.StartTime,
			Usage: cellapi.Usage{CPUUsageNanoSeconds: 1e9, MemoryWorkingSetBytes: 32 << 20}})
	}
	return s, nil
}

// Request returns the request of the pod put last, nil before the first PutPod.
func (a *Agent) Request() *cellapi.PodRequest {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.req
}

// Deletes counts the DeletePod calls.
func (a *Agent) Deletes() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.deletes
}
