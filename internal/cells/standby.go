package cells

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/kip-dev/kip/internal/annotations"
	"github.com/kip-dev/kip/internal/cellapi"
	"github.com/kip-dev/kip/internal/cloud"
	"github.com/kip-dev/kip/internal/instancetype"
	"github.com/kip-dev/kip/internal/selector"
)

// Warm (standby) cells, docs/standby.md.
//
// A pool per StandbyPool keeps Count cells of its instance type and market booted, their agent
// answering, with no pod. Each is launched with its own cell id ("w-" and 12 random hex
// digits, the name in its certificate) and the tags cluster, node, cell and TagStandby=true.
// A pod whose candidate offering matches a ready one (same type, market, zone when the
// candidate names one, and no launch setting a standby cell cannot have: security groups,
// instance profile, volume size, private-IP-only, unlimited credits) takes it out of the pool
// instead of launching, in this order:
//
//  1. the pool forgets the cell (under Manager.mu: no second pod can take it);
//  2. its agent must answer Health, naming the cell;
//  3. the pod's tags (namespace, name, UID) are written on the instance (cloud.Tagger):
//     the binding record;
//  4. the pod's state machine goes on as for a launched cell: the agent's health, the
//     Services, PutPod with the cell's address as the pod's IP.
//
// A cell that fails 2 or 3 is terminated and the pod launches as usual; a bound cell is
// terminated when its pod ends, as every cell. The pool refills in the background through
// the launch semaphore (Options.LaunchConcurrency), a failing pool backing off.
//
// After a crash, the tags say everything (Recover): a standby cell with no pod tags holds no
// pod (its agent is asked, and one that runs a pod anyway is terminated) and is kept in its
// pool if running and wanted, else terminated; one with pod tags is its pod's cell and is
// adopted like any other (its pod put when it was not yet).

// StandbyPool is one cells.standby entry: Count warm cells of InstanceType, spot or on-demand.
// With Max above Count the pool follows demand: it keeps as many cells as pods asked for one
// of its kind in the last DemandWindow, at least Count and at most Max.
type StandbyPool struct {
	InstanceType string
	Spot         bool
	Count        int
	Max          int
}

func (p StandbyPool) key() poolKey { return poolKey{p.InstanceType, p.Spot} }

// elastic says the pool's size follows demand.
func (p StandbyPool) elastic() bool { return p.Max > p.Count }

// DemandWindow is how far back an elastic pool counts the pods that asked for one of its
// cells (Options.StandbyDemandWindow); the pool shrinks back, one window after the asking
// stopped, by terminating the ready cells above what is still asked for.
const DemandWindow = time.Minute

// demandTick is how often the pools are sized again while some pool is elastic.
const demandTick = 10 * time.Second

// noteDemand records that a pod asked for a warm cell of the offering cand (bound to one or
// not), for elastic pools of its kind.
func (m *Manager) noteDemand(cand selector.Candidate) {
	k := poolKey{cand.Type.Name, cand.Offering.Spot}
	if !slices.ContainsFunc(m.cfg.Standby, func(p StandbyPool) bool { return p.key() == k && p.elastic() }) {
		return
	}
	now := m.clock.Now()
	m.mu.Lock()
	m.warmDemand[k] = append(trimDemand(m.warmDemand[k], now, m.cfg.StandbyDemandWindow), now)
	m.mu.Unlock()
	m.kickStandby()
}

// trimDemand drops the times older than window before now.
func trimDemand(ts []time.Time, now time.Time, window time.Duration) []time.Time {
	i := 0
	for i < len(ts) && now.Sub(ts[i]) > window {
		i++
	}
	return ts[i:]
}

// target is how many cells pool p should have now. Call with m.mu held.
func (m *Manager) target(p StandbyPool, now time.Time) int {
	if !p.elastic() {
		return p.Count
	}
	d := trimDemand(m.warmDemand[p.key()], now, m.cfg.StandbyDemandWindow)
	m.warmDemand[p.key()] = d
	return min(max(p.Count, len(d)), p.Max)
}

