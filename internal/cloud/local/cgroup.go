package local

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kip-dev/kip/internal/instancetype"
)

// A cell owns one cgroup in every hierarchy mounted under the cgroup root, nested under this
// process's own cgroup there (as runc does with a relative cgroupsPath): the agent runs runc
// with relative cgroupsPaths, so the containers' cgroups nest under the agent's own, and only
// if the agent is in a cell cgroup in every hierarchy do they all land inside the cell, where
// Terminate finds them. Limits are set in the memory and cpu hierarchies.

// hierarchy is one mounted cgroup hierarchy.
type hierarchy struct {
	name string // directory under the cgroup root: "memory", "cpu", "unified", ...
	self string // this process's cgroup in it, e.g. "/process_api/12c5"
}

// hierarchies lists the cgroup hierarchies mounted under root and this process's place in
// each, from selfCgroup (normally /proc/self/cgroup).
func hierarchies(root, selfCgroup string) ([]hierarchy, error) {
	f, err := os.Open(selfCgroup)
	if err != nil {
		return nil, fmt.Errorf("reading own cgroups: %w", err)
	}
	defer f.Close()
	v1 := map[string]string{} // controller or name= → path
	v2 := ""
	hasV2 := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		parts := strings.SplitN(sc.Text(), ":", 3)
		if len(parts) != 3 {
			continue
		}
		if parts[1] == "" {
			v2, hasV2 = parts[2], true
			continue
		}
		for _, c := range strings.Split(parts[1], ",") {
			v1[strings.TrimPrefix(c, "name=")] = parts[2]
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading own cgroups: %w", err)
	}
	ents, err := os.ReadDir(root)
	if err != nil {
		return nil, fmt.Errorf("listing cgroup hierarchies in %s: %w", root, err)
	}
	var out []hierarchy
	for _, e := range ents {
		if !e.IsDir() { // skips the cpu,cpuacct style symlinks
			continue
		}
		dir := filepath.Join(root, e.Name())
		var st unix.Statfs_t
		if err := unix.Statfs(dir, &st); err != nil {
			continue
		}
		switch {
		case st.Type == unix.CGROUP2_SUPER_MAGIC && hasV2:
			out = append(out, hierarchy{name: e.Name(), self: v2})
		case st.Type == unix.CGROUP_SUPER_MAGIC:
			// A mount of several controllers is named after them joined by commas.
			for _, c := range strings.Split(e.Name(), ",") {
				if p, ok := v1[c]; ok {
					out = append(out, hierarchy{name: e.Name(), self: p})
					break
				}
			}
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no cgroup hierarchy is mounted under %s", root)
	}
	return out, nil
}

// cgroupDirs returns the cell's cgroup directory in each hierarchy.
func cgroupDirs(root string, hs []hierarchy, parent, id string) []string {
	out := make([]string, 0, len(hs))
	for _, h := range hs {
		out = append(out, filepath.Join(root, h.name, h.self, parent, id))
	}
	return out
}

// parentDirs returns the directory of the backend's cgroup parent in each hierarchy.
func parentDirs(root string, hs []hierarchy, parent string) []string {
	out := make([]string, 0, len(hs))
	for _, h := range hs {
		out = append(out, filepath.Join(root, h.name, h.self, parent))
	}
	return out
}

// createCgroups makes the cell's cgroups (and missing parents) and sets the limits of it.
func createCgroups(dirs []string, it instancetype.InstanceType) error {
	for _, d := range dirs {
		if err := mkdirCgroup(d); err != nil {
			return err
		}
	}
	quota := int64(it.VCPU * 100000)
	shares := max(int64(it.VCPU*1024), 2)
	limits := map[string]string{
		"memory.limit_in_bytes": strconv.FormatInt(it.MemoryMiB<<20, 10),
		"cpu.cfs_period_us":     "100000",
		"cpu.cfs_quota_us":      strconv.FormatInt(quota, 10),
		"cpu.shares":            strconv.FormatInt(shares, 10),
	}
	for _, d := range dirs {
		for _, file := range slices.Sorted(maps.Keys(limits)) {
			p := filepath.Join(d, file)
			if _, err := os.Stat(p); err != nil {
				continue // not this hierarchy's controller
			}
			if err := os.WriteFile(p, []byte(limits[file]), 0o644); err != nil {
				return fmt.Errorf("setting %s: %w", p, err)
			}
		}
	}
	return nil
}

// mkdirCgroup creates dir and its missing parents. A new cpuset cgroup starts with no CPUs
// and no memory nodes, so each new level gets its parent's. A level that exists but has no
// CPUs yet is filled in too: concurrent launches share the parent levels, and another one
// may have made a level without having set it up yet (a child made under an empty parent
// would stay empty, and moving a process into it fails with ENOSPC).
func mkdirCgroup(dir string) error {
	if _, err := os.Stat(dir); err == nil && cpusetReady(dir) {
		return nil
	}
	parent := filepath.Dir(dir)
	if err := mkdirCgroup(parent); err != nil {
		return err
	}
	if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("creating cgroup %s: %w", dir, err)
	}
	for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
		b, err := os.ReadFile(filepath.Join(parent, f))
		if err != nil || strings.TrimSpace(string(b)) == "" {
			continue
		}
		cur, _ := os.ReadFile(filepath.Join(dir, f))
		if strings.TrimSpace(string(cur)) != "" {
			continue
		}
		if err := os.WriteFile(filepath.Join(dir, f), b, 0o644); err != nil {
			return fmt.Errorf("setting %s of %s: %w", f, dir, err)
		}
	}
	return nil
}

