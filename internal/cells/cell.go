package cells

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/types"

	"github.com/kip-dev/kip/internal/cellapi"
	"github.com/kip-dev/kip/internal/cloud"
	"github.com/kip-dev/kip/internal/logarchive"
	"github.com/kip-dev/kip/internal/podstatus"
	"github.com/kip-dev/kip/internal/selector"
)

// stage is where a cell's state machine is.
type stage int

const (
	stageLaunching stage = iota // choosing a type, launching
	stageBooting                // instance up, waiting for the agent
	stageReady                  // agent answered; putting the pod
	stageRunning                // pod put; streaming status
	stageStopping               // deleting or finishing
	stageDone                   // cell terminated; status final
)

// Pod and container reasons kip reports.
const (
	ReasonCellLaunching        = "CellLaunching"
	ReasonCellBooting          = "CellBooting"
	ReasonInsufficientCapacity = "InsufficientCapacity"
	// ReasonWaitingForCapacity is the Event of a pod waiting for capacity to come back.
	ReasonWaitingForCapacity = "WaitingForCapacity"
	ReasonNoInstanceType     = "NoInstanceType"
	ReasonInvalidAnnotation  = "InvalidAnnotation"
	ReasonInvalidSpec        = "InvalidSpec"
	ReasonCellUnhealthy      = "CellUnhealthy"
	ReasonCellLost           = "CellLost"
	reasonConfigError        = "CreateContainerConfigError"
)

// errDeleted ends a state machine whose pod was deleted; errClosed one whose manager closed.
var (
	errDeleted = errors.New("pod deleted")
	errClosed  = errors.New("manager closed")
)

// podFailure ends a state machine with the pod Failed for reason.
type podFailure struct {
	reason, message string
}

func (f *podFailure) Error() string { return f.reason + ": " + f.message }

func fail(reason, format string, args ...any) error {
	return &podFailure{reason: reason, message: fmt.Sprintf(format, args...)}
}

// cell is one pod's state machine. Fields below mu are guarded by Manager.mu.
type cell struct {
	m      *Manager
	key    string
	uid    types.UID
	cellID string
	log    *slog.Logger

	// notifyMu orders this pod's notifications: it is held from computing its status to
	// delivering it, so the callback never sees an older status after a newer one. It is the
	// pod's own, so one pod's slow delivery never holds up another's (with one lock for all
	// pods, 10,000 pods' statuses queued behind it: docs/design/scale.md). Taken before m.mu.
	notifyMu sync.Mutex

	// ops is canceled when the pod is deleted or the manager closes; it bounds agent calls.
	ops       context.Context
	cancelOps context.CancelFunc
	delOnce   sync.Once
	deleted   chan struct{}
	// finished is closed when the state machine has ended (the cell is gone).
	finished chan struct{}
	// lost is closed by the sweep when the cell's instance is gone or its agent has been
	// unreachable past the healthy timeout; lostMsg says which.
	lostOnce sync.Once
	lost     chan struct{}
	lostMsg  string

	// Guarded by m.mu.
	pod         *corev1.Pod // latest spec and metadata; Status is what kip reports
	stage       stage
	grace       time.Duration
	inst        *cloud.Instance
	cand        selector.Candidate
	agent       cellapi.Agent
	agentStatus *cellapi.PodStatus
	waitReason  string // pod-level reason while no agent status is known
	waitMessage string
	// waitOnContainers says waitReason is a container's waiting reason (kubelet's), not
	// the pod's.
	waitOnContainers bool
	// ephWaiting is why ephemeral containers could not be given to the agent yet, by name
	// (podstatus.Input.EphemeralWaiting).
	ephWaiting map[string]corev1.ContainerStateWaiting
	failure    *podFailure
	// killed is why the pod is being stopped without being deleted (its active deadline
	// passed): it ends Failed with that reason once its containers stopped.
	killed *podFailure
	// spotNotice is the spot interruption notice the agent reported, once handled
	// (spotInterrupted).
	spotNotice *cellapi.SpotInterruption
	// userDeleted is set when the stop was asked by a deletion of the pod.
	userDeleted bool
	// specChanged is closed (and replaced) by every spec update.
	specChanged chan struct{}
	// warmPool is the standby pool the cell was taken from while its pod has not started
	// (releaseWarm); nil otherwise.
	warmPool *poolKey
	// warmBound says the cell is a standby cell bound to the pod, whose agent answered as the
	// bind began.
	warmBound bool
	// deadlineWatched says watchDeadline runs (or ran) for the pod: only a pod with
	// spec.activeDeadlineSeconds has a deadline goroutine.
	deadlineWatched bool
	stopped         bool // containers stopped by deletion: the status is final
	archive         *logarchive.Archive
	timing          Timing
	events          podstatus.Events
	healthyAfter    time.Duration
	// lostAfter is the pod's lost-timeout annotation (0: none). lastHeard is when the agent
	// last spoke; silent, while not empty, says why the pod is NotReady (the agent has been
	// silent since silentSince). See liveness.go.
	lostAfter   time.Duration
	lastHeard   time.Time
	silent      string
	silentSince time.Time
	// agentEventID is the last of the agent's events recorded; adopted says the cell was
	// adopted and its first status's events were recorded by an earlier kip.
	agentEventID uint64
	adopted      bool
}