// poolKey is what a warm cell is matched on.
type poolKey struct {
	instanceType string
	spot         bool
}

// warmCell is one standby cell while no pod owns it. Fields are guarded by Manager.mu.
type warmCell struct {
	id   string
	pool poolKey
	// cand is the offering it was launched from (its price).
	cand selector.Candidate
	// inst is nil until the launch returned.
	inst *cloud.Instance
	// agent is set, and ready true, once the agent answered; only ready cells are taken.
	agent cellapi.Agent
	ready bool
	// recovered: found by Recover; its agent must show it runs no pod before it is ready.
	recovered bool
}

// newWarmID returns a fresh standby cell id.
func newWarmID() string {
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err) // crypto/rand never fails on Linux
	}
	return "w-" + hex.EncodeToString(b[:])
}

// StartStandby starts keeping the Options.Standby pools full, in the background until
// Close. Call it after Recover, which gives back the pools their surviving cells. Without
// pools, or calling it again, does nothing.
func (m *Manager) StartStandby() {
	if len(m.cfg.Standby) == 0 {
		return
	}
	if _, ok := m.deps.Cloud.(cloud.Tagger); !ok {
		m.log.Error("standby cells need a backend that tags live instances; the pools stay empty", "backend", m.deps.Cloud.Name())
		return
	}
	m.warmOnce.Do(func() {
		// Elastic pools are sized again every demandTick, to shrink once demand is gone.
		var tick <-chan time.Time
		if slices.ContainsFunc(m.cfg.Standby, StandbyPool.elastic) {
			t := m.clock.NewTicker(demandTick)
			tick = t.C()
			m.wg.Add(1)
			go func() {
				defer m.wg.Done()
				<-m.ctx.Done()
				t.Stop()
			}()
		}
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			for {
				m.fillStandby()
				select {
				case <-m.warmKick:
				case <-tick:
				case <-m.ctx.Done():
					return
				}
			}
		}()
	})
}

// kickStandby wakes the pools' filler.
func (m *Manager) kickStandby() {
	select {
	case m.warmKick <- struct{}{}:
	default:
	}
}

// fillStandby launches the cells each pool lacks and, for an elastic pool whose demand
// fell, terminates the ready cells above its target (the newest first).
func (m *Manager) fillStandby() {
	var start, surplus []*warmCell
	now := m.clock.Now()
	m.mu.Lock()
	for _, p := range m.cfg.Standby {
		var cells []*warmCell
		for _, w := range m.warm {
			if w.pool == p.key() {
				cells = append(cells, w)
			}
		}
		want := m.target(p, now)
		for n := len(cells) + m.warmStarting[p.key()]; n < want; n++ {
			w := &warmCell{id: newWarmID(), pool: p.key()}
			m.warm[w.id] = w
			start = append(start, w)
		}
		if extra := len(cells) - want; extra > 0 {
			ready := slices.DeleteFunc(cells, func(w *warmCell) bool { return !w.ready || w.inst == nil })
			slices.SortFunc(ready, func(a, b *warmCell) int { return b.inst.LaunchTime.Compare(a.inst.LaunchTime) })
			for _, w := range ready[:min(extra, len(ready))] {
				delete(m.warm, w.id)
				surplus = append(surplus, w)
			}
		}
	}
	m.mu.Unlock()
	for _, w := range surplus {
		m.log.Info("standby pool shrinks with its demand; terminating a ready cell", "cell", w.id, "type", w.pool.instanceType, "spot", w.pool.spot)
		m.terminateWarm(w.id, w.inst)
	}
	for _, w := range start {
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			m.warmUp(w, nil)
		}()
	}
}

