package cells

import (
	"context"
	"fmt"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/types"

	"github.com/kip-dev/kip/internal/cloud"
)

// sweepMisses is how many consecutive sweeps must agree before the sweep acts, so a cloud
// whose List lags behind a launch never causes harm.
const sweepMisses = 2

// sweeper reconciles the manager's cells with the cloud once per status interval, with one
// List call for all cells: cells whose instance is gone fail (CellLost) even when their
// agent's stream hangs instead of breaking, and tagged instances no pod owns (a failed
// terminate, a launch whose pod went away) are terminated.
type sweeper struct {
	m       *Manager
	missing map[string]int // cell key → consecutive sweeps without its instance
	orphan  map[string]int // instance id → consecutive sweeps without a pod
	// failingSince is when each running cell's agent first failed a probe in a row.
	failingSince map[*cell]time.Time
}

// startSweeper starts the sweep loop once; Recover calls it, when the manager knows the truth.
func (m *Manager) startSweeper() {
	m.sweepOnce.Do(func() {
		interval := m.cfg.StatusInterval
		if interval <= 0 {
			return
		}
		s := &sweeper{m: m, missing: map[string]int{}, orphan: map[string]int{}, failingSince: map[*cell]time.Time{}}
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			t := m.clock.NewTicker(interval)
			defer t.Stop()
			for {
				select {
				case <-m.ctx.Done():
					return
				case <-t.C():
					s.sweep(m.ctx)
				}
			}
		}()
	})
}

func (s *sweeper) sweep(ctx context.Context) {
	m := s.m
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	insts, err := m.deps.Cloud.List(ctx, map[string]string{cloud.TagCluster: m.cfg.ClusterName, cloud.TagNode: m.node.Name})
	if err != nil {
		m.log.Warn("sweeping cells: listing instances", "err", err)
		return
	}
	live := map[string]bool{}
	for _, in := range insts {
		if in.State != cloud.StateTerminated && in.State != cloud.StateTerminating {
			live[in.ID] = true
		}
	}

	type check struct {
		c  *cell
		id string
	}
	var suspects []check
	owners := map[types.UID]bool{}
	m.mu.Lock()
	for key, c := range m.cells {
		if c.stage == stageDone {
			continue
		}
		owners[c.uid] = true
		if c.stage < stageBooting || c.stage >= stageStopping || c.inst == nil {
			delete(s.missing, key)
			continue
		}
		if live[c.inst.ID] {
			delete(s.missing, key)
			continue
		}
		s.missing[key]++
		if s.missing[key] >= sweepMisses {
			suspects = append(suspects, check{c, c.inst.ID})
		}
	}
	m.mu.Unlock()

	for _, sc := range suspects {
		// Confirm with Describe: List may lag.
		in, err := m.deps.Cloud.Describe(ctx, sc.id)
		if cloud.IsNotFound(err) || (err == nil && (in.State == cloud.StateTerminated || in.State == cloud.StateTerminating)) {
			sc.c.markLost(fmt.Sprintf("cell %s (instance %s) is gone", sc.c.cellID, sc.id))
		}
	}
	s.probe(ctx)

	seen := map[string]bool{}
	for _, in := range insts {
		if !live[in.ID] {
			continue
		}
		seen[in.ID] = true
		if owners[types.UID(in.Tags[cloud.TagPodUID])] {
			delete(s.orphan, in.ID)
			continue
		}
		s.orphan[in.ID]++
		if s.orphan[in.ID] < sweepMisses {
			continue
		}
		m.log.Info("terminating orphan cell", "instance", in.ID, "cell", in.Tags[cloud.TagCellID])
		if err := m.deps.Cloud.Terminate(ctx, in.ID); err != nil && !cloud.IsNotFound(err) {
			m.log.Warn("terminating orphan cell", "instance", in.ID, "err", err)
			continue
		}
		delete(s.orphan, in.ID)
		m.mirrorDelete(in.Tags[cloud.TagCellID])
	}
	for id := range s.orphan {
		if !seen[id] {
			delete(s.orphan, id)
		}
	}
}

// probe checks the health of every running cell's agent in parallel. A status stream can
// hang without breaking when a cell is cut off the network; an agent that fails every probe
// for longer than the healthy timeout marks its cell lost.
func (s *sweeper) probe(ctx context.Context) {
	m := s.m
	var running []*cell
	m.mu.Lock()
	for _, c := range m.cells {
		if c.stage == stageRunning && c.agent != nil {
			running = append(running, c)
		}
	}
	m.mu.Unlock()

	timeout := min(5*time.Second, m.cfg.StatusInterval)
	results := make([]error, len(running))
	var wg sync.WaitGroup
	for i, c := range running {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m.mu.Lock()
			agent := c.agent
			m.mu.Unlock()
			pctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			_, results[i] = agent.Health(pctx)
		}()
	}
	wg.Wait()

	now := m.clock.Now()
	alive := map[*cell]bool{}
	for i, c := range running {
		alive[c] = true
		if results[i] == nil {
			delete(s.failingSince, c)
			continue
		}
		since, ok := s.failingSince[c]
		if !ok {
			s.failingSince[c] = now
			continue
		}
		if limit := c.healthyTimeout(); now.Sub(since) >= limit {
			c.markLost(fmt.Sprintf("cell %s agent unreachable for %s: %v", c.cellID, limit, results[i]))
		}
	}
	for c := range s.failingSince {
		if !alive[c] {
			delete(s.failingSince, c)
		}
	}
}
