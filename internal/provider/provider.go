// Package provider adapts virtual-kubelet to Kip's cells: it implements nodeutil.Provider and
// node.PodNotifier on top of the per-pod cell state machine (internal/cells), resolves what a
// pod needs from the API server (env, volumes, pull secrets) into a cellapi.PodRequest, and
// serves logs, stats and resource metrics from the cell agents. Errors handed back to
// virtual-kubelet carry its errdefs kinds (NotFound, InvalidInput).
package provider

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/virtual-kubelet/virtual-kubelet/errdefs"
	"github.com/virtual-kubelet/virtual-kubelet/node"
	"github.com/virtual-kubelet/virtual-kubelet/node/api"
	"github.com/virtual-kubelet/virtual-kubelet/node/nodeutil"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/utils/clock"
	"k8s.io/utils/ptr"

	"github.com/kip-dev/kip/internal/cellapi"
)

// Cells is what the provider needs from the cell state machine (*cells.Manager implements it).
type Cells interface {
	// CreatePod starts the pod's cell; it returns fast, the work is asynchronous.
	CreatePod(ctx context.Context, pod *corev1.Pod) error
	// UpdatePod hands a changed pod (labels, annotations, images, deletion) to its cell.
	UpdatePod(ctx context.Context, pod *corev1.Pod) error
	// DeletePod stops the pod gracefully and terminates its cell.
	DeletePod(ctx context.Context, pod *corev1.Pod) error
	// GetPod returns a copy of the pod with its current status.
	GetPod(namespace, name string) (*corev1.Pod, bool)
	// ListPods returns copies of every pod the manager knows.
	ListPods() []*corev1.Pod
	// NotifyPods registers f to be called with every pod status change.
	NotifyPods(f func(*corev1.Pod))
	// Agent returns a client of the pod's cell agent.
	Agent(namespace, name string) (cellapi.Agent, error)
}

// Config configures a Provider.
type Config struct {
	// NodeName is the virtual node's name.
	NodeName string
	// Cells runs the pods.
	Cells Cells
	// Clock defaults to the real clock.
	Clock clock.PassiveClock
	// StatsConcurrency bounds parallel agent calls for stats; default 8.
	StatsConcurrency int
	// Pods, when set, lets the provider finish deletions as kubelet does: once a pod marked for
	// deletion has no running container left, its API object is deleted (grace period 0, UID
	// precondition). Without it the pod object lingers until its grace period has passed.
	Pods corev1client.PodsGetter
	// Log defaults to slog.Default().
	Log *slog.Logger
}

// Provider implements nodeutil.Provider and node.PodNotifier.
type Provider struct {
	cfg   Config
	cells Cells
	clock clock.PassiveClock
	start time.Time

	mu sync.Mutex
	// deleting holds the UIDs of pods virtual-kubelet asked to delete; they no longer count as
	// running for /runningpods/ even while their cell drains.
	deleting map[types.UID]struct{}
	// cpu remembers the previous cumulative CPU reading per stats key, to report a rate.
	cpu map[string]cpuSample
	// finished holds the UIDs of deleted pods whose API object kip has removed (or is removing).
	finished map[types.UID]struct{}
	// pruneAt is the size of finished at which removeObject next forgets the UIDs of pods the
	// cells no longer know (pruneFinished), so that neither map grows with every pod ever run.
	pruneAt int
}

// minPruneAt is pruneAt's floor: below it, no pruning.
const minPruneAt = 1024

var (
	_ nodeutil.Provider = (*Provider)(nil)
	_ node.PodNotifier  = (*Provider)(nil)
)