// warmUp launches w (or, with inst, takes the recovered instance), waits for its agent and
// puts it in its pool. On failure the cell is terminated and, after its pool's back-off,
// replaced.
func (m *Manager) warmUp(w *warmCell, inst *cloud.Instance) {
	err := m.bootWarm(w, inst)
	if err == nil {
		return
	}
	if errors.Is(err, errClosed) {
		return // kip stops: the next kip's Recover finds the cell by its tags
	}
	m.mu.Lock()
	_, still := m.warm[w.id]
	m.warmFails[w.pool]++
	fails := m.warmFails[w.pool]
	inst = w.inst
	w.inst, w.agent, w.ready = nil, nil, false
	m.mu.Unlock()
	if !still {
		return // dropped meanwhile (MarkLost), and terminated by whoever dropped it
	}
	// The failed cell is terminated; its entry stays through the pool's back-off so that
	// the pool does not relaunch at once.
	delay := min(time.Second<<min(fails-1, 6), time.Minute)
	m.log.Warn("standby cell failed; replacing it", "cell", w.id, "type", w.pool.instanceType, "spot", w.pool.spot, "retryIn", delay, "err", err)
	m.terminateWarm(w.id, inst)
	if m.sleep(delay) != nil {
		return
	}
	m.mu.Lock()
	if m.warm[w.id] == w {
		delete(m.warm, w.id)
	}
	m.mu.Unlock()
	m.kickStandby()
}

// bootWarm brings w up: launch (unless recovered), running, agent healthy (and, recovered,
// running no pod), Services programmed; then w is ready for a pod.
func (m *Manager) bootWarm(w *warmCell, inst *cloud.Instance) error {
	if inst == nil {
		var err error
		if inst, err = m.launchWarm(w); err != nil {
			return err
		}
	}
	m.mu.Lock()
	w.inst = inst
	m.mu.Unlock()
	m.mirrorWarm(w)
	inst, err := m.waitWarmRunning(inst)
	if err != nil {
		return err
	}
	m.mu.Lock()
	w.inst = inst
	recovered := w.recovered
	m.mu.Unlock()
	agent, err := m.warmAgent(w.id, inst)
	if err != nil {
		return err
	}
	if recovered {
		// The tags say no pod was bound; the agent must agree, or the cell is not reused.
		ctx, cancel := context.WithTimeout(m.ctx, probeTimeout)
		st, err := agent.GetPod(ctx)
		cancel()
		switch {
		case err == nil:
			return fmt.Errorf("standby cell %s runs pod %s although no pod is bound to it", w.id, st.UID)
		case !cellapi.IsNotFound(err):
			return fmt.Errorf("asking standby cell %s for its pod: %w", w.id, err)
		}
	}
	if m.deps.Services != nil {
		if err := m.deps.Services.Sync(m.ctx, w.id, agent); err != nil {
			m.log.Info("standby cell: Services not programmed yet; they are retried", "cell", w.id, "err", err)
		}
	}
	m.mu.Lock()
	_, still := m.warm[w.id]
	if still {
		w.agent, w.ready = agent, true
		m.warmFails[w.pool] = 0
	}
	m.mu.Unlock()
	if !still {
		return nil // dropped meanwhile: whoever dropped it terminated it
	}
	m.log.Info("standby cell ready", "cell", w.id, "instance", inst.ID, "type", inst.InstanceType, "ip", inst.PrivateIP)
	m.mirrorWarm(w)
	return nil
}

