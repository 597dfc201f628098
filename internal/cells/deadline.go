package cells

import "time"

// Kubelet's reason and message for a pod past spec.activeDeadlineSeconds.
const (
	ReasonDeadlineExceeded  = "DeadlineExceeded"
	messageDeadlineExceeded = "Pod was active on the node longer than the specified deadline"
)

// watchDeadlineIfSet starts watchDeadline once the pod has spec.activeDeadlineSeconds (it
// may be set by an update); most pods have none, and at 10,000 pods a goroutine each costs
// memory (docs/design/scale.md). m.mu must be held.
func (c *cell) watchDeadlineIfSet() {
	if c.deadlineWatched || c.stage == stageDone || c.pod.Spec.ActiveDeadlineSeconds == nil || c.m.ctx.Err() != nil {
		return
	}
	c.deadlineWatched = true
	c.m.wg.Add(1)
	go func() {
		defer c.m.wg.Done()
		c.watchDeadline()
	}()
}

// watchDeadline kills the pod (graceful stop, then Failed with DeadlineExceeded) once it has
// been active longer than spec.activeDeadlineSeconds, counted from its status's startTime as
// kubelet does. A spec update (the deadline may be lowered) re-arms it. It returns when the
// pod stops or the manager closes.
func (c *cell) watchDeadline() {
	for {
		c.m.mu.Lock()
		ads, start, changed := c.pod.Spec.ActiveDeadlineSeconds, c.pod.Status.StartTime, c.specChanged
		pod := c.pod
		c.m.mu.Unlock()
		var timeout <-chan time.Time
		stop := func() {}
		if ads != nil && start != nil {
			left := start.Add(time.Duration(*ads) * time.Second).Sub(c.m.clock.Now())
			if left <= 0 {
				c.kill(&podFailure{reason: ReasonDeadlineExceeded, message: messageDeadlineExceeded}, gracePeriod(pod))
				return
			}
			t := c.m.clock.NewTimer(left)
			timeout, stop = t.C(), func() { t.Stop() }
		}
		select {
		case <-timeout:
		case <-changed:
		case <-c.deleted:
		case <-c.finished:
		case <-c.m.ctx.Done():
		}
		stop()
		if c.isDeleted() || c.isFinished() || c.m.ctx.Err() != nil {
			return
		}
	}
}
