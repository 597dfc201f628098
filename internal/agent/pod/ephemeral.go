package pod

import (
	"fmt"
	"path"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/kip-dev/kip/internal/cellapi"
)

// AddEphemeral starts each ephemeral container of list the pod does not have yet, once, as
// kubelet does (retried until it could be created, see runEphemeral): never restarted, no probes, in the pod's network and IPC namespaces, and, with
// targetContainerName, in that container's PID namespace. Containers already added are left
// alone; none is removed. It returns an error of kind Invalid (naming the field) when a new
// container's name is taken or its target is not an ordinary container of the pod, and of
// kind Conflict once the pod is stopping.
func (p *Pod) AddEphemeral(list []corev1.EphemeralContainer) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stopping {
		return cellapi.Errorf(cellapi.KindConflict, "pod %s is stopping; no ephemeral container starts", p.UID())
	}
	var added []*ctr
	for i := range list {
		e := &list[i]
		if c, ok := p.ctrs[e.Name]; ok {
			if !c.ephemeral {
				return cellapi.Errorf(cellapi.KindInvalid, "spec.ephemeralContainers[%d].name: %q is the name of a container of pod %s", i, e.Name, p.UID())
			}
			continue
		}
		if err := p.checkEphemeral(i, e); err != nil {
			return err
		}
		if t := e.TargetContainerName; t != "" {
			if tc, ok := p.ctrs[t]; !ok || tc.ephemeral {
				return cellapi.Errorf(cellapi.KindInvalid, "spec.ephemeralContainers[%d].targetContainerName: %q is not a container of pod %s", i, t, p.UID())
			}
		}
		spec := corev1.Container(e.EphemeralContainerCommon)
		c := &ctr{
			spec: &spec, ephemeral: true, target: e.TargetContainerName, specIdx: i,
			idx: len(p.status.EphemeralContainerStatuses), backOff: newBackOff(p.cfg.BackOff),
			ctx: p.ctx, startedOnce: make(chan struct{}),
		}
		p.ctrs[e.Name] = c
		p.status.EphemeralContainerStatuses = append(p.status.EphemeralContainerStatuses, corev1.ContainerStatus{
			Name: e.Name, Image: e.Image, State: waiting(p.defaultWaiting(), ""), Started: new(bool),
		})
		added = append(added, c)
	}
	if len(added) == 0 {
		return nil
	}
	p.publishLocked()
	for _, c := range added {
		p.wg.Add(1)
		go p.runEphemeral(c)
	}
	return nil
}

// runEphemeral runs an ephemeral container once. As kubelet, which starts on every sync an
// ephemeral container that has no container yet, one that could not be created (its
// configuration cannot be made, or its target is not running yet) is tried again after the
// back-off, its waiting reason saying why meanwhile; once created it never runs again.
func (p *Pod) runEphemeral(c *ctr) {
	defer p.wg.Done()
	for {
		out := p.runOnce(c)
		if out.stage != ReasonCreateContainerError && out.stage != ReasonCreateContainerConfigError {
			return
		}
		select {
		case <-p.cfg.Clock.After(c.backOff.next(0)):
		case <-c.ctx.Done():
			return
		}
	}
}

// targetPIDNamespace returns the PID namespace a container joins: the pod's when it shares
// one (shareProcessNamespace, every container, an ephemeral one's target aside, as kubelet);
// else, for an ephemeral container, that of its target container's running process; "" for
// a container of its own. The target must be running.
func (p *Pod) targetPIDNamespace(c *ctr) (string, error) {
	if p.sandbox != nil && p.sandbox.PIDPath() != "" {
		return p.sandbox.PIDPath(), nil
	}
	if c.target == "" {
		return "", nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	t := p.ctrs[c.target]
	if t == nil || t.running == nil || t.running.Pid <= 0 {
		return "", &ConfigError{Err: fmt.Errorf("spec.ephemeralContainers[%d].targetContainerName: container %q is not running, so its process namespace cannot be shared", c.specIdx, c.target)}
	}
	return fmt.Sprintf("/proc/%d/ns/pid", t.running.Pid), nil
}

// checkEphemeral checks what the agent relies on in a new ephemeral container (the API server
// validated the rest): its name, image, working directory and volume mounts.
func (p *Pod) checkEphemeral(i int, e *corev1.EphemeralContainer) error {
	f := fmt.Sprintf("spec.ephemeralContainers[%d]", i)
	if errs := validation.IsDNS1123Label(e.Name); len(errs) > 0 {
		return invalid(f+".name", fmt.Sprintf("%q: %s", e.Name, strings.Join(errs, "; ")))
	}
	if strings.TrimSpace(e.Image) == "" {
		return invalid(f+".image", "required")
	}
	if e.WorkingDir != "" && !path.IsAbs(e.WorkingDir) {
		return invalid(f+".workingDir", fmt.Sprintf("%q must be absolute", e.WorkingDir))
	}
	for j, m := range e.VolumeMounts {
		mf := fmt.Sprintf("%s.volumeMounts[%d]", f, j)
		if !slices.ContainsFunc(p.spec.Volumes, func(v corev1.Volume) bool { return v.Name == m.Name }) {
			return invalid(mf+".name", fmt.Sprintf("volume %q is not declared in spec.volumes", m.Name))
		}
		if !path.IsAbs(m.MountPath) || strings.Contains(m.MountPath, "..") {
			return invalid(mf+".mountPath", fmt.Sprintf("%q must be an absolute path without ..", m.MountPath))
		}
		if m.SubPath != "" {
			if err := checkRelPath(m.SubPath); err != nil {
				return invalid(mf+".subPath", err.Error())
			}
		}
	}
	return nil
}
