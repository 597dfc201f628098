package pod

import (
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	resourcehelper "k8s.io/component-helpers/resource"
)

// Ephemeral storage limits, as kubelet's eviction manager enforces them
// (pkg/kubelet/eviction localStorageEviction), checked in its order every EmptyDirInterval:
//  1. a disk emptyDir over its sizeLimit (emptyDirMessage);
//  2. the pod over its ephemeral-storage limit (resourcehelper.PodLimits: the sum of its
//     containers' limits, present as soon as one container sets one): the writable layers and
//     logs of all its containers, its disk emptyDirs, configMap volumes and /etc files;
//  3. an app container or sidecar over its own limit: its writable layer and its logs.
//
// Usage is what du counts (diskUsage). The writable layer of a container is the upper
// directory of its overlay, under containers/<name>/; its logs are logs/<name>/ (the current
// and the previous run). Memory-backed volumes are charged to memory, not here.

// storageLimits is what watchStorage checks for one pod.
type storageLimits struct {
	emptyDirs []corev1.Volume
	// pod is the pod's ephemeral-storage limit; nil without one.
	pod *resource.Quantity
	// containers are the app containers and sidecars with a non-zero limit, in spec order.
	containers []containerLimit
}

type containerLimit struct {
	name  string
	limit resource.Quantity
}

func (l storageLimits) any() bool {
	return len(l.emptyDirs) > 0 || l.pod != nil || len(l.containers) > 0
}

func storageLimitsOf(pod *corev1.Pod) storageLimits {
	l := storageLimits{emptyDirs: limitedEmptyDirs(pod)}
	if q, ok := resourcehelper.PodLimits(pod, resourcehelper.PodResourcesOptions{})[corev1.ResourceEphemeralStorage]; ok {
		l.pod = &q
	}
	add := func(c *corev1.Container) {
		if q := c.Resources.Limits.StorageEphemeral(); q != nil && q.Value() != 0 {
			l.containers = append(l.containers, containerLimit{c.Name, *q})
		}
	}
	for i := range pod.Spec.Containers {
		add(&pod.Spec.Containers[i])
	}
	for i := range pod.Spec.InitContainers {
		if isSidecar(&pod.Spec.InitContainers[i]) {
			add(&pod.Spec.InitContainers[i])
		}
	}
	return l
}

// Kubelet's eviction messages (pkg/kubelet/eviction/helpers.go), trailing spaces kept.
func podEphemeralStorageMessage(limit resource.Quantity) string {
	return fmt.Sprintf("Pod ephemeral local storage usage exceeds the total limit of containers %s. ", limit.String())
}

func containerEphemeralStorageMessage(container string, limit resource.Quantity) string {
	return fmt.Sprintf("Container %s exceeded its local ephemeral storage limit %q. ", container, limit.String())
}

// watchStorage measures the pod's ephemeral storage every EmptyDirInterval and evicts the
// pod once a limit is exceeded. It returns when the pod stops or is evicted.
func (p *Pod) watchStorage(l storageLimits) {
	defer p.wg.Done()
	for {
		t := p.cfg.Clock.NewTimer(p.cfg.EmptyDirInterval)
		select {
		case <-p.ctx.Done():
			t.Stop()
			return
		case <-t.C():
		}
		if msg := p.checkStorage(l); msg != "" {
			p.cfg.Log.Info("ephemeral storage over its limit; evicting the pod", "pod", p.UID(), "message", msg)
			// halt waits for this goroutine (p.wg): evict from another.
			go p.evict(msg)
			return
		}
	}
}

// checkStorage returns the eviction message of the first limit the pod exceeds, or "".
func (p *Pod) checkStorage(l storageLimits) string {
	usage := func(rel string) int64 {
		n, err := diskUsage(filepath.Join(p.cfg.Dir, rel))
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			p.cfg.Log.Warn("measuring ephemeral storage", "pod", p.UID(), "path", rel, "err", err)
		}
		return n
	}
	for _, v := range l.emptyDirs {
		if usage(filepath.Join(volumesDir, v.Name)) > v.EmptyDir.SizeLimit.Value() {
			return emptyDirMessage(v.Name, *v.EmptyDir.SizeLimit)
		}
	}
	if l.pod == nil && len(l.containers) == 0 {
		return ""
	}
	ctrUsage := func(name string) int64 {
		return usage(filepath.Join(containersDir, name)) + usage(filepath.Join(logsDir, name))
	}
	if l.pod != nil {
		total := usage(etcDir)
		for _, cs := range [][]corev1.Container{p.spec.InitContainers, p.spec.Containers} {
			for i := range cs {
				total += ctrUsage(cs[i].Name)
			}
		}
		for _, v := range p.spec.Volumes {
			if (v.EmptyDir != nil && v.EmptyDir.Medium == corev1.StorageMediumDefault) || v.ConfigMap != nil {
				total += usage(filepath.Join(volumesDir, v.Name))
			}
		}
		if total > l.pod.Value() {
			return podEphemeralStorageMessage(*l.pod)
		}
	}
	for _, c := range l.containers {
		if ctrUsage(c.name) > c.limit.Value() {
			return containerEphemeralStorageMessage(c.name, c.limit)
		}
	}
	return ""
}