// launchWarm launches a standby cell of w's pool through the launch semaphore, retrying
// transient errors; capacity and spec errors end it (the caller backs off).
func (m *Manager) launchWarm(w *warmCell) (*cloud.Instance, error) {
	types, err := m.deps.Cloud.InstanceTypes(m.ctx)
	if err != nil {
		if m.ctx.Err() != nil {
			return nil, errClosed
		}
		return nil, fmt.Errorf("listing instance types: %w", err)
	}
	cand, err := standbyOffering(types, w.pool)
	if err != nil {
		return nil, err
	}
	if m.capacity.Recent(offeringOf(cand)) {
		return nil, fmt.Errorf("instance type %s (%s) lacked capacity recently", cand.Type.Name, market(cand.Offering))
	}
	m.mu.Lock()
	w.cand = cand
	m.mu.Unlock()
	boot, err := m.bootstrap(w.id, w.pool.spot)
	if err != nil {
		return nil, err
	}
	spec := cloud.LaunchSpec{
		CellID:        w.id,
		ClientToken:   "standby-" + w.id,
		InstanceType:  w.pool.instanceType,
		Spot:          w.pool.spot,
		Tags:          m.standbyTags(w.id),
		BootstrapData: boot,
	}
	bo := newBackoff(500*time.Millisecond, 30*time.Second)
	for {
		select {
		case m.launchSem <- struct{}{}:
		case <-m.ctx.Done():
			return nil, errClosed
		}
		inst, err := m.deps.Cloud.Launch(m.ctx, spec)
		<-m.launchSem
		switch {
		case err == nil:
			return inst, nil
		case cloud.IsInsufficientCapacity(err):
			m.capacity.Remember(offeringOf(cand))
			return nil, err
		case cloud.IsInvalidSpec(err):
			return nil, err
		case m.ctx.Err() != nil:
			return nil, errClosed
		}
		m.log.Info("launching a standby cell failed; retrying", "cell", w.id, "err", err)
		if err := m.sleep(bo.next()); err != nil {
			return nil, err
		}
	}
}

// standbyOffering is the catalog's offering of the pool's type and market (the cheapest
// available one).
func standbyOffering(types []instancetype.InstanceType, p poolKey) (selector.Candidate, error) {
	i := slices.IndexFunc(types, func(t instancetype.InstanceType) bool { return t.Name == p.instanceType })
	if i < 0 {
		return selector.Candidate{}, fmt.Errorf("cells.standby: instance type %q is not in the catalog", p.instanceType)
	}
	cand := selector.Candidate{Type: types[i]}
	found := false
	for _, o := range types[i].Offerings {
		if o.Spot == p.spot && o.Available && (!found || o.Price < cand.Offering.Price) {
			cand.Offering, found = o, true
		}
	}
	if !found {
		return cand, fmt.Errorf("cells.standby: instance type %q has no available %s offering", p.instanceType, market(instancetype.Offering{Spot: p.spot}))
	}
	return cand, nil
}

// waitWarmRunning describes a pending standby instance with back-off until it runs with an
// address, for at most the healthy timeout.
func (m *Manager) waitWarmRunning(inst *cloud.Instance) (*cloud.Instance, error) {
	start := m.clock.Now()
	bo := newBackoff(200*time.Millisecond, 5*time.Second)
	for inst.State != cloud.StateRunning || inst.PrivateIP == "" {
		if inst.State == cloud.StateTerminated || inst.State == cloud.StateTerminating {
			return nil, fmt.Errorf("instance %s was terminated while booting", inst.ID)
		}
		if m.clock.Since(start) > m.cfg.HealthyTimeout {
			return nil, fmt.Errorf("instance %s did not start within %s", inst.ID, m.cfg.HealthyTimeout)
		}
		if err := m.sleep(bo.next()); err != nil {
			return nil, err
		}
		got, err := m.deps.Cloud.Describe(m.ctx, inst.ID)
		switch {
		case cloud.IsNotFound(err):
			return nil, fmt.Errorf("instance %s disappeared while booting", inst.ID)
		case err == nil:
			inst = got
		case m.ctx.Err() != nil:
			return nil, errClosed
		}
	}
	return inst, nil
}

// warmAgent dials the standby cell's agent and waits, for at most the healthy timeout, until
// it answers Health as the cell.
func (m *Manager) warmAgent(cellID string, inst *cloud.Instance) (cellapi.Agent, error) {
	start := m.clock.Now()
	bo := newBackoff(20*time.Millisecond, 500*time.Millisecond)
	var agent cellapi.Agent
	var lastErr error
	for {
		if agent == nil {
			a, err := m.dial(m.ctx, inst, cellID)
			agent, lastErr = a, err
		}
		if agent != nil {
			ctx, cancel := context.WithTimeout(m.ctx, probeTimeout)
			h, err := agent.Health(ctx)
			cancel()
			switch {
			case err == nil && h.CellID != "" && h.CellID != cellID:
				lastErr = fmt.Errorf("agent answers as cell %q", h.CellID)
			case err == nil:
				return agent, nil
			default:
				lastErr = err
			}
		}
		if m.ctx.Err() != nil {
			return nil, errClosed
		}
		if m.clock.Since(start) >= m.cfg.HealthyTimeout {
			return nil, fmt.Errorf("agent at %s did not become healthy within %s: %v", inst.PrivateIP, m.cfg.HealthyTimeout, lastErr)
		}
		if err := m.sleep(bo.next()); err != nil {
			return nil, err
		}
	}
}

