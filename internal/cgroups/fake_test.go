package cgroups

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencontainers/cgroups"
)

func TestMain(m *testing.M) {
	// The fake trees below are plain directories; TestMode lets the library read and write
	// them as it would cgroupfs (it refuses other files otherwise).
	cgroups.TestMode = true
	os.Exit(m.Run())
}

// A fake cgroupfs is a temp dir laid out from a map: a key ending in "/" is a directory, any
// other a file with its value as content. Only the files a test reads need to be there,
// with what a kernel would show in them.
type tree map[string]string

// hybridTree is laid out like this development machine: separate cpu and cpuacct hierarchies,
// cpuset, freezer, memory, pids, a named systemd hierarchy and a cgroup2 "unified".
var hybridTree = tree{
	"blkio/cgroup.procs":             "",
	"cpu/cgroup.procs":               "",
	"cpu/cpu.shares":                 "1024\n",
	"cpu/cpu.cfs_period_us":          "100000\n",
	"cpu/cpu.cfs_quota_us":           "-1\n",
	"cpuacct/cgroup.procs":           "",
	"cpuacct/cpuacct.usage":          "0\n",
	"cpuset/cgroup.procs":            "",
	"cpuset/cpuset.cpus":             "0-1\n",
	"cpuset/cpuset.mems":             "0\n",
	"freezer/cgroup.procs":           "",
	"memory/cgroup.procs":            "",
	"memory/memory.limit_in_bytes":   "9223372036854771712\n",
	"pids/cgroup.procs":              "",
	"systemd/cgroup.procs":           "",
	"unified/cgroup.controllers":     "",
	"unified/cgroup.procs":           "",
	"unified/cgroup.subtree_control": "",
}

const hybridSelf = "9:name=systemd:/\n8:pids:/\n6:freezer:/\n4:memory:/process_api/p1\n3:cpuset:/\n2:cpuacct:/\n1:cpu:/\n0::/\n"

// unifiedTree is a cgroup v2-only host: controllers on offer at the root, none enabled yet.
var unifiedTree = tree{
	"cgroup.controllers":     "cpuset cpu io memory pids\n",
	"cgroup.subtree_control": "",
	"cgroup.procs":           "",
	"cpu.stat":               "usage_usec 5\n",
}

// lay lays t out, plus extra, under a new temp dir and returns its path.
func (t tree) lay(tb testing.TB, extra tree) string {
	tb.Helper()
	root := tb.TempDir()
	for _, m := range []tree{t, extra} {
		for p, content := range m {
			write(tb, root+"/"+p, content)
		}
	}
	return root
}

// write creates path (a directory when it ends in "/") and its missing parents.
func write(tb testing.TB, path, content string) {
	tb.Helper()
	if strings.HasSuffix(path, "/") {
		if err := os.MkdirAll(path, 0o755); err != nil {
			tb.Fatal(err)
		}
		return
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		tb.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		tb.Fatal(err)
	}
}

// selfFile writes a /proc/self/cgroup stand-in.
func selfFile(tb testing.TB, content string) string {
	tb.Helper()
	p := filepath.Join(tb.TempDir(), "cgroup")
	write(tb, p, content)
	return p
}

// read returns a file's content, "<missing>" when it does not exist.
func read(tb testing.TB, path string) string {
	tb.Helper()
	b, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return "<missing>"
	}
	if err != nil {
		tb.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

func open(tb testing.TB, root, self string) *FS {
	tb.Helper()
	f, err := Open(root, selfFile(tb, self))
	if err != nil {
		tb.Fatal(err)
	}
	return f
}
