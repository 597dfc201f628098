package cgroups

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestCreateCell sizes a cell for 1.5 CPUs and 256 MiB in each layout: the memory limit and
// CPU weight on the cell, the CPU quota on its pods' parent (kip below it). The cell's
// directories are laid out first with the files a kernel puts in a new cgroup (a fake tree
// cannot make them appear on mkdir), or left out to check that they are made.
func TestCreateCell(t *testing.T) {
	const mem = "268435456"
	for _, tc := range []struct {
		name  string
		tree  tree
		extra tree
		self  string
		want  map[string]string // file under the root → content after CreateCell
	}{{
		name: "hybrid",
		tree: hybridTree, self: hybridSelf,
		extra: tree{
			"cpu/kip/c1/cpu.shares": "1024", "cpu/kip/c1/cpu.cfs_period_us": "100000", "cpu/kip/c1/cpu.cfs_quota_us": "-1",
			"cpu/kip/c1/kip/cpu.shares": "1024", "cpu/kip/c1/kip/cpu.cfs_period_us": "100000", "cpu/kip/c1/kip/cpu.cfs_quota_us": "-1",
			"cpuset/kip/c1/kip/cpuset.cpus": "", "cpuset/kip/c1/kip/cpuset.mems": "",
			"memory/process_api/p1/kip/c1/memory.limit_in_bytes": "9223372036854771712",
			// a parent another launch made but has not filled in yet, and a new cell
			"cpuset/kip/cpuset.cpus": "", "cpuset/kip/cpuset.mems": "",
			"cpuset/kip/c1/cpuset.cpus": "", "cpuset/kip/c1/cpuset.mems": "",
		},
		want: map[string]string{
			"cpu/kip/c1/cpu.shares":                              "1536",
			"cpu/kip/c1/cpu.cfs_quota_us":                        "-1",
			"cpu/kip/c1/kip/cpu.shares":                          "1536",
			"cpu/kip/c1/kip/cpu.cfs_period_us":                   "100000",
			"cpu/kip/c1/kip/cpu.cfs_quota_us":                    "150000",
			"cpuset/kip/c1/kip/cpuset.cpus":                      "0-1",
			"memory/process_api/p1/kip/c1/kip/":                  "",
			"memory/process_api/p1/kip/c1/memory.limit_in_bytes": mem,
			"cpuset/kip/cpuset.cpus":                             "0-1",
			"cpuset/kip/cpuset.mems":                             "0",
			"cpuset/kip/c1/cpuset.cpus":                          "0-1",
			"cpuset/kip/c1/cpuset.mems":                          "0",
			// made, with nothing to set
			"freezer/kip/c1/":                "",
			"unified/kip/c1/":                "",
			"systemd/kip/c1/":                "",
			"unified/kip/c1/agent/":          "<missing>",
			"unified/cgroup.subtree_control": "",
		},
	}, {
		name: "unified",
		tree: unifiedTree, self: "0::/user.slice/session-1.scope\n",
		extra: tree{
			"user.slice/cgroup.controllers": "cpu io memory pids", "user.slice/cgroup.subtree_control": "",
			"user.slice/kip/cgroup.controllers": "cpu memory", "user.slice/kip/cgroup.subtree_control": "",
			"user.slice/kip/c1/cgroup.controllers": "cpu memory", "user.slice/kip/c1/memory.max": "max",
			"user.slice/kip/c1/cpu.max": "max 100000", "user.slice/kip/c1/cpu.weight": "100",
			"user.slice/kip/c1/cgroup.subtree_control": "",
			"user.slice/kip/c1/kip/cgroup.controllers": "cpu memory",
			"user.slice/kip/c1/kip/cpu.max":            "max 100000", "user.slice/kip/c1/kip/cpu.weight": "100",
		},
		want: map[string]string{
			"cgroup.subtree_control":                   "+cpu +memory",
			"user.slice/cgroup.subtree_control":        "+cpu +memory",
			"user.slice/kip/cgroup.subtree_control":    "+cpu +memory",
			"user.slice/kip/c1/memory.max":             mem,
			"user.slice/kip/c1/cpu.max":                "max 100000",
			"user.slice/kip/c1/cpu.weight":             "138", // runc's conversion of 1536 shares
			"user.slice/kip/c1/cgroup.subtree_control": "+cpu +memory",
			"user.slice/kip/c1/kip/cpu.max":            "150000 100000",
			"user.slice/kip/c1/kip/cpu.weight":         "138",
			"user.slice/kip/c1/agent/":                 "",
			"user.slice/kip/c1/memory.limit_in_bytes":  "<missing>",
		},
	}, {
		name: "unified, controllers already enabled and memory not on offer",
		tree: tree{"cgroup.controllers": "cpu pids", "cgroup.subtree_control": "cpu pids"},
		self: "0::/init\n",
		extra: tree{
			"kip/cgroup.controllers": "cpu pids", "kip/cgroup.subtree_control": "cpu",
			"kip/c1/cgroup.controllers": "cpu", "kip/c1/cpu.max": "max 100000", "kip/c1/cpu.weight": "100",
			"kip/c1/cgroup.subtree_control": "",
			"kip/c1/kip/cgroup.controllers": "cpu", "kip/c1/kip/cpu.max": "max 100000", "kip/c1/kip/cpu.weight": "100",
		},
		want: map[string]string{
			"cgroup.subtree_control":     "cpu pids", // untouched: nothing to add
			"kip/cgroup.subtree_control": "cpu",
			"kip/c1/cpu.max":             "max 100000",
			"kip/c1/kip/cpu.max":         "150000 100000",
			"kip/c1/memory.max":          "<missing>",
		},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			root := tc.tree.lay(t, tc.extra)
			f := open(t, root, tc.self)
			dirs, err := f.Dirs("kip/c1")
			if err != nil {
				t.Fatal(err)
			}
			if err := f.CreateCell(dirs, Limits{CPUs: 1.5, MemoryBytes: 256 << 20}); err != nil {
				t.Fatalf("CreateCell: %v", err)
			}
			for _, d := range dirs {
				if st, err := os.Stat(d); err != nil || !st.IsDir() {
					t.Errorf("cell cgroup %s not made (%v)", d, err)
				}
			}
			for p, want := range tc.want {
				if strings.HasSuffix(p, "/") {
					_, err := os.Stat(filepath.Join(root, p))
					if got := err == nil; got != (want == "") {
						t.Errorf("%s exists = %v, want %v", p, got, want == "")
					}
					continue
				}
				if got := read(t, filepath.Join(root, p)); got != want {
					t.Errorf("%s = %q, want %q", p, got, want)
				}
			}
		})
	}
}

