package cells

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/kip-dev/kip/internal/admit"
	"github.com/kip-dev/kip/internal/annotations"
	"github.com/kip-dev/kip/internal/cellapi"
	"github.com/kip-dev/kip/internal/cloud"
	"github.com/kip-dev/kip/internal/instancetype"
	"github.com/kip-dev/kip/internal/selector"
)

// clientToken derives the launch idempotency token from the pod UID and the offering (its
// instance type and zone), so a retried launch (even from a restarted kip) returns the same
// instance, and launches of one pod in two zones never share a token (EC2 would refuse the
// second: another subnet is another request). At most 64 characters, as EC2 requires: the
// UID, a hash of type and zone, then as much of them as fits, for people reading it.
func clientToken(uid types.UID, instanceType, zone string) string {
	sum := sha256.Sum256([]byte(instanceType + "/" + zone))
	t := strings.ReplaceAll(string(uid), "-", "") + "-" + hex.EncodeToString(sum[:4]) + "-" + instanceType
	if zone != "" {
		t += "-" + zone
	}
	if len(t) > 64 {
		t = t[:64]
	}
	return t
}

// launch selects an instance type and launches the cell, falling back to the next candidate
// on capacity errors. admitted is called once the pod passed admission, before the type is
// chosen.
func (c *cell) launch(admitted func()) (*cloud.Instance, error) {
	c.m.mu.Lock()
	pod := c.pod.DeepCopy()
	c.m.mu.Unlock()

	opts, err := annotations.Parse(pod)
	if err != nil {
		return nil, fail(ReasonInvalidAnnotation, "%v", err)
	}
	if err := admit.Pod(pod, c.m.cfg.Admit); err != nil {
		reason := ReasonInvalidSpec
		if ae, ok := err.(*admit.Error); ok && ae.PodReason != "" {
			reason = ae.PodReason
		}
		return nil, fail(reason, "%v", err)
	}
	if _, err := admit.LocalhostProfiles(pod, c.m.cfg.SeccompProfileRoot, os.ReadFile); err != nil {
		return nil, fail(ReasonInvalidSpec, "%v", err)
	}
	c.m.mu.Lock()
	c.healthyAfter, c.lostAfter = opts.HealthyTimeout, opts.LostTimeout
	c.m.mu.Unlock()
	admitted()

	bo := newBackoff(time.Second, time.Minute)
	for {
		cands, err := c.candidates(pod)
		if errors.Is(err, errNoCapacityNow) {
			// What fits lacks capacity right now (a pod pinned to one type, say): wait for
			// the capacity memory to fade and choose again, as for a failed launch.
			c.m.mu.Lock()
			c.setWaiting(ReasonInsufficientCapacity, "every instance type that fits lacked capacity recently; retrying")
			c.m.mu.Unlock()
			c.publish()
			delay := bo.next()
			c.m.event(pod, corev1.EventTypeWarning, ReasonWaitingForCapacity, "Waiting for capacity: every instance type that fits lacked capacity recently; choosing again in %s", delay.Round(time.Second))
			if err := c.sleep(delay); err != nil {
				return nil, err
			}
			continue
		}
		if err != nil {
			return nil, err
		}
		inst, err := c.launchAny(pod, cands, opts)
		if inst != nil || err != nil {
			return inst, err
		}
		// Every candidate lacked capacity: wait and choose again.
		c.m.mu.Lock()
		c.setWaiting(ReasonInsufficientCapacity, fmt.Sprintf("no capacity for any instance type that fits; retrying (tried %s)", candNames(cands)))
		c.m.mu.Unlock()
		c.publish()
		delay := bo.next()
		c.m.event(pod, corev1.EventTypeWarning, ReasonWaitingForCapacity, "Waiting for capacity: no capacity for %s; trying again in %s", candNames(cands), delay.Round(time.Second))
		if err := c.sleep(delay); err != nil {
			return nil, err
		}
	}
}

