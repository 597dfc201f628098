// Package ephpush is the controller that starts the ephemeral containers added to running
// pods (kubectl debug, the pods/ephemeralcontainers subresource): when a running pod gains
// one, it resolves the pod's ephemeral containers (internal/podrequest: env, envFrom and
// $(VAR) as for ordinary containers) and puts the whole list to the pod's agent
// (cellapi.EphemeralRunner), which starts each one it has not seen once. It learns of new ones
// from the pod informer and checks every running pod on a resync, so a missed event or an
// adopted cell is caught up. Pushes are bounded-parallel with a deadline per call and retried
// with back-off; until references that cannot be resolved (a missing Secret) resolve, the
// containers wait with kubelet's CreateContainerConfigError (Cells.EphemeralWaiting) and a
// Warning Failed Event says why, once per error. An agent without the route (501) gets a
// Warning Event on the pod naming each ephemeral container it cannot run.
package ephpush

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/record"
	"k8s.io/utils/clock"

	"github.com/kip-dev/kip/internal/cellapi"
	"github.com/kip-dev/kip/internal/controllers/loop"
)

// ReasonEphemeralUnsupported is the Warning Event recorded on a pod whose cell's agent cannot
// run ephemeral containers.
const ReasonEphemeralUnsupported = "EphemeralContainersUnsupported"

// Cells is the view of the cells manager the controller needs; *cells.Manager implements it.
type Cells interface {
	// EachRunningPod calls visit for every pod that runs on a ready agent.
	EachRunningPod(visit func(namespace, name string, uid types.UID))
	// RunningPod returns a copy of the pod as kip knows it (its status has the pod IP) and its
	// agent, while it runs on a ready agent.
	RunningPod(namespace, name string) (*corev1.Pod, cellapi.Agent, bool)
	// EphemeralWaiting shows the named ephemeral containers of the pod (if its UID is uid)
	// waiting with reason and message until its agent reports them; "" clears them.
	EphemeralWaiting(namespace, name string, uid types.UID, names []string, reason, message string)
}

// ReasonConfigError is kubelet's waiting reason for a container whose configuration cannot
// be made: here, an ephemeral container whose references cannot be resolved.
const ReasonConfigError = "CreateContainerConfigError"

// Resolver resolves a pod's ephemeral containers; *podrequest.Resolver implements it.
type Resolver interface {
	EphemeralContainers(ctx context.Context, pod *corev1.Pod) ([]corev1.EphemeralContainer, error)
}

// LatestPod returns the pod informer's copy of a pod, which may be newer than the cells
// manager's; nil when unknown.
type LatestPod func(namespace, name string) *corev1.Pod

// Options tune the controller. Zero fields take defaults.
type Options struct {
	// Parallelism bounds the pods pushed at once (default 4).
	Parallelism int
	// CallTimeout bounds each resolution and each put (default 10 s).
	CallTimeout time.Duration
	// ResyncInterval is how often every running pod is checked (default 30 s).
	ResyncInterval time.Duration
	// MinRetry and MaxRetry bound the per-pod retry back-off (defaults 200 ms, 30 s).
	MinRetry, MaxRetry time.Duration
	// LatestPod, when set, supplies the pod's latest spec.ephemeralContainers.
	LatestPod LatestPod
	// Events receives the Warning Event for agents without the route; nil drops it.
	Events record.EventRecorder
	Clock  clock.WithTicker
	Log    *slog.Logger
}

// Controller pushes ephemeral containers. Make it with New, start it with Run, and feed it pod
// updates with PodChanged.
type Controller struct {
	opts     Options
	cells    Cells
	resolver Resolver
	log      *slog.Logger
	keys     *loop.Keys

	mu    sync.Mutex
	state map[string]*podState // by "namespace/name"
}

// podState is what the controller knows of one pod.
type podState struct {
	uid   types.UID
	agent cellapi.Agent
	// put names the ephemeral containers the agent acknowledged (or was warned about).
	put map[string]bool
	// failed is the last resolution error reported, so each one is recorded once.
	failed string
}