// sleep waits d on the manager's clock, or until the manager closes (errClosed).
func (m *Manager) sleep(d time.Duration) error {
	t := m.clock.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C():
		return nil
	case <-m.ctx.Done():
		return errClosed
	}
}

// dropWarm forgets w and terminates its instance in the background (a cell once out of the
// pool never returns to it).
func (m *Manager) dropWarm(w *warmCell) {
	m.mu.Lock()
	delete(m.warm, w.id)
	inst := w.inst
	m.mu.Unlock()
	m.kickStandby()
	m.terminateWarm(w.id, inst)
}

// terminateWarm terminates a standby cell that no pod owns, in the background; a failure is
// left to garbage collection (the cell is no pod's and no pool's any more).
func (m *Manager) terminateWarm(cellID string, inst *cloud.Instance) {
	if inst == nil {
		// The launch did not return: the cell, if made, is found by its tags.
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			ctx, cancel := context.WithTimeout(context.WithoutCancel(m.ctx), 2*time.Minute)
			defer cancel()
			insts, err := m.deps.Cloud.List(ctx, map[string]string{cloud.TagCluster: m.cfg.ClusterName, cloud.TagCellID: cellID})
			if err != nil {
				m.log.Warn("listing a dropped standby cell; garbage collection will find it", "cell", cellID, "err", err)
				return
			}
			for _, in := range insts {
				m.terminateInstance(ctx, cellID, in.ID)
			}
		}()
		return
	}
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		ctx, cancel := context.WithTimeout(context.WithoutCancel(m.ctx), 2*time.Minute)
		defer cancel()
		m.terminateInstance(ctx, cellID, inst.ID)
	}()
}

func (m *Manager) terminateInstance(ctx context.Context, cellID, id string) {
	if err := m.deps.Cloud.Terminate(ctx, id); err != nil && !cloud.IsNotFound(err) {
		m.log.Warn("terminating a standby cell failed; garbage collection will retry", "cell", cellID, "instance", id, "err", err)
		return
	}
	m.mirrorDelete(cellID)
}

// standbyTags are the tags of a standby cell before any pod is bound to it.
func (m *Manager) standbyTags(cellID string) map[string]string {
	return map[string]string{
		cloud.TagCluster: m.cfg.ClusterName,
		cloud.TagNode:    m.node.Name,
		cloud.TagCellID:  cellID,
		cloud.TagStandby: "true",
	}
}

// bindingTags are the tags that bind a standby cell to pod.
func bindingTags(pod *corev1.Pod) map[string]string {
	return map[string]string{
		cloud.TagPodNamespace: pod.Namespace,
		cloud.TagPodName:      pod.Name,
		cloud.TagPodUID:       string(pod.UID),
	}
}

// isStandby reports whether inst was launched as a standby cell.
func isStandby(inst *cloud.Instance) bool { return inst.Tags[cloud.TagStandby] == "true" }

// mirrorWarm upserts a standby cell's Cell resource: no pod, phase Booting until its agent
// answered, then Standby.
func (m *Manager) mirrorWarm(w *warmCell) {
	if m.deps.Mirror == nil {
		return
	}
	m.mu.Lock()
	phase := PhaseBooting
	if w.ready {
		phase = PhaseStandby
	}
	info := CellInfo{CellID: w.id, Phase: phase, InstanceType: w.pool.instanceType, Spot: w.pool.spot,
		PricePerHour: w.cand.Offering.Price}
	if w.inst != nil {
		info.InstanceID, info.IP, info.LaunchTime = w.inst.ID, w.inst.PrivateIP, w.inst.LaunchTime
	}
	m.mu.Unlock()
	if err := m.deps.Mirror.Upsert(m.ctx, info); err != nil {
		m.log.Warn("mirroring cell", "cell", info.CellID, "err", err)
	}
}

