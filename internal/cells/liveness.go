package cells

import (
	"context"
	"errors"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/kip-dev/kip/internal/cellapi"
	"github.com/kip-dev/kip/internal/cloud"
)

// A running cell's liveness. Everything the agent says (a status, a heartbeat on the status
// stream, an answer to a call) counts as hearing from it. Silent for silentBeats heartbeat
// intervals, the pod turns NotReady (its containers keep their last known states); silent for
// the lost timeout, the pod fails with CellLost and the cell is terminated. A cell heard from
// again before then is Ready again, its containers untouched.

// silentBeats is how many heartbeat intervals of silence turn the pod NotReady.
const silentBeats = 3

// Bounds of the agent calls on the pod's path.
const (
	// probeTimeout bounds Health and GetPod, and opening the status stream.
	probeTimeout = 5 * time.Second
	// putTimeout bounds PutPod, which carries the pod's volume files.
	putTimeout = 30 * time.Second
)

// errSilent is why a cell whose status stream went quiet is judged.
var errSilent = errors.New("no status or heartbeat on its status stream")

// answered reports whether err (or its absence) is an answer from the agent: nil, or an error
// the agent sent back. An agent that refuses a call is still alive.
func answered(err error) bool {
	var e *cellapi.Error
	return err == nil || errors.As(err, &e)
}

// silentAfter is how long the agent may be silent before the pod is NotReady.
func (m *Manager) silentAfter() time.Duration { return silentBeats * m.cfg.Heartbeat }

// lostTimeout is how long the cell's agent may stay silent before the cell is lost: the pod's
// lost-timeout annotation, else its healthcheck-healthy-timeout (the original Kip's per-pod
// health timeout), else Options.LostTimeout.
func (c *cell) lostTimeout() time.Duration {
	c.m.mu.Lock()
	defer c.m.mu.Unlock()
	switch {
	case c.lostAfter > 0:
		return c.lostAfter
	case c.healthyAfter > 0:
		return c.healthyAfter
	}
	return c.m.cfg.LostTimeout
}

// heard records that the agent just spoke. A silent cell is reachable again: its pod's
// readiness is its containers' again.
func (c *cell) heard() {
	now := c.m.clock.Now()
	c.m.mu.Lock()
	c.lastHeard = now
	was, since := c.silent, c.silentSince
	c.silent = ""
	pod := c.pod
	c.m.mu.Unlock()
	if was == "" {
		return
	}
	d := now.Sub(since).Round(time.Millisecond)
	c.log.Info("cell agent answers again", "silentFor", d)
	c.m.event(pod, corev1.EventTypeNormal, "CellReachable", "Cell %s agent answers again after %s of silence", c.cellID, d)
	c.publish()
}

// judge weighs the agent's silence (last error lastErr): past the lost timeout it returns the
// pod's CellLost failure; past silentAfter it marks the pod NotReady. It returns how long
// until the next judgement is due.
func (c *cell) judge(lastErr error) (time.Duration, error) {
	lost := c.lostTimeout()
	now := c.m.clock.Now()
	c.m.mu.Lock()
	since := now.Sub(c.lastHeard)
	silentAfter := c.m.silentAfter()
	mark := since >= silentAfter && c.silent == ""
	if mark {
		c.silent = fmt.Sprintf("cell %s agent silent since %s: %v", c.cellID, c.lastHeard.UTC().Format(time.RFC3339), lastErr)
		c.silentSince = c.lastHeard
	}
	pod := c.pod
	c.m.mu.Unlock()
	if since >= lost {
		c.log.Warn("cell lost: its agent stayed silent past the lost timeout", "silentFor", since, "lostTimeout", lost, "err", lastErr)
		return 0, fail(ReasonCellLost, "cell %s agent unreachable for %s (lost timeout %s): %v", c.cellID, since.Round(time.Millisecond), lost, lastErr)
	}
	if mark {
		c.log.Warn("cell agent silent; the pod is not ready", "silentFor", since, "lostTimeout", lost, "err", lastErr)
		c.m.event(pod, corev1.EventTypeWarning, "CellUnreachable", "Cell %s agent silent for %s; the pod is not ready until it answers, and fails if it stays silent %s", c.cellID, since.Round(time.Millisecond), lost)
		c.publish()
	}
	if since < silentAfter {
		return silentAfter - since, nil
	}
	return lost - since, nil
}

