package pod

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	resourcehelper "k8s.io/component-helpers/resource"

	"github.com/kip-dev/kip/internal/cellapi"
	"github.com/moby/sys/mountinfo"
)

// emptyDir volumes as kubelet's pkg/volume/emptydir and eviction manager treat them:
//   - medium Memory is a tmpfs on the volume's directory, mounted before any container
//     starts and unmounted when the pod is cleaned up; its pages are charged to the memory
//     cgroup of the container writing them, so they count against its and the cell's limits;
//   - a disk emptyDir with a sizeLimit is measured every EmptyDirInterval; over its limit
//     the pod is evicted (ReasonEvicted, kubelet's message), as kubelet's eviction manager
//     does.

// ReasonEvicted and evictionGrace are kubelet's for a pod its eviction manager evicts
// (pkg/kubelet/eviction: immediateEvictionGracePeriodSeconds).
const (
	ReasonEvicted = "Evicted"
	evictionGrace = time.Second
)

// DefaultEmptyDirInterval is how often disk emptyDirs with a sizeLimit are measured: the
// eviction manager's monitoring interval (kubelet's housekeeping, 10s).
const DefaultEmptyDirInterval = 10 * time.Second

// emptyDirMessage is kubelet's eviction message (emptyDirMessageFmt, trailing space kept).
func emptyDirMessage(volume string, limit resource.Quantity) string {
	return fmt.Sprintf("Usage of EmptyDir volume %q exceeds the limit %q. ", volume, limit.String())
}

// tmpfsSize is the size kubelet gives a memory-backed emptyDir (calculateEmptyDirMemorySize):
// the node's allocatable memory, which on a cell is its memory limit (cellMemory, 0 when
// unknown), lowered to the pod's memory limit when every container sets one, then to the
// volume's sizeLimit when that is smaller. 0 means no size option (the kernel's default,
// half the memory).
func tmpfsSize(pod *corev1.Pod, v *corev1.EmptyDirVolumeSource, cellMemory int64) int64 {
	size := cellMemory
	lower := func(n int64) {
		if n > 0 && (size == 0 || n <= size) {
			size = n
		}
	}
	if podMemoryLimited(pod) {
		lim := resourcehelper.PodLimits(pod, resourcehelper.PodResourcesOptions{})[corev1.ResourceMemory]
		lower(lim.Value())
	}
	if v.SizeLimit != nil {
		lower(v.SizeLimit.Value())
	}
	return size
}

// podMemoryLimited reports whether the pod's memory is limited as kubelet's pod cgroup sees
// it: a pod-level limit, or one on every container.
func podMemoryLimited(pod *corev1.Pod) bool {
	if r := pod.Spec.Resources; r != nil {
		if _, ok := r.Limits[corev1.ResourceMemory]; ok {
			return true
		}
	}
	for _, cs := range [][]corev1.Container{pod.Spec.InitContainers, pod.Spec.Containers} {
		for _, c := range cs {
			if _, ok := c.Resources.Limits[corev1.ResourceMemory]; !ok {
				return false
			}
		}
	}
	return true
}

// mountMemoryVolumes mounts a tmpfs (mode 0777, sized by tmpfsSize) on the directory of
// every emptyDir volume of medium Memory under dir. A directory that is a mount point
// already (the pod put again after an agent restart) keeps its mount and its files.
func mountMemoryVolumes(dir string, pod *corev1.Pod, cellMemory int64) error {
	for _, v := range pod.Spec.Volumes {
		if v.EmptyDir == nil || v.EmptyDir.Medium != corev1.StorageMediumMemory {
			continue
		}
		vdir := filepath.Join(dir, volumesDir, v.Name)
		if mounted, err := mountPoint(vdir); err != nil {
			return err
		} else if mounted {
			continue
		}
		opts := "mode=0777"
		if n := tmpfsSize(pod, v.EmptyDir, cellMemory); n > 0 {
			opts += ",size=" + strconv.FormatInt(n, 10)
		}
		if err := unix.Mount("tmpfs", vdir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, opts); err != nil {
			return fmt.Errorf("mounting a tmpfs (%s) for volume %s: %w", opts, v.Name, err)
		}
	}
	return nil
}

// memoryBackedAPIData reports whether v is a secret, projected or downwardAPI volume: kubelet
// sets these up on a memory-medium emptyDir (a tmpfs), so that secrets and service account
// tokens never reach a disk; configMap volumes are on disk.
func memoryBackedAPIData(v *corev1.Volume) bool {
	return v.Secret != nil || v.Projected != nil || v.DownwardAPI != nil
}

