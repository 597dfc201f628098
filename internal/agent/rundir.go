package agent

import (
	"fmt"
	"os"
	"strconv"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
)

// RunDirSize is the size of the agent's run tmpfs: runc's state and the bundles' config.json
// files of one pod's container runs, a few KiB each.
const RunDirSize = 16 << 20

// MountRunDir makes dir a tmpfs (mode 0700, nosuid, nodev, noexec, RunDirSize), the agent's
// counterpart of a host's /run: runc's state (runc --root) and the runtime bundles live there,
// since both hold every container's resolved env, secret values included, and nothing secret
// may reach the cell's disk. A dir that is already a tmpfs mount point (the agent restarted)
// is kept with its contents. The mount lives as long as the cell: the local backend detaches
// every mount under a cell's directory when it terminates it.
func MountRunDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("creating %s: %w", dir, err)
	}
	mounted, err := mountinfo.Mounted(dir)
	if err != nil {
		return fmt.Errorf("checking whether %s is a mount point: %w", dir, err)
	}
	if mounted {
		return nil
	}
	opts := "mode=0700,size=" + strconv.Itoa(RunDirSize)
	if err := unix.Mount("tmpfs", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, opts); err != nil {
		return fmt.Errorf("mounting a tmpfs on %s: %w", dir, err)
	}
	return nil
}

// UnmountRunDir detaches the tmpfs MountRunDir made, and its contents with it; the agent
// calls it as it exits, once its pod has stopped.
func UnmountRunDir(dir string) {
	_ = unix.Unmount(dir, unix.MNT_DETACH)
}