func (m *Manager) newCell(pod *corev1.Pod) *cell {
	ops, cancel := context.WithCancel(m.ctx)
	c := &cell{
		m:         m,
		key:       podKey(pod.Namespace, pod.Name),
		uid:       pod.UID,
		cellID:    CellID(pod.UID),
		ops:       ops,
		cancelOps: cancel,
		deleted:   make(chan struct{}),
		finished:  make(chan struct{}),
		lost:      make(chan struct{}),
		pod:       pod.DeepCopy(),
		stage:     stageLaunching,

		specChanged: make(chan struct{}),
	}
	c.log = m.log.With("pod", c.key, "cell", c.cellID)
	c.timing = Timing{Namespace: pod.Namespace, Name: pod.Name, UID: pod.UID, CellID: c.cellID, Created: m.clock.Now()}
	for _, cond := range pod.Status.Conditions {
		if cond.Type == corev1.PodScheduled && cond.Status == corev1.ConditionTrue {
			c.timing.Scheduled = cond.LastTransitionTime.Time
		}
	}
	return c
}

// CellID derives a pod's cell id from its UID: "c-" and the first 12 hex digits.
func CellID(uid types.UID) string {
	s := strings.ReplaceAll(strings.ToLower(string(uid)), "-", "")
	if len(s) > 12 {
		s = s[:12]
	}
	return "c-" + s
}

// updateSpec takes a new version of the pod, keeping kip's status. m.mu must be held.
func (c *cell) updateSpec(pod *corev1.Pod) {
	status := c.pod.Status
	c.pod = pod.DeepCopy()
	c.pod.Status = status
	close(c.specChanged)
	c.specChanged = make(chan struct{})
	c.watchDeadlineIfSet()
}

// snapshot returns a copy of the pod with its status. m.mu must be held.
func (c *cell) snapshot() *corev1.Pod { return c.pod.DeepCopy() }

// requestDelete asks the state machine to stop the pod with the given grace period.
func (c *cell) requestDelete(grace time.Duration) {
	c.m.mu.Lock()
	if c.stage != stageDone {
		c.grace = grace
	}
	c.userDeleted = true
	c.m.mu.Unlock()
	c.requestStop()
}

// kill asks the state machine to stop the pod's containers with the given grace period and
// end it Failed with f, as kubelet kills a pod past its active deadline. The pod is not
// deleted: it stays, Failed, with its logs.
func (c *cell) kill(f *podFailure, grace time.Duration) {
	c.m.mu.Lock()
	if c.stage == stageDone || c.killed != nil || c.userDeleted {
		c.m.mu.Unlock()
		return
	}
	c.killed, c.grace = f, grace
	c.m.mu.Unlock()
	c.requestStop()
}

// requestStop wakes every wait of the state machine (a deletion or a kill).
func (c *cell) requestStop() {
	c.delOnce.Do(func() {
		close(c.deleted)
		c.cancelOps()
	})
}

func (c *cell) isFinished() bool {
	select {
	case <-c.finished:
		return true
	default:
		return false
	}
}

func (c *cell) isDeleted() bool {
	select {
	case <-c.deleted:
		return true
	default:
		return false
	}
}

// interrupted says why the state machine must stop waiting, or nil.
func (c *cell) interrupted() error {
	if c.isDeleted() {
		return errDeleted
	}
	if c.m.ctx.Err() != nil {
		return errClosed
	}
	return nil
}

// sleep waits d on the manager's clock, or until the pod is deleted or the manager closes.
func (c *cell) sleep(d time.Duration) error {
	t := c.m.clock.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C():
		return nil
	case <-c.deleted:
		return errDeleted
	case <-c.m.ctx.Done():
		return errClosed
	}
}

// setWaiting sets the pod-level reason shown while no agent status is known. m.mu held.
func (c *cell) setWaiting(reason, message string) {
	c.waitReason, c.waitMessage, c.waitOnContainers = reason, message, false
}

// setContainersWaiting sets kubelet's waiting reason of the containers kip cannot start
// while no agent status is known (podstatus.Input.ContainerReason). m.mu held.
func (c *cell) setContainersWaiting(reason, message string) {
	c.waitReason, c.waitMessage, c.waitOnContainers = reason, message, true
}

// publish recomputes the pod's status and notifies it when it changed.
func (c *cell) publish() {
	c.notifyMu.Lock()
	defer c.notifyMu.Unlock()
	c.m.mu.Lock()
	prev := c.pod.Status
	c.pod.Status = podstatus.Build(c.statusInput())
	changed := !apiequality.Semantic.DeepEqual(prev, c.pod.Status)
	pod := c.pod.DeepCopy()
	notify := c.m.notify
	c.m.mu.Unlock()
	if changed && notify != nil {
		notify(pod)
	}
}