// New returns a Provider over cfg.Cells.
func New(cfg Config) (*Provider, error) {
	if cfg.Cells == nil {
		return nil, fmt.Errorf("creating provider: Cells is required")
	}
	if cfg.NodeName == "" {
		return nil, fmt.Errorf("creating provider: NodeName is required")
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	if cfg.StatsConcurrency <= 0 {
		cfg.StatsConcurrency = 8
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	return &Provider{
		cfg:      cfg,
		cells:    cfg.Cells,
		clock:    cfg.Clock,
		start:    cfg.Clock.Now(),
		deleting: map[types.UID]struct{}{},
		cpu:      map[string]cpuSample{},
		finished: map[types.UID]struct{}{},
		pruneAt:  minPruneAt,
	}, nil
}

// CreatePod hands a new pod to its cell.
func (p *Provider) CreatePod(ctx context.Context, pod *corev1.Pod) error {
	if err := p.cells.CreatePod(ctx, pod); err != nil {
		return classify(fmt.Errorf("creating pod %s/%s: %w", pod.Namespace, pod.Name, err))
	}
	return nil
}

// UpdatePod hands a changed pod to its cell.
func (p *Provider) UpdatePod(ctx context.Context, pod *corev1.Pod) error {
	if err := p.cells.UpdatePod(ctx, pod); err != nil {
		return classify(fmt.Errorf("updating pod %s/%s: %w", pod.Namespace, pod.Name, err))
	}
	return nil
}

// DeletePod stops the pod (grace period from the pod) and terminates its cell. It may be called
// many times; a pod kip does not know is a NotFound error, as virtual-kubelet expects.
func (p *Provider) DeletePod(ctx context.Context, pod *corev1.Pod) error {
	if known, ok := p.cells.GetPod(pod.Namespace, pod.Name); !ok || known.UID != pod.UID {
		// Nothing runs for it here: like kubelet, let the API object go now rather than after
		// its grace period.
		if pod.DeletionTimestamp != nil {
			p.removeObject(ctx, pod)
		}
		return errdefs.NotFoundf("pod %s/%s is not known to kip", pod.Namespace, pod.Name)
	}
	p.mu.Lock()
	p.deleting[pod.UID] = struct{}{}
	p.mu.Unlock()
	if err := p.cells.DeletePod(ctx, pod); err != nil {
		return classify(fmt.Errorf("deleting pod %s/%s: %w", pod.Namespace, pod.Name, err))
	}
	return nil
}

// GetPod returns the pod with its current status, or a NotFound error.
func (p *Provider) GetPod(_ context.Context, namespace, name string) (*corev1.Pod, error) {
	pod, ok := p.cells.GetPod(namespace, name)
	if !ok {
		return nil, errdefs.NotFoundf("pod %s/%s is not known to kip", namespace, name)
	}
	return pod, nil
}

// GetPodStatus returns the pod's current status, or a NotFound error.
func (p *Provider) GetPodStatus(ctx context.Context, namespace, name string) (*corev1.PodStatus, error) {
	pod, err := p.GetPod(ctx, namespace, name)
	if err != nil {
		return nil, err
	}
	return pod.Status.DeepCopy(), nil
}

// GetPods returns every pod kip knows.
func (p *Provider) GetPods(context.Context) ([]*corev1.Pod, error) {
	return p.cells.ListPods(), nil
}

// RunningPods is what /runningpods/ serves, as kubelet does: the pods that have containers on
// a cell now. Pods being deleted and pods that never started a container (a mandatory Secret
// or ConfigMap is missing, the cell is still launching) are left out.
func (p *Provider) RunningPods(context.Context) ([]*corev1.Pod, error) {
	all := p.cells.ListPods()
	live := map[types.UID]bool{}
	out := make([]*corev1.Pod, 0, len(all))
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, pod := range all {
		live[pod.UID] = true
		if _, gone := p.deleting[pod.UID]; gone || pod.DeletionTimestamp != nil {
			continue
		}
		if !hasStartedContainer(pod) {
			continue
		}
		out = append(out, pod)
	}
	p.forget(live)
	return out, nil
}

// forget drops from deleting and finished the UIDs not in live. Call with p.mu held.
func (p *Provider) forget(live map[types.UID]bool) {
	for uid := range p.deleting {
		if !live[uid] {
			delete(p.deleting, uid)
		}
	}
	for uid := range p.finished {
		if !live[uid] {
			delete(p.finished, uid)
		}
	}
}

func hasStartedContainer(pod *corev1.Pod) bool {
	for _, list := range [][]corev1.ContainerStatus{pod.Status.InitContainerStatuses, pod.Status.ContainerStatuses} {
		for _, cs := range list {
			if cs.State.Running != nil || cs.State.Terminated != nil || cs.LastTerminationState.Terminated != nil {
				return true
			}
		}
	}
	return false
}

// NotifyPods registers virtual-kubelet's callback with the cells; every status change is
// pushed, nothing polls. A pushed status that shows a deleted pod's containers all stopped
// also finishes the deletion (see Config.Pods).
func (p *Provider) NotifyPods(ctx context.Context, f func(*corev1.Pod)) {
	p.cells.NotifyPods(func(pod *corev1.Pod) {
		f(pod)
		p.finishDeletion(ctx, pod)
	})
}

// finishDeletion removes the API object of a pod marked for deletion once none of its
// containers runs, as kubelet does after a graceful stop: virtual-kubelet itself only does so
// when the grace period has passed, which would hold every deleted pod (and a Deployment's
// rollout) for its full grace period even when its containers exit at once on SIGTERM.
func (p *Provider) finishDeletion(ctx context.Context, pod *corev1.Pod) {
	if pod.DeletionTimestamp == nil || anyRunning(pod) {
		return
	}
	p.removeObject(ctx, pod)
}

// removeObject deletes the pod's API object (grace period 0, UID precondition), once per UID.
func (p *Provider) removeObject(ctx context.Context, pod *corev1.Pod) {
	if p.cfg.Pods == nil {
		return
	}
	p.pruneFinished()
	p.mu.Lock()
	if _, done := p.finished[pod.UID]; done {
		p.mu.Unlock()
		return
	}
	p.finished[pod.UID] = struct{}{}
	p.mu.Unlock()
	ns, name, uid := pod.Namespace, pod.Name, pod.UID
	go func() {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		err := p.cfg.Pods.Pods(ns).Delete(ctx, name, metav1.DeleteOptions{
			GracePeriodSeconds: ptr.To[int64](0),
			Preconditions:      &metav1.Preconditions{UID: &uid},
		})
		switch {
		case err == nil:
			p.cfg.Log.Debug("deleted the pod object: its containers have stopped", "pod", ns+"/"+name)
		case apierrors.IsNotFound(err), apierrors.IsConflict(err):
			// Gone already, or a new pod of the same name: nothing to finish.
		default:
			p.cfg.Log.Warn("finishing the deletion of a stopped pod", "pod", ns+"/"+name, "err", err)
			p.mu.Lock()
			delete(p.finished, uid) // a later status push retries
			p.mu.Unlock()
		}
	}()
}

// pruneFinished forgets the UIDs in finished and deleting of pods the cells no longer know
// (their cells are gone: no status of theirs comes any more), once finished has reached
// pruneAt; pruneAt then doubles what is left, so the cost is constant per pod. The cells are
// listed without p.mu held: their notifications call in with their own locks held.
func (p *Provider) pruneFinished() {
	p.mu.Lock()
	due := len(p.finished) >= p.pruneAt
	p.mu.Unlock()
	if !due {
		return
	}
	live := map[types.UID]bool{}
	for _, pod := range p.cells.ListPods() {
		live[pod.UID] = true
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.forget(live)
	p.pruneAt = max(minPruneAt, 2*len(p.finished))
}

// anyRunning reports whether some (init) container of the pod is running.
func anyRunning(pod *corev1.Pod) bool {
	for _, list := range [][]corev1.ContainerStatus{pod.Status.InitContainerStatuses, pod.Status.ContainerStatuses} {
		for _, cs := range list {
			if cs.State.Running != nil {
				return true
			}
		}
	}
	return false
}

// GetContainerLogs streams a container's log from the pod's cell agent.
func (p *Provider) GetContainerLogs(ctx context.Context, namespace, podName, containerName string, opts api.ContainerLogOpts) (io.ReadCloser, error) {
	pod, ok := p.cells.GetPod(namespace, podName)
	if !ok {
		return nil, errdefs.NotFoundf("pod %s/%s is not known to kip", namespace, podName)
	}
	if !hasContainer(pod, containerName) {
		return nil, errdefs.NotFoundf("container %q is not in pod %s/%s", containerName, namespace, podName)
	}
	agent, err := p.cells.Agent(namespace, podName)
	if err != nil {
		return nil, classify(fmt.Errorf("reaching the cell of pod %s/%s: %w", namespace, podName, err))
	}
	lo := logOptions(opts)
	if zeroTail(ctx) {
		lo.TailLines = ptr.To[int64](0)
	}
	rc, err := agent.Logs(ctx, containerName, lo)
	if err != nil {
		// A completed pod's cell is terminated right after its logs are archived: a request
		// that reached the agent just before may find it gone, and the archive serves it.
		if archived := p.archivedAgent(namespace, podName, agent); archived != nil {
			rc, err = archived.Logs(ctx, containerName, lo)
		}
		if err != nil {
			return nil, classify(fmt.Errorf("reading logs of %s/%s/%s: %w", namespace, podName, containerName, err))
		}
		return rc, nil
	}
	return &archiveFallback{rc: rc, reopen: func() (io.ReadCloser, error) {
		archived := p.archivedAgent(namespace, podName, agent)
		if archived == nil {
			return nil, errNoArchive
		}
		return archived.Logs(ctx, containerName, lo)
	}}, nil
}

var errNoArchive = errors.New("no log archive")

// archivedAgent returns what now serves the pod's logs when it is no longer the agent the
// request used (the cell's archive), or nil.
func (p *Provider) archivedAgent(namespace, podName string, used cellapi.Agent) cellapi.Agent {
	now, err := p.cells.Agent(namespace, podName)
	if err != nil || now == used {
		return nil
	}
	return now
}

// archiveFallback reads a log stream from a cell's agent; if the stream fails before it
// delivered a byte (the cell was terminated under it), it reads the archive instead.
type archiveFallback struct {
	rc        io.ReadCloser
	reopen    func() (io.ReadCloser, error)
	delivered bool
}

func (a *archiveFallback) Read(b []byte) (int, error) {
	n, err := a.rc.Read(b)
	if n > 0 {
		a.delivered = true
	}
	if err != nil && err != io.EOF && !a.delivered {
		if rc, rerr := a.reopen(); rerr == nil {
			a.rc.Close()
			a.rc, a.delivered = rc, true
			return rc.Read(b)
		}
	}
	return n, err
}

func (a *archiveFallback) Close() error { return a.rc.Close() }

func hasContainer(pod *corev1.Pod, name string) bool {
	for _, c := range pod.Spec.InitContainers {
		if c.Name == name {
			return true
		}
	}
	for _, c := range pod.Spec.Containers {
		if c.Name == name {
			return true
		}
	}
	for _, c := range pod.Spec.EphemeralContainers {
		if c.Name == name {
			return true
		}
	}
	return false
}

// logOptions maps virtual-kubelet's parsed query onto the agent's options. Zero values mean
// "not set" in virtual-kubelet's struct (it cannot express tailLines=0: WithLogQuery does).
func logOptions(o api.ContainerLogOpts) cellapi.LogOptions {
	out := cellapi.LogOptions{Follow: o.Follow, Previous: o.Previous, Timestamps: o.Timestamps}
	if o.Tail > 0 {
		n := int64(o.Tail)
		out.TailLines = &n
	}
	if o.LimitBytes > 0 {
		n := int64(o.LimitBytes)
		out.LimitBytes = &n
	}
	if o.SinceSeconds > 0 {
		n := int64(o.SinceSeconds)
		out.SinceSeconds = &n
	}
	if !o.SinceTime.IsZero() {
		t := o.SinceTime
		out.SinceTime = &t
	}
	return out
}