// candidates asks the selector, ordering recently capacity-starved types last.
func (c *cell) candidates(pod *corev1.Pod) ([]selector.Candidate, error) {
	m := c.m
	bo := newBackoff(time.Second, 30*time.Second)
	for {
		types, err := m.deps.Cloud.InstanceTypes(c.ops)
		if err == nil {
			if m.deps.Selector == nil {
				return nil, fail(ReasonNoInstanceType, "no instance type selector configured")
			}
			choice, err := m.deps.Selector.Select(pod, types)
			if selector.IsNoFit(err) && fitsWhenAvailable(m.deps.Selector, pod, types) {
				return nil, errNoCapacityNow
			}
			if err != nil {
				return nil, fail(selectReason(err), "%v", err)
			}
			if choice == nil {
				return nil, fail(ReasonNoInstanceType, "no instance type fits the pod")
			}
			return candidates(m.capacity, choice), nil
		}
		if ierr := c.interrupted(); ierr != nil {
			return nil, ierr
		}
		c.log.Warn("listing instance types", "err", err)
		if err := c.sleep(bo.next()); err != nil {
			return nil, err
		}
	}
}

// errNoCapacityNow says that only offerings marked unavailable (recent capacity errors) fit.
var errNoCapacityNow = errors.New("every fitting offering lacks capacity now")

// fitsWhenAvailable reports whether the pod would fit the catalog were its unavailable
// offerings available: then nothing fits only for want of capacity, which passes.
func fitsWhenAvailable(sel Selector, pod *corev1.Pod, types []instancetype.InstanceType) bool {
	all := make([]instancetype.InstanceType, len(types))
	unavailable := false
	for i, t := range types {
		t.Offerings = slices.Clone(t.Offerings)
		for j := range t.Offerings {
			if !t.Offerings[j].Available {
				t.Offerings[j].Available, unavailable = true, true
			}
		}
		all[i] = t
	}
	if !unavailable {
		return false
	}
	_, err := sel.Select(pod, all)
	return err == nil
}

// selectReason classifies a selector error into the pod's failure reason.
func selectReason(err error) string {
	switch {
	case selector.IsBadAnnotation(err):
		return ReasonInvalidAnnotation
	case selector.IsBadPod(err):
		return ReasonInvalidSpec
	}
	return ReasonNoInstanceType
}

// maxBindTries bounds the standby cells one candidate tries to bind before launching.
const maxBindTries = 3

// launchAny tries each candidate in turn. It returns (nil, nil) when all lacked capacity.
func (c *cell) launchAny(pod *corev1.Pod, cands []selector.Candidate, opts annotations.Pod) (*cloud.Instance, error) {
	m := c.m
	for i, cand := range cands {
		if i == 0 || c.cand.Type.Name != cand.Type.Name {
			m.event(pod, corev1.EventTypeNormal, "InstanceTypeSelected", "Selected instance type %s (%s, $%.4f/h)", cand.Type.Name, market(cand.Offering), cand.Offering.Price)
		}
		c.m.mu.Lock()
		c.cand = cand
		c.timing.InstanceType = cand.Type.Name
		c.m.mu.Unlock()
		// A ready standby cell of this offering is bound instead of launching (standby.go);
		// after a few that could not be bound, the pod launches its own.
		if warmable(opts, cand) {
			m.noteDemand(cand)
			for tries := 0; tries < maxBindTries; tries++ {
				w := m.takeWarm(cand)
				if w == nil {
					break
				}
				m.mu.Lock()
				c.warmPool = &w.pool
				m.mu.Unlock()
				inst, err := c.bindWarm(pod, w)
				if err == nil {
					c.releaseWarmAfter(warmStartGrace)
					return inst, nil
				}
				c.releaseWarm()
				if !errors.Is(err, errNotBound) {
					return nil, err
				}
			}
		}
		inst, err := c.launchOne(pod, cand, opts)
		switch {
		case err == nil:
			return inst, nil
		case cloud.IsInsufficientCapacity(err):
			m.capacity.Remember(offeringOf(cand))
			m.event(pod, corev1.EventTypeWarning, ReasonInsufficientCapacity, "No capacity for %s (%s): %v", cand.Type.Name, market(cand.Offering), err)
			if ierr := c.interrupted(); ierr != nil {
				return nil, ierr
			}
			continue
		case cloud.IsInvalidSpec(err) && cloud.FieldOf(err) == "SecurityGroups":
			return nil, fail(ReasonInvalidAnnotation, "annotation %s=%q: the cloud refused the cell: %v", annotations.SecurityGroups, strings.Join(opts.SecurityGroups, ","), err)
		case cloud.IsInvalidSpec(err) && cloud.FieldOf(err) == "InstanceProfile":
			return nil, fail(ReasonInvalidAnnotation, "annotation %s=%q: the cloud refused the cell: %v", annotations.InstanceProfile, opts.InstanceProfile, err)
		case cloud.IsInvalidSpec(err):
			return nil, fail(ReasonInvalidSpec, "the cloud refused the cell: %v", err)
		default:
			return nil, err // interrupted
		}
	}
	return nil, nil
}

