package cgroups

import (
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestOpen(t *testing.T) {
	for _, tc := range []struct {
		name     string
		tree     tree
		extra    tree
		self     string
		mode     Mode
		dirs     []string // Dirs("kip/c1"), relative to the root
		memDir   string   // Dir("memory", "x"), relative to the root; "" for none
		wantErr  string
		symlinks map[string]string
	}{{
		name: "hybrid, as on this machine",
		tree: hybridTree, self: hybridSelf, mode: Hybrid,
		dirs: []string{"cpu/kip/c1", "cpuacct/kip/c1", "cpuset/kip/c1", "freezer/kip/c1",
			"memory/process_api/p1/kip/c1", "pids/kip/c1", "systemd/kip/c1", "unified/kip/c1"},
		memDir: "memory/process_api/p1/x",
	}, {
		name:     "legacy with joint mounts and their symlinks",
		tree:     tree{"cpu,cpuacct/cgroup.procs": "", "memory/cgroup.procs": "", "net_cls,net_prio/cgroup.procs": ""},
		symlinks: map[string]string{"cpu": "cpu,cpuacct", "cpuacct": "cpu,cpuacct"},
		self:     "5:net_cls,net_prio:/\n3:memory:/svc\n2:cpu,cpuacct:/svc\n",
		mode:     Legacy,
		dirs:     []string{"cpu,cpuacct/svc/kip/c1", "memory/svc/kip/c1", "net_cls,net_prio/kip/c1"},
		memDir:   "memory/svc/x",
	}, {
		name: "hybrid without a 0:: line leaves cgroup2 out",
		tree: hybridTree, self: "4:memory:/m\n", mode: Legacy,
		dirs: []string{"memory/m/kip/c1"}, memDir: "memory/m/x",
	}, {
		name: "unified: relative paths land below the parent of the own cgroup",
		tree: unifiedTree, self: "0::/user.slice/user-0.slice/session-1.scope\n", mode: Unified,
		dirs: []string{"user.slice/user-0.slice/kip/c1"}, memDir: "user.slice/user-0.slice/x",
	}, {
		name: "unified, in the root cgroup",
		tree: unifiedTree, self: "0::/\n", mode: Unified,
		dirs: []string{"kip/c1"}, memDir: "x",
	}, {
		name: "unified without the memory controller",
		tree: tree{"cgroup.controllers": "cpu pids\n"}, self: "0::/a/b\n", mode: Unified,
		dirs: []string{"a/kip/c1"},
	}, {
		name: "no hierarchy of the process is mounted",
		tree: tree{"memory/cgroup.procs": ""}, self: "1:cpu:/\n", wantErr: "no hierarchy",
	}} {
		t.Run(tc.name, func(t *testing.T) {
			root := tc.tree.lay(t, tc.extra)
			for link, target := range tc.symlinks {
				if err := os.Symlink(target, filepath.Join(root, link)); err != nil {
					t.Fatal(err)
				}
			}
			f, err := Open(root, selfFile(t, tc.self))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Open err = %v, want one saying %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if f.Mode() != tc.mode {
				t.Errorf("mode = %v, want %v", f.Mode(), tc.mode)
			}
			dirs, err := f.Dirs("kip/c1")
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, d := range dirs {
				r, _ := filepath.Rel(root, d)
				got = append(got, r)
			}
			if !slices.Equal(got, tc.dirs) {
				t.Errorf("Dirs = %q, want %q", got, tc.dirs)
			}
			want := ""
			if tc.memDir != "" {
				want = filepath.Join(root, tc.memDir)
			}
			if got := f.Dir("memory", "x"); got != want {
				t.Errorf("Dir(memory) = %q, want %q", got, want)
			}
		})
	}
}

func TestDirsRefusesEscapes(t *testing.T) {
	f := open(t, unifiedTree.lay(t, nil), "0::/a/b\n")
	for _, rel := range []string{"/abs", "..", "../x", "a/../../x", "a/.."} {
		if _, err := f.Dirs(rel); err == nil {
			t.Errorf("Dirs(%q) accepted", rel)
		}
	}
	for _, rel := range []string{"", "kip", "kip/..x/y"} {
		if _, err := f.Dirs(rel); err != nil {
			t.Errorf("Dirs(%q): %v", rel, err)
		}
	}
}

// TestImportsNothingOfKip: the agent and the host side share this package, so it must stay a
// leaf (the agent may import no host-side package, and nothing of Kip should come along).
func TestImportsNothingOfKip(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(token.NewFileSet(), name, nil, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range f.Imports {
			if strings.HasPrefix(strings.Trim(imp.Path.Value, `"`), "github.com/kip-dev/kip/") {
				t.Errorf("%s imports %s", name, imp.Path.Value)
			}
		}
	}
}
