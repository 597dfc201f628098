// Package svcpush is the controller that brings every running cell's agent to the current
// service table (internal/servicetable): on each new version it sends each cell the delta
// from the version that cell acknowledged, in parallel (bounded) with a deadline per call; a
// cell that answers Conflict gets the full table; an agent that does not program Services
// (BadVersion) is skipped; failures are retried with back-off; cells that are gone are
// forgotten. Sync gives a cell the table synchronously, for the cells manager to call after
// the agent is ready and before the pod is put, so containers start with Services in place.
package svcpush

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
	// EachRunning calls visit for every cell whose pod runs on a ready agent.
	EachRunning(visit func(cellID string, agent cellapi.Agent, healthyTimeout time.Duration))
}

// CellsFunc adapts a function to Cells (the wiring uses it because the cells manager takes
// the controller's Sync at construction).
type CellsFunc func(visit func(cellID string, agent cellapi.Agent, healthyTimeout time.Duration))

// EachRunning calls f.
func (f CellsFunc) EachRunning(visit func(cellID string, agent cellapi.Agent, healthyTimeout time.Duration)) {
	f(visit)
}

// Table is the versioned service table; *servicetable.Table implements it.
type Table interface {
	// Version is the current version.
	Version() uint64
	// Since returns the delta from version v, or the full table (Base 0) when v is 0 or too
	// old; the result must not be modified.
	Since(v uint64) *cellapi.ServiceTable
	// OnChange registers f, called after each new version; f must not block.
	OnChange(f func())
	// WaitReady waits until the first table is built.
	WaitReady(ctx context.Context) error
}

// Options tune the controller. Zero fields take defaults.
type Options struct {
	// Parallelism bounds the cells pushed to at once (default 16).
	Parallelism int
	// CallTimeout bounds each PutServices call (default 10 s).
	CallTimeout time.Duration
	// ResyncInterval is how often every running cell is checked against the current version,
	// catching cells that came up without Sync (default 30 s).
	ResyncInterval time.Duration
	// SyncedGrace is how long a cell given the table by Sync is kept (and pushed to) before
	// it shows as running, so changes during its pod's put are not lost (default 2 min).
	SyncedGrace time.Duration
	// MinRetry and MaxRetry bound the per-cell retry back-off (defaults 100 ms, 30 s).
	MinRetry, MaxRetry time.Duration
	Clock              clock.WithTicker
	Log                *slog.Logger
}

// Controller pushes the table. Make it with New, start it with Run.
type Controller struct {
	opts  Options
	table Table
	cells Cells
	log   *slog.Logger
	keys  *loop.Keys

	mu    sync.Mutex
	state map[string]*cellState
}

// cellState is what the controller knows of one cell.
type cellState struct {
	push sync.Mutex // held for a whole push: one at a time per cell

	// under Controller.mu:
	agent       cellapi.Agent
	acked       uint64
	unsupported bool
	syncedAt    time.Time
}

// New returns a controller pushing table to cells. It registers with the table at once, so
// versions built before Run are pushed when it starts.
func New(opts Options, table Table, cells Cells) *Controller {
	if opts.Parallelism <= 0 {
		opts.Parallelism = 16
	}
	if opts.CallTimeout <= 0 {
		opts.CallTimeout = 10 * time.Second
	}
	if opts.ResyncInterval <= 0 {
		opts.ResyncInterval = 30 * time.Second
	}
	if opts.SyncedGrace <= 0 {
		opts.SyncedGrace = 2 * time.Minute
	}
	if opts.MinRetry <= 0 {
		opts.MinRetry = 100 * time.Millisecond
	}
	if opts.Clock == nil {
		opts.Clock = clock.RealClock{}
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	c := &Controller{
		opts:  opts,
		table: table,
		cells: cells,
		log:   opts.Log.With("component", "svcpush"),
		state: map[string]*cellState{},
	}
	c.keys = loop.NewKeys(loop.KeysOptions{
		Name:           "svcpush",
		Parallelism:    opts.Parallelism,
		FirstResync:    opts.ResyncInterval,
		ResyncInterval: opts.ResyncInterval,
		MinRetry:       opts.MinRetry,
		MaxRetry:       opts.MaxRetry,
		Resync:         c.enqueueStale,
		Sync:           c.sync,
		Retrying:       "pushing the service table to a cell; retrying",
		Clock:          opts.Clock,
		Log:            c.log,
	})
	table.OnChange(c.keys.ResyncNow)
	return c
}

// Run pushes until ctx ends.
func (c *Controller) Run(ctx context.Context) { c.keys.Run(ctx) }

// Sync brings the cell's agent to the current table now (the full table for a new cell),
// waiting at most the call timeout for the table's first build. On error the cell is left to
// the controller's retries.
func (c *Controller) Sync(ctx context.Context, cellID string, agent cellapi.Agent) error {
	c.mu.Lock()
	st := c.state[cellID]
	if st == nil {
		st = &cellState{}
		c.state[cellID] = st
	}
	if !cellapi.SameAgent(st.agent, agent) {
		st.agent, st.acked, st.unsupported = agent, 0, false
	}
	st.syncedAt = c.opts.Clock.Now()
	c.mu.Unlock()

	wctx, cancel := context.WithTimeout(ctx, c.opts.CallTimeout)
	err := c.table.WaitReady(wctx)
	cancel()
	if err == nil {
		err = c.push(ctx, cellID, st)
	}
	if err != nil {
		c.keys.AddRateLimited(cellID)
		return fmt.Errorf("giving cell %s the service table: %w", cellID, err)
	}
	return nil
}

// Acked returns the version cellID's agent acknowledged last, 0 when none.
func (c *Controller) Acked(cellID string) uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	if st := c.state[cellID]; st != nil {
		return st.acked
	}
	return 0
}

