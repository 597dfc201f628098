package cgroups

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kip-dev/kip/internal/testenv"
)

// These tests use this machine's cgroups; they need root.

func hostFS(t *testing.T) *FS {
	t.Helper()
	testenv.RequireNetns(t) // root, and this is part of the isolated backend
	f, err := Open("/sys/fs/cgroup", "/proc/self/cgroup")
	if err != nil {
		t.Skipf("skipping: %v", err)
	}
	if err := f.Probe(); err != nil {
		t.Skipf("skipping: %v", err)
	}
	return f
}

func tag() string { return "kip-t" + strconv.FormatInt(time.Now().UnixNano(), 36) }

// TestCreateUnderUnsetCpusetParent: a cell cgroup made under a cpuset parent that exists but
// has no CPUs yet (another launch made it and has not filled it in) still gets CPUs and
// memory nodes, so a process can join it.
func TestCreateUnderUnsetCpusetParent(t *testing.T) {
	f := hostFS(t)
	dirs, err := f.Dirs(tag())
	if err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(dirs, func(d string) bool { return strings.HasPrefix(d, "/sys/fs/cgroup/cpuset/") })
	if i < 0 {
		t.Skip("skipping: no cgroup v1 cpuset hierarchy")
	}
	parent := dirs[i]
	if err := os.Mkdir(parent, 0o755); err != nil { // a new cpuset cgroup has no CPUs
		t.Fatal(err)
	}
	child := filepath.Join(parent, "c1")
	t.Cleanup(func() {
		_ = os.Remove(child)
		_ = os.Remove(parent)
	})
	if err := f.Create([]string{child}, Limits{}); err != nil {
		t.Fatalf("Create: %v", err)
	}
	for _, d := range []string{parent, child} {
		for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
			if b, err := os.ReadFile(filepath.Join(d, f)); err != nil || strings.TrimSpace(string(b)) == "" {
				t.Errorf("%s of %s = %q, %v; want the parent's", f, d, b, err)
			}
		}
	}
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}()
	if err := Join([]string{child}, cmd.Process.Pid); err != nil {
		t.Errorf("joining the cgroup: %v", err)
	}
}

// TestCellOnHost makes a sized cell on this machine, moves a process into it as the backend
// moves an agent, reads its usage as the agent would, and removes it with its process.
func TestCellOnHost(t *testing.T) {
	f := hostFS(t)
	parent := tag()
	dirs, err := f.Dirs(filepath.Join(parent, "c1"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, d := range dirs {
			_ = RemoveTree(d, time.Second)
			_ = os.Remove(filepath.Dir(d))
		}
	})
	if err := f.CreateCell(dirs, Limits{CPUs: 0.5, MemoryBytes: 64 << 20}); err != nil {
		t.Fatalf("CreateCell: %v", err)
	}
	// The cell: memory limit and CPU weight; its pods' parent: the CPU quota.
	limits := map[string]string{"memory.limit_in_bytes": "67108864", "cpu.shares": "512", "memory.max": "67108864",
		"cpu.cfs_quota_us": "-1", "cpu.max": "max 100000",
		PodsParent + "/cpu.cfs_quota_us": "50000", PodsParent + "/cpu.max": "50000 100000"}
	found := 0
	for _, d := range dirs {
		for file, want := range limits {
			if b, err := os.ReadFile(filepath.Join(d, file)); err == nil {
				found++
				if got := strings.TrimSpace(string(b)); got != want {
					t.Errorf("%s/%s = %q, want %q", d, file, got, want)
				}
			}
		}
	}
	if found < 3 {
		t.Errorf("only %d of the limit files found in %v", found, dirs)
	}
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	if err := Join(f.AgentDirs(dirs), cmd.Process.Pid); err != nil {
		_ = cmd.Process.Kill()
		t.Fatal(err)
	}
	for _, d := range dirs {
		if pids, err := PIDs(d); err != nil || !slices.Contains(pids, cmd.Process.Pid) {
			t.Errorf("PIDs(%s) = %v, %v; want the process", d, pids, err)
		}
	}
	if err := RemoveCell(dirs, 10*time.Second); err != nil {
		t.Fatalf("RemoveCell: %v", err)
	}
	for _, d := range dirs {
		if _, err := os.Stat(d); !os.IsNotExist(err) {
			t.Errorf("cgroup %s left (stat: %v)", d, err)
		}
	}
	select {
	case <-exited:
	case <-time.After(5 * time.Second):
		t.Error("the cell's process survived RemoveCell")
	}
}
