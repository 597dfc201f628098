package cgroups

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/opencontainers/cgroups"
	v1 "github.com/opencontainers/cgroups/fs"
	"github.com/opencontainers/cgroups/fs2"
	"golang.org/x/sys/unix"
)

// A cell owns one cgroup in every hierarchy, made where its agent's relative cgroup paths
// would land for the process making it (Dirs). The agent runs runc with relative
// cgroupsPaths; only if the agent sits in the cell's cgroup in every v1 hierarchy do the
// containers' cgroups all land inside the cell. On a cgroup v2-only host runc nests them
// under the parent of the agent's cgroup, so there the agent sits in a leaf below the
// cell's cgroup (AgentDirs) and the containers' cgroups are the leaf's siblings.

// agentLeaf is the agent's cgroup below its cell's on a cgroup v2-only host.
const agentLeaf = "agent"

// cfsPeriod is the CPU quota period, in microseconds.
const cfsPeriod = 100000

// cellControllers are the cgroup v2 controllers a cell's cgroup gets (those the host offers).
var cellControllers = []string{"cpu", "memory"}

// Limits size a cgroup; a zero field sets nothing.
type Limits struct {
	// CPUs is the CPU quota (1.5: 150ms of every 100ms); the CPU weight follows it
	// (cpu.shares of 1024 per CPU, at least 2, or the cgroup v2 weight runc makes of that).
	CPUs float64
	// MemoryBytes is the memory limit.
	MemoryBytes int64
}

func (l Limits) shares() uint64 { return uint64(max(int64(l.CPUs*1024), 2)) }
func (l Limits) quota() int64   { return int64(l.CPUs * cfsPeriod) }

// CreateCell makes a cell's cgroup (dirs, from Dirs) sized by l, with the agent's leaf on a
// cgroup v2-only host. The memory limit and the CPU weight bind the whole cell; the CPU quota
// binds only its pods' parent (PodsParent below each dir, made here), as kubelet keeps its
// own and the runtime's work out of the pods' CPU: the agent's and runc's work to start a
// container is not charged to the quota the pod's containers share, which on a quarter CPU
// would hold each start for several quota periods.
func (f *FS) CreateCell(dirs []string, l Limits) error {
	if err := f.create(dirs, l, false); err != nil {
		return err
	}
	pods := make([]string, 0, len(dirs))
	for _, d := range dirs {
		pods = append(pods, filepath.Join(d, PodsParent))
	}
	if err := f.create(pods, Limits{CPUs: l.CPUs}, true); err != nil {
		return err
	}
	if f.mode != Unified {
		return nil
	}
	for _, d := range dirs {
		if err := mkdir(filepath.Join(d, agentLeaf)); err != nil {
			return err
		}
	}
	return nil
}

// AgentDirs returns the cgroups a cell's agent joins: the cell's own, or on a cgroup v2-only
// host the leaf below it.
func (f *FS) AgentDirs(cellDirs []string) []string {
	if f.mode != Unified {
		return slices.Clone(cellDirs)
	}
	out := make([]string, 0, len(cellDirs))
	for _, d := range cellDirs {
		out = append(out, filepath.Join(d, agentLeaf))
	}
	return out
}

// Create makes the cgroup dirs (one per hierarchy, from Dirs) and their missing parents, and
// sets l in each: cpu.cfs_quota_us, cpu.cfs_period_us, cpu.shares and memory.limit_in_bytes
// where the hierarchy has them (v1), or cpu.max, cpu.weight and memory.max after enabling
// the cpu and memory controllers down to dirs (v2). A controller the host lacks is skipped.
func (f *FS) Create(dirs []string, l Limits) error { return f.create(dirs, l, true) }

// create is Create; without quota it sets l's CPU weight but no CPU quota.
func (f *FS) create(dirs []string, l Limits, quota bool) error {
	if f.mode == Unified {
		for _, d := range dirs {
			if err := createV2(f.root, d, l, quota); err != nil {
				return err
			}
		}
		return nil
	}
	for _, d := range dirs {
		if err := mkdirV1(d); err != nil {
			return err
		}
	}
	for _, d := range dirs {
		if err := setV1(d, l, quota); err != nil {
			return err
		}
	}
	return nil
}

func setV1(d string, l Limits, quota bool) error {
	if l.MemoryBytes != 0 && exists(d, "memory.limit_in_bytes") {
		if err := (&v1.MemoryGroup{}).Set(d, &cgroups.Resources{Memory: l.MemoryBytes}); err != nil {
			return fmt.Errorf("setting memory limit of %s: %w", d, err)
		}
	}
	if l.CPUs == 0 {
		return nil
	}
	var r cgroups.Resources
	if exists(d, "cpu.shares") {
		r.CpuShares = l.shares()
	}
	if quota && exists(d, "cpu.cfs_quota_us") {
		r.CpuPeriod, r.CpuQuota = cfsPeriod, l.quota()
	}
	if err := (&v1.CpuGroup{}).Set(d, &r); err != nil {
		return fmt.Errorf("setting CPU limits of %s: %w", d, err)
	}
	return nil
}