// openStream opens the agent's status stream within probeTimeout, with heartbeats when the
// agent sends them. beats is false for an agent without them: silence on the stream then
// says nothing, and the caller must probe.
func (c *cell) openStream(ctx context.Context, agent cellapi.Agent) (msgs <-chan cellapi.WatchMessage, beats bool, err error) {
	octx, cancel := context.WithCancel(ctx)
	t := time.AfterFunc(probeTimeout, cancel)
	defer func() {
		if !t.Stop() || err != nil {
			cancel()
		}
	}()
	if hw, ok := agent.(cellapi.HeartbeatWatcher); ok {
		return hw.WatchPodHeartbeats(octx, c.m.cfg.Heartbeat)
	}
	ch, err := agent.WatchPod(octx)
	if err != nil {
		return nil, false, err
	}
	out := make(chan cellapi.WatchMessage)
	go func() {
		defer close(out)
		for st := range ch {
			select {
			case out <- cellapi.WatchMessage{Status: st}:
			case <-octx.Done():
				return
			}
		}
	}()
	return out, false, nil
}

// probe calls Health every heartbeat interval until ctx ends, sending each result, for an
// agent whose stream carries no heartbeats.
func (c *cell) probe(ctx context.Context, agent cellapi.Agent, results chan<- error) {
	for {
		t := c.m.clock.NewTimer(c.m.cfg.Heartbeat)
		select {
		case <-t.C():
		case <-ctx.Done():
			t.Stop()
			return
		}
		pctx, cancel := context.WithTimeout(ctx, probeTimeout)
		_, err := agent.Health(pctx)
		cancel()
		select {
		case results <- err:
		case <-ctx.Done():
			return
		}
	}
}

// reconnect waits, probing with back-off, until the agent of a running cell answers again, or
// its silence passes the lost timeout, or its instance is gone.
func (c *cell) reconnect(agent cellapi.Agent, inst *cloud.Instance) error {
	bo := newBackoff(100*time.Millisecond, c.m.cfg.Heartbeat)
	for {
		ctx, cancel := context.WithTimeout(c.ops, probeTimeout)
		h, err := agent.Health(ctx)
		cancel()
		if err == nil && h.CellID != "" && h.CellID != c.cellID {
			err = fmt.Errorf("agent answers as cell %q", h.CellID)
		}
		if err == nil {
			c.heard()
			return nil
		}
		if ierr := c.interrupted(); ierr != nil {
			return ierr
		}
		if c.isLost() {
			return fail(ReasonCellLost, "%s", c.lostMsg)
		}
		if gone := c.instanceGone(inst); gone != nil {
			return gone
		}
		if _, lerr := c.judge(err); lerr != nil {
			return lerr
		}
		if err := c.sleep(bo.next()); err != nil {
			return err
		}
	}
}

// instanceGone returns the pod's CellLost failure when the cloud says inst is gone.
func (c *cell) instanceGone(inst *cloud.Instance) error {
	ctx, cancel := context.WithTimeout(c.ops, probeTimeout)
	defer cancel()
	got, err := c.m.deps.Cloud.Describe(ctx, inst.ID)
	if cloud.IsNotFound(err) || (err == nil && (got.State == cloud.StateTerminated || got.State == cloud.StateTerminating)) {
		return fail(ReasonCellLost, "cell %s (instance %s) is gone", c.cellID, inst.ID)
	}
	return nil
}