// cpusetReady reports whether dir has CPUs and memory nodes, or is not a cpuset cgroup.
func cpusetReady(dir string) bool {
	for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
		b, err := os.ReadFile(filepath.Join(dir, f))
		if err == nil && strings.TrimSpace(string(b)) == "" {
			return false
		}
	}
	return true
}

// joinCgroups moves pid (every thread of it) into each dir.
func joinCgroups(dirs []string, pid int) error {
	for _, d := range dirs {
		p := filepath.Join(d, "cgroup.procs")
		if err := os.WriteFile(p, []byte(strconv.Itoa(pid)), 0o644); err != nil {
			return fmt.Errorf("moving pid %d into cgroup %s: %w", pid, d, err)
		}
	}
	return nil
}

// cgroupPIDs returns every process in dir and its descendants.
func cgroupPIDs(dir string) ([]int, error) {
	var pids []int
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if !d.IsDir() {
			return nil
		}
		b, err := os.ReadFile(filepath.Join(p, "cgroup.procs"))
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		for _, f := range strings.Fields(string(b)) {
			if n, err := strconv.Atoi(f); err == nil {
				pids = append(pids, n)
			}
		}
		return nil
	})
	return pids, err
}

// killCgroups kills every process in the cell's cgroups and removes them, descendants first.
// With a freezer hierarchy the cell is frozen first, so nothing can fork while it is killed.
func killCgroups(dirs []string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var freezer string
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "freezer.state")); err == nil {
			freezer = d
		}
	}
	if freezer != "" {
		if err := os.WriteFile(filepath.Join(freezer, "freezer.state"), []byte("FROZEN"), 0o644); err == nil {
			waitFor(deadline, func() bool {
				b, _ := os.ReadFile(filepath.Join(freezer, "freezer.state"))
				return strings.TrimSpace(string(b)) != "FREEZING"
			})
		}
	}
	for {
		var all []int
		for _, d := range dirs {
			pids, err := cgroupPIDs(d)
			if err != nil {
				return fmt.Errorf("listing processes of cgroup %s: %w", d, err)
			}
			all = append(all, pids...)
		}
		for _, pid := range all {
			if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
				return fmt.Errorf("killing pid %d: %w", pid, err)
			}
		}
		if freezer != "" {
			_ = os.WriteFile(filepath.Join(freezer, "freezer.state"), []byte("THAWED"), 0o644)
			freezer = ""
		}
		if len(all) == 0 {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("processes %v survived SIGKILL", all)
		}
		time.Sleep(2 * time.Millisecond) // a killed process leaves its cgroup asynchronously
	}
	for _, d := range dirs {
		if err := removeCgroupTree(d, deadline); err != nil {
			return err
		}
	}
	return nil
}

// agentCgroupParent is kip-cell's default --cgroup-parent: the agent gives each pod the
// relative cgroupsPath <agentCgroupParent>/<pod UID>/<container run>.
const agentCgroupParent = "kip"

// strayPodCgroups returns where runc left a pod's cgroups outside the cell. runc (1.1) in
// hybrid mode nests a relative cgroupsPath under its caller's cgroup in every v1 hierarchy,
// but puts it at the root of the cgroup2 one, outside the cell's cgroup: the backend removes
// that tree itself, so a cell ended without its agent's help leaves nothing behind.
func strayPodCgroups(root string, hs []hierarchy, podUID string) []string {
	if podUID == "" || strings.ContainsAny(podUID, "/.") {
		return nil
	}
	var out []string
	for _, h := range hs {
		var st unix.Statfs_t
		dir := filepath.Join(root, h.name)
		if unix.Statfs(dir, &st) == nil && st.Type == unix.CGROUP2_SUPER_MAGIC {
			out = append(out, filepath.Join(dir, agentCgroupParent, podUID))
		}
	}
	return out
}

// removeCgroupTree removes dir and every cgroup below it, deepest first.
func removeCgroupTree(dir string, deadline time.Time) error {
	var tree []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if d.IsDir() {
			tree = append(tree, p)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("walking cgroup %s: %w", dir, err)
	}
	for i := len(tree) - 1; i >= 0; i-- {
		var rmErr error
		ok := waitFor(deadline, func() bool {
			rmErr = os.Remove(tree[i])
			return rmErr == nil || errors.Is(rmErr, fs.ErrNotExist)
		})
		if !ok {
			return fmt.Errorf("removing cgroup %s: %w", tree[i], rmErr)
		}
	}
	return nil
}

// waitFor polls cond every 2ms until it holds or the deadline passes; it reports whether
// cond held.
func waitFor(deadline time.Time, cond func() bool) bool {
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(2 * time.Millisecond)
	}
}