func createV2(root, d string, l Limits, quota bool) error {
	if err := os.MkdirAll(d, 0o755); err != nil {
		return fmt.Errorf("creating cgroup %s: %w", d, err)
	}
	if err := delegate(root, d, cellControllers); err != nil {
		return err
	}
	has, err := controllers(d, "cgroup.controllers")
	if err != nil {
		return err
	}
	r := &cgroups.Resources{SkipDevices: true}
	if slices.Contains(has, "memory") {
		r.Memory = l.MemoryBytes
	}
	if slices.Contains(has, "cpu") && l.CPUs != 0 {
		if quota {
			r.CpuPeriod, r.CpuQuota = cfsPeriod, l.quota()
		}
		r.CpuWeight = cgroups.ConvertCPUSharesToCgroupV2Value(l.shares())
	}
	m, err := fs2.NewManager(&cgroups.Cgroup{Resources: &cgroups.Resources{SkipDevices: true}}, d)
	if err == nil {
		err = m.Set(r)
	}
	if err != nil {
		return fmt.Errorf("setting limits of %s: %w", d, err)
	}
	return nil
}

// delegate enables the controllers on offer among want in cgroup.subtree_control of every
// cgroup from the cgroup v2 root down to dir's parent, so that dir has them. cgroup v2 lets a
// cgroup that holds processes (but the root) give none to its children.
func delegate(root, dir string, want []string) error {
	rel, err := filepath.Rel(root, dir)
	if err != nil || rel == "." || strings.HasPrefix(rel, "..") {
		return fmt.Errorf("cgroup %s is not below the cgroup root %s", dir, root)
	}
	parent := root
	for _, name := range strings.Split(rel, "/") {
		if err := enable(parent, want); err != nil {
			return err
		}
		parent = filepath.Join(parent, name)
	}
	return nil
}

// enable writes to dir's cgroup.subtree_control the controllers of want that dir offers
// and has not enabled yet.
func enable(dir string, want []string) error {
	offered, err := controllers(dir, "cgroup.controllers")
	if err != nil {
		return err
	}
	on, err := controllers(dir, "cgroup.subtree_control")
	if err != nil {
		return err
	}
	var add []string
	for _, c := range want {
		if slices.Contains(offered, c) && !slices.Contains(on, c) {
			add = append(add, "+"+c)
		}
	}
	if len(add) == 0 {
		return nil
	}
	err = cgroups.WriteFile(dir, "cgroup.subtree_control", strings.Join(add, " "))
	if errors.Is(err, unix.EBUSY) {
		return fmt.Errorf("enabling %s for the children of cgroup %s, which holds processes (cgroup v2 gives controllers only to children of a cgroup without processes of its own): %w", strings.Join(add, " "), dir, err)
	}
	if err != nil {
		return fmt.Errorf("enabling %s for the children of cgroup %s: %w", strings.Join(add, " "), dir, err)
	}
	return nil
}

// controllers reads a space-separated controller list (cgroup.controllers,
// cgroup.subtree_control).
func controllers(dir, file string) ([]string, error) {
	s, err := cgroups.ReadFile(dir, file)
	if err != nil {
		return nil, fmt.Errorf("reading %s of cgroup %s: %w", file, dir, err)
	}
	return strings.Fields(s), nil
}

// mkdirV1 creates the v1 cgroup dir and its missing parents. A new cpuset cgroup starts with
// no CPUs and no memory nodes, so each new level gets its parent's. A level that exists but
// has no CPUs yet is filled in too: concurrent launches share the parent levels, and another
// one may have made a level without having set it up yet (a child made under an empty parent
// would stay empty, and moving a process into it fails with ENOSPC).
func mkdirV1(dir string) error {
	if _, err := os.Stat(dir); err == nil && cpusetReady(dir) {
		return nil
	}
	parent := filepath.Dir(dir)
	if err := mkdirV1(parent); err != nil {
		return err
	}
	if err := mkdir(dir); err != nil {
		return err
	}
	for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
		b, err := cgroups.ReadFile(parent, f)
		if err != nil || strings.TrimSpace(b) == "" {
			continue
		}
		if cur, _ := cgroups.ReadFile(dir, f); strings.TrimSpace(cur) != "" {
			continue
		}
		if err := cgroups.WriteFile(dir, f, b); err != nil {
			return fmt.Errorf("setting %s of %s: %w", f, dir, err)
		}
	}
	return nil
}

// cpusetReady reports whether dir has CPUs and memory nodes, or is not a cpuset cgroup.
func cpusetReady(dir string) bool {
	for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
		b, err := cgroups.ReadFile(dir, f)
		if err == nil && strings.TrimSpace(b) == "" {
			return false
		}
	}
	return true
}

func mkdir(dir string) error {
	if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("creating cgroup %s: %w", dir, err)
	}
	return nil
}

func exists(dir, file string) bool {
	_, err := os.Stat(filepath.Join(dir, file))
	return err == nil
}

// Join moves pid (every thread of it) into each of dirs.
func Join(dirs []string, pid int) error {
	for _, d := range dirs {
		if err := cgroups.WriteCgroupProc(d, pid); err != nil {
			return fmt.Errorf("moving pid %d into cgroup %s: %w", pid, d, err)
		}
	}
	return nil
}

// Probe makes and removes a cgroup where Dirs puts cells, in every hierarchy, to tell whether
// this process may. It leaves nothing behind.
func (f *FS) Probe() error {
	dirs, err := f.Dirs("kip-probe-" + strconv.FormatInt(time.Now().UnixNano(), 36))
	if err != nil {
		return err
	}
	for _, d := range dirs {
		if err := os.Mkdir(d, 0o755); err != nil {
			return fmt.Errorf("creating a cgroup in %s: %w", filepath.Dir(d), err)
		}
		if err := os.Remove(d); err != nil {
			return fmt.Errorf("removing probe cgroup %s: %w", d, err)
		}
	}
	return nil
}