// launchOne launches one candidate, retrying transient errors with back-off. The launch call
// itself is never canceled by a deletion, so an instance it makes is always known and
// terminated.
func (c *cell) launchOne(pod *corev1.Pod, cand selector.Candidate, opts annotations.Pod) (*cloud.Instance, error) {
	m := c.m
	boot, err := m.bootstrap(c.cellID, cand.Offering.Spot)
	if err != nil {
		return nil, fail(ReasonInvalidSpec, "making the cell's bootstrap data: %v", err)
	}
	spec := cloud.LaunchSpec{
		CellID:           c.cellID,
		ClientToken:      clientToken(c.uid, cand.Type.Name, cand.Offering.Zone),
		InstanceType:     cand.Type.Name,
		Spot:             cand.Offering.Spot,
		UnlimitedCredits: cand.UnlimitedCredits,
		Zone:             cand.Offering.Zone,
		Tags:             m.tags(pod, c.cellID),
		BootstrapData:    boot,
		SecurityGroups:   opts.SecurityGroups,
		InstanceProfile:  opts.InstanceProfile,
		VolumeSizeGiB:    opts.VolumeSizeGiB,
		PrivateIPOnly:    opts.PrivateIPOnly,
	}
	bo := newBackoff(500*time.Millisecond, 30*time.Second)
	for {
		select {
		case m.launchSem <- struct{}{}:
		case <-c.deleted:
			return nil, errDeleted
		case <-m.ctx.Done():
			return nil, errClosed
		}
		inst, err := m.deps.Cloud.Launch(m.ctx, spec)
		<-m.launchSem
		if err == nil {
			now := m.clock.Now()
			c.m.mu.Lock()
			c.inst = inst
			c.timing.Launched = now
			c.m.mu.Unlock()
			c.observe()
			m.event(pod, corev1.EventTypeNormal, "CellLaunched", "Launched cell %s: instance %s (%s) at %s", c.cellID, inst.ID, inst.InstanceType, orNone(inst.PrivateIP))
			c.mirror(PhaseLaunching)
			return inst, nil
		}
		if cloud.IsInsufficientCapacity(err) || cloud.IsInvalidSpec(err) {
			return nil, err
		}
		if m.ctx.Err() != nil {
			return nil, errClosed
		}
		m.event(pod, corev1.EventTypeWarning, "LaunchFailed", "Launching cell %s (%s) failed, retrying: %v", c.cellID, cand.Type.Name, err)
		if err := c.sleep(bo.next()); err != nil {
			return nil, err
		}
	}
}