// warmable reports whether a pod with opts may run on a standby cell of cand's offering: a
// standby cell is launched with the backend's defaults, so any launch setting of the pod's
// rules it out.
func warmable(opts annotations.Pod, cand selector.Candidate) bool {
	return len(opts.SecurityGroups) == 0 && opts.InstanceProfile == "" && opts.VolumeSizeGiB == 0 &&
		!opts.PrivateIPOnly && !cand.UnlimitedCredits
}

// takeWarm removes from its pool and returns a ready standby cell matching cand, the oldest
// first, or nil. The caller owns it from then on: it binds it or terminates it, and calls
// releaseWarm once the pod started or the bind failed; until then the pool counts the cell
// and does not replace it.
func (m *Manager) takeWarm(cand selector.Candidate) *warmCell {
	m.mu.Lock()
	var best *warmCell
	for _, w := range m.warm {
		if !w.ready || w.inst == nil || w.inst.InstanceType != cand.Type.Name || w.inst.Spot != cand.Offering.Spot {
			continue
		}
		if cand.Offering.Zone != "" && w.inst.Zone != cand.Offering.Zone {
			continue
		}
		if best == nil || w.inst.LaunchTime.Before(best.inst.LaunchTime) || (w.inst.LaunchTime.Equal(best.inst.LaunchTime) && w.id < best.id) {
			best = w
		}
	}
	if best != nil {
		delete(m.warm, best.id)
		m.warmStarting[best.pool]++
	}
	m.mu.Unlock()
	return best
}

// errNotBound says a standby cell could not be bound; the pod launches a cell instead.
var errNotBound = errors.New("the standby cell could not be bound")

// bindWarm binds the standby cell w to the pod: its agent must answer as the cell, then the
// pod's tags are written on it (the binding record Recover reads), and the cell becomes the
// pod's. On errNotBound w has been terminated and the pod should launch as usual.
func (c *cell) bindWarm(pod *corev1.Pod, w *warmCell) (*cloud.Instance, error) {
	m := c.m
	m.mu.Lock()
	inst, agent, cand := w.inst, w.agent, w.cand
	m.mu.Unlock()
	ctx, cancel := context.WithTimeout(c.ops, probeTimeout)
	h, err := agent.Health(ctx)
	cancel()
	if err == nil && h.CellID != "" && h.CellID != w.id {
		err = fmt.Errorf("agent answers as cell %q", h.CellID)
	}
	if err != nil {
		m.log.Info("standby cell did not answer; terminating it", "cell", w.id, "pod", c.key, "err", err)
		m.terminateWarm(w.id, inst)
		if ierr := c.interrupted(); ierr != nil {
			return nil, ierr
		}
		return nil, errNotBound
	}
	// From here the cell is the pod's: the gc sees it under the pod (EachCell).
	m.mu.Lock()
	c.cellID = w.id
	c.timing.CellID = w.id
	m.mu.Unlock()
	tagger, _ := m.deps.Cloud.(cloud.Tagger)
	if tagger == nil {
		err = errors.New("the backend cannot tag live instances")
	} else {
		tctx, tcancel := context.WithTimeout(context.WithoutCancel(m.ctx), 30*time.Second)
		err = tagger.SetTags(tctx, inst.ID, bindingTags(pod))
		tcancel()
	}
	if err != nil {
		// The tags may be written anyway (a lost answer): the cell is terminated, and the
		// pod's own termination lists its instances by pod UID too.
		m.log.Warn("binding a standby cell: writing the pod's tags failed; terminating the cell and launching one", "cell", w.id, "pod", c.key, "err", err)
		m.terminateWarm(w.id, inst)
		m.mu.Lock()
		c.cellID = CellID(c.uid)
		c.timing.CellID = c.cellID
		m.mu.Unlock()
		if ierr := c.interrupted(); ierr != nil {
			return nil, ierr
		}
		return nil, errNotBound
	}
	bound := *inst
	bound.Tags = maps.Clone(inst.Tags)
	maps.Copy(bound.Tags, bindingTags(pod))
	now := m.clock.Now()
	m.mu.Lock()
	c.inst = &bound
	c.agent = agent
	c.warmBound = true
	c.cand = cand
	c.timing.InstanceType = bound.InstanceType
	c.timing.Launched = now
	c.log = m.log.With("pod", c.key, "cell", w.id)
	m.mu.Unlock()
	c.observe()
	m.event(pod, corev1.EventTypeNormal, "CellBound", "Bound standby cell %s: instance %s (%s) at %s", w.id, bound.ID, bound.InstanceType, bound.PrivateIP)
	c.log.Info("bound a standby cell", "instance", bound.ID)
	return &bound, nil
}

