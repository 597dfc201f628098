package cells

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/utils/clock"

	"github.com/kip-dev/kip/internal/admit"
	"github.com/kip-dev/kip/internal/cellapi"
	"github.com/kip-dev/kip/internal/cloud"
	"github.com/kip-dev/kip/internal/podrequest"
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

// connect dials the agent of a booting or adopted cell and waits, with back-off, until it
// answers Health, for at most the healthy timeout; past it the pod fails with reason.
func (c *cell) connect(inst *cloud.Instance, reason string) (cellapi.Agent, error) {
	m := c.m
	c.m.mu.Lock()
	agent := c.agent
	c.m.mu.Unlock()
	start := m.clock.Now()
	timeout := c.healthyTimeout()
	if err := c.awaitServing(inst, timeout); err != nil {
		return nil, err
	}
	bo := newBackoff(20*time.Millisecond, 500*time.Millisecond)
	var lastErr error
	attempts := 0
	for {
		attempts++
		if agent == nil {
			var err error
			agent, err = m.dial(c.ops, inst, c.cellID)
			if err != nil {
				lastErr = err
			}
		}
		if agent != nil {
			ctx, cancel := context.WithTimeout(c.ops, probeTimeout)
			h, err := agent.Health(ctx)
			cancel()
			switch {
			case err == nil && h.CellID != "" && h.CellID != c.cellID:
				lastErr = fmt.Errorf("agent answers as cell %q", h.CellID)
			case err == nil:
				c.heard()
				c.log.Debug("the cell's agent answered", "after", m.clock.Since(start), "attempts", attempts)
				return agent, nil
			default:
				lastErr = err
			}
		}
		if err := c.interrupted(); err != nil {
			return nil, err
		}
		if reason == ReasonCellLost {
			// An adopted cell does not answer: if the cloud says it is gone, fail now.
			if gone := c.instanceGone(inst); gone != nil {
				return nil, gone
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

// awaitServing waits, when the backend can tell (Deps.AgentServing), until the cell's agent
// serves or has exited, for at most timeout; connect then asks it once instead of polling.
func (c *cell) awaitServing(inst *cloud.Instance, timeout time.Duration) error {
	if c.m.deps.AgentServing == nil {
		return nil
	}
	ch := c.m.deps.AgentServing(inst.ID)
	if ch == nil {
		return nil
	}
	t := c.m.clock.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-ch:
	case <-t.C():
	case <-c.deleted:
		return errDeleted
	case <-c.m.ctx.Done():
		return errClosed
	}
	return nil
}

// resolved is a request resolved ahead of its put (resolveAhead), with the spec version
// it was made from: changed is closed once the spec changed since.
type resolved struct {
	req     *cellapi.PodRequest
	err     error
	changed <-chan struct{}
}

// resolveAhead resolves the pod's request in the background, so that the API calls it
// makes (tokens, secrets) overlap with the launch or bind of a new cell and its agent's boot;
// ensurePut's first attempt uses it unless the spec changed meanwhile. It may start before the
// cell has an address: ensurePut then sets the addresses in the request, or resolves it again
// when an env var reads them (podrequest.UsesAddresses).
func (c *cell) resolveAhead() <-chan resolved {
	out := make(chan resolved, 1)
	pod, changed := c.podToPut()
	c.m.wg.Add(1)
	go func() {
		defer c.m.wg.Done()
		req, err := c.resolve(pod)
		out <- resolved{req: req, err: err, changed: changed}
	}()
	return out
}

// podToPut is a copy of the pod as its cell's agent gets it (with the cell's addresses),
// and the channel closed by the next spec change.
func (c *cell) podToPut() (*corev1.Pod, <-chan struct{}) {
	c.m.mu.Lock()
	defer c.m.mu.Unlock()
	pod := c.pod.DeepCopy()
	if c.inst != nil {
		pod.Status.PodIP = c.inst.PrivateIP
		pod.Status.PodIPs = []corev1.PodIP{{IP: c.inst.PrivateIP}}
	}
	pod.Status.HostIP = c.hostIP()
	return pod, c.specChanged
}

// ensurePut puts the pod on the agent unless the agent already runs it. ahead, when not nil,
// is the request resolveAhead made for a new cell, whose agent runs nothing yet: it is put
// without asking first.
func (c *cell) ensurePut(agent cellapi.Agent, ahead <-chan resolved) error {
	m := c.m
	if ahead == nil {
		gctx, cancel := context.WithTimeout(c.ops, probeTimeout)
		st, err := agent.GetPod(gctx)
		cancel()
		if answered(err) {
			c.heard()
		}
		if err == nil && st.UID == string(c.uid) {
			c.apply(st)
			return nil
		}
	}
	bo := newBackoff(500*time.Millisecond, 30*time.Second)
	for {
		pod, _ := c.podToPut()
		t0 := m.clock.Now()
		var req *cellapi.PodRequest
		var err error
		var r resolved
		if ahead != nil {
			select {
			case r = <-ahead:
			case <-c.deleted:
				return errDeleted
			case <-m.ctx.Done():
				return errClosed
			}
			ahead = nil
		}
		if r.changed != nil && !closed(r.changed) {
			req, err = r.req, r.err // resolved ahead from the spec of the moment
			if err == nil && !sameAddresses(req.Pod, pod) {
				if podrequest.UsesAddresses(pod) {
					req, err = c.resolve(pod)
				} else {
					setAddresses(req.Pod, pod)
				}
			}
		} else {
			req, err = c.resolve(pod)
		}
		if err == nil {
			var st *cellapi.PodStatus
			t1 := m.clock.Now()
			pctx, cancel := context.WithTimeout(c.ops, putTimeout)
			st, err = agent.PutPod(pctx, req)
			cancel()
			if err == nil {
				c.log.Debug("put the pod on its agent", "resolve", t1.Sub(t0), "putPod", m.clock.Since(t1))
				c.heard()
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
			// A put that broke is no proof of silence now (a put can outlast a slow agent's
			// answer to a ping under load): ask the agent before judging it.
			if answered(err) || c.answers(agent) {
				c.heard()
			} else if _, lerr := c.judge(fmt.Errorf("putting the pod: %w", err)); lerr != nil {
				return lerr
			}
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

// sameAddresses reports whether a and b carry the same pod and host addresses.
func sameAddresses(a, b *corev1.Pod) bool {
	return a.Status.PodIP == b.Status.PodIP && a.Status.HostIP == b.Status.HostIP &&
		slices.Equal(a.Status.PodIPs, b.Status.PodIPs) && slices.Equal(a.Status.HostIPs, b.Status.HostIPs)
}

// setAddresses gives dst the pod and host addresses of src.
func setAddresses(dst, src *corev1.Pod) {
	dst.Status.PodIP, dst.Status.PodIPs = src.Status.PodIP, slices.Clone(src.Status.PodIPs)
	dst.Status.HostIP, dst.Status.HostIPs = src.Status.HostIP, slices.Clone(src.Status.HostIPs)
}

// answers reports whether the agent answers Health within probeTimeout.
func (c *cell) answers(agent cellapi.Agent) bool {
	ctx, cancel := context.WithTimeout(c.ops, probeTimeout)
	defer cancel()
	_, err := agent.Health(ctx)
	return answered(err)
}

// closed reports whether ch is closed.
func closed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func (c *cell) resolve(pod *corev1.Pod) (*cellapi.PodRequest, error) {
	if c.m.deps.Resolver == nil {
		return &cellapi.PodRequest{Pod: pod, PodPidsLimit: max(c.m.cfg.PodPidsLimit, 0)}, nil
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
	// Read again, as the pod may reach its cell long after its launch (an adopted cell).
	if req.SeccompProfiles, err = admit.LocalhostProfiles(req.Pod, c.m.cfg.SeccompProfileRoot, os.ReadFile); err != nil {
		return nil, err
	}
	req.PodPidsLimit = max(c.m.cfg.PodPidsLimit, 0)
	return req, nil
}

// watch streams the agent's status into the pod until the pod completes (nil), is deleted,
// or its cell is lost. A dropped stream is reopened; an agent silent past the lost timeout
// fails the pod (see liveness.go).
func (c *cell) watch() error {
	for {
		c.m.mu.Lock()
		agent, inst := c.agent, c.inst
		c.m.mu.Unlock()
		sctx, cancel := context.WithCancel(c.ops)
		msgs, beats, err := c.openStream(sctx, agent)
		if err == nil {
			c.heard()
			var done bool
			done, err = c.consume(sctx, agent, msgs, beats)
			cancel()
			if done {
				return nil
			}
			if isFailure(err) {
				return err
			}
		} else {
			cancel()
		}
		if ierr := c.interrupted(); ierr != nil {
			return ierr
		}
		if c.isLost() {
			return fail(ReasonCellLost, "%s", c.lostMsg)
		}
		c.log.Info("agent status stream ended; reconnecting", "err", err)
		if err := c.reconnect(agent, inst); err != nil {
			return err
		}
		if err := c.ensurePut(agent, nil); err != nil {
			return err
		}
		if c.final() {
			return nil
		}
	}
}

// consume applies the messages of one stream and judges the agent's silence; it reports
// whether the pod reached a final phase, or the error that ends the stream (a CellLost
// failure, or why it broke). With heartbeats, silence is judged on a timer; without, the
// agent is probed beside the stream and judged on each failed probe.
func (c *cell) consume(ctx context.Context, agent cellapi.Agent, msgs <-chan cellapi.WatchMessage, beats bool) (bool, error) {
	var (
		probes chan error       // nil with heartbeats
		due    <-chan time.Time // nil without
		timer  clock.Timer
	)
	if beats {
		timer = c.m.clock.NewTimer(c.m.silentAfter())
		defer timer.Stop()
		due = timer.C()
	} else {
		probes = make(chan error)
		pctx, cancel := context.WithCancel(ctx)
		defer cancel()
		go c.probe(pctx, agent, probes)
	}
	for {
		select {
		case m, ok := <-msgs:
			if !ok {
				return false, errors.New("status stream closed")
			}
			if done := c.take(m); done {
				return true, nil
			}
		case <-due:
			// A busy kip may see its timer and the agent's next message at once, and the
			// select picks either: take what arrived before judging the silence.
			if drained, done, err := c.takePending(msgs); drained {
				if done || err != nil {
					return done, err
				}
				timer.Reset(c.m.silentAfter())
				continue
			}
			next, err := c.judge(errSilent)
			if err != nil {
				return false, err
			}
			timer.Reset(next)
		case err := <-probes:
			if err == nil {
				c.heard()
				continue
			}
			if _, lerr := c.judge(fmt.Errorf("probing its health: %w", err)); lerr != nil {
				return false, lerr
			}
		case <-c.ops.Done():
			return false, nil
		case <-c.lost:
			return false, nil
		}
	}
}

// takePending takes the messages already waiting on the stream, without blocking; it reports
// whether there were any, and as consume does whether the pod is final or the stream closed.
func (c *cell) takePending(msgs <-chan cellapi.WatchMessage) (drained, done bool, err error) {
	for {
		select {
		case m, ok := <-msgs:
			if !ok {
				return true, false, errors.New("status stream closed")
			}
			drained = true
			if c.take(m) {
				return true, true, nil
			}
		default:
			return drained, false, nil
		}
	}
}

// take applies one message of the status stream; it reports whether the pod is final.
func (c *cell) take(m cellapi.WatchMessage) bool {
	c.heard()
	if m.Status == nil {
		return false
	}
	c.apply(m.Status)
	return c.final()
}

func isFailure(err error) bool {
	var f *podFailure
	return errors.As(err, &f)
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
	// A cell taken from a standby pool: its pool replaces it once the pod started.
	release := c.warmPool != nil && podstatus.AnyStartedOrStuck(st)
	c.m.mu.Unlock()
	for _, e := range evs {
		m.event(pod, e.Type, e.Reason, "%s", e.Message)
	}
	c.publish()
	if reached {
		c.observe()
	}
	if st.SpotInterruption != nil {
		c.spotInterrupted(st.SpotInterruption)
	}
	if release {
		c.releaseWarm()
	}
}