// New returns a controller; call Run to start it.
func New(opts Options, cells Cells, resolver Resolver) *Controller {
	if opts.Parallelism <= 0 {
		opts.Parallelism = 4
	}
	if opts.CallTimeout <= 0 {
		opts.CallTimeout = 10 * time.Second
	}
	if opts.ResyncInterval <= 0 {
		opts.ResyncInterval = 30 * time.Second
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	c := &Controller{
		opts: opts, cells: cells, resolver: resolver,
		log:   opts.Log.With("component", "ephpush"),
		state: map[string]*podState{},
	}
	c.keys = loop.NewKeys(loop.KeysOptions{
		Name:           "ephpush",
		Parallelism:    opts.Parallelism,
		ResyncInterval: opts.ResyncInterval,
		MinRetry:       opts.MinRetry,
		MaxRetry:       opts.MaxRetry,
		Resync:         c.enqueueAll,
		Sync:           c.sync,
		Retrying:       "starting a pod's ephemeral containers; retrying",
		Clock:          opts.Clock,
		Log:            c.log,
	})
	return c
}

// Run pushes until ctx ends.
func (c *Controller) Run(ctx context.Context) { c.keys.Run(ctx) }

// PodChanged queues a pod whose list of ephemeral containers grew.
func (c *Controller) PodChanged(old, cur *corev1.Pod) {
	if len(cur.Spec.EphemeralContainers) > len(old.Spec.EphemeralContainers) {
		c.keys.Add(cur.Namespace + "/" + cur.Name)
	}
}

// enqueueAll queues every running pod and forgets the pods that no longer run.
func (c *Controller) enqueueAll(add func(key string)) {
	running := map[string]types.UID{}
	c.cells.EachRunningPod(func(ns, name string, uid types.UID) { running[ns+"/"+name] = uid })
	c.mu.Lock()
	for k, st := range c.state {
		if uid, ok := running[k]; !ok || uid != st.uid {
			delete(c.state, k)
		}
	}
	c.mu.Unlock()
	for k := range running {
		add(k)
	}
}

// sync puts one pod's ephemeral containers to its agent when it has one the agent has not
// acknowledged.
func (c *Controller) sync(ctx context.Context, key string) error {
	ns, name, _ := strings.Cut(key, "/")
	pod, agent, ok := c.cells.RunningPod(ns, name)
	if !ok {
		return nil // the resync forgets it
	}
	if c.opts.LatestPod != nil {
		if latest := c.opts.LatestPod(ns, name); latest != nil && latest.UID == pod.UID &&
			len(latest.Spec.EphemeralContainers) > len(pod.Spec.EphemeralContainers) {
			pod.Spec.EphemeralContainers = latest.Spec.EphemeralContainers
		}
	}
	c.mu.Lock()
	st := c.state[key]
	if st == nil || st.uid != pod.UID || !cellapi.SameAgent(st.agent, agent) {
		// A new pod, or a new connection to its agent (an adopted cell): it may hold anything.
		st = &podState{uid: pod.UID, agent: agent, put: map[string]bool{}}
		c.state[key] = st
	}
	var missing []string
	for _, e := range pod.Spec.EphemeralContainers {
		if !st.put[e.Name] {
			missing = append(missing, e.Name)
		}
	}
	c.mu.Unlock()
	if len(missing) == 0 {
		return nil
	}
	runner, ok := agent.(cellapi.EphemeralRunner)
	if !ok {
		c.unsupported(pod, st, missing)
		return nil
	}
	rctx, cancel := context.WithTimeout(ctx, c.opts.CallTimeout)
	defer cancel()
	list, err := c.resolver.EphemeralContainers(rctx, pod)
	if err != nil {
		// As kubelet: the containers wait with CreateContainerConfigError, a Warning Event
		// says why, and the start is tried again.
		c.cells.EphemeralWaiting(ns, name, pod.UID, missing, ReasonConfigError, err.Error())
		c.mu.Lock()
		first := st.failed != err.Error()
		st.failed = err.Error()
		c.mu.Unlock()
		if first && c.opts.Events != nil {
			c.opts.Events.Eventf(pod, corev1.EventTypeWarning, "Failed", "Error: %v", err)
		}
		return fmt.Errorf("resolving ephemeral containers of pod %s: %w", key, err)
	}
	if _, err := runner.PutEphemeralContainers(rctx, &cellapi.EphemeralContainers{UID: string(pod.UID), Containers: list}); err != nil {
		if cellapi.KindOf(err) == cellapi.KindBadVersion {
			c.unsupported(pod, st, missing)
			return nil
		}
		return err
	}
	c.mu.Lock()
	for _, n := range missing {
		st.put[n] = true
	}
	failed := st.failed != ""
	st.failed = ""
	c.mu.Unlock()
	if failed {
		c.cells.EphemeralWaiting(ns, name, pod.UID, missing, "", "")
	}
	c.log.Info("ephemeral containers put", "pod", key, "containers", missing)
	return nil
}

// unsupported records, once per container, that the pod's agent cannot run it.
func (c *Controller) unsupported(pod *corev1.Pod, st *podState, names []string) {
	c.mu.Lock()
	for _, n := range names {
		st.put[n] = true
	}
	c.mu.Unlock()
	for _, n := range names {
		c.log.Warn("the agent cannot run ephemeral containers", "pod", pod.Namespace+"/"+pod.Name, "container", n)
		if c.opts.Events != nil {
			c.opts.Events.Eventf(pod, corev1.EventTypeWarning, ReasonEphemeralUnsupported,
				"Ephemeral container %q cannot start: the agent of this pod's cell predates ephemeral containers", n)
		}
	}
}