// sync pushes to one cell; a cell the controller no longer knows is gone.
func (c *Controller) sync(ctx context.Context, cellID string) error {
	c.mu.Lock()
	st := c.state[cellID]
	c.mu.Unlock()
	if st == nil {
		return nil
	}
	return c.push(ctx, cellID, st)
}

// enqueueStale refreshes the set of cells from the manager, forgets those gone, and queues
// every cell behind the current version.
func (c *Controller) enqueueStale(add func(cellID string)) {
	running := map[string]cellapi.Agent{}
	c.cells.EachRunning(func(cellID string, agent cellapi.Agent, _ time.Duration) { running[cellID] = agent })
	version := c.table.Version()
	now := c.opts.Clock.Now()
	var stale []string
	c.mu.Lock()
	for id, agent := range running {
		st := c.state[id]
		if st == nil {
			st = &cellState{}
			c.state[id] = st
		}
		if !cellapi.SameAgent(st.agent, agent) {
			// A new connection to the agent (an adopted cell): it may hold anything.
			st.agent, st.acked, st.unsupported = agent, 0, false
		}
	}
	for id, st := range c.state {
		_, ok := running[id]
		if !ok && now.Sub(st.syncedAt) > c.opts.SyncedGrace {
			delete(c.state, id)
			continue
		}
		if !st.unsupported && st.acked != version {
			stale = append(stale, id)
		}
	}
	c.mu.Unlock()
	for _, id := range stale {
		add(id)
	}
}

// push brings one cell to the current version: the delta from its acknowledged version, or
// the full table when it has none or answers Conflict.
func (c *Controller) push(ctx context.Context, cellID string, st *cellState) error {
	st.push.Lock()
	defer st.push.Unlock()
	c.mu.Lock()
	agent, acked, unsupported := st.agent, st.acked, st.unsupported
	c.mu.Unlock()
	if unsupported || acked == c.table.Version() {
		return nil
	}
	sp, ok := agent.(cellapi.ServiceProgrammer)
	if !ok {
		c.markUnsupported(cellID, st, "its client cannot put services")
		return nil
	}
	t := c.table.Since(acked)
	got, err := c.put(ctx, sp, t)
	if cellapi.IsConflict(err) && t.Base != 0 {
		t = c.table.Since(0)
		got, err = c.put(ctx, sp, t)
	}
	if cellapi.KindOf(err) == cellapi.KindBadVersion {
		c.markUnsupported(cellID, st, err.Error())
		return nil
	}
	if err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if got == nil || got.Version != t.Version {
		st.acked = 0 // unsure what it holds: the full table next time
		return fmt.Errorf("cell %s reports service table version %v after being sent %d", cellID, got, t.Version)
	}
	st.acked = t.Version
	return nil
}

func (c *Controller) put(ctx context.Context, sp cellapi.ServiceProgrammer, t *cellapi.ServiceTable) (*cellapi.ServiceTableStatus, error) {
	ctx, cancel := context.WithTimeout(ctx, c.opts.CallTimeout)
	defer cancel()
	return sp.PutServices(ctx, t)
}

// markUnsupported stops pushing to a cell whose agent does not program Services, and says so
// once.
func (c *Controller) markUnsupported(cellID string, st *cellState, why string) {
	c.mu.Lock()
	st.unsupported = true
	c.mu.Unlock()
	c.log.Warn("the cell's agent does not program Services; its pod will not reach ClusterIPs", "cell", cellID, "reason", why)
}