// hostIP is the pod's status.hostIP: the node's address, except that a hostNetwork pod's
// host is its cell (one pod owns its cell, so the cell's network is the pod's host network),
// so pod IP = host IP = the cell's address, as kubelet reports a hostNetwork pod's pod IP as
// its node's. m.mu must be held.
func (c *cell) hostIP() string {
	if c.pod.Spec.HostNetwork && c.inst != nil && c.inst.PrivateIP != "" {
		return c.inst.PrivateIP
	}
	return c.m.node.HostIP
}

// statusInput gathers what podstatus.Build needs. m.mu must be held.
func (c *cell) statusInput() podstatus.Input {
	in := podstatus.Input{
		Pod:       c.pod,
		Now:       c.m.clock.Now(),
		HostIP:    c.hostIP(),
		Agent:     c.agentStatus,
		Message:   c.waitMessage,
		Stopped:   c.stopped,
		CellReady: c.stage >= stageReady && c.stage < stageDone,

		EphemeralWaiting: c.ephWaiting,
	}
	if c.waitOnContainers {
		in.ContainerReason = c.waitReason
	} else {
		in.Reason = c.waitReason
	}
	if c.stage < stageStopping {
		in.Unreachable = c.silent
	}
	if c.failure != nil {
		in.Failure = &podstatus.Failure{Reason: c.failure.reason, Message: c.failure.message}
	}
	if c.inst != nil {
		in.PodIP = c.inst.PrivateIP
	}
	return in
}

// observe hands the pod's timing to Deps.Observe after it reached a new phase.
func (c *cell) observe() {
	if c.m.deps.Observe == nil {
		return
	}
	c.m.mu.Lock()
	t := c.timing
	c.m.mu.Unlock()
	c.m.deps.Observe(t)
}

// run is the state machine. adopt is the instance of a recovered cell, nil for a new pod.
func (c *cell) run(adopt *cloud.Instance) {
	err := c.bringUp(adopt)
	if err == nil {
		err = c.watch()
	}
	c.finish(err)
}

// bringUp launches the cell (unless adopted), waits for its agent and puts the pod.
func (c *cell) bringUp(adopt *cloud.Instance) error {
	inst := adopt
	var err error
	t0 := c.m.clock.Now()
	// A new cell's request (its service account tokens and the like, API calls) is resolved
	// while the cell is chosen, launched or bound, and boots: from the moment the pod is
	// admitted.
	var ahead <-chan resolved
	switch {
	case adopt == nil:
		inst, err = c.launch(func() { ahead = c.resolveAhead() })
	case adopt.State == cloud.StatePending:
		inst, err = c.resumeLaunch(adopt)
	}
	if err != nil {
		return err
	}
	if err := c.interrupted(); err != nil {
		return err
	}
	c.m.mu.Lock()
	c.stage = stageBooting
	if c.agentStatus == nil && adopt == nil {
		c.setWaiting(ReasonCellBooting, fmt.Sprintf("cell %s (%s) is booting", c.cellID, inst.InstanceType))
	}
	c.m.mu.Unlock()
	if adopt == nil {
		c.publish()
	}
	c.mirror(PhaseBooting)

	inst, err = c.waitRunning(inst)
	if err != nil {
		return err
	}
	// A new cell that never answers is unhealthy; an adopted one that stopped answering is lost.
	reason := ReasonCellUnhealthy
	if adopt != nil {
		reason = ReasonCellLost
	}
	// A bound standby cell's agent answered as the bind began: it is not asked again.
	c.m.mu.Lock()
	agent, bound := c.agent, c.warmBound
	c.m.mu.Unlock()
	if bound {
		c.heard()
	} else if agent, err = c.connect(inst, reason); err != nil {
		return err
	}
	c.m.mu.Lock()
	c.agent = agent
	c.stage = stageReady
	c.timing.AgentReady = c.m.clock.Now()
	pod := c.pod
	c.m.mu.Unlock()
	c.observe()
	c.m.event(pod, corev1.EventTypeNormal, "CellReady", "Cell %s agent is ready at %s", c.cellID, inst.PrivateIP)
	c.mirror(PhaseReady)
	t1 := c.m.clock.Now()
	c.syncServices(agent)
	t2 := c.m.clock.Now()
	err = c.ensurePut(agent, ahead)
	c.log.Debug("brought the pod up", "err", err, "toAgentReady", t1.Sub(t0), "services", t2.Sub(t1), "put", c.m.clock.Since(t2))
	return err
}

// syncServices gives the agent the cluster's Services before its pod is put (Deps.Services).
func (c *cell) syncServices(agent cellapi.Agent) {
	if c.m.deps.Services == nil {
		return
	}
	if err := c.m.deps.Services.Sync(c.ops, c.cellID, agent); err != nil {
		c.log.Warn("the cell's Services were not programmed before its pod; they will be retried", "err", err)
	}
}
