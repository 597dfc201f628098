package framework

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/apimachinery/pkg/watch"
	watchtools "k8s.io/client-go/tools/watch"

	"github.com/kip-dev/kip/internal/cloud"
)

// Watcher is the Watch method every typed client has.
type Watcher interface {
	Watch(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error)
}

// Until watches the objects sel selects until cond holds for an event, ctx ends or cond
// fails. A watch with no resource version first replays the current objects as ADDED
// events, so a condition that already holds is seen at once. A watch the server closes is
// reopened.
func Until(ctx context.Context, w Watcher, sel fields.Selector, cond watchtools.ConditionFunc) (*watch.Event, error) {
	return UntilOpts(ctx, w, metav1.ListOptions{FieldSelector: sel.String()}, cond)
}

// UntilOpts is Until with arbitrary list options (label selectors).
func UntilOpts(ctx context.Context, w Watcher, opts metav1.ListOptions, cond watchtools.ConditionFunc) (*watch.Event, error) {
	for {
		wi, err := w.Watch(ctx, opts)
		if err != nil {
			return nil, fmt.Errorf("watching: %w", err)
		}
		ev, err := watchtools.UntilWithoutRetry(ctx, wi, cond)
		if errors.Is(err, watchtools.ErrWatchClosed) && ctx.Err() == nil {
			continue
		}
		return ev, err
	}
}

// WaitForPod waits until cond holds for pod ns/name and returns the pod as it was then.
func (e *Env) WaitForPod(ctx context.Context, ns, name string, timeout time.Duration, cond func(*corev1.Pod) bool) (*corev1.Pod, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last *corev1.Pod
	ev, err := Until(ctx, e.Client.CoreV1().Pods(ns), fields.OneTermEqualSelector("metadata.name", name),
		func(ev watch.Event) (bool, error) {
			p, ok := ev.Object.(*corev1.Pod)
			if !ok {
				return false, nil
			}
			if ev.Type == watch.Deleted {
				return false, fmt.Errorf("pod %s/%s was deleted", ns, name)
			}
			last = p
			return cond(p), nil
		})
	if err != nil {
		return last, fmt.Errorf("waiting for pod %s/%s: %w; last seen: %s", ns, name, err, DescribePod(last))
	}
	return ev.Object.(*corev1.Pod), nil
}

// CreateRunning creates pod in ns and waits up to timeout for it to be Running; it fails t,
// with the pod's Events, if it is not.
func (e *Env) CreateRunning(ctx context.Context, t testing.TB, ns string, pod *corev1.Pod, timeout time.Duration) *corev1.Pod {
	t.Helper()
	p, err := e.Client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating pod %s/%s: %v", ns, pod.Name, err)
	}
	p, err = e.WaitForPod(ctx, ns, p.Name, timeout, func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodRunning })
	if err != nil {
		t.Fatalf("pod not Running: %v\n%s", err, e.EventsFor(ctx, ns, pod.Name))
	}
	return p
}

// WaitForLogs polls kubectl logs of pod ns/name until they are want (spaces trimmed) and
// returns the last output and error seen.
func (e *Env) WaitForLogs(ctx context.Context, ns, name, want string, timeout time.Duration) (string, error) {
	var logs string
	var err error
	perr := wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		logs, err = e.Kubectl(ctx, "logs", "-n", ns, name)
		return err == nil && strings.TrimSpace(logs) == want, nil
	})
	if perr != nil && err == nil {
		err = perr
	}
	return logs, err
}

// WaitForPodGone waits until pod ns/name no longer exists.
func (e *Env) WaitForPodGone(ctx context.Context, ns, name string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	sel := fields.OneTermEqualSelector("metadata.name", name).String()
	list, err := e.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{FieldSelector: sel})
	if err != nil {
		return fmt.Errorf("waiting for pod %s/%s to be deleted: %w", ns, name, err)
	}
	if len(list.Items) == 0 {
		return nil
	}
	// Watch from the list's version, so a deletion between the list and the watch is seen.
	_, err = UntilOpts(ctx, e.Client.CoreV1().Pods(ns), metav1.ListOptions{FieldSelector: sel, ResourceVersion: list.ResourceVersion},
		func(ev watch.Event) (bool, error) { return ev.Type == watch.Deleted, nil })
	if err != nil {
		return fmt.Errorf("waiting for pod %s/%s to be deleted: %w", ns, name, err)
	}
	return nil
}

