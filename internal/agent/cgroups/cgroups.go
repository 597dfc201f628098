// Package cgroups reads the cgroup v1 hierarchies the cell agent and its containers live in:
// CPU and memory usage for stats, the OOM-kill counter that tells an OOM-killed container
// from one killed otherwise, and the removal of the per-pod directories runc leaves behind.
//
// runc nests a relative cgroupsPath under the cgroup of the process that runs it, in every
// hierarchy, so every path here is relative to the agent's own cgroup, which Self reads
// from /proc/self/cgroup.
package cgroups

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/kip-dev/kip/internal/cellapi"
)

// Set is the agent's own place in each mounted cgroup hierarchy. It reads /proc/self/cgroup
// on every use: the local backend moves a freshly started agent into its cell's cgroups, so
// a path read at startup could be stale.
type Set struct {
	root, proc string
}

// Self returns the agent's cgroups under mountRoot (normally /sys/fs/cgroup) as procCgroup
// (normally /proc/self/cgroup) names them. Hierarchies whose directory is missing are
// skipped; none at all is an error.
func Self(mountRoot, procCgroup string) (*Set, error) {
	s := &Set{root: mountRoot, proc: procCgroup}
	dirs, err := s.dirs()
	if err != nil {
		return nil, err
	}
	if len(dirs) == 0 {
		return nil, fmt.Errorf("reading own cgroups: no hierarchy of %s is mounted under %s", procCgroup, mountRoot)
	}
	return s, nil
}

// dirs maps each hierarchy's directory under the mount root ("memory", "cpu,cpuacct",
// "unified") to the agent's cgroup in it ("/process_api/abc").
func (s *Set) dirs() (map[string]string, error) {
	f, err := os.Open(s.proc)
	if err != nil {
		return nil, fmt.Errorf("reading own cgroups: %w", err)
	}
	defer f.Close()
	dirs := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		parts := strings.SplitN(sc.Text(), ":", 3)
		if len(parts) != 3 {
			continue
		}
		ctrls, path := parts[1], parts[2]
		var candidates []string
		switch {
		case ctrls == "":
			candidates = []string{"unified", ""}
		default:
			names := strings.Split(ctrls, ",")
			for i, n := range names {
				names[i] = strings.TrimPrefix(n, "name=")
			}
			candidates = append([]string{strings.Join(names, ",")}, names...)
		}
		for _, c := range candidates {
			if st, err := os.Stat(filepath.Join(s.root, c)); err == nil && st.IsDir() {
				if c == "" && len(dirs) > 0 {
					break // the mount root is cgroup2 only when no v1 hierarchy is mounted
				}
				dirs[c] = path
			}
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading own cgroups: %w", err)
	}
	return dirs, nil
}

// Dir returns the directory of rel (relative to the agent's cgroup) in the hierarchy holding
// controller, or "" when that controller is not mounted.
func (s *Set) Dir(controller, rel string) string {
	dirs, _ := s.dirs()
	for h, own := range dirs {
		for _, c := range strings.Split(h, ",") {
			if c == controller {
				return filepath.Join(s.root, h, own, rel)
			}
		}
	}
	return ""
}

// Usage reads CPU time (cpuacct.usage) and memory (usage, and the working set: usage minus
// total_inactive_file, as kubelet computes it) of the cgroup rel; "" is the agent's own.
func (s *Set) Usage(rel string) (cellapi.Usage, error) {
	var u cellapi.Usage
	var err error
	if d := s.Dir("cpuacct", rel); d != "" {
		if u.CPUUsageNanoSeconds, err = readUint(filepath.Join(d, "cpuacct.usage")); err != nil {
			return u, err
		}
	}
	if d := s.Dir("memory", rel); d != "" {
		if u.MemoryUsageBytes, err = readUint(filepath.Join(d, "memory.usage_in_bytes")); err != nil {
			return u, err
		}
		inactive, err := readKey(filepath.Join(d, "memory.stat"), "total_inactive_file")
		if err != nil {
			return u, err
		}
		if inactive < u.MemoryUsageBytes {
			u.MemoryWorkingSetBytes = u.MemoryUsageBytes - inactive
		}
	}
	return u, nil
}

