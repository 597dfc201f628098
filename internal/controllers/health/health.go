// Package health is the controller that probes every running cell's agent, off the critical
// path. A status stream can hang without breaking when a cell is cut off the network (no RST
// comes back); an agent that fails every probe for longer than its healthy timeout has its
// pod failed (CellLost) and its cell terminated.
package health

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"k8s.io/utils/clock"

	"github.com/kip-dev/kip/internal/cellapi"
	"github.com/kip-dev/kip/internal/controllers/loop"
)

// Cells is the view of the cells manager the controller needs; *cells.Manager implements it.
type Cells interface {
	// EachRunning calls visit for every cell whose pod runs on a ready agent, with the cell id,
	// its agent and how long it may stay unreachable.
	EachRunning(visit func(cellID string, agent cellapi.Agent, healthyTimeout time.Duration))
	// MarkLost fails the pod of cellID with CellLost and message, and terminates its cell.
	MarkLost(cellID, message string)
}

// Controller is the prober. Make it with New and start it with Run.
type Controller struct {
	interval time.Duration
	cells    Cells
	clock    clock.WithTicker
	log      *slog.Logger

	// failingSince is when each running cell's agent first failed a probe in a row.
	failingSince map[string]time.Time
}

// New returns a controller probing every interval. clk and log may be nil.
func New(interval time.Duration, cells Cells, clk clock.WithTicker, log *slog.Logger) *Controller {
	if clk == nil {
		clk = clock.RealClock{}
	}
	if log == nil {
		log = slog.Default()
	}
	return &Controller{interval: interval, cells: cells, clock: clk, log: log.With("component", "health"),
		failingSince: map[string]time.Time{}}
}

// Run probes every interval until ctx ends. A zero interval runs nothing.
func (c *Controller) Run(ctx context.Context) {
	if c.interval <= 0 {
		return
	}
	loop.Run(ctx, "health", c.clock, c.interval, func(ctx context.Context) time.Duration {
		c.probe(ctx)
		return c.interval
	})
}

type target struct {
	cellID  string
	agent   cellapi.Agent
	timeout time.Duration
}

// probe checks every running agent in parallel, each bounded by min(5s, interval).
func (c *Controller) probe(ctx context.Context) {
	var running []target
	c.cells.EachRunning(func(cellID string, agent cellapi.Agent, timeout time.Duration) {
		running = append(running, target{cellID, agent, timeout})
	})

	timeout := min(5*time.Second, c.interval)
	results := make([]error, len(running))
	var wg sync.WaitGroup
	for i, t := range running {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			_, results[i] = t.agent.Health(pctx)
		}()
	}
	wg.Wait()

	now := c.clock.Now()
	alive := map[string]bool{}
	for i, t := range running {
		alive[t.cellID] = true
		if results[i] == nil {
			delete(c.failingSince, t.cellID)
			continue
		}
		since, ok := c.failingSince[t.cellID]
		if !ok {
			c.failingSince[t.cellID] = now
			continue
		}
		if now.Sub(since) >= t.timeout {
			c.cells.MarkLost(t.cellID, fmt.Sprintf("cell %s agent unreachable for %s: %v", t.cellID, t.timeout, results[i]))
		}
	}
	for id := range c.failingSince {
		if !alive[id] {
			delete(c.failingSince, id)
		}
	}
}
