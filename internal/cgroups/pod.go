package cgroups

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/opencontainers/cgroups"
	v1 "github.com/opencontainers/cgroups/fs"
	"github.com/opencontainers/cgroups/fs2"
	"github.com/opencontainers/cgroups/fscommon"
)

// The agent's paths are relative to where its own relative cgroup paths land (see Dirs):
// a pod's cgroups are PodPath(parent, uid), each container's ContainerPath(parent, uid, name),
// and each run of it <that>/<run>, which runc makes and removes.

// PodsParent is the agent's default cgroup parent for pods (kip-cell --cgroup-parent).
const PodsParent = "kip"

// PodPath is the cgroup of the pod with UID uid under parent.
func PodPath(parent, uid string) string { return filepath.Join(parent, uid) }

// ContainerPath is the cgroup of one container of a pod. It outlives each run's cgroup below
// it, so a limit set on it holds the run's OOM evidence after runc removed the run's cgroup.
func ContainerPath(parent, uid, container string) string {
	return filepath.Join(parent, uid, container)
}

// Usage is a cgroup's CPU and memory use. Its fields are cellapi.Usage's, so that one
// converts to the other.
type Usage struct {
	// CPUUsageNanoSeconds is cumulative CPU time.
	CPUUsageNanoSeconds uint64
	// MemoryWorkingSetBytes is usage minus inactive file pages, as kubelet computes it.
	MemoryWorkingSetBytes uint64
	MemoryUsageBytes      uint64
}

// Usage reads the CPU time and memory use of the cgroup rel ("" is where this process's
// relative paths land): cpuacct.usage, memory.usage_in_bytes and memory.stat's
// total_inactive_file (v1), or cpu.stat's usage_usec, memory.current and memory.stat's
// inactive_file (v2). A missing cgroup is an error.
func (f *FS) Usage(rel string) (Usage, error) {
	if f.mode == Unified {
		return f.usageV2(rel)
	}
	var u Usage
	if d := f.Dir("cpuacct", rel); d != "" {
		n, err := fscommon.GetCgroupParamUint(d, "cpuacct.usage")
		if err != nil {
			return u, fmt.Errorf("reading CPU usage of %s: %w", d, err)
		}
		u.CPUUsageNanoSeconds = n
	}
	if d := f.Dir("memory", rel); d != "" {
		return memoryUsage(u, d, "memory.usage_in_bytes", "total_inactive_file")
	}
	return u, nil
}

func (f *FS) usageV2(rel string) (Usage, error) {
	d, err := f.v2Dir(rel)
	if err != nil {
		return Usage{}, err
	}
	// cpu.stat's usage_usec is there with or without the cpu controller.
	usec, err := fscommon.GetValueByKey(d, "cpu.stat", "usage_usec")
	if err != nil {
		return Usage{}, fmt.Errorf("reading CPU usage of %s: %w", d, err)
	}
	u := Usage{CPUUsageNanoSeconds: usec * 1000}
	if !f.offers("memory") {
		return u, nil
	}
	return memoryUsage(u, d, "memory.current", "inactive_file")
}

// memoryUsage adds to u the memory cgroup d's usage (from usageFile) and working set (usage
// less memory.stat's inactiveKey).
func memoryUsage(u Usage, d, usageFile, inactiveKey string) (Usage, error) {
	var err error
	if u.MemoryUsageBytes, err = fscommon.GetCgroupParamUint(d, usageFile); err != nil {
		return u, fmt.Errorf("reading memory usage of %s: %w", d, err)
	}
	inactive, err := fscommon.GetValueByKey(d, "memory.stat", inactiveKey)
	if err != nil {
		return u, fmt.Errorf("reading memory usage of %s: %w", d, err)
	}
	if inactive < u.MemoryUsageBytes {
		u.MemoryWorkingSetBytes = u.MemoryUsageBytes - inactive
	}
	return u, nil
}

// MemoryEvents are a memory cgroup's counters.
type MemoryEvents struct {
	// OOMKills counts processes the OOM killer chose: in this cgroup itself on cgroup v1
	// (memory.oom_control "oom_kill"), in it and below on cgroup v2 (memory.events
	// "oom_kill").
	OOMKills uint64
	// LimitHits counts how often usage hit this cgroup's limit, including hits caused by its
	// children (memory.failcnt on v1, memory.events "max" on v2).
	LimitHits uint64
}