// WaitForEvent waits for an Event on the object named name in ns whose reason is reason.
func (e *Env) WaitForEvent(ctx context.Context, ns, name, reason string, timeout time.Duration) (*corev1.Event, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	sel := fields.AndSelectors(fields.OneTermEqualSelector("involvedObject.name", name), fields.OneTermEqualSelector("reason", reason))
	ev, err := Until(ctx, e.Client.CoreV1().Events(ns), sel, func(ev watch.Event) (bool, error) {
		_, ok := ev.Object.(*corev1.Event)
		return ok && ev.Type != watch.Deleted, nil
	})
	if err != nil {
		return nil, fmt.Errorf("waiting for event %q on %s/%s: %w; events so far:\n%s", reason, ns, name, err, e.EventsFor(context.Background(), ns, name))
	}
	return ev.Object.(*corev1.Event), nil
}

// EventsFor lists the Events of object ns/name, one line each, oldest first.
func (e *Env) EventsFor(ctx context.Context, ns, name string) string {
	list, err := e.Client.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: fields.OneTermEqualSelector("involvedObject.name", name).String()})
	if err != nil {
		return fmt.Sprintf("(listing events: %v)", err)
	}
	var b strings.Builder
	for _, ev := range list.Items {
		fmt.Fprintf(&b, "  %s %s %s: %s\n", ev.Type, ev.Reason, ev.Source.Component, ev.Message)
	}
	return b.String()
}

// NoCells is the WaitForCells condition "every matching cell is gone".
func NoCells(c []*cloud.Instance) bool { return len(c) == 0 }

// WaitForCells polls the backend's state (files on this machine; there is nothing to watch)
// until cond holds for this environment's cells carrying tags, or timeout passes.
func (e *Env) WaitForCells(ctx context.Context, tags map[string]string, timeout time.Duration, cond func([]*cloud.Instance) bool) ([]*cloud.Instance, error) {
	var last []*cloud.Instance
	err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		cells, err := e.Cells(ctx, tags)
		if err != nil {
			return false, err
		}
		last = cells
		return cond(cells), nil
	})
	if err != nil {
		return last, fmt.Errorf("waiting for cells %v: %w; last seen %d: %s", tags, err, len(last), describeCells(last))
	}
	return last, nil
}

// PodCells returns the tags that select the cells of pod ns/name.
func PodCells(ns, name string) map[string]string {
	return map[string]string{cloud.TagPodNamespace: ns, cloud.TagPodName: name}
}

// DescribePod summarises a pod's phase, reason and container states for failure messages.
func DescribePod(p *corev1.Pod) string {
	if p == nil {
		return "(no pod)"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "phase=%s", p.Status.Phase)
	if p.Status.Reason != "" || p.Status.Message != "" {
		fmt.Fprintf(&b, " reason=%q message=%q", p.Status.Reason, p.Status.Message)
	}
	fmt.Fprintf(&b, " node=%q podIP=%q", p.Spec.NodeName, p.Status.PodIP)
	for _, c := range p.Status.Conditions {
		if c.Status != corev1.ConditionTrue && c.Reason != "" {
			fmt.Fprintf(&b, " %s=%s(%s: %s)", c.Type, c.Status, c.Reason, c.Message)
		}
	}
	for _, cs := range p.Status.ContainerStatuses {
		switch {
		case cs.State.Waiting != nil:
			fmt.Fprintf(&b, " [%s waiting %s: %s]", cs.Name, cs.State.Waiting.Reason, cs.State.Waiting.Message)
		case cs.State.Running != nil:
			fmt.Fprintf(&b, " [%s running]", cs.Name)
		case cs.State.Terminated != nil:
			fmt.Fprintf(&b, " [%s terminated %s exit %d]", cs.Name, cs.State.Terminated.Reason, cs.State.Terminated.ExitCode)
		}
	}
	return b.String()
}

func describeCells(cells []*cloud.Instance) string {
	var parts []string
	for _, c := range cells {
		parts = append(parts, fmt.Sprintf("%s(%s %s %s/%s)", c.ID, c.State, c.PrivateIP, c.Tags[cloud.TagPodNamespace], c.Tags[cloud.TagPodName]))
	}
	return strings.Join(parts, ", ")
}

// Phase conditions for WaitForPod.
var (
	Running   = func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodRunning }
	Succeeded = func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodSucceeded }
	Failed    = func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodFailed }
	Finished  = func(p *corev1.Pod) bool { return Succeeded(p) || Failed(p) }
	Ready     = func(p *corev1.Pod) bool {
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodReady {
				return c.Status == corev1.ConditionTrue
			}
		}
		return false
	}
)
