package cells

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/kip-dev/kip/internal/cellapi"
	"github.com/kip-dev/kip/internal/cloud"
	"github.com/kip-dev/kip/internal/podstatus"
)

func (c *cell) healthyTimeout() time.Duration {
	c.m.mu.Lock()
	defer c.m.mu.Unlock()
	if c.healthyAfter > 0 {
		return c.healthyAfter
	}
	return c.m.cfg.HealthyTimeout
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
		pod.Status.HostIP = c.hostIP()
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
			c.setContainersWaiting(reasonConfigError, err.Error())
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
	if c.m.deps.Resolver == nil {
		return &cellapi.PodRequest{Pod: pod}, nil
	}
	req, err := c.m.deps.Resolver.Resolve(c.ops, pod)
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
	reached := false
	if c.timing.Pulled.IsZero() && podstatus.AllPulled(c.pod, st) {
		c.timing.Pulled, reached = now, true
	}
	if c.timing.Started.IsZero() && podstatus.AllStarted(c.pod, st) {
		c.timing.Started, reached = now, true
	}
	evs := c.events.Diff(c.pod, prev, st)
	// The agent's own events (probe failures and kills), each once; an adopted cell's
	// earlier ones were recorded by the kip before.
	for _, e := range st.Events {
		if e.ID <= c.agentEventID {
			continue
		}
		c.agentEventID = e.ID
		if !c.adopted {
			evs = append(evs, podstatus.Event{Type: e.Type, Reason: e.Reason, Message: e.Message})
		}
	}
	c.adopted = false
	pod := c.pod
	c.m.mu.Unlock()
	for _, e := range evs {
		m.event(pod, e.Type, e.Reason, "%s", e.Message)
	}
	c.publish()
	if reached {
		c.observe()
	}
}
