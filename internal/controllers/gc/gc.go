// Package gc is the controller that reconciles the cells manager with the cloud, off the
// critical path, with one List call per pass for all cells: a pod whose instance is gone fails
// (CellLost) even when its agent's status stream hangs instead of breaking, and tagged instances
// no pod owns (a failed terminate, a launch whose pod went away) are terminated. Every finding
// must hold for two passes in a row (and a vanished instance is confirmed by Describe), so a
// cloud whose List lags behind a launch never causes harm.
//
// Orphans are collected in any state short of terminated: running, pending, and terminating
// ones nobody is terminating any more (a terminate that was interrupted, or a local cell whose
// network namespace vanished with a host reboot, which still holds its directory, address and
// agent key). Instances of this cluster tagged with one of the node's former names
// (Options.FormerNodeNames) are orphans too. Each is logged; a pod that loses its cell gets
// the cells manager's CellLost Event.
package gc

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"k8s.io/utils/clock"

	"github.com/kip-dev/kip/internal/cloud"
	"github.com/kip-dev/kip/internal/controllers/loop"
)

// misses is how many consecutive passes must agree before the controller acts.
const misses = 2

// Cells is the view of the cells manager the controller needs; *cells.Manager implements it.
type Cells interface {
	// EachCell calls visit for every pod the manager runs, with its pod UID, its cell id and,
	// while its instance must exist (launched and not stopping), the instance id, else "";
	// and for every standby cell no pod owns yet, with an empty pod UID.
	EachCell(visit func(podUID, cellID, instanceID string))
	// MarkLost fails the pod of cellID with CellLost and message, and terminates its cell.
	MarkLost(cellID, message string)
}

// Mirror is told about the cells the controller terminates.
type Mirror interface {
	Delete(ctx context.Context, cellID string) error
}

// Options configure the controller.
type Options struct {
	// Interval is the time between passes.
	Interval time.Duration
	// ClusterName and NodeName select the instances that are kip's on this node (their tags).
	ClusterName, NodeName string
	// FormerNodeNames are names this node had before (cells.formerNodeNames): the cluster's
	// instances tagged with one of them have no pod here any more and are terminated.
	FormerNodeNames []string
}

// Controller is the garbage collector. Make it with New and start it with Run.
type Controller struct {
	opts   Options
	cells  Cells
	cloud  cloud.Cloud
	mirror Mirror // may be nil
	clock  clock.WithTicker
	log    *slog.Logger

	missing map[string]int // cell id → consecutive passes without its instance
	orphan  map[string]int // instance id → consecutive passes without a pod
}

// New returns a controller. mirror, clk and log may be nil.
func New(opts Options, cells Cells, c cloud.Cloud, mirror Mirror, clk clock.WithTicker, log *slog.Logger) *Controller {
	if clk == nil {
		clk = clock.RealClock{}
	}
	if log == nil {
		log = slog.Default()
	}
	return &Controller{opts: opts, cells: cells, cloud: c, mirror: mirror, clock: clk, log: log.With("component", "gc"),
		missing: map[string]int{}, orphan: map[string]int{}}
}

// Run makes a pass every Interval until ctx ends. A zero Interval runs nothing.
func (c *Controller) Run(ctx context.Context) {
	if c.opts.Interval <= 0 {
		return
	}
	loop.Run(ctx, "gc", c.clock, c.opts.Interval, func(ctx context.Context) time.Duration {
		c.pass(ctx)
		return c.opts.Interval
	})
}

// pass is one reconciliation.
func (c *Controller) pass(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	insts, err := c.cloud.List(ctx, map[string]string{cloud.TagCluster: c.opts.ClusterName, cloud.TagNode: c.opts.NodeName})
	if err != nil {
		c.log.Warn("sweeping cells: listing instances", "err", err)
		return
	}
	former := map[string]string{} // instance id -> the former node name it is tagged with
	for _, name := range c.opts.FormerNodeNames {
		if name == c.opts.NodeName {
			continue
		}
		old, err := c.cloud.List(ctx, map[string]string{cloud.TagCluster: c.opts.ClusterName, cloud.TagNode: name})
		if err != nil {
			c.log.Warn("sweeping cells: listing instances of a former node name", "node", name, "err", err)
			continue
		}
		for _, in := range old {
			former[in.ID] = name
		}
		insts = append(insts, old...)
	}
	live := map[string]bool{}
	for _, in := range insts {
		if in.State != cloud.StateTerminated && in.State != cloud.StateTerminating {
			live[in.ID] = true
		}
	}

	type suspect struct{ cellID, instanceID string }
	var suspects []suspect
	owners := map[string]bool{}
	seenCells := map[string]bool{}
	c.cells.EachCell(func(podUID, cellID, instanceID string) {
		if podUID != "" {
			owners[podUID] = true
		}
		seenCells[cellID] = true
		if instanceID == "" || live[instanceID] {
			delete(c.missing, cellID)
			return
		}
		c.missing[cellID]++
		if c.missing[cellID] >= misses {
			suspects = append(suspects, suspect{cellID, instanceID})
		}
	})
	for id := range c.missing {
		if !seenCells[id] {
			delete(c.missing, id)
		}
	}

	for _, s := range suspects {
		// Confirm with Describe: List may lag.
		in, err := c.cloud.Describe(ctx, s.instanceID)
		if cloud.IsNotFound(err) || (err == nil && (in.State == cloud.StateTerminated || in.State == cloud.StateTerminating)) {
			c.cells.MarkLost(s.cellID, fmt.Sprintf("cell %s (instance %s) is gone", s.cellID, s.instanceID))
		}
	}

	seen := map[string]bool{}
	for _, in := range insts {
		// Terminated instances hold nothing. Terminating ones nobody owns any more are
		// terminated again (Terminate may be called many times): one whose terminate was
		// interrupted, or a local cell whose netns vanished, still holds resources.
		if in.State == cloud.StateTerminated {
			continue
		}
		seen[in.ID] = true
		// A pod's instance is owned through its pod; a standby cell's (no pod UID tag)
		// through its cell id.
		uid := in.Tags[cloud.TagPodUID]
		if former[in.ID] == "" && (owners[uid] || (uid == "" && seenCells[in.Tags[cloud.TagCellID]])) {
			delete(c.orphan, in.ID)
			continue
		}
		c.orphan[in.ID]++
		if c.orphan[in.ID] < misses {
			continue
		}
		why := "no pod of this node owns it"
		switch {
		case former[in.ID] != "":
			why = "it belongs to the node's former name " + former[in.ID]
		case in.State == cloud.StateTerminating:
			why = "it was left terminating (an interrupted terminate, or its network namespace vanished)"
		}
		c.log.Info("terminating orphan cell", "instance", in.ID, "cell", in.Tags[cloud.TagCellID], "state", in.State,
			"pod", in.Tags[cloud.TagPodNamespace]+"/"+in.Tags[cloud.TagPodName], "why", why)
		if err := c.cloud.Terminate(ctx, in.ID); err != nil && !cloud.IsNotFound(err) {
			c.log.Warn("terminating orphan cell", "instance", in.ID, "err", err)
			continue
		}
		delete(c.orphan, in.ID)
		if c.mirror != nil {
			if err := c.mirror.Delete(ctx, in.Tags[cloud.TagCellID]); err != nil {
				c.log.Warn("mirroring cell", "cell", in.Tags[cloud.TagCellID], "err", err)
			}
		}
	}
	for id := range c.orphan {
		if !seen[id] {
			delete(c.orphan, id)
		}
	}
}