// recoverStandby takes back the standby cells (tagged standby, no pod) found by Recover:
// running ones of a configured pool, up to its count, go back to it once their agent shows
// it runs no pod; the rest are returned to be terminated. Cells the pools already know
// (Recover called again) are left alone.
func (m *Manager) recoverStandby(insts []*cloud.Instance, catalog []instancetype.InstanceType) (orphans []*cloud.Instance) {
	want := map[poolKey]int{}
	for _, p := range m.cfg.Standby {
		want[p.key()] += p.Count
	}
	var keep []*warmCell
	var keepInst []*cloud.Instance
	m.mu.Lock()
	for _, w := range m.warm {
		want[w.pool]--
	}
	for _, inst := range insts {
		id := inst.Tags[cloud.TagCellID]
		if _, ok := m.warm[id]; ok {
			continue
		}
		k := poolKey{inst.InstanceType, inst.Spot}
		if inst.State != cloud.StateRunning || id == "" || want[k] <= 0 {
			orphans = append(orphans, inst)
			continue
		}
		want[k]--
		w := &warmCell{id: id, pool: k, inst: inst, recovered: true, cand: adoptedCandidate(inst, catalog)}
		m.warm[id] = w
		keep = append(keep, w)
		keepInst = append(keepInst, inst)
	}
	m.mu.Unlock()
	for i, w := range keep {
		m.log.Info("recovered a standby cell", "cell", w.id, "instance", keepInst[i].ID, "type", keepInst[i].InstanceType)
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			m.warmUp(w, keepInst[i])
		}()
	}
	return orphans
}

// StandbyCells returns the ids of the standby cells no pod owns yet, with whether each is
// ready to be bound, for tests and the debug endpoints.
func (m *Manager) StandbyCells() map[string]bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make(map[string]bool, len(m.warm))
	for id, w := range m.warm {
		out[id] = w.ready
	}
	return out
}

// releaseWarm ends the start of a pod on a cell taken from a standby pool (takeWarm): its
// pool replaces the cell now. A replacement booted at once would take the CPU the pod's
// first container start needs on a small host (a local cell's agent, its namespaces and
// cgroups): on 2 cores, runc took 146-260 ms to start a container in a just-bound cell
// while the replacement booted, against 107 ms in a fresh one.
func (c *cell) releaseWarm() {
	m := c.m
	m.mu.Lock()
	k := c.warmPool
	if k != nil {
		if m.warmStarting[*k]--; m.warmStarting[*k] <= 0 {
			delete(m.warmStarting, *k)
		}
		c.warmPool = nil
	}
	m.mu.Unlock()
	if k != nil {
		m.kickStandby()
	}
}

// warmStartGrace bounds how long a pool waits for the pod on a cell taken from it to start
// (a slow image pull) before replacing the cell.
const warmStartGrace = 2 * time.Second

// releaseWarmAfter calls releaseWarm after d, unless the pod started (or failed) first.
func (c *cell) releaseWarmAfter(d time.Duration) {
	m := c.m
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		t := m.clock.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C():
		case <-c.finished:
		case <-m.ctx.Done():
			return
		}
		c.releaseWarm()
	}()
}