func TestAgentDirs(t *testing.T) {
	cell := []string{"/cg/a/kip/c1"}
	for _, tc := range []struct {
		name string
		tree tree
		self string
		want []string
	}{
		{"hybrid: the cell's own cgroups", hybridTree, hybridSelf, cell},
		{"unified: a leaf below the cell", unifiedTree, "0::/a/b\n", []string{"/cg/a/kip/c1/agent"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := open(t, tc.tree.lay(t, nil), tc.self)
			if got := f.AgentDirs(cell); !slices.Equal(got, tc.want) {
				t.Errorf("AgentDirs = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestStrayPodDirs(t *testing.T) {
	for _, tc := range []struct {
		name, uid string
		tree      tree
		self      string
		want      []string // relative to the root
	}{
		{"hybrid: at the cgroup2 root", "u1", hybridTree, hybridSelf, []string{"unified/kip/u1"}},
		{"hybrid: no path elements from a UID", "../x", hybridTree, hybridSelf, nil},
		{"hybrid: no UID", "", hybridTree, hybridSelf, nil},
		{"unified: runc nests pods in the cell", "u1", unifiedTree, "0::/a/b\n", nil},
		{"legacy: no cgroup2", "u1", tree{"memory/cgroup.procs": ""}, "1:memory:/\n", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := tc.tree.lay(t, nil)
			f := open(t, root, tc.self)
			var got []string
			for _, d := range f.StrayPodDirs(tc.uid) {
				r, _ := filepath.Rel(root, d)
				got = append(got, r)
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("StrayPodDirs(%q) = %q, want %q", tc.uid, got, tc.want)
			}
		})
	}
}

// TestRemoveStrayPod removes a pod's tree at the cgroup2 root and the shared parent once no
// other pod uses it.
func TestRemoveStrayPod(t *testing.T) {
	root := hybridTree.lay(t, tree{"unified/kip/u1/main/0/": "", "unified/kip/u2/main/0/": ""})
	f := open(t, root, hybridSelf)
	for _, step := range []struct {
		uid  string
		gone []string
		left []string
	}{
		{"u1", []string{"unified/kip/u1"}, []string{"unified/kip/u2/main/0"}},
		{"u2", []string{"unified/kip"}, []string{"unified"}},
		{"u3", nil, []string{"unified"}}, // nothing there: not an error
	} {
		if err := f.RemoveStrayPod(step.uid, time.Second); err != nil {
			t.Fatalf("RemoveStrayPod(%s): %v", step.uid, err)
		}
		for _, d := range step.gone {
			if _, err := os.Stat(filepath.Join(root, d)); !os.IsNotExist(err) {
				t.Errorf("after %s: %s left (stat: %v)", step.uid, d, err)
			}
		}
		for _, d := range step.left {
			if _, err := os.Stat(filepath.Join(root, d)); err != nil {
				t.Errorf("after %s: %s removed: %v", step.uid, d, err)
			}
		}
	}
}

func TestProbe(t *testing.T) {
	for _, tc := range []struct {
		name string
		tree tree
		self string
		ok   bool
	}{
		{"hybrid", hybridTree, hybridSelf, true},
		{"unified", unifiedTree, "0::/a/b\n", true},
		{"own cgroup's parent missing", unifiedTree, "0::/gone/b\n", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := tc.tree.lay(t, tree{"memory/process_api/p1/": "", "a/b/": ""})
			f := open(t, root, tc.self)
			if err := f.Probe(); (err == nil) != tc.ok {
				t.Fatalf("Probe: %v, want ok=%v", err, tc.ok)
			}
			filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
				if err == nil && d.IsDir() && strings.HasPrefix(d.Name(), "kip-probe-") {
					t.Errorf("probe cgroup %s left", p)
				}
				return nil
			})
		})
	}
}

// TestRemoveCellKillsBy: a cell is frozen through a v1 freezer hierarchy when there is one,
// else killed at once through cgroup v2's cgroup.kill. (A fake tree's directories hold
// files, so the removal itself fails here: the real one is tested as root.)
func TestRemoveCellKillsBy(t *testing.T) {
	for _, tc := range []struct {
		name  string
		files tree
		want  map[string]string
	}{{
		name:  "v1 freezer",
		files: tree{"freezer/c1/freezer.state": "THAWED", "unified/c1/cgroup.kill": ""},
		want:  map[string]string{"freezer/c1/freezer.state": "THAWED", "unified/c1/cgroup.kill": ""},
	}, {
		name:  "cgroup v2",
		files: tree{"c1/cgroup.kill": "", "c1/cgroup.procs": ""},
		want:  map[string]string{"c1/cgroup.kill": "1"},
	}, {
		name:  "neither",
		files: tree{"memory/c1/cgroup.procs": ""},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			root := tree{}.lay(t, tc.files)
			var dirs []string
			for p := range tc.files {
				dirs = append(dirs, filepath.Join(root, filepath.Dir(p)))
			}
			err := RemoveCell(dirs, 20*time.Millisecond)
			if err == nil || !strings.Contains(err.Error(), "removing cgroup") {
				t.Errorf("RemoveCell: %v, want a removal error", err)
			}
			for p, want := range tc.want {
				if got := read(t, filepath.Join(root, p)); got != want {
					t.Errorf("%s = %q, want %q", p, got, want)
				}
			}
		})
	}
	t.Run("gone already", func(t *testing.T) {
		if err := RemoveCell([]string{filepath.Join(t.TempDir(), "gone")}, time.Second); err != nil {
			t.Error(err)
		}
	})
}
