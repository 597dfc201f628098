package cgroups

import "testing"

// TestCeiling: the tightest CPU quota (compared as quota/period) and memory limit on the way
// from a pods parent, which need not exist, up to the hierarchy's root, where the agent's
// relative paths land on each layout.
func TestCeiling(t *testing.T) {
	cases := []struct {
		name  string
		base  tree
		extra tree
		self  string
		rel   string
		want  Ceiling
	}{
		{
			name: "hybrid: the cell's limits, the pods parent not made yet",
			base: hybridTree,
			extra: tree{
				"cpu/kip/c1/cpu.cfs_quota_us":            "25000\n",
				"cpu/kip/c1/cpu.cfs_period_us":           "100000\n",
				"cpu/kip/cpu.cfs_quota_us":               "-1\n",
				"cpu/kip/cpu.cfs_period_us":              "100000\n",
				"cpu/kip/c1/kip/other/cpu.cfs_quota_us":  "800000\n",
				"cpu/kip/c1/kip/other/cpu.cfs_period_us": "100000\n",
				"memory/kip/c1/memory.limit_in_bytes":    "268435456\n",
				"memory/kip/memory.limit_in_bytes":       "9223372036854771712\n",
				"cpuacct/kip/c1/":                        "",
				"unified/kip/c1/":                        "",
			},
			self: "9:name=systemd:/\n8:pids:/kip/c1\n4:memory:/kip/c1\n3:cpuset:/kip/c1\n2:cpuacct:/kip/c1\n1:cpu:/kip/c1\n0::/kip/c1\n",
			rel:  "kip",
			want: Ceiling{CPUQuota: 25000, CPUPeriod: 100000, MemoryBytes: 256 << 20},
		},
		{
			name: "hybrid: a tighter level below the cell wins, by quota over period",
			base: hybridTree,
			extra: tree{
				"cpu/kip/c1/cpu.cfs_quota_us":          "50000\n",
				"cpu/kip/c1/cpu.cfs_period_us":         "100000\n",
				"cpu/kip/c1/kip/cpu.cfs_quota_us":      "60000\n",
				"cpu/kip/c1/kip/cpu.cfs_period_us":     "200000\n",
				"memory/kip/c1/memory.limit_in_bytes":  "268435456\n",
				"memory/kip/memory.limit_in_bytes":     "1048576\n",
				"memory/kip/c1/kip/memory.failcnt":     "0\n",
				"memory/kip/c1/kip/p/memory.failcnt":   "0\n",
				"memory/kip/c1/kip/p/c/memory.failcnt": "0\n",
			},
			self: "9:name=systemd:/\n8:pids:/kip/c1\n4:memory:/kip/c1\n3:cpuset:/kip/c1\n2:cpuacct:/kip/c1\n1:cpu:/kip/c1\n0::/kip/c1\n",
			rel:  "kip/p/c",
			want: Ceiling{CPUQuota: 60000, CPUPeriod: 200000, MemoryBytes: 1 << 20},
		},
		{
			name: "hybrid: nothing set",
			base: hybridTree,
			self: hybridSelf,
			rel:  "kip",
			want: Ceiling{},
		},
		{
			name: "v2: the cell above the agent's leaf",
			base: unifiedTree,
			extra: tree{
				"kip/cpu.max":          "max 100000\n",
				"kip/memory.max":       "max\n",
				"kip/c1/cpu.max":       "25000 100000\n",
				"kip/c1/memory.max":    "268435456\n",
				"kip/c1/agent/cpu.max": "max 100000\n",
				"kip/c1/kip/cpu.max":   "max 100000\n",
			},
			self: "0::/kip/c1/agent\n",
			rel:  "kip",
			want: Ceiling{CPUQuota: 25000, CPUPeriod: 100000, MemoryBytes: 256 << 20},
		},
		{
			name:  "v2: nothing set",
			base:  unifiedTree,
			extra: tree{"kip/c1/agent/cgroup.procs": ""},
			self:  "0::/kip/c1/agent\n",
			rel:   "kip",
			want:  Ceiling{},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := open(t, tc.base.lay(t, tc.extra), tc.self)
			got, err := f.Ceiling(tc.rel)
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("Ceiling(%q) = %+v, want %+v", tc.rel, got, tc.want)
			}
		})
	}
	t.Run("bad values and paths", func(t *testing.T) {
		f := open(t, unifiedTree.lay(t, tree{"kip/c1/cpu.max": "lots 100000\n", "kip/c1/agent/cgroup.procs": ""}), "0::/kip/c1/agent\n")
		if _, err := f.Ceiling("kip"); err == nil {
			t.Error("unreadable cpu.max: want an error")
		}
		if _, err := f.Ceiling("../x"); err == nil {
			t.Error("a path leaving the agent's cgroup: want an error")
		}
	})
}