// MemoryEvents are a memory cgroup's counters.
type MemoryEvents struct {
	// OOMKills counts processes of this cgroup itself the OOM killer chose
	// (memory.oom_control "oom_kill"); cgroup v1 counts a victim only in its own cgroup.
	OOMKills uint64
	// LimitHits counts how often usage hit this cgroup's limit (memory.failcnt), including
	// hits caused by its children.
	LimitHits uint64
}

// MemoryEvents reads rel's counters; a missing cgroup has zero counters.
func (s *Set) MemoryEvents(rel string) (MemoryEvents, error) {
	var ev MemoryEvents
	d := s.Dir("memory", rel)
	if d == "" {
		return ev, nil
	}
	var err error
	ev.OOMKills, err = readKey(filepath.Join(d, "memory.oom_control"), "oom_kill")
	if errors.Is(err, fs.ErrNotExist) {
		return MemoryEvents{}, nil
	}
	if err != nil {
		return ev, err
	}
	ev.LimitHits, err = readUint(filepath.Join(d, "memory.failcnt"))
	if errors.Is(err, fs.ErrNotExist) {
		err = nil
	}
	return ev, err
}

// SetMemoryLimit creates rel in the memory hierarchy and sets its memory limit. A container
// run below rel is limited by it; since rel outlives the run (runc removes the run's own
// cgroup when it ends), its failcnt can be read afterwards to tell an OOM kill from another
// SIGKILL.
func (s *Set) SetMemoryLimit(rel string, bytes int64) error {
	d := s.Dir("memory", rel)
	if d == "" {
		return fmt.Errorf("setting memory limit of %s: the memory controller is not mounted", rel)
	}
	if err := os.MkdirAll(d, 0o755); err != nil {
		return fmt.Errorf("creating memory cgroup %s: %w", rel, err)
	}
	if err := os.WriteFile(filepath.Join(d, "memory.limit_in_bytes"), []byte(strconv.FormatInt(bytes, 10)), 0o644); err != nil {
		return fmt.Errorf("setting memory limit of %s: %w", rel, err)
	}
	return nil
}

// Remove deletes rel and every cgroup below it in every hierarchy, deepest first. It fails
// when a cgroup still holds a process.
func (s *Set) Remove(rel string) error {
	if rel == "" || filepath.IsAbs(rel) || strings.Contains(rel, "..") {
		return fmt.Errorf("removing cgroup %q: must be a relative path below the agent's cgroup", rel)
	}
	dirs, err := s.dirs()
	if err != nil {
		return err
	}
	var tops []string
	for h, own := range dirs {
		tops = append(tops, filepath.Join(s.root, h, own, rel))
		if h == "unified" && own != "/" {
			// In hybrid mode runc (1.1) does not nest a relative cgroupsPath under the
			// caller's cgroup in the cgroup2 "unified" hierarchy: it puts it at the
			// hierarchy's root.
			tops = append(tops, filepath.Join(s.root, h, rel))
		}
	}
	var errs []error
	for _, top := range tops {
		var dirs []string
		_ = filepath.WalkDir(top, func(p string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		for i := len(dirs) - 1; i >= 0; i-- {
			if err := os.Remove(dirs[i]); err != nil && !errors.Is(err, fs.ErrNotExist) {
				errs = append(errs, fmt.Errorf("removing cgroup %s: %w", dirs[i], err))
			}
		}
	}
	// Parents runc made on the way ("kip" at the unified root) go once empty; a parent
	// still used by another pod simply stays.
	for h, own := range dirs {
		if h == "unified" && own != "/" {
			for d := filepath.Dir(filepath.Join(s.root, h, rel)); d != filepath.Join(s.root, h); d = filepath.Dir(d) {
				if os.Remove(d) != nil {
					break
				}
			}
		}
	}
	return errors.Join(errs...)
}

// Exists reports whether rel exists in any hierarchy.
func (s *Set) Exists(rel string) bool {
	dirs, _ := s.dirs()
	for h, own := range dirs {
		if _, err := os.Stat(filepath.Join(s.root, h, own, rel)); err == nil {
			return true
		}
	}
	return false
}

func readUint(path string) (uint64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("reading %s: %w", path, err)
	}
	n, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("parsing %s: %w", path, err)
	}
	return n, nil
}

func readKey(path, key string) (uint64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, fmt.Errorf("reading %s: %w", path, err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), " ")
		if ok && k == key {
			n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("parsing %s in %s: %w", key, path, err)
			}
			return n, nil
		}
	}
	return 0, nil
}
