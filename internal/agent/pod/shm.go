package pod

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"

	"github.com/kip-dev/kip/internal/agent/runtime"
)

// The pod's /dev/shm: under kubelet every container of a pod shares the sandbox's /dev/shm
// (a 64 MiB tmpfs, containerd's defaultShmSize, mode 1777, nosuid,nodev,noexec), as they
// share its IPC namespace. The agent mounts one such tmpfs on <pod>/shm before any container
// starts and binds it on each container's /dev/shm; cleanup (unmountUnder) unmounts it with
// the pod's other mounts, and a pod put again after an agent restart keeps the one mounted.
const (
	shmDir  = "shm"
	shmSize = 64 << 20
	shmPath = "/dev/shm"
)

// mountPodShm mounts the pod's shared /dev/shm tmpfs on dir/shm unless it is mounted there.
func mountPodShm(dir string) error {
	target := filepath.Join(dir, shmDir)
	if err := os.MkdirAll(target, 0o755); err != nil {
		return fmt.Errorf("creating the pod's /dev/shm: %w", err)
	}
	if mounted, err := mountPoint(target); err != nil || mounted {
		return err
	}
	opts := "mode=1777,size=" + strconv.Itoa(shmSize)
	if err := unix.Mount("shm", target, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, opts); err != nil {
		return fmt.Errorf("mounting the pod's /dev/shm (tmpfs %s): %w", opts, err)
	}
	return nil
}

// shmMount is the bind of the pod's /dev/shm into c, unless c mounts a volume there (a
// memory emptyDir on /dev/shm, a common pattern), which then replaces it as a user mount
// replaces containerd's.
func shmMount(dir string, c *corev1.Container) (runtime.Mount, bool) {
	for _, m := range c.VolumeMounts {
		if filepath.Clean(m.MountPath) == shmPath {
			return runtime.Mount{}, false
		}
	}
	return runtime.Mount{Source: filepath.Join(dir, shmDir), Destination: shmPath, NoExec: true}, true
}