// mountAPIDataTmpfs mounts the tmpfs of a secret, projected or downwardAPI volume on vdir
// (nosuid, nodev), as kubelet's wrapped memory emptyDir: no mode option, so its root is the
// tmpfs default 1777 (what `ls -ld` shows on a service account token directory), sized as a
// memory emptyDir without sizeLimit (tmpfsSize). A vdir that is a mount point already (the
// pod put again after an agent restart) is kept. Its pages are charged to the agent's memory
// cgroup, inside the cell.
func mountAPIDataTmpfs(vdir string, pod *corev1.Pod, cellMemory int64) error {
	if mounted, err := mountPoint(vdir); err != nil || mounted {
		return err
	}
	var opts string
	if n := tmpfsSize(pod, &corev1.EmptyDirVolumeSource{Medium: corev1.StorageMediumMemory}, cellMemory); n > 0 {
		opts = "size=" + strconv.FormatInt(n, 10)
	}
	if err := unix.Mount("tmpfs", vdir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, opts); err != nil {
		return fmt.Errorf("mounting a tmpfs (%s): %w", opts, err)
	}
	return nil
}

// unmountUnder unmounts every mount at or below dir, deepest first: the pod's tmpfs
// volumes, including any an earlier agent left.
func unmountUnder(dir string) error {
	mounted, err := mountsUnder(dir)
	if err != nil {
		return err
	}
	slices.SortFunc(mounted, func(a, b string) int { return len(b) - len(a) })
	var errs []error
	for _, m := range mounted {
		if err := unix.Unmount(m, 0); err != nil && !errors.Is(err, unix.EINVAL) {
			// Busy: nothing of the pod should hold it any more; detach it rather than leak it.
			if err := unix.Unmount(m, unix.MNT_DETACH); err != nil {
				errs = append(errs, fmt.Errorf("unmounting %s: %w", m, err))
			}
		}
	}
	return errors.Join(errs...)
}

// mountsUnder lists the mount points at or below dir. It reads the whole mount table, whose
// size grows with every cell on the host: for one directory, mountPoint.
func mountsUnder(dir string) ([]string, error) {
	infos, err := mountinfo.GetMounts(mountinfo.PrefixFilter(dir))
	if err != nil {
		return nil, fmt.Errorf("reading mounts: %w", err)
	}
	out := make([]string, 0, len(infos))
	for _, m := range infos {
		out = append(out, m.Mountpoint)
	}
	return out, nil
}

// mountPoint reports whether dir is a mount point, without reading the mount table (openat2
// or stat on dir and its parent); a dir that does not exist is none.
func mountPoint(dir string) (bool, error) {
	mounted, err := mountinfo.Mounted(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("checking whether %s is a mount point: %w", dir, err)
	}
	return mounted, nil
}

// diskUsage is what du counts under dir: allocated blocks, each inode once, without
// crossing into other filesystems.
func diskUsage(dir string) (int64, error) {
	var root unix.Stat_t
	if err := unix.Lstat(dir, &root); err != nil {
		return 0, err
	}
	seen := map[uint64]bool{}
	var total int64
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil // removed while walking
			}
			return err
		}
		var st unix.Stat_t
		if err := unix.Lstat(path, &st); err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if st.Dev != root.Dev {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if seen[st.Ino] {
			return nil
		}
		seen[st.Ino] = true
		total += st.Blocks * 512
		return nil
	})
	return total, err
}

// limitedEmptyDirs are the disk emptyDirs of pod with a sizeLimit.
func limitedEmptyDirs(pod *corev1.Pod) []corev1.Volume {
	var out []corev1.Volume
	for _, v := range pod.Spec.Volumes {
		if ed := v.EmptyDir; ed != nil && ed.Medium == corev1.StorageMediumDefault && ed.SizeLimit != nil && ed.SizeLimit.Sign() > 0 {
			out = append(out, v)
		}
	}
	return out
}

// evict ends the pod as kubelet's eviction manager does: a Warning event Evicted with
// message, its containers stopped with a 1s grace period and never restarted, then the pod
// Failed with reason Evicted and message. The pod's files stay until Stop.
func (p *Pod) evict(message string) {
	p.mu.Lock()
	if p.stopping || p.evicted != "" {
		p.mu.Unlock()
		return
	}
	p.evicted = message
	p.lastEvent++
	p.status.Events = append(p.status.Events, cellapi.Event{ID: p.lastEvent, Type: corev1.EventTypeWarning, Reason: ReasonEvicted, Message: message})
	if n := len(p.status.Events); n > cellapi.MaxEvents {
		p.status.Events = append([]cellapi.Event(nil), p.status.Events[n-cellapi.MaxEvents:]...)
	}
	p.publishLocked()
	p.mu.Unlock()
	p.halt(context.Background(), evictionGrace)
}
