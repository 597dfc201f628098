package cgroups

import (
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/opencontainers/cgroups"
)

// Ceiling is the tightest CPU quota and memory limit binding a cgroup: the smallest set on
// it or on any of its ancestors. The kernel enforces both hierarchically, so a child's own
// limit above its ceiling binds nothing; cgroup v1 even refuses (EINVAL) a cpu.cfs_quota_us
// above an ancestor's.
type Ceiling struct {
	// CPUQuota µs of every CPUPeriod µs; 0 when no cgroup on the way sets a quota.
	CPUQuota  int64
	CPUPeriod uint64
	// MemoryBytes is the smallest memory limit; 0 when none is set.
	MemoryBytes int64
}

// unlimitedMemory is the smallest value cgroup v1 memory.limit_in_bytes is taken as "no
// limit" from: an unset limit reads PAGE_COUNTER_MAX pages (9223372036854771712 with 4 KiB
// pages).
const unlimitedMemory = 1 << 62

// Ceiling reads the limits set on rel (relative to where this process's relative cgroup
// paths land; it need not exist yet) and its ancestors up to the hierarchy's root:
// cpu.cfs_quota_us/cpu.cfs_period_us and memory.limit_in_bytes on v1, cpu.max and memory.max
// on v2. A controller that is not mounted, or a level without the file, sets nothing.
func (f *FS) Ceiling(rel string) (Ceiling, error) {
	if err := checkRel(rel); err != nil {
		return Ceiling{}, err
	}
	var c Ceiling
	cpu := func(d string) error {
		q, p, err := f.cpuLimit(d)
		if err != nil || q <= 0 || p == 0 {
			return err
		}
		// q/p < c.CPUQuota/c.CPUPeriod, in floats: quotas times periods may overflow int64.
		if c.CPUQuota == 0 || float64(q)/float64(p) < float64(c.CPUQuota)/float64(c.CPUPeriod) {
			c.CPUQuota, c.CPUPeriod = q, p
		}
		return nil
	}
	mem := func(d string) error {
		m, err := f.memoryLimit(d)
		if err == nil && m > 0 && (c.MemoryBytes == 0 || m < c.MemoryBytes) {
			c.MemoryBytes = m
		}
		return err
	}
	if err := f.walkUp("cpu", rel, cpu); err != nil {
		return Ceiling{}, err
	}
	if err := f.walkUp("memory", rel, mem); err != nil {
		return Ceiling{}, err
	}
	return c, nil
}

// walkUp calls fn with rel's directory in the hierarchy holding controller, then with each
// parent up to and including the hierarchy's root. Nothing is called when no mounted
// hierarchy has controller.
func (f *FS) walkUp(controller, rel string, fn func(dir string) error) error {
	d := f.Dir(controller, rel)
	if d == "" {
		return nil
	}
	top := f.root
	if f.mode != Unified {
		rest, err := filepath.Rel(f.root, d)
		if err != nil {
			return err
		}
		top = filepath.Join(f.root, strings.Split(rest, "/")[0])
	}
	for ; ; d = filepath.Dir(d) {
		if err := fn(d); err != nil {
			return err
		}
		if d == top || len(d) <= len(top) {
			return nil
		}
	}
}

// cpuLimit reads dir's CPU quota and period; a quota of 0 means none (or no such file).
func (f *FS) cpuLimit(dir string) (int64, uint64, error) {
	if f.mode == Unified {
		s, err := readOptional(dir, "cpu.max")
		if err != nil || s == "" {
			return 0, 0, err
		}
		qs, ps, _ := strings.Cut(s, " ")
		if qs == "max" {
			return 0, 0, nil
		}
		q, err1 := strconv.ParseInt(qs, 10, 64)
		p, err2 := strconv.ParseUint(ps, 10, 64)
		if err := errors.Join(err1, err2); err != nil {
			return 0, 0, fmt.Errorf("reading cpu.max of %s: %w", dir, err)
		}
		return q, p, nil
	}
	qs, err := readOptional(dir, "cpu.cfs_quota_us")
	if err != nil || qs == "" {
		return 0, 0, err
	}
	ps, err := readOptional(dir, "cpu.cfs_period_us")
	if err != nil || ps == "" {
		return 0, 0, err
	}
	q, err1 := strconv.ParseInt(qs, 10, 64)
	p, err2 := strconv.ParseUint(ps, 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, 0, fmt.Errorf("reading the CPU quota of %s: %w", dir, err)
	}
	if q < 0 { // -1: no quota
		return 0, 0, nil
	}
	return q, p, nil
}

// memoryLimit reads dir's memory limit; 0 means none (or no such file).
func (f *FS) memoryLimit(dir string) (int64, error) {
	file := "memory.limit_in_bytes"
	if f.mode == Unified {
		file = "memory.max"
	}
	s, err := readOptional(dir, file)
	if err != nil || s == "" || s == "max" {
		return 0, err
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("reading %s of %s: %w", file, dir, err)
	}
	if n >= unlimitedMemory {
		return 0, nil
	}
	return int64(n), nil
}

// readOptional returns a cgroup file's trimmed content, "" when the cgroup or the file does
// not exist.
func readOptional(dir, file string) (string, error) {
	s, err := cgroups.ReadFile(dir, file)
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("reading %s of %s: %w", file, dir, err)
	}
	return strings.TrimSpace(s), nil
}
