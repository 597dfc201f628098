package cells

import (
	"context"
	"errors"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/kip-dev/kip/internal/annotations"
	"github.com/kip-dev/kip/internal/cloud"
	"github.com/kip-dev/kip/internal/instancetype"
	"github.com/kip-dev/kip/internal/selector"
)

// Recover rebuilds state after a restart from the cloud's tags and the node's pods: it
// adopts each live cell whose pod is among pods (reconnecting to its agent and resuming the
// status stream, or finishing it when the pod has completed; resuming the launch of a cell
// still pending), terminates cells whose pod is gone, gives the standby pools back the
// running standby cells no pod was bound to (standby.go; the others are terminated), and
// fails pods that ran on a cell that no longer exists. Pods still pending without a cell are
// left to CreatePod, whose launch is idempotent. Call it before CreatePod and StartStandby.
func (m *Manager) Recover(ctx context.Context, pods []*corev1.Pod) error {
	insts, err := m.deps.Cloud.List(ctx, map[string]string{cloud.TagCluster: m.cfg.ClusterName, cloud.TagNode: m.node.Name})
	if err != nil {
		return translate(fmt.Errorf("recovering cells: listing instances: %w", err))
	}
	byUID := make(map[types.UID]*corev1.Pod, len(pods))
	for _, p := range pods {
		byUID[p.UID] = p
	}
	// Pods already managed (Recover called again, or CreatePod first) keep their machines.
	managed := map[types.UID]bool{}
	m.mu.Lock()
	for _, c := range m.cells {
		if c.stage != stageDone {
			managed[c.uid] = true
		}
	}
	m.mu.Unlock()
	// The catalog gives adopted cells back their offering (the Cell resource shows its price);
	// without it they are still adopted, known by type name only.
	var catalog []instancetype.InstanceType
	if len(insts) > 0 {
		if catalog, err = m.deps.Cloud.InstanceTypes(ctx); err != nil {
			m.log.Warn("recovering cells: listing instance types; adopted cells show no price", "err", err)
		}
	}
	adopted := map[types.UID]bool{}
	var orphans, standby []*cloud.Instance
	for _, inst := range insts {
		uid := types.UID(inst.Tags[cloud.TagPodUID])
		if isStandby(inst) && uid == "" {
			standby = append(standby, inst) // no pod was bound to it
			continue
		}
		if managed[uid] {
			continue
		}
		// A pod's cell id is derived from its UID, except a bound standby cell's, which
		// keeps its own (its pod tags are the binding record).
		pod, ok := byUID[uid]
		if !ok || adopted[uid] || isTerminal(pod.Status.Phase) || inst.State == cloud.StateTerminating || inst.State == cloud.StateTerminated ||
			(inst.Tags[cloud.TagCellID] != CellID(uid) && !(isStandby(inst) && inst.Tags[cloud.TagCellID] != "")) {
			orphans = append(orphans, inst)
			continue
		}
		adopted[uid] = true
		m.adopt(pod, inst, catalog)
	}
	orphans = append(orphans, m.recoverStandby(standby, catalog)...)
	for _, inst := range orphans {
		m.log.Info("terminating orphan cell", "instance", inst.ID, "cell", inst.Tags[cloud.TagCellID],
			"pod", inst.Tags[cloud.TagPodNamespace]+"/"+inst.Tags[cloud.TagPodName])
		if err := m.deps.Cloud.Terminate(ctx, inst.ID); err != nil && !cloud.IsNotFound(err) {
			return translate(fmt.Errorf("recovering cells: terminating orphan %s: %w", inst.ID, err))
		}
		m.mirrorDelete(inst.Tags[cloud.TagCellID])
	}
	for _, pod := range pods {
		if adopted[pod.UID] || managed[pod.UID] {
			continue
		}
		switch {
		case isTerminal(pod.Status.Phase):
			m.remember(pod)
		case pod.Status.PodIP != "" || pod.Status.Phase == corev1.PodRunning:
			// It ran on a cell that is gone.
			m.lost(pod)
		}
	}
	return nil
}

// adopt takes over a live cell of pod after a restart.
func (m *Manager) adopt(pod *corev1.Pod, inst *cloud.Instance, catalog []instancetype.InstanceType) {
	c := m.newCell(pod)
	if isStandby(inst) {
		// A bound standby cell: its own id, named in its certificate.
		c.cellID = inst.Tags[cloud.TagCellID]
		c.timing.CellID = c.cellID
		c.log = m.log.With("pod", c.key, "cell", c.cellID)
	}
	c.inst = inst
	c.cand = adoptedCandidate(inst, catalog)
	c.timing.InstanceType = inst.InstanceType
	c.stage = stageBooting
	c.adopted = true
	if opts, err := annotations.Parse(pod); err == nil {
		c.healthyAfter, c.lostAfter = opts.HealthyTimeout, opts.LostTimeout
	}
	m.mu.Lock()
	if old, ok := m.cells[c.key]; ok {
		old.requestDelete(0)
	}
	m.cells[c.key] = c
	m.mu.Unlock()
	m.start(c, inst)
}

