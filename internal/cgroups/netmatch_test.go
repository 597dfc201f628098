package cgroups

import (
	"path/filepath"
	"testing"
)

// TestV2Dir: where pods' cgroup2 part lands and its level (what nftables' socket cgroupv2
// match compares against), in each layout.
func TestV2Dir(t *testing.T) {
	for _, tc := range []struct {
		name      string
		tree      tree
		self, rel string
		want      string // relative to the root; "" when there is no cgroup2 hierarchy
		level     int
	}{
		{"hybrid: at the cgroup2 root", hybridTree, hybridSelf, "kip/u1", "unified/kip/u1", 2},
		{"hybrid: the parent", hybridTree, hybridSelf, "kip", "unified/kip", 1},
		{"unified: beside the agent's cgroup", unifiedTree, "0::/system.slice/kip-cell.service\n", "kip", "system.slice/kip", 2},
		{"unified: agent at the root's child", unifiedTree, "0::/agent\n", "kip/u1", "kip/u1", 2},
		{"legacy: none", tree{"memory/cgroup.procs": ""}, "1:memory:/\n", "kip", "", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := tc.tree.lay(t, nil)
			dir, level, ok, err := open(t, root, tc.self).V2Dir(tc.rel)
			if err != nil {
				t.Fatal(err)
			}
			if tc.want == "" {
				if ok {
					t.Errorf("V2Dir = %s, ok on a host without cgroup2", dir)
				}
				return
			}
			if !ok || dir != filepath.Join(root, tc.want) || level != tc.level {
				t.Errorf("V2Dir = %s level %d (ok %v), want %s level %d", dir, level, ok, filepath.Join(root, tc.want), tc.level)
			}
		})
	}
	if _, _, _, err := open(t, hybridTree.lay(t, nil), hybridSelf).V2Dir("../x"); err == nil {
		t.Error("V2Dir(../x) did not refuse a path leaving its parent")
	}
}

func TestSetNetClassID(t *testing.T) {
	withNetCls := hybridTree.lay(t, tree{"net_cls,net_prio/cgroup.procs": "", "net_cls,net_prio/net_cls.classid": "0\n"})
	f := open(t, withNetCls, hybridSelf+"10:net_cls,net_prio:/agent\n")
	ok, err := f.SetNetClassID("kip", 0x4b490001)
	if err != nil || !ok {
		t.Fatalf("SetNetClassID = %v, %v", ok, err)
	}
	if got := read(t, filepath.Join(withNetCls, "net_cls,net_prio/agent/kip/net_cls.classid")); got != "1263075329" {
		t.Errorf("net_cls.classid = %s, want 1263075329 (0x4b490001)", got)
	}
	// This machine's layout: net_cls not mounted.
	if ok, err := open(t, hybridTree.lay(t, nil), hybridSelf).SetNetClassID("kip", 1); ok || err != nil {
		t.Errorf("without net_cls: SetNetClassID = %v, %v; want false, nil", ok, err)
	}
	if ok, _ := open(t, unifiedTree.lay(t, nil), "0::/a\n").SetNetClassID("kip", 1); ok {
		t.Error("a cgroup v2-only host has no net_cls")
	}
}
