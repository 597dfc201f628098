// Package logarchive keeps a completed pod's container logs once its cell is terminated and
// serves them with kubelet's log options, as the cell's agent did.
package logarchive

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/kip-dev/kip/internal/cellapi"
)

// maxSavedLog bounds the log kept per container once a pod completes.
const maxSavedLog = 1 << 20

// Archive answers for a completed pod whose cell is gone: it serves the logs saved at
// completion and reports the final status; everything else is NotFound. It is a
// cellapi.Agent, so kubectl logs works the same before and after the cell goes.
type Archive struct {
	clock    func() time.Time
	status   *cellapi.PodStatus
	logs     map[string][]byte // container → lines with RFC3339Nano timestamps
	previous map[string][]byte
}

var _ cellapi.Agent = (*Archive)(nil)

// Save fetches every container's log (with timestamps, the previous run's too for restarted
// containers) from agent before the cell goes away. st is the pod's last status; now tells
// time for since-filters.
func Save(ctx context.Context, agent cellapi.Agent, pod *corev1.Pod, st *cellapi.PodStatus, now func() time.Time) *Archive {
	a := &Archive{clock: now, status: st, logs: map[string][]byte{}, previous: map[string][]byte{}}
	limit := int64(maxSavedLog)
	fetch := func(name string, previous bool) []byte {
		rc, err := agent.Logs(ctx, name, cellapi.LogOptions{Timestamps: true, Previous: previous, LimitBytes: &limit})
		if err != nil {
			return nil
		}
		defer rc.Close()
		b, _ := io.ReadAll(io.LimitReader(rc, maxSavedLog))
		return b
	}
	for _, list := range [][]corev1.Container{pod.Spec.InitContainers, pod.Spec.Containers} {
		for _, ctr := range list {
			a.logs[ctr.Name] = fetch(ctr.Name, false)
			if restarted(st, ctr.Name) {
				a.previous[ctr.Name] = fetch(ctr.Name, true)
			}
		}
	}
	return a
}

func restarted(st *cellapi.PodStatus, name string) bool {
	if st == nil {
		return false
	}
	for _, list := range [][]corev1.ContainerStatus{st.InitContainerStatuses, st.ContainerStatuses} {
		for _, cs := range list {
			if cs.Name == name && cs.RestartCount > 0 {
				return true
			}
		}
	}
	return false
}

func (a *Archive) gone() error {
	return cellapi.Errorf(cellapi.KindNotFound, "the pod has completed and its cell is terminated")
}

func (a *Archive) PutPod(context.Context, *cellapi.PodRequest) (*cellapi.PodStatus, error) {
	return nil, a.gone()
}

func (a *Archive) GetPod(context.Context) (*cellapi.PodStatus, error) {
	if a.status == nil {
		return nil, a.gone()
	}
	return a.status, nil
}

func (a *Archive) WatchPod(context.Context) (<-chan *cellapi.PodStatus, error) {
	return nil, a.gone()
}

func (a *Archive) DeletePod(context.Context, time.Duration) error { return nil }

func (a *Archive) Stats(context.Context) (*cellapi.Stats, error) { return nil, a.gone() }

func (a *Archive) Health(context.Context) (*cellapi.Health, error) { return nil, a.gone() }

// Logs serves a saved log with kubelet's options applied (follow ends at the saved end).
func (a *Archive) Logs(_ context.Context, container string, opts cellapi.LogOptions) (io.ReadCloser, error) {
	src := a.logs
	if opts.Previous {
		src = a.previous
	}
	data, ok := src[container]
	if !ok {
		return nil, cellapi.Errorf(cellapi.KindNotFound, "no saved log for container %q", container)
	}
	return io.NopCloser(bytes.NewReader(filterLog(data, opts, a.clock()))), nil
}

// filterLog applies since, tail, timestamps and limitBytes to lines that each start with an
// RFC3339Nano timestamp and a space.
func filterLog(data []byte, opts cellapi.LogOptions, now time.Time) []byte {
	var since time.Time
	if opts.SinceTime != nil {
		since = *opts.SinceTime
	}
	if opts.SinceSeconds != nil {
		since = now.Add(-time.Duration(*opts.SinceSeconds) * time.Second)
	}
	var lines []string
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64<<10), maxSavedLog)
	for sc.Scan() {
		line := sc.Text()
		ts, rest, _ := strings.Cut(line, " ")
		if !since.IsZero() {
			if t, err := time.Parse(time.RFC3339Nano, ts); err == nil && t.Before(since) {
				continue
			}
		}
		if !opts.Timestamps {
			line = rest
		}
		lines = append(lines, line)
	}
	if opts.TailLines != nil && int64(len(lines)) > *opts.TailLines {
		lines = lines[int64(len(lines))-*opts.TailLines:]
	}
	var out []byte
	for _, l := range lines {
		out = append(out, l...)
		out = append(out, '\n')
	}
	if opts.LimitBytes != nil && int64(len(out)) > *opts.LimitBytes {
		out = out[:*opts.LimitBytes]
	}
	return out
}
