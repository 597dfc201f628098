package cells

import (
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/kip-dev/kip/internal/cellapi"
)

// The methods below are the manager's view for the controllers that watch cells from outside
// the state machine (internal/controllers/gc, svcpush, ...): they see snapshots and may only
// report a cell lost.

// EachCell calls visit for every pod the manager runs, with its pod UID, its cell id and,
// while its instance must exist (launched and not yet stopping), the instance id, else "";
// and for every standby cell no pod owns yet, with an empty pod UID. visit must not call
// back into the manager.
func (m *Manager) EachCell(visit func(podUID, cellID, instanceID string)) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, w := range m.warm {
		inst := ""
		if w.inst != nil && w.ready {
			inst = w.inst.ID
		}
		visit("", w.id, inst)
	}
	for _, c := range m.cells {
		if c.stage == stageDone {
			continue
		}
		inst := ""
		if c.stage >= stageBooting && c.stage < stageStopping && c.inst != nil {
			inst = c.inst.ID
		}
		visit(string(c.uid), c.cellID, inst)
	}
}

// EachRunning calls visit for every cell whose pod runs on a ready agent, and every ready
// standby cell (so Services and certificate renewals reach it before its pod), with the cell
// id, the agent and how long it may stay silent (its lost timeout). visit must not call back
// into the manager.
func (m *Manager) EachRunning(visit func(cellID string, agent cellapi.Agent, lostTimeout time.Duration)) {
	type running struct {
		c     *cell
		agent cellapi.Agent
	}
	var rs []running
	m.mu.Lock()
	for _, c := range m.cells {
		if c.stage == stageRunning && c.agent != nil {
			rs = append(rs, running{c, c.agent})
		}
	}
	type warm struct {
		id    string
		agent cellapi.Agent
	}
	var ws []warm
	for _, w := range m.warm {
		if w.ready {
			ws = append(ws, warm{w.id, w.agent})
		}
	}
	m.mu.Unlock()
	for _, r := range rs {
		visit(r.c.cellID, r.agent, r.c.lostTimeout())
	}
	for _, w := range ws {
		visit(w.id, w.agent, m.cfg.LostTimeout)
	}
}

// MarkLost tells the state machine of cellID that its cell is lost (its instance is gone, or
// its agent unreachable past the healthy timeout): the pod fails with CellLost and message,
// and the cell is terminated. A standby cell is terminated and replaced. Unknown cells are
// ignored.
func (m *Manager) MarkLost(cellID, message string) {
	m.mu.Lock()
	var target *cell
	for _, c := range m.cells {
		if c.cellID == cellID && c.stage != stageDone {
			target = c
			break
		}
	}
	w := m.warm[cellID]
	m.mu.Unlock()
	if target != nil {
		target.markLost(message)
	}
	if w != nil {
		m.log.Info("standby cell lost; replacing it", "cell", cellID, "why", message)
		m.dropWarm(w)
	}
}

// kubeletConditions are the pod conditions kip computes as kubelet does; any other (a
// readiness gate, DisruptionTarget) belongs to whoever set it in the API.
var kubeletConditions = map[corev1.PodConditionType]bool{
	corev1.PodReadyToStartContainers: true, corev1.PodInitialized: true, corev1.PodReady: true,
	corev1.ContainersReady: true, corev1.PodScheduled: true,
}

// MergeConditions takes the conditions other controllers set on pod in the API (those kubelet
// does not own, e.g. readiness gates) into the status kip reports, and republishes it: a
// readiness gate turning True makes the pod Ready, and kip never overwrites the condition.
// Unknown pods are ignored.
func (m *Manager) MergeConditions(pod *corev1.Pod) {
	m.mu.Lock()
	c, ok := m.cells[podKey(pod.Namespace, pod.Name)]
	if !ok || c.uid != pod.UID || c.stage == stageDone {
		m.mu.Unlock()
		return
	}
	changed := false
	for _, in := range pod.Status.Conditions {
		if kubeletConditions[in.Type] {
			continue
		}
		i := slices.IndexFunc(c.pod.Status.Conditions, func(x corev1.PodCondition) bool { return x.Type == in.Type })
		switch {
		case i < 0:
			c.pod.Status.Conditions = append(c.pod.Status.Conditions, in)
			changed = true
		case c.pod.Status.Conditions[i].Status != in.Status || c.pod.Status.Conditions[i].Reason != in.Reason:
			c.pod.Status.Conditions[i] = in
			changed = true
		}
	}
	m.mu.Unlock()
	if changed {
		c.publish()
	}
}

// EphemeralWaiting shows the named ephemeral containers of pod namespace/name (when its UID
// is uid) waiting with reason and message until its agent reports them: kubelet's
// CreateContainerConfigError for the ones whose references internal/controllers/ephpush
// cannot resolve. An empty reason clears them.
func (m *Manager) EphemeralWaiting(namespace, name string, uid types.UID, names []string, reason, message string) {
	m.mu.Lock()
	c, ok := m.cells[podKey(namespace, name)]
	if !ok || c.uid != uid {
		m.mu.Unlock()
		return
	}
	for _, n := range names {
		switch {
		case reason == "":
			delete(c.ephWaiting, n)
		default:
			if c.ephWaiting == nil {
				c.ephWaiting = map[string]corev1.ContainerStateWaiting{}
			}
			c.ephWaiting[n] = corev1.ContainerStateWaiting{Reason: reason, Message: message}
		}
	}
	m.mu.Unlock()
	c.publish()
}

// EachRunningPod calls visit with the namespace, name and UID of every pod that runs on a
// ready agent (for internal/controllers/volpush). visit must not call back into the manager.
func (m *Manager) EachRunningPod(visit func(namespace, name string, uid types.UID)) {
	type key struct {
		ns, name string
		uid      types.UID
	}
	var ks []key
	m.mu.Lock()
	for _, c := range m.cells {
		if c.stage == stageRunning && c.agent != nil {
			ks = append(ks, key{c.pod.Namespace, c.pod.Name, c.uid})
		}
	}
	m.mu.Unlock()
	for _, k := range ks {
		visit(k.ns, k.name, k.uid)
	}
}

// RunningPod returns a copy of the pod namespace/name as kip knows it (spec, metadata and the
// status it reports, pod IP included) and its agent, while it runs on a ready agent.
func (m *Manager) RunningPod(namespace, name string) (*corev1.Pod, cellapi.Agent, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	c, ok := m.cells[podKey(namespace, name)]
	if !ok || c.stage != stageRunning || c.agent == nil {
		return nil, nil, false
	}
	return c.snapshot(), c.agent, true
}