// MemoryEvents reads rel's counters; a missing cgroup has zero counters.
func (f *FS) MemoryEvents(rel string) (MemoryEvents, error) {
	var ev MemoryEvents
	d := f.Dir("memory", rel)
	if d == "" {
		return ev, nil
	}
	var err error
	if f.mode == Unified {
		ev.OOMKills, err = fs2.OOMKillCount(d)
		if err == nil {
			ev.LimitHits, err = fscommon.GetValueByKey(d, "memory.events", "max")
		}
		if errors.Is(err, fs.ErrNotExist) {
			return MemoryEvents{}, nil
		}
		return ev, err
	}
	ev.OOMKills, err = v1.OOMKillCount(d)
	if errors.Is(err, fs.ErrNotExist) {
		return MemoryEvents{}, nil
	}
	if err != nil {
		return ev, err
	}
	ev.LimitHits, err = fscommon.GetCgroupParamUint(d, "memory.failcnt")
	if errors.Is(err, fs.ErrNotExist) {
		err = nil
	}
	return ev, err
}

// SetMemoryLimit creates rel (in the memory hierarchy on v1; enabling the memory controller
// down to it on v2) and sets its memory limit. A container run below rel is limited by it.
func (f *FS) SetMemoryLimit(rel string, bytes int64) error {
	d := f.Dir("memory", rel)
	if d == "" {
		return fmt.Errorf("setting memory limit of %s: the memory controller is not mounted", rel)
	}
	if err := os.MkdirAll(d, 0o755); err != nil {
		return fmt.Errorf("creating memory cgroup %s: %w", rel, err)
	}
	var err error
	if f.mode == Unified {
		if err = delegate(f.root, d, []string{"memory"}); err != nil {
			return fmt.Errorf("setting memory limit of %s: %w", rel, err)
		}
		var m *fs2.Manager
		if m, err = fs2.NewManager(&cgroups.Cgroup{Resources: &cgroups.Resources{SkipDevices: true}}, d); err == nil {
			err = m.Set(&cgroups.Resources{Memory: bytes, SkipDevices: true})
		}
	} else {
		err = (&v1.MemoryGroup{}).Set(d, &cgroups.Resources{Memory: bytes})
	}
	if err != nil {
		return fmt.Errorf("setting memory limit of %s: %w", rel, err)
	}
	return nil
}

// Remove deletes rel and every cgroup below it in every hierarchy, deepest first, and in
// hybrid mode also where runc 1.1 put rel at the cgroup2 root (StrayPodDirs), with the
// parents runc made on the way there once empty. It fails when a cgroup still holds a
// process.
func (f *FS) Remove(rel string) error {
	if rel == "" || filepath.IsAbs(rel) || strings.Contains(rel, "..") {
		return fmt.Errorf("removing cgroup %q: must be a relative path below the agent's cgroup", rel)
	}
	ps, err := f.places()
	if err != nil {
		return err
	}
	type stray struct{ dir, hierarchyRoot string }
	var tops []string
	var strays []stray
	for _, p := range ps {
		tops = append(tops, filepath.Join(p.base, rel))
		if f.mode == Hybrid && p.h.v2() && p.own != "/" {
			hr := filepath.Join(f.root, p.h.dir)
			strays = append(strays, stray{filepath.Join(hr, rel), hr})
			tops = append(tops, filepath.Join(hr, rel))
		}
	}
	var errs []error
	for _, top := range tops {
		if err := cgroups.RemovePath(top); err != nil {
			errs = append(errs, fmt.Errorf("removing cgroup %s: %w", top, err))
		}
	}
	// Parents runc made on the way ("kip" at the cgroup2 root) go once empty; a parent still
	// used by another pod simply stays.
	for _, s := range strays {
		for d := filepath.Dir(s.dir); d != s.hierarchyRoot; d = filepath.Dir(d) {
			if os.Remove(d) != nil {
				break
			}
		}
	}
	return errors.Join(errs...)
}

// Exists reports whether rel exists in any hierarchy.
func (f *FS) Exists(rel string) bool {
	ps, _ := f.places()
	for _, p := range ps {
		if _, err := os.Stat(filepath.Join(p.base, rel)); err == nil {
			return true
		}
	}
	return false
}

