package cgroups

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/opencontainers/cgroups"
	"k8s.io/apimachinery/pkg/util/wait"
)

// PIDs returns every process in dir and its descendants; none when dir does not exist.
func PIDs(dir string) ([]int, error) {
	pids, err := cgroups.GetAllPids(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	return pids, err
}

// RemoveCell kills every process in a cell's cgroups (dirs) and removes them, descendants
// first, within timeout. With a v1 freezer hierarchy the cell is frozen first, so nothing can
// fork while it is killed; without one, a cgroup v2 cell is killed at once by cgroup.kill
// where the kernel has it. It may be called for a cell already gone.
func RemoveCell(dirs []string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var freezer string
	for _, d := range dirs {
		if exists(d, "freezer.state") {
			freezer = d
		}
	}
	if freezer != "" {
		if err := cgroups.WriteFile(freezer, "freezer.state", string(cgroups.Frozen)); err == nil {
			_ = poll(ctx, func() (bool, error) {
				s, _ := cgroups.ReadFile(freezer, "freezer.state")
				return strings.TrimSpace(s) != "FREEZING", nil
			})
		}
	} else {
		for _, d := range dirs {
			if exists(d, "cgroup.kill") {
				_ = cgroups.WriteFile(d, "cgroup.kill", "1")
			}
		}
	}
	var all []int
	err := poll(ctx, func() (bool, error) {
		all = nil
		for _, d := range dirs {
			pids, err := PIDs(d)
			if err != nil {
				return false, fmt.Errorf("listing processes of cgroup %s: %w", d, err)
			}
			all = append(all, pids...)
		}
		for _, pid := range all {
			if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
				return false, fmt.Errorf("killing pid %d: %w", pid, err)
			}
		}
		if freezer != "" {
			_ = cgroups.WriteFile(freezer, "freezer.state", string(cgroups.Thawed))
			freezer = ""
		}
		return len(all) == 0, nil
	})
	if wait.Interrupted(err) {
		return fmt.Errorf("processes %v survived SIGKILL", all)
	}
	if err != nil {
		return err
	}
	for _, d := range dirs {
		if err := removeTree(ctx, d); err != nil {
			return err
		}
	}
	return nil
}

// RemoveTree removes dir and every cgroup below it, deepest first, retrying cgroups that are
// still busy until timeout. A missing dir is not an error.
func RemoveTree(dir string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return removeTree(ctx, dir)
}

func removeTree(ctx context.Context, dir string) error {
	var err error
	if poll(ctx, func() (bool, error) {
		err = cgroups.RemovePath(dir)
		return err == nil, nil
	}) != nil {
		return fmt.Errorf("removing cgroup %s: %w", dir, err)
	}
	return nil
}

// StrayPodDirs returns where runc left a pod's cgroups outside its cell: runc 1.1 in hybrid
// mode nests a relative cgroupsPath under its caller's cgroup in every v1 hierarchy but puts
// it at the root of the cgroup2 one, so the agent's PodPath(PodsParent, podUID) lands there.
// None in the other layouts, or for a UID that is not one path element.
func (f *FS) StrayPodDirs(podUID string) []string {
	if podUID == "" || strings.ContainsAny(podUID, "/.") {
		return nil
	}
	if f.mode != Hybrid {
		return nil
	}
	var out []string
	for _, h := range f.hs {
		if h.v2() {
			out = append(out, filepath.Join(f.root, h.dir, PodPath(PodsParent, podUID)))
		}
	}
	return out
}

// RemoveStrayPod removes the pod's StrayPodDirs (killing nothing: the processes in them are
// the cell's, gone with it), and their shared parent once no other pod uses it.
func (f *FS) RemoveStrayPod(podUID string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	for _, d := range f.StrayPodDirs(podUID) {
		if err := removeTree(ctx, d); err != nil {
			return err
		}
		_ = os.Remove(filepath.Dir(d))
	}
	return nil
}

// poll runs cond every 2ms until it holds, fails or ctx ends, and at least once: a killed
// process leaves its cgroup asynchronously. It returns cond's error, or ctx's when ctx ended
// first (wait.Interrupted).
func poll(ctx context.Context, cond func() (bool, error)) error {
	return wait.PollUntilContextCancel(ctx, 2*time.Millisecond, true, func(context.Context) (bool, error) { return cond() })
}
