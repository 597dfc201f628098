package cells

import (
	"context"
	"encoding/json"
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
	"github.com/kip-dev/kip/internal/instancetype"
	"github.com/kip-dev/kip/internal/pki"
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
	ReasonNoInstanceType       = "NoInstanceType"
	ReasonInvalidAnnotation    = "InvalidAnnotation"
	ReasonInvalidSpec          = "InvalidSpec"
	ReasonCellUnhealthy        = "CellUnhealthy"
	ReasonCellLost             = "CellLost"
	reasonContainerCreating    = "ContainerCreating"
	reasonPodInitializing      = "PodInitializing"
	reasonConfigError          = "CreateContainerConfigError"
	reasonStatusUnknown        = "ContainerStatusUnknown"
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

	// ops is canceled when the pod is deleted or the manager closes; it bounds agent calls.
	ops       context.Context
	cancelOps context.CancelFunc
	delOnce   sync.Once
	deleted   chan struct{}
	// lost is closed by the sweep when the cell's instance is gone or its agent has been
	// unreachable past the healthy timeout; lostMsg says which.
	lostOnce sync.Once
	lost     chan struct{}
	lostMsg  string

	// Guarded by m.mu.
	pod          *corev1.Pod // latest spec and metadata; Status is what kip reports
	stage        stage
	grace        time.Duration
	inst         *cloud.Instance
	cand         Candidate
	agent        cellapi.Agent
	agentStatus  *cellapi.PodStatus
	waitReason   string // pod-level reason while no agent status is known
	waitMessage  string
	failure      *podFailure
	stopped      bool // containers stopped by deletion: the status is final
	archive      *archivedAgent
	timing       Timing
	events       eventState
	healthyAfter time.Duration
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
		lost:      make(chan struct{}),
		pod:       pod.DeepCopy(),
		stage:     stageLaunching,
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

// clientToken derives the launch idempotency token from the pod UID and the instance type,
// so a retried launch (even from a restarted kip) returns the same instance. At most 64
// characters, as EC2 requires.
func clientToken(uid types.UID, instanceType string) string {
	t := strings.ReplaceAll(string(uid), "-", "") + "-" + instanceType
	if len(t) > 64 {
		t = t[:64]
	}
	return t
}

// updateSpec takes a new version of the pod, keeping kip's status. m.mu must be held.
func (c *cell) updateSpec(pod *corev1.Pod) {
	status := c.pod.Status
	c.pod = pod.DeepCopy()
	c.pod.Status = status
}

// snapshot returns a copy of the pod with its status. m.mu must be held.
func (c *cell) snapshot() *corev1.Pod { return c.pod.DeepCopy() }

// requestDelete asks the state machine to stop the pod with the given grace period.
func (c *cell) requestDelete(grace time.Duration) {
	c.m.mu.Lock()
	if c.stage != stageDone {
		c.grace = grace
	}
	c.m.mu.Unlock()
	c.delOnce.Do(func() {
		close(c.deleted)
		c.cancelOps()
	})
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
	c.waitReason, c.waitMessage = reason, message
}

// publish recomputes the pod's status and notifies it when it changed.
func (c *cell) publish() {
	c.m.notifyMu.Lock()
	defer c.m.notifyMu.Unlock()
	c.m.mu.Lock()
	prev := c.pod.Status
	c.pod.Status = buildStatus(c.statusInput())
	changed := !apiequality.Semantic.DeepEqual(prev, c.pod.Status)
	pod := c.pod.DeepCopy()
	notify := c.m.notify
	c.m.mu.Unlock()
	if changed && notify != nil {
		notify(pod)
	}
}

// statusInput gathers what buildStatus needs. m.mu must be held.
func (c *cell) statusInput() statusInput {
	in := statusInput{
		pod:       c.pod,
		now:       c.m.clock.Now(),
		hostIP:    c.m.node.HostIP,
		agent:     c.agentStatus,
		reason:    c.waitReason,
		message:   c.waitMessage,
		failure:   c.failure,
		stopped:   c.stopped,
		cellReady: c.stage >= stageReady && c.stage < stageDone,
	}
	if c.inst != nil {
		in.podIP = c.inst.PrivateIP
	}
	return in
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
	if inst == nil {
		var err error
		if inst, err = c.launch(); err != nil {
			return err
		}
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

	inst, err := c.waitRunning(inst)
	if err != nil {
		return err
	}
	// A new cell that never answers is unhealthy; an adopted one that stopped answering is lost.
	reason := ReasonCellUnhealthy
	if adopt != nil {
		reason = ReasonCellLost
	}
	agent, err := c.connect(inst, reason)
	if err != nil {
		return err
	}
	c.m.mu.Lock()
	c.agent = agent
	c.stage = stageReady
	c.timing.AgentReady = c.m.clock.Now()
	pod := c.pod
	c.m.mu.Unlock()
	c.m.event(pod, corev1.EventTypeNormal, "CellReady", "Cell %s agent is ready at %s", c.cellID, inst.PrivateIP)
	c.mirror(PhaseReady)
	return c.ensurePut(agent)
}

// launch selects an instance type and launches the cell, falling back to the next candidate
// on capacity errors.
func (c *cell) launch() (*cloud.Instance, error) {
	c.m.mu.Lock()
	pod := c.pod.DeepCopy()
	c.m.mu.Unlock()

	opts, err := parseAnnotations(pod)
	if err != nil {
		return nil, fail(ReasonInvalidAnnotation, "%v", err)
	}
	c.m.mu.Lock()
	c.healthyAfter = opts.HealthyTimeout
	c.m.mu.Unlock()

	bo := newBackoff(time.Second, time.Minute)
	for {
		cands, err := c.candidates(pod)
		if err != nil {
			return nil, err
		}
		inst, err := c.launchAny(pod, cands, opts)
		if inst != nil || err != nil {
			return inst, err
		}
		// Every candidate lacked capacity: wait and choose again.
		c.m.mu.Lock()
		c.setWaiting(ReasonInsufficientCapacity, fmt.Sprintf("no capacity for any instance type that fits; retrying (tried %s)", candNames(cands)))
		c.m.mu.Unlock()
		c.publish()
		if err := c.sleep(bo.next()); err != nil {
			return nil, err
		}
	}
}

// candidates asks the selector, ordering recently capacity-starved types last.
func (c *cell) candidates(pod *corev1.Pod) ([]Candidate, error) {
	m := c.m
	bo := newBackoff(time.Second, 30*time.Second)
	for {
		types, err := m.deps.Cloud.InstanceTypes(c.ops)
		if err == nil {
			if m.deps.Select == nil {
				return nil, fail(ReasonNoInstanceType, "no instance type selector configured")
			}
			choice, err := m.deps.Select(pod, types)
			if err != nil {
				return nil, fail(selectReason(err), "%v", err)
			}
			if choice == nil {
				return nil, fail(ReasonNoInstanceType, "no instance type fits the pod")
			}
			first := Candidate{Type: choice.Type, Offering: choice.Offering}
			return m.capacity.order(append([]Candidate{first}, choice.Fallbacks...)), nil
		}
		if ierr := c.interrupted(); ierr != nil {
			return nil, ierr
		}
		c.log.Warn("listing instance types", "err", err)
		if err := c.sleep(bo.next()); err != nil {
			return nil, err
		}
	}
}

// selectReason classifies a selector error into the pod's failure reason.
func selectReason(err error) string {
	switch {
	case selector.IsBadAnnotation(err):
		return ReasonInvalidAnnotation
	case selector.IsBadPod(err):
		return ReasonInvalidSpec
	}
	return ReasonNoInstanceType
}

// launchAny tries each candidate in turn. It returns (nil, nil) when all lacked capacity.
func (c *cell) launchAny(pod *corev1.Pod, cands []Candidate, opts podOptions) (*cloud.Instance, error) {
	m := c.m
	for i, cand := range cands {
		if i == 0 || c.cand.Type.Name != cand.Type.Name {
			m.event(pod, corev1.EventTypeNormal, "InstanceTypeSelected", "Selected instance type %s (%s, $%.4f/h)", cand.Type.Name, market(cand.Offering), cand.Offering.Price)
		}
		c.m.mu.Lock()
		c.cand = cand
		c.timing.InstanceType = cand.Type.Name
		c.m.mu.Unlock()
		inst, err := c.launchOne(pod, cand, opts)
		switch {
		case err == nil:
			return inst, nil
		case cloud.IsInsufficientCapacity(err):
			m.capacity.remember(cand)
			m.event(pod, corev1.EventTypeWarning, ReasonInsufficientCapacity, "No capacity for %s (%s): %v", cand.Type.Name, market(cand.Offering), err)
			if ierr := c.interrupted(); ierr != nil {
				return nil, ierr
			}
			continue
		case cloud.IsInvalidSpec(err):
			return nil, fail(ReasonInvalidSpec, "the cloud refused the cell: %v", err)
		default:
			return nil, err // interrupted
		}
	}
	return nil, nil
}

// launchOne launches one candidate, retrying transient errors with back-off. The launch call
// itself is never canceled by a deletion, so an instance it makes is always known and
// terminated.
func (c *cell) launchOne(pod *corev1.Pod, cand Candidate, opts podOptions) (*cloud.Instance, error) {
	m := c.m
	boot, err := m.bootstrap(c.cellID)
	if err != nil {
		return nil, fail(ReasonInvalidSpec, "making the cell's bootstrap data: %v", err)
	}
	spec := cloud.LaunchSpec{
		CellID:          c.cellID,
		ClientToken:     clientToken(c.uid, cand.Type.Name),
		InstanceType:    cand.Type.Name,
		Spot:            cand.Offering.Spot,
		Zone:            cand.Offering.Zone,
		Tags:            m.tags(pod, c.cellID),
		BootstrapData:   boot,
		SecurityGroups:  opts.SecurityGroups,
		InstanceProfile: opts.InstanceProfile,
		VolumeSizeGiB:   opts.VolumeSizeGiB,
		PrivateIPOnly:   opts.PrivateIPOnly,
	}
	bo := newBackoff(500*time.Millisecond, 30*time.Second)
	for {
		select {
		case m.launchSem <- struct{}{}:
		case <-c.deleted:
			return nil, errDeleted
		case <-m.ctx.Done():
			return nil, errClosed
		}
		inst, err := m.deps.Cloud.Launch(m.ctx, spec)
		<-m.launchSem
		if err == nil {
			now := m.clock.Now()
			c.m.mu.Lock()
			c.inst = inst
			c.timing.Launched = now
			c.m.mu.Unlock()
			m.event(pod, corev1.EventTypeNormal, "CellLaunched", "Launched cell %s: instance %s (%s) at %s", c.cellID, inst.ID, inst.InstanceType, orNone(inst.PrivateIP))
			c.mirror(PhaseLaunching)
			return inst, nil
		}
		if cloud.IsInsufficientCapacity(err) || cloud.IsInvalidSpec(err) {
			return nil, err
		}
		if m.ctx.Err() != nil {
			return nil, errClosed
		}
		m.event(pod, corev1.EventTypeWarning, "LaunchFailed", "Launching cell %s (%s) failed, retrying: %v", c.cellID, cand.Type.Name, err)
		if err := c.sleep(bo.next()); err != nil {
			return nil, err
		}
	}
}

// waitRunning describes a pending instance with back-off until it runs with an address.
func (c *cell) waitRunning(inst *cloud.Instance) (*cloud.Instance, error) {
	m := c.m
	start := m.clock.Now()
	bo := newBackoff(200*time.Millisecond, 5*time.Second)
	for inst.State != cloud.StateRunning || inst.PrivateIP == "" {
		switch inst.State {
		case cloud.StateTerminated, cloud.StateTerminating:
			return nil, fail(ReasonCellLost, "cell %s (instance %s) was terminated while booting", c.cellID, inst.ID)
		}
		if m.clock.Since(start) > c.healthyTimeout() {
			return nil, fail(ReasonCellUnhealthy, "cell %s (instance %s) did not start within %s", c.cellID, inst.ID, c.healthyTimeout())
		}
		if err := c.sleep(bo.next()); err != nil {
			return nil, err
		}
		got, err := m.deps.Cloud.Describe(c.ops, inst.ID)
		switch {
		case cloud.IsNotFound(err):
			return nil, fail(ReasonCellLost, "cell %s (instance %s) disappeared while booting", c.cellID, inst.ID)
		case err != nil:
			if ierr := c.interrupted(); ierr != nil {
				return nil, ierr
			}
			c.log.Warn("describing instance", "instance", inst.ID, "err", err)
			continue
		}
		inst = got
		c.m.mu.Lock()
		c.inst = inst
		c.m.mu.Unlock()
	}
	return inst, nil
}

func (c *cell) healthyTimeout() time.Duration {
	c.m.mu.Lock()
	defer c.m.mu.Unlock()
	if c.healthyAfter > 0 {
		return c.healthyAfter
	}
	return c.m.cfg.HealthyTimeout.Duration
}

// connect dials the agent and waits, with back-off, until it answers Health, for at most
// the healthy timeout; past it the pod fails with reason.
func (c *cell) connect(inst *cloud.Instance, reason string) (cellapi.Agent, error) {
	m := c.m
	c.m.mu.Lock()
	agent := c.agent
	c.m.mu.Unlock()
	start := m.clock.Now()
	timeout := c.healthyTimeout()
	bo := newBackoff(20*time.Millisecond, 500*time.Millisecond)
	var lastErr error
	for {
		if agent == nil {
			var err error
			agent, err = m.dial(c.ops, inst, c.cellID)
			if err != nil {
				lastErr = err
			}
		}
		if agent != nil {
			ctx, cancel := context.WithTimeout(c.ops, 5*time.Second)
			h, err := agent.Health(ctx)
			cancel()
			switch {
			case err == nil && h.CellID != "" && h.CellID != c.cellID:
				lastErr = fmt.Errorf("agent answers as cell %q", h.CellID)
			case err == nil:
				return agent, nil
			default:
				lastErr = err
			}
		}
		if err := c.interrupted(); err != nil {
			return nil, err
		}
		if reason == ReasonCellLost {
			// A running cell stopped answering: if the cloud says it is gone, fail now.
			got, err := m.deps.Cloud.Describe(c.ops, inst.ID)
			if cloud.IsNotFound(err) || (err == nil && (got.State == cloud.StateTerminated || got.State == cloud.StateTerminating)) {
				return nil, fail(ReasonCellLost, "cell %s (instance %s) is gone", c.cellID, inst.ID)
			}
		}
		if m.clock.Since(start) >= timeout {
			what := "did not become healthy"
			if reason == ReasonCellLost {
				what = "stopped answering"
			}
			return nil, fail(reason, "cell %s agent at %s %s within %s: %v", c.cellID, inst.PrivateIP, what, timeout, lastErr)
		}
		if err := c.sleep(bo.next()); err != nil {
			return nil, err
		}
	}
}

// ensurePut puts the pod on the agent unless the agent already runs it.
func (c *cell) ensurePut(agent cellapi.Agent) error {
	m := c.m
	if st, err := agent.GetPod(c.ops); err == nil && st.UID == string(c.uid) {
		c.apply(st)
		return nil
	}
	bo := newBackoff(500*time.Millisecond, 30*time.Second)
	for {
		c.m.mu.Lock()
		pod := c.pod.DeepCopy()
		if c.inst != nil {
			pod.Status.PodIP = c.inst.PrivateIP
			pod.Status.PodIPs = []corev1.PodIP{{IP: c.inst.PrivateIP}}
		}
		pod.Status.HostIP = m.node.HostIP
		c.m.mu.Unlock()

		req, err := c.resolve(pod)
		if err == nil {
			var st *cellapi.PodStatus
			st, err = agent.PutPod(c.ops, req)
			if err == nil {
				c.m.mu.Lock()
				c.stage = stageRunning
				c.m.mu.Unlock()
				c.apply(st)
				return nil
			}
			if cellapi.IsInvalid(err) {
				return fail(ReasonInvalidSpec, "the cell agent refused the pod: %v", err)
			}
			if cellapi.IsConflict(err) {
				return fail(ReasonCellLost, "cell %s runs another pod: %v", c.cellID, err)
			}
			m.event(pod, corev1.EventTypeWarning, "Failed", "Putting the pod on cell %s: %v", c.cellID, err)
		} else {
			c.m.mu.Lock()
			c.setWaiting(reasonConfigError, err.Error())
			c.m.mu.Unlock()
			c.publish()
			m.event(pod, corev1.EventTypeWarning, "Failed", "Error: %v", err)
		}
		if ierr := c.interrupted(); ierr != nil {
			return ierr
		}
		if err := c.sleep(bo.next()); err != nil {
			return err
		}
	}
}

func (c *cell) resolve(pod *corev1.Pod) (*cellapi.PodRequest, error) {
	if c.m.deps.Resolve == nil {
		return &cellapi.PodRequest{Pod: pod}, nil
	}
	req, err := c.m.deps.Resolve(c.ops, pod)
	if err != nil {
		return nil, err
	}
	if req == nil {
		req = &cellapi.PodRequest{}
	}
	if req.Pod == nil {
		req.Pod = pod
	}
	return req, nil
}

// watch streams the agent's status into the pod until the pod completes (nil), is deleted,
// or its cell is lost. A dropped stream is reopened; an agent that stays unreachable past
// the healthy timeout fails the pod.
func (c *cell) watch() error {
	for {
		c.m.mu.Lock()
		agent, inst := c.agent, c.inst
		c.m.mu.Unlock()
		sctx, cancel := context.WithCancel(c.ops)
		ch, err := agent.WatchPod(sctx)
		if err == nil {
			done := c.consume(ch)
			cancel()
			if done {
				return nil
			}
		} else {
			cancel()
		}
		if err := c.interrupted(); err != nil {
			return err
		}
		if c.isLost() {
			return fail(ReasonCellLost, "%s", c.lostMsg)
		}
		c.log.Info("agent status stream ended; reconnecting", "err", err)
		if _, err := c.connect(inst, ReasonCellLost); err != nil {
			return err
		}
		if err := c.ensurePut(agent); err != nil {
			return err
		}
		if c.final() {
			return nil
		}
	}
}

// consume applies statuses from one stream; it reports whether the pod reached a final phase.
func (c *cell) consume(ch <-chan *cellapi.PodStatus) bool {
	for {
		select {
		case st, ok := <-ch:
			if !ok {
				return false
			}
			c.apply(st)
			if c.final() {
				return true
			}
		case <-c.ops.Done():
			return false
		case <-c.lost:
			return false
		}
	}
}

// markLost tells the state machine its cell is lost, and why.
func (c *cell) markLost(msg string) {
	c.lostOnce.Do(func() {
		c.lostMsg = msg
		close(c.lost)
	})
}

func (c *cell) isLost() bool {
	select {
	case <-c.lost:
		return true
	default:
		return false
	}
}

// final reports whether the agent's last status is a terminal phase.
func (c *cell) final() bool {
	c.m.mu.Lock()
	defer c.m.mu.Unlock()
	return c.agentStatus != nil && isTerminal(c.agentStatus.Phase)
}

// apply takes one status from the agent: it updates the pod's status, records timings and
// emits the events the change implies.
func (c *cell) apply(st *cellapi.PodStatus) {
	if st == nil || st.UID != string(c.uid) {
		return
	}
	m := c.m
	now := m.clock.Now()
	c.m.mu.Lock()
	prev := c.agentStatus
	if prev != nil && st.Seq != 0 && st.Seq < prev.Seq && st.StartTime.Equal(prev.StartTime) {
		c.m.mu.Unlock()
		return // stale
	}
	c.agentStatus = st
	c.waitReason, c.waitMessage = "", ""
	if c.timing.Pulled.IsZero() && allPulled(c.pod, st) {
		c.timing.Pulled = now
	}
	if c.timing.Started.IsZero() && allStarted(c.pod, st) {
		c.timing.Started = now
	}
	evs := c.events.diff(c.pod, prev, st)
	pod := c.pod
	c.m.mu.Unlock()
	for _, e := range evs {
		m.event(pod, e.typ, e.reason, "%s", e.message)
	}
	c.publish()
}

// finish ends the state machine: it stops the containers of a deleted pod, saves the logs
// of a completed one, terminates the cell and publishes the final status.
func (c *cell) finish(err error) {
	m := c.m
	if errors.Is(err, errClosed) || (err != nil && m.ctx.Err() != nil && !c.isDeleted()) {
		return // kip is shutting down: the cell keeps running for the next kip to adopt
	}
	var failure *podFailure
	deleted := errors.Is(err, errDeleted) || c.isDeleted()
	switch {
	case errors.As(err, &failure):
	case err == nil, deleted:
	default:
		failure = &podFailure{reason: "CellError", message: err.Error()}
	}

	c.m.mu.Lock()
	c.stage = stageStopping
	agent, inst, grace := c.agent, c.inst, c.grace
	pod := c.pod.DeepCopy()
	c.m.mu.Unlock()

	if failure != nil && !deleted {
		m.event(pod, corev1.EventTypeWarning, failure.reason, "%s", failure.message)
	}
	if agent != nil && inst != nil {
		ctx, cancel := context.WithTimeout(m.ctx, grace+30*time.Second)
		if deleted {
			c.stop(ctx, agent, grace)
		} else if failure == nil {
			c.saveLogs(ctx, agent)
		}
		cancel()
	}
	if inst != nil {
		c.mirror(PhaseTerminating)
	}
	c.terminate(pod, inst)

	c.m.mu.Lock()
	c.stage = stageDone
	c.timing.Finished = m.clock.Now()
	if failure != nil && c.failure == nil && !(deleted && c.agentStatus != nil) {
		c.failure = failure
	}
	// Whatever ended it, the cell is gone: every container shows a terminated state.
	c.stopped = true
	if deleted {
		c.waitReason, c.waitMessage = "", ""
	}
	c.m.mu.Unlock()
	c.publish()
	if deleted || c.isDeleted() {
		m.mu.Lock()
		if m.cells[c.key] == c {
			delete(m.cells, c.key)
		}
		m.mu.Unlock()
	}
}

// stop asks the agent to stop the pod's containers (preStop hooks, SIGTERM, grace, SIGKILL)
// while watching its status, so the containers' real exit codes reach the final status.
func (c *cell) stop(ctx context.Context, agent cellapi.Agent, grace time.Duration) {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	quiet := make(chan struct{}) // closed once no container runs
	consumed := make(chan struct{})
	if ch, err := agent.WatchPod(wctx); err == nil {
		go func() {
			defer close(consumed)
			var once sync.Once
			for st := range ch {
				c.apply(st)
				if st.UID == string(c.uid) && !anyRunning(st) {
					once.Do(func() { close(quiet) })
				}
			}
		}()
	} else {
		close(consumed)
	}
	if err := agent.DeletePod(ctx, grace); err != nil && !cellapi.IsNotFound(err) {
		c.log.Warn("stopping the pod's containers", "err", err)
	}
	// The last statuses may still be on the wire when DeletePod returns.
	t := c.m.clock.NewTimer(2 * time.Second)
	select {
	case <-quiet:
	case <-t.C():
	case <-ctx.Done():
	}
	t.Stop()
	cancel()
	<-consumed
	if st, err := agent.GetPod(ctx); err == nil {
		c.apply(st) // an agent that keeps the pod after stopping it
	}
}

func anyRunning(st *cellapi.PodStatus) bool {
	for _, list := range [][]corev1.ContainerStatus{st.InitContainerStatuses, st.ContainerStatuses} {
		for _, cs := range list {
			if cs.State.Running != nil {
				return true
			}
		}
	}
	return false
}

// terminate terminates the cell's instance, and any other instance tagged with the pod's UID
// (a launch that failed after making one), retrying transient errors for a while.
func (c *cell) terminate(pod *corev1.Pod, inst *cloud.Instance) {
	m := c.m
	ids := map[string]bool{}
	if inst != nil {
		ids[inst.ID] = true
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(m.ctx), 2*time.Minute)
	defer cancel()
	if others, err := m.deps.Cloud.List(ctx, map[string]string{cloud.TagCluster: m.cfg.ClusterName, cloud.TagPodUID: string(c.uid)}); err == nil {
		for _, o := range others {
			ids[o.ID] = true
		}
	} else {
		c.log.Warn("listing the pod's instances", "err", err)
	}
	for id := range ids {
		bo := newBackoff(200*time.Millisecond, 5*time.Second)
		for attempt := 0; ; attempt++ {
			err := m.deps.Cloud.Terminate(ctx, id)
			if err == nil || cloud.IsNotFound(err) {
				m.event(pod, corev1.EventTypeNormal, "CellTerminated", "Terminated cell %s (instance %s)", c.cellID, id)
				break
			}
			if attempt >= 8 || ctx.Err() != nil {
				m.event(pod, corev1.EventTypeWarning, "TerminateFailed", "Terminating cell %s (instance %s) failed; garbage collection will retry: %v", c.cellID, id, err)
				break
			}
			t := m.clock.NewTimer(bo.next())
			select {
			case <-t.C():
			case <-ctx.Done():
			}
			t.Stop()
		}
	}
	if m.deps.Mirror != nil && len(ids) > 0 {
		if err := m.deps.Mirror.Delete(ctx, c.cellID); err != nil {
			c.log.Warn("deleting cell mirror", "err", err)
		}
	}
}

// mirror upserts the cell's Cell resource.
func (c *cell) mirror(phase string) {
	m := c.m
	if m.deps.Mirror == nil {
		return
	}
	c.m.mu.Lock()
	info := CellInfo{
		CellID: c.cellID, Phase: phase,
		PodNamespace: c.pod.Namespace, PodName: c.pod.Name, PodUID: string(c.uid),
		InstanceType: c.cand.Type.Name, PricePerHour: c.cand.Offering.Price, Spot: c.cand.Offering.Spot,
	}
	if c.inst != nil {
		info.InstanceID, info.IP, info.LaunchTime = c.inst.ID, c.inst.PrivateIP, c.inst.LaunchTime
		info.InstanceType, info.Spot = c.inst.InstanceType, c.inst.Spot
	}
	c.m.mu.Unlock()
	if err := m.deps.Mirror.Upsert(m.ctx, info); err != nil {
		c.log.Warn("mirroring cell", "err", err)
	}
}

// tags are the tags every cell carries; they are what Recover rebuilds state from.
func (m *Manager) tags(pod *corev1.Pod, cellID string) map[string]string {
	return map[string]string{
		cloud.TagCluster:      m.cfg.ClusterName,
		cloud.TagNode:         m.node.Name,
		cloud.TagCellID:       cellID,
		cloud.TagPodNamespace: pod.Namespace,
		cloud.TagPodName:      pod.Name,
		cloud.TagPodUID:       string(pod.UID),
	}
}

// bootstrap makes the cell's boot data: its serving certificate (naming the cell id) and
// the CA, as JSON.
func (m *Manager) bootstrap(cellID string) ([]byte, error) {
	if m.deps.CA == nil {
		return nil, errors.New("no CA configured")
	}
	cert, key, err := m.deps.CA.Issue(pki.LeafSpec{CommonName: cellID, DNSNames: []string{cellID}, Server: true})
	if err != nil {
		return nil, fmt.Errorf("issuing certificate for cell %s: %w", cellID, err)
	}
	b, err := json.Marshal(cellapi.Bootstrap{CellID: cellID, CACert: m.deps.CA.CertPEM, Cert: cert, Key: key, Registry: m.deps.Registry})
	if err != nil {
		return nil, fmt.Errorf("encoding bootstrap for cell %s: %w", cellID, err)
	}
	return b, nil
}

func (m *Manager) event(pod *corev1.Pod, typ, reason, format string, args ...any) {
	if m.deps.Events == nil {
		return
	}
	m.deps.Events.Eventf(pod, typ, reason, format, args...)
}

func market(o instancetype.Offering) string {
	m := "on-demand"
	if o.Spot {
		m = "spot"
	}
	if o.Zone != "" {
		m += " in " + o.Zone
	}
	return m
}

func orNone(s string) string {
	if s == "" {
		return "(no address yet)"
	}
	return s
}

func candNames(cands []Candidate) string {
	names := make([]string, len(cands))
	for i, c := range cands {
		names[i] = c.Type.Name
	}
	return strings.Join(names, ", ")
}
