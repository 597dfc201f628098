package cells

import (
	"context"
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
}

// startSweeper starts the sweep loop once; Recover calls it, when the manager knows the truth.
func (m *Manager) startSweeper() {
	m.sweepOnce.Do(func() {
		interval := m.cfg.StatusInterval.Duration
		if interval <= 0 {
			return
		}
		s := &sweeper{m: m, missing: map[string]int{}, orphan: map[string]int{}}
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
			sc.c.markLost()
		}
	}

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
		if m.deps.Mirror != nil {
			if err := m.deps.Mirror.Delete(ctx, in.Tags[cloud.TagCellID]); err != nil {
				m.log.Warn("deleting orphan cell mirror", "err", err)
			}
		}
	}
	for id := range s.orphan {
		if !seen[id] {
			delete(s.orphan, id)
		}
	}
}