// SetPidsLimit creates rel (in the pids hierarchy on v1; enabling the pids controller down
// to it on v2) and sets the most tasks (processes and threads) it and every cgroup below it
// may hold at once (pids.max), as kubelet's podPidsLimit on a pod's cgroup: a fork beyond it
// fails with EAGAIN. limit <= 0 sets no limit ("max").
func (f *FS) SetPidsLimit(rel string, limit int64) error {
	d := f.Dir("pids", rel)
	if d == "" {
		return fmt.Errorf("setting pids limit of %s: the pids controller is not mounted", rel)
	}
	if err := os.MkdirAll(d, 0o755); err != nil {
		return fmt.Errorf("creating pids cgroup %s: %w", rel, err)
	}
	if limit <= 0 {
		limit = -1 // the library writes "max"
	}
	var err error
	if f.mode == Unified {
		if err = delegate(f.root, d, []string{"pids"}); err != nil {
			return fmt.Errorf("setting pids limit of %s: %w", rel, err)
		}
		var m *fs2.Manager
		if m, err = fs2.NewManager(&cgroups.Cgroup{Resources: &cgroups.Resources{SkipDevices: true}}, d); err == nil {
			err = m.Set(&cgroups.Resources{PidsLimit: &limit, SkipDevices: true})
		}
	} else {
		err = (&v1.PidsGroup{}).Set(d, &cgroups.Resources{PidsLimit: &limit})
	}
	if err != nil {
		return fmt.Errorf("setting pids limit of %s: %w", rel, err)
	}
	return nil
}

// Pids reads rel's pids.current (the tasks in it and below) and pids.max (0 for "max").
func (f *FS) Pids(rel string) (current, limit int64, err error) {
	d := f.Dir("pids", rel)
	if d == "" {
		return 0, 0, fmt.Errorf("reading pids of %s: the pids controller is not mounted", rel)
	}
	cur, err := fscommon.GetCgroupParamUint(d, "pids.current")
	if err != nil {
		return 0, 0, fmt.Errorf("reading pids of %s: %w", rel, err)
	}
	max, err := fscommon.GetCgroupParamString(d, "pids.max")
	if err != nil {
		return 0, 0, fmt.Errorf("reading pids of %s: %w", rel, err)
	}
	if max != "max" {
		if _, err := fmt.Sscan(max, &limit); err != nil {
			return 0, 0, fmt.Errorf("reading pids.max of %s: %q", rel, max)
		}
	}
	return int64(cur), limit, nil
}

// V2Dir returns the directory where runc puts the relative cgroup path rel in the cgroup v2
// hierarchy, and its level there (the hierarchy's root is level 0; "kip/<uid>" at the root
// is level 2), as nftables' "socket cgroupv2 level" counts: on a cgroup v2-only host rel
// lands below the parent of this process's cgroup (Dirs); in hybrid mode runc 1.1 puts it at
// the root of the cgroup2 hierarchy (StrayPodDirs). ok is false on a cgroup v1-only host.
func (f *FS) V2Dir(rel string) (dir string, level int, ok bool, err error) {
	if err := checkRel(rel); err != nil {
		return "", 0, false, err
	}
	var root string
	switch f.mode {
	case Unified:
		root = f.root
		if dir, err = f.v2Dir(rel); err != nil {
			return "", 0, false, err
		}
	case Hybrid:
		for _, h := range f.hs {
			if h.v2() {
				root = filepath.Join(f.root, h.dir)
			}
		}
		dir = filepath.Join(root, rel)
	default:
		return "", 0, false, nil
	}
	r, err := filepath.Rel(root, dir)
	if err != nil || r == ".." || strings.HasPrefix(r, "../") {
		return "", 0, false, fmt.Errorf("cgroup path %q lands outside the cgroup2 hierarchy %s", rel, root)
	}
	if r != "." {
		level = len(strings.Split(r, "/"))
	}
	return dir, level, true, nil
}

// SetNetClassID creates rel in the cgroup v1 net_cls hierarchy and sets its net_cls.classid
// to id: its sockets carry the class (nftables "meta cgroup"), and cgroups created below it
// afterwards inherit it. ok is false when no net_cls hierarchy is mounted.
func (f *FS) SetNetClassID(rel string, id uint32) (ok bool, err error) {
	if f.mode == Unified {
		return false, nil
	}
	d := f.Dir("net_cls", rel)
	if d == "" {
		return false, nil
	}
	if err := os.MkdirAll(d, 0o755); err != nil {
		return true, fmt.Errorf("creating net_cls cgroup %s: %w", rel, err)
	}
	if err := cgroups.WriteFile(d, "net_cls.classid", strconv.FormatUint(uint64(id), 10)); err != nil {
		return true, fmt.Errorf("setting net_cls.classid of %s: %w", rel, err)
	}
	return true, nil
}
