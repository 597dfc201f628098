package cells

import (
	"context"

	"github.com/kip-dev/kip/internal/cellapi"
	"github.com/kip-dev/kip/internal/logarchive"
)

// saveLogs keeps every container's log before the cell goes away; Agent serves them after.
func (c *cell) saveLogs(ctx context.Context, agent cellapi.Agent) {
	c.m.mu.Lock()
	pod := c.pod.DeepCopy()
	st := c.agentStatus
	c.m.mu.Unlock()
	a := logarchive.Save(ctx, agent, pod, st, c.m.clock.Now)
	c.m.mu.Lock()
	c.archive = a
	c.m.mu.Unlock()
}
