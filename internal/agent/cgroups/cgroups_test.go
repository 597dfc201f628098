package cgroups

import (
	"os"
	"path/filepath"
	"testing"
)

// fakeTree lays out a cgroup v1 mount root like this machine's: separate cpu and cpuacct,
// a nested memory cgroup, a named systemd hierarchy and a cgroup2 "unified".
func fakeTree(t *testing.T) (root, proc string) {
	t.Helper()
	root = t.TempDir()
	for _, d := range []string{"cpu", "cpuacct", "memory/agent/a1", "systemd", "unified", "pids"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	proc = filepath.Join(t.TempDir(), "cgroup")
	os.WriteFile(proc, []byte("9:name=systemd:/\n8:pids:/\n4:memory:/agent/a1\n2:cpuacct:/\n1:cpu:/\n0::/\n"), 0o644)
	return root, proc
}

func write(t *testing.T, path, data string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestSelfAndUsage(t *testing.T) {
	root, proc := fakeTree(t)
	s, err := Self(root, proc)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := s.Dir("memory", "kip/p"), filepath.Join(root, "memory/agent/a1/kip/p"); got != want {
		t.Errorf("memory dir = %s, want %s", got, want)
	}
	if got := s.Dir("blkio", ""); got != "" {
		t.Errorf("unmounted controller dir = %q, want empty", got)
	}
	write(t, filepath.Join(root, "cpuacct/kip/p/cpuacct.usage"), "12345\n")
	write(t, filepath.Join(root, "memory/agent/a1/kip/p/memory.usage_in_bytes"), "1000\n")
	write(t, filepath.Join(root, "memory/agent/a1/kip/p/memory.stat"), "cache 5\ntotal_inactive_file 300\n")
	u, err := s.Usage("kip/p")
	if err != nil {
		t.Fatal(err)
	}
	if u.CPUUsageNanoSeconds != 12345 || u.MemoryUsageBytes != 1000 || u.MemoryWorkingSetBytes != 700 {
		t.Errorf("usage = %+v", u)
	}
	if _, err := s.Usage("kip/missing"); err == nil {
		t.Error("usage of a missing cgroup: want an error")
	}
}

func TestOOMKillsAndRemove(t *testing.T) {
	root, proc := fakeTree(t)
	s, err := Self(root, proc)
	if err != nil {
		t.Fatal(err)
	}
	if ev, err := s.MemoryEvents("kip/p/c"); err != nil || ev != (MemoryEvents{}) {
		t.Fatalf("missing cgroup: %+v, %v", ev, err)
	}
	write(t, filepath.Join(root, "memory/agent/a1/kip/p/c/memory.oom_control"), "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n")
	write(t, filepath.Join(root, "memory/agent/a1/kip/p/c/memory.failcnt"), "17\n")
	if ev, err := s.MemoryEvents("kip/p/c"); err != nil || ev != (MemoryEvents{OOMKills: 2, LimitHits: 17}) {
		t.Fatalf("MemoryEvents = %+v, %v", ev, err)
	}
	os.Remove(filepath.Join(root, "memory/agent/a1/kip/p/c/memory.oom_control"))
	os.Remove(filepath.Join(root, "memory/agent/a1/kip/p/c/memory.failcnt"))
	for _, d := range []string{"cpu/kip/p/c/0", "pids/kip/p/c", "unified/kip/p"} {
		os.MkdirAll(filepath.Join(root, d), 0o755)
	}
	if !s.Exists("kip/p") {
		t.Fatal("Exists = false")
	}
	if err := s.Remove("kip/p"); err != nil {
		t.Fatal(err)
	}
	if s.Exists("kip/p") {
		t.Fatal("cgroup left after Remove")
	}
	for _, bad := range []string{"", "/abs", "../x"} {
		if err := s.Remove(bad); err == nil {
			t.Errorf("Remove(%q) accepted", bad)
		}
	}
}

// TestRemoveUnifiedAtRoot: in hybrid mode runc puts a relative cgroupsPath at the root of the
// cgroup2 "unified" hierarchy rather than under the agent's cgroup; Remove finds it there too.
func TestRemoveUnifiedAtRoot(t *testing.T) {
	root := t.TempDir()
	for _, d := range []string{"memory/cell", "unified/cell", "unified/kip/other"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	proc := filepath.Join(t.TempDir(), "cgroup")
	os.WriteFile(proc, []byte("4:memory:/cell\n0::/cell\n"), 0o644)
	s, err := Self(root, proc)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"memory/cell/kip/p/c", "unified/kip/p/c"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Remove("kip/p"); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"memory/cell/kip/p", "unified/kip/p"} {
		if _, err := os.Stat(filepath.Join(root, d)); !os.IsNotExist(err) {
			t.Errorf("%s left after Remove (stat: %v)", d, err)
		}
	}
	if _, err := os.Stat(filepath.Join(root, "unified/kip/other")); err != nil {
		t.Errorf("another pod's cgroup was removed: %v", err)
	}
}
