package cgroups

import (
	"os"
	"path/filepath"
	"testing"
)

// agentTree lays out a cgroup v1 mount root like this machine's: separate cpu and cpuacct,
// a nested memory cgroup, a named systemd hierarchy and a cgroup2 "unified".
func agentTree(t *testing.T) (root, self string) {
	t.Helper()
	root = tree{
		"cpu/": "", "cpuacct/": "", "memory/agent/a1/": "", "systemd/": "", "pids/": "",
		"unified/cgroup.controllers": "",
	}.lay(t, nil)
	return root, selfFile(t, "9:name=systemd:/\n8:pids:/\n4:memory:/agent/a1\n2:cpuacct:/\n1:cpu:/\n0::/\n")
}

func TestSelfAndUsage(t *testing.T) {
	root, proc := agentTree(t)
	s, err := Open(root, proc)
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
	root, proc := agentTree(t)
	s, err := Open(root, proc)
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
	root := tree{"memory/cell/": "", "unified/cell/": "", "unified/kip/other/": "", "unified/cgroup.controllers": ""}.lay(t, nil)
	proc := selfFile(t, "4:memory:/cell\n0::/cell\n")
	s, err := Open(root, proc)
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

// TestUsageUnified reads a pod's usage on a cgroup v2-only host, where the agent's relative
// paths land below the parent of its own cgroup (the cell's, with the agent in a leaf).
func TestUsageUnified(t *testing.T) {
	pod := "cell/kip/p/"
	for _, tc := range []struct {
		name    string
		files   tree
		want    Usage
		wantErr bool
	}{{
		name:  "cpu and memory",
		files: tree{pod + "cpu.stat": "usage_usec 12345\nuser_usec 12000\nsystem_usec 345\n", pod + "memory.current": "1000\n", pod + "memory.stat": "anon 600\nfile 400\ninactive_file 300\nactive_file 100\n"},
		want:  Usage{CPUUsageNanoSeconds: 12345000, MemoryUsageBytes: 1000, MemoryWorkingSetBytes: 700},
	}, {
		name:  "inactive file above usage: no working set",
		files: tree{pod + "cpu.stat": "usage_usec 1\n", pod + "memory.current": "100\n", pod + "memory.stat": "inactive_file 300\n"},
		want:  Usage{CPUUsageNanoSeconds: 1000, MemoryUsageBytes: 100},
	}, {
		name:    "missing cgroup",
		wantErr: true,
	}, {
		name:    "memory.current missing",
		files:   tree{pod + "cpu.stat": "usage_usec 1\n", pod + "memory.stat": "inactive_file 3\n"},
		wantErr: true,
	}} {
		t.Run(tc.name, func(t *testing.T) {
			root := unifiedTree.lay(t, tc.files)
			f := open(t, root, "0::/cell/agent\n")
			u, err := f.Usage("kip/p")
			if (err != nil) != tc.wantErr {
				t.Fatalf("Usage: %v, want error=%v", err, tc.wantErr)
			}
			if u != tc.want && !tc.wantErr {
				t.Errorf("Usage = %+v, want %+v", u, tc.want)
			}
		})
	}
	t.Run("the cell", func(t *testing.T) {
		root := unifiedTree.lay(t, tree{"cell/cpu.stat": "usage_usec 7\n", "cell/memory.current": "5\n", "cell/memory.stat": "inactive_file 1\n"})
		u, err := open(t, root, "0::/cell/agent\n").Usage("")
		if err != nil || u != (Usage{CPUUsageNanoSeconds: 7000, MemoryUsageBytes: 5, MemoryWorkingSetBytes: 4}) {
			t.Errorf("Usage(\"\") = %+v, %v", u, err)
		}
	})
}

func TestMemoryEventsUnified(t *testing.T) {
	c := "cell/kip/p/c/"
	for _, tc := range []struct {
		name  string
		files tree
		want  MemoryEvents
	}{
		{"missing cgroup", nil, MemoryEvents{}},
		{"counters", tree{c + "memory.events": "low 0\nhigh 0\nmax 17\noom 3\noom_kill 2\noom_group_kill 0\n"}, MemoryEvents{OOMKills: 2, LimitHits: 17}},
		{"never limited", tree{c + "memory.events": "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n"}, MemoryEvents{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := open(t, unifiedTree.lay(t, tc.files), "0::/cell/agent\n")
			if ev, err := f.MemoryEvents("kip/p/c"); err != nil || ev != tc.want {
				t.Errorf("MemoryEvents = %+v, %v; want %+v", ev, err, tc.want)
			}
		})
	}
}

// TestSetMemoryLimit: on v1 the limit goes in the memory hierarchy; on v2 the memory
// controller is enabled from the root down first, or the container could not start (there
// would be no memory.max to write).
func TestSetMemoryLimit(t *testing.T) {
	for _, tc := range []struct {
		name  string
		tree  tree
		extra tree
		self  string
		want  map[string]string
	}{{
		name: "hybrid", tree: hybridTree, self: hybridSelf,
		extra: tree{"memory/process_api/p1/kip/p/c/memory.limit_in_bytes": "9223372036854771712"},
		want:  map[string]string{"memory/process_api/p1/kip/p/c/memory.limit_in_bytes": "1048576", "unified/kip/p/c/memory.max": "<missing>"},
	}, {
		name: "unified", tree: unifiedTree, self: "0::/cell/agent\n",
		extra: tree{
			"cell/cgroup.controllers": "cpu memory", "cell/cgroup.subtree_control": "",
			"cell/kip/cgroup.controllers": "memory", "cell/kip/cgroup.subtree_control": "",
			"cell/kip/p/cgroup.controllers": "memory", "cell/kip/p/cgroup.subtree_control": "memory",
			"cell/kip/p/c/cgroup.controllers": "memory", "cell/kip/p/c/memory.max": "max",
		},
		want: map[string]string{
			"cgroup.subtree_control":            "+memory",
			"cell/cgroup.subtree_control":       "+memory",
			"cell/kip/cgroup.subtree_control":   "+memory",
			"cell/kip/p/cgroup.subtree_control": "memory", // enabled already: not written
			"cell/kip/p/c/memory.max":           "1048576",
		},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			root := tc.tree.lay(t, tc.extra)
			f := open(t, root, tc.self)
			if err := f.SetMemoryLimit("kip/p/c", 1<<20); err != nil {
				t.Fatal(err)
			}
			for p, want := range tc.want {
				if got := read(t, filepath.Join(root, p)); got != want {
					t.Errorf("%s = %q, want %q", p, got, want)
				}
			}
		})
	}
	t.Run("no memory controller", func(t *testing.T) {
		f := open(t, tree{"cgroup.controllers": "cpu"}.lay(t, nil), "0::/cell/agent\n")
		if err := f.SetMemoryLimit("kip/p/c", 1<<20); err == nil {
			t.Error("want an error")
		}
	})
}