// waitRunning describes a pending instance with back-off until it runs with an address.
func (c *cell) waitRunning(inst *cloud.Instance) (*cloud.Instance, error) {
	m := c.m
	start := m.clock.Now()
	bo := newBackoff(200*time.Millisecond, 5*time.Second)
	for inst.State != cloud.StateRunning || inst.PrivateIP == "" {
		switch inst.State {
		case cloud.StateTerminated, cloud.StateTerminating:
			return nil, fail(ReasonCellLost, "cell %s (instance %s) was terminated while booting", c.cellID, inst.ID)
		}
		if m.clock.Since(start) > c.healthyTimeout() {
			return nil, fail(ReasonCellUnhealthy, "cell %s (instance %s) did not start within %s", c.cellID, inst.ID, c.healthyTimeout())
		}
		if err := c.sleep(bo.next()); err != nil {
			return nil, err
		}
		got, err := m.deps.Cloud.Describe(c.ops, inst.ID)
		switch {
		case cloud.IsNotFound(err):
			return nil, fail(ReasonCellLost, "cell %s (instance %s) disappeared while booting", c.cellID, inst.ID)
		case err != nil:
			if ierr := c.interrupted(); ierr != nil {
				return nil, ierr
			}
			c.log.Warn("describing instance", "instance", inst.ID, "err", err)
			continue
		}
		inst = got
		c.m.mu.Lock()
		c.inst = inst
		c.m.mu.Unlock()
	}
	return inst, nil
}

// tags are the tags every cell carries; they are what Recover rebuilds state from.
func (m *Manager) tags(pod *corev1.Pod, cellID string) map[string]string {
	return map[string]string{
		cloud.TagCluster:      m.cfg.ClusterName,
		cloud.TagNode:         m.node.Name,
		cloud.TagCellID:       cellID,
		cloud.TagPodNamespace: pod.Namespace,
		cloud.TagPodName:      pod.Name,
		cloud.TagPodUID:       string(pod.UID),
	}
}

// bootstrap makes the cell's boot data, as JSON: the CA and either the cell's serving
// certificate and key (naming the cell id) or, with Deps.Enrollment, a one-time token the
// agent trades for its certificate; a spot cell is told it is, so that its agent watches for
// interruptions. Every launch attempt makes new data; a relaunch that adopts an earlier
// attempt's instance (same client token) leaves that instance with the earlier data, which
// names the same cell.
func (m *Manager) bootstrap(cellID string, spot bool) ([]byte, error) {
	if m.deps.CA == nil {
		return nil, errors.New("no CA configured")
	}
	bs := cellapi.Bootstrap{CellID: cellID, CACert: m.deps.CA.CertPEM, Registry: m.deps.Registry}
	if e := m.deps.Enrollment; e != nil {
		token, err := e.Mint(cellID)
		if err != nil {
			return nil, fmt.Errorf("minting the enrollment token of cell %s: %w", cellID, err)
		}
		bs.EnrollToken, bs.EnrollURL = token, e.URL
	} else {
		cert, key, err := m.deps.CA.Issue(agentCertSpec(cellID, m.cfg.CertLifetime))
		if err != nil {
			return nil, fmt.Errorf("issuing certificate for cell %s: %w", cellID, err)
		}
		bs.Cert, bs.Key = cert, key
	}
	if spot {
		bs.Instance = &cellapi.InstanceBootstrap{Spot: true}
	}
	b, err := json.Marshal(bs)
	if err != nil {
		return nil, fmt.Errorf("encoding bootstrap for cell %s: %w", cellID, err)
	}
	return b, nil
}

func market(o instancetype.Offering) string {
	m := "on-demand"
	if o.Spot {
		m = "spot"
	}
	if o.Zone != "" {
		m += " in " + o.Zone
	}
	return m
}

func orNone(s string) string {
	if s == "" {
		return "(no address yet)"
	}
	return s
}

func candNames(cands []selector.Candidate) string {
	names := make([]string, len(cands))
	for i, c := range cands {
		names[i] = c.Type.Name
		if c.Offering.Zone != "" {
			names[i] += " in " + c.Offering.Zone
		}
	}
	return strings.Join(names, ", ")
}