// resumeLaunch finishes the launch of an adopted cell that was still pending when the kip
// before was stopped: it asks for the same launch again (the same client token), which the
// cloud answers with that instance — EC2 with the instance booting on its own, the local
// backend by redoing in it the boot its dead launcher left half-way. A cloud that refuses
// leaves the instance to boot as it is.
func (c *cell) resumeLaunch(inst *cloud.Instance) (*cloud.Instance, error) {
	m := c.m
	m.mu.Lock()
	pod, cand := c.pod.DeepCopy(), c.cand
	m.mu.Unlock()
	opts, err := annotations.Parse(pod)
	if err != nil {
		return nil, fail(ReasonInvalidAnnotation, "%v", err)
	}
	// The selector says how the pod's type was launched (UnlimitedCredits): EC2 refuses a
	// retried launch that asks for anything else.
	if types, err := m.deps.Cloud.InstanceTypes(c.ops); err == nil && m.deps.Selector != nil {
		if choice, err := m.deps.Selector.Select(pod, types); err == nil && choice != nil {
			for _, k := range candidates(m.capacity, choice) {
				if k.Type.Name == inst.InstanceType && k.Offering.Zone == inst.Zone && k.Offering.Spot == inst.Spot {
					cand = k
					break
				}
			}
		}
	}
	c.log.Info("resuming the launch of a cell found pending", "instance", inst.ID, "type", inst.InstanceType)
	// launchOne retries throttling and server errors itself. A capacity error is retried
	// here too, within the healthy timeout: the instance already holds its capacity, and a
	// local cell whose launcher died boots only when its launch is redone.
	start := m.clock.Now()
	bo := newBackoff(500*time.Millisecond, 5*time.Second)
	for {
		got, err := c.launchOne(pod, cand, opts)
		switch {
		case err == nil:
			if got.ID != inst.ID {
				// The same token made another instance: the first is gone (terminate takes
				// every instance of the pod at the end).
				c.log.Warn("the resumed launch returned another instance", "was", inst.ID, "now", got.ID)
			}
			return got, nil
		case errors.Is(err, errDeleted), errors.Is(err, errClosed):
			return nil, err
		case cloud.IsInsufficientCapacity(err) && m.clock.Since(start) < c.healthyTimeout():
			c.log.Info("resuming the launch: the cloud answered with a capacity error; retrying", "instance", inst.ID, "err", err)
			if err := c.sleep(bo.next()); err != nil {
				return nil, err
			}
			continue
		}
		c.log.Warn("resuming the launch: the cloud refused it; waiting for the instance as it is", "instance", inst.ID, "err", err)
		return inst, nil
	}
}

// adoptedCandidate is what inst was launched as: its type from catalog and the offering of its
// market (spot or not), in its zone when the catalog has one there. A type the catalog lacks
// is known by name only, with no price.
func adoptedCandidate(inst *cloud.Instance, catalog []instancetype.InstanceType) selector.Candidate {
	cand := selector.Candidate{Type: instanceTypeNamed(inst.InstanceType)}
	for _, t := range catalog {
		if t.Name != inst.InstanceType {
			continue
		}
		cand.Type = t
		for _, o := range t.Offerings {
			if o.Spot == inst.Spot && (cand.Offering.Price == 0 || o.Zone == inst.Zone) {
				cand.Offering = o
			}
		}
		break
	}
	cand.Offering.Spot, cand.Offering.Zone = inst.Spot, inst.Zone
	return cand
}

// remember registers a completed pod so GetPod and ListPods answer for it.
func (m *Manager) remember(pod *corev1.Pod) {
	c := m.newCell(pod)
	c.stage = stageDone
	m.mu.Lock()
	m.cells[c.key] = c
	m.mu.Unlock()
}

// lost fails a pod whose cell vanished while kip was down.
func (m *Manager) lost(pod *corev1.Pod) {
	c := m.newCell(pod)
	c.stage = stageDone
	c.failure = &podFailure{reason: ReasonCellLost, message: fmt.Sprintf("cell %s is gone (it was not found when kip restarted)", c.cellID)}
	m.mu.Lock()
	m.cells[c.key] = c
	m.mu.Unlock()
	m.event(pod, corev1.EventTypeWarning, ReasonCellLost, "%s", c.failure.message)
	c.publish()
}