func TestRemoveUnified(t *testing.T) {
	root := unifiedTree.lay(t, tree{"cell/agent/": "", "cell/kip/p/c/0/": "", "cell/kip/q/": ""})
	f := open(t, root, "0::/cell/agent\n")
	if !f.Exists("kip/p") {
		t.Fatal("Exists = false")
	}
	if err := f.Remove("kip/p"); err != nil {
		t.Fatal(err)
	}
	if f.Exists("kip/p") {
		t.Error("cgroup left after Remove")
	}
	for _, d := range []string{"cell/agent", "cell/kip/q"} {
		if _, err := os.Stat(filepath.Join(root, d)); err != nil {
			t.Errorf("%s removed: %v", d, err)
		}
	}
}

// TestSetPidsLimit: on v1 pids.max goes in the pids hierarchy; on v2 the pids controller is
// enabled from the root down first. Pids reads it back with pids.current.
func TestSetPidsLimit(t *testing.T) {
	for _, tc := range []struct {
		name  string
		tree  tree
		extra tree
		self  string
		dir   string // the pod's cgroup directory under the root
	}{{
		name: "hybrid", tree: hybridTree, self: hybridSelf,
		extra: tree{"pids/kip/p/pids.max": "max", "pids/kip/p/pids.current": "3"},
		dir:   "pids/kip/p",
	}, {
		name: "unified", tree: unifiedTree, self: "0::/cell/agent\n",
		extra: tree{
			"cell/cgroup.controllers": "cpu memory pids", "cell/cgroup.subtree_control": "",
			"cell/kip/cgroup.controllers": "pids", "cell/kip/cgroup.subtree_control": "",
			"cell/kip/p/cgroup.controllers": "pids", "cell/kip/p/pids.max": "max", "cell/kip/p/pids.current": "3",
		},
		dir: "cell/kip/p",
	}} {
		t.Run(tc.name, func(t *testing.T) {
			root := tc.tree.lay(t, tc.extra)
			f := open(t, root, tc.self)
			if err := f.SetPidsLimit("kip/p", 64); err != nil {
				t.Fatal(err)
			}
			if got := read(t, filepath.Join(root, tc.dir, "pids.max")); got != "64" {
				t.Errorf("pids.max = %q, want 64", got)
			}
			if tc.name == "unified" {
				if got := read(t, filepath.Join(root, "cell/kip/cgroup.subtree_control")); got != "+pids" {
					t.Errorf("cell/kip/cgroup.subtree_control = %q, want +pids", got)
				}
			}
			if cur, max, err := f.Pids("kip/p"); err != nil || cur != 3 || max != 64 {
				t.Errorf("Pids = %d, %d, %v; want 3, 64", cur, max, err)
			}
			if err := f.SetPidsLimit("kip/p", -1); err != nil {
				t.Fatal(err)
			}
			if got := read(t, filepath.Join(root, tc.dir, "pids.max")); got != "max" {
				t.Errorf("pids.max = %q after no limit, want max", got)
			}
		})
	}
}
