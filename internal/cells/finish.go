package cells

import (
	"context"
	"errors"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/kip-dev/kip/internal/cellapi"
	"github.com/kip-dev/kip/internal/cloud"
)

// finish ends the state machine: it stops the containers of a deleted pod, saves the logs
// of a completed one, terminates the cell and publishes the final status.
func (c *cell) finish(err error) {
	m := c.m
	c.releaseWarm()
	if errors.Is(err, errClosed) || (err != nil && m.ctx.Err() != nil && !c.isDeleted()) {
		return // kip is shutting down: the cell keeps running for the next kip to adopt
	}
	var failure *podFailure
	stopAsked := errors.Is(err, errDeleted) || c.isDeleted()
	c.m.mu.Lock()
	killed := c.killed
	if c.userDeleted {
		killed = nil
	}
	c.m.mu.Unlock()
	// A stop asked by a kill (not a deletion) ends the pod Failed with the kill's reason.
	deleted := stopAsked && killed == nil
	switch {
	case stopAsked && killed != nil:
		failure = killed
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
		switch {
		case deleted:
			c.stop(ctx, agent, grace)
		case killed != nil:
			// As kubelet: the pod is Failed with the kill's reason while its containers
			// stop; their logs are kept first (stopping the pod removes them on the cell).
			c.m.mu.Lock()
			c.failure = killed
			c.m.mu.Unlock()
			c.publish()
			c.saveLogs(ctx, agent)
			c.stop(ctx, agent, grace)
		case failure == nil:
			c.saveLogs(ctx, agent)
		}
		cancel()
	}
	if inst != nil {
		c.mirror(PhaseTerminating)
	}
	c.terminate(pod, inst)

	defer close(c.finished)
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
	c.observe()
	m.mu.Lock()
	userDeleted := c.userDeleted
	m.mu.Unlock()
	if deleted || userDeleted {
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
	if len(ids) > 0 {
		m.mirrorDelete(c.cellID)
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
		m.log.Warn("mirroring cell", "cell", info.CellID, "err", err)
	}
}

// mirrorDelete records that the Cell resource of cellID should be gone.
func (m *Manager) mirrorDelete(cellID string) {
	if m.deps.Mirror == nil {
		return
	}
	if err := m.deps.Mirror.Delete(m.ctx, cellID); err != nil {
		m.log.Warn("mirroring cell", "cell", cellID, "err", err)
	}
}

func (m *Manager) event(pod *corev1.Pod, typ, reason, format string, args ...any) {
	if m.deps.Events == nil {
		return
	}
	m.deps.Events.Eventf(pod, typ, reason, format, args...)
}
