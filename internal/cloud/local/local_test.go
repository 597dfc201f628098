package local

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/kip-dev/kip/internal/cgroups"
	"github.com/kip-dev/kip/internal/cloud"
	"github.com/kip-dev/kip/internal/cloud/cloudtest"
)

func TestConformance(t *testing.T) {
	e := newEnv(t)
	cloudtest.Run(t, cloudtest.Harness{
		New:          func(*testing.T) cloud.Cloud { return e.cloud() },
		InstanceType: "local.nano",
		Tags:         map[string]string{cloud.TagCluster: "conformance"},
		UnknownID:    "lc-00000000ff",
	})
}

func TestConformanceProcessOnly(t *testing.T) {
	e := newProcessOnlyEnv(t)
	cloudtest.Run(t, cloudtest.Harness{
		New:          func(*testing.T) cloud.Cloud { return e.cloud() },
		InstanceType: "local.nano",
	})
}

func TestProcessOnlyAgentAnswers(t *testing.T) {
	e := newProcessOnlyEnv(t)
	c := e.cloud()
	a := e.launch(c, "po-a", "local.nano")
	b := e.launch(c, "po-b", "local.nano")
	if a.PrivateIP == b.PrivateIP {
		t.Fatalf("two cells share %s", a.PrivateIP)
	}
	if err := dial(a.PrivateIP, fmt.Sprintf("%s:%d", b.PrivateIP, standinPort)); err != nil {
		t.Errorf("cell a cannot reach cell b: %v", err)
	}
	if err := e.backend().Partition(context.Background(), a.ID); err == nil {
		t.Errorf("Partition of a process-only cell succeeded")
	}
	for _, in := range []*cloud.Instance{a, b} {
		if err := c.Terminate(context.Background(), in.ID); err != nil {
			t.Fatalf("Terminate(%s): %v", in.ID, err)
		}
	}
}

// TestNetwork: two cells reach each other over the bridge; a third, partitioned, is
// unreachable from them and from the host until healed.
func TestNetwork(t *testing.T) {
	e := newEnv(t)
	c := e.cloud()
	b := e.backend()
	ctx := context.Background()
	cells := make([]*cloud.Instance, 3)
	for i := range cells {
		cells[i] = e.launch(c, fmt.Sprintf("net-%d", i), "local.nano")
	}
	// The agent port is closed between cells (only the host reaches it): listen on another.
	for _, in := range cells {
		r, err := b.store.read(in.ID)
		if err != nil {
			t.Fatal(err)
		}
		listenInNetns(t, r.meta.Netns, in.PrivateIP+":8080")
	}
	addr := func(in *cloud.Instance) string { return fmt.Sprintf("%s:8080", in.PrivateIP) }
	if err := dial(cells[0].PrivateIP, addr(cells[1])); err != nil {
		t.Errorf("cell 0 cannot reach cell 1: %v", err)
	}
	if err := dial(cells[1].PrivateIP, addr(cells[0])); err != nil {
		t.Errorf("cell 1 cannot reach cell 0: %v", err)
	}
	if err := dial(cells[0].PrivateIP, addr(cells[2])); err != nil {
		t.Errorf("before the partition, cell 0 cannot reach cell 2: %v", err)
	}
	if err := dial(cells[0].PrivateIP, fmt.Sprintf("%s:1", b.BridgeIP())); err == nil || !strings.Contains(err.Error(), "refused") {
		t.Errorf("dialing the bridge address from a cell: %v, want connection refused (reachable, no listener)", err)
	}

	if err := b.Partition(ctx, cells[2].ID); err != nil {
		t.Fatalf("Partition: %v", err)
	}
	if err := dial(cells[0].PrivateIP, addr(cells[2])); err == nil {
		t.Errorf("after the partition, cell 0 still reaches cell 2")
	}
	if err := getJSON(cells[2].PrivateIP, "/healthz", new(standinHealth)); err == nil {
		t.Errorf("after the partition, the host still reaches cell 2")
	}
	if err := dial(cells[0].PrivateIP, addr(cells[1])); err != nil {
		t.Errorf("after partitioning cell 2, cell 0 cannot reach cell 1: %v", err)
	}

	if err := b.Heal(ctx, cells[2].ID); err != nil {
		t.Fatalf("Heal: %v", err)
	}
	var last error
	if !waitFor(time.Now().Add(10*time.Second), func() bool {
		last = dial(cells[0].PrivateIP, addr(cells[2]))
		return last == nil
	}) {
		t.Errorf("after Heal, cell 0 never reached cell 2: %v", last)
	}
}

// TestCell checks what a cell is made of: hostname, cgroup limits, the agent inside them.
func TestCell(t *testing.T) {
	e := newEnv(t)
	c := e.cloud()
	in := e.launch(c, "shape-1", "local.nano")
	h := e.waitHealthy(in.PrivateIP)
	if h.Hostname != "shape-1" || h.CellID != "shape-1" || h.IP != in.PrivateIP {
		t.Errorf("agent reports %+v, want hostname and cell id shape-1, ip %s", h, in.PrivateIP)
	}
	r, err := e.backend().store.read(in.ID)
	if err != nil {
		t.Fatal(err)
	}
	// The cell holds the memory limit and CPU weight; the quota binds its pods' parent only,
	// so the agent's own work is not charged to it (cgroups.CreateCell).
	want := map[string]string{
		"memory.limit_in_bytes":                   strconv.Itoa(256 << 20),
		"cpu.shares":                              "256",
		"cpu.cfs_quota_us":                        "-1",
		cgroups.PodsParent + "/cpu.cfs_quota_us":  "25000",
		cgroups.PodsParent + "/cpu.cfs_period_us": "100000",
	}
	seen := map[string]bool{}
	for _, d := range r.meta.Cgroups {
		procs, err := os.ReadFile(filepath.Join(d, "cgroup.procs"))
		if err != nil {
			t.Fatalf("reading %s: %v", d, err)
		}
		if !strings.Contains(" "+strings.Join(strings.Fields(string(procs)), " ")+" ", " "+strconv.Itoa(r.meta.PID)+" ") {
			t.Errorf("agent pid %d is not in %s (%q)", r.meta.PID, d, procs)
		}
		for f, v := range want {
			b, err := os.ReadFile(filepath.Join(d, f))
			if err != nil {
				continue
			}
			seen[f] = true
			if got := strings.TrimSpace(string(b)); got != v {
				t.Errorf("%s/%s = %s, want %s", d, f, got, v)
			}
		}
	}
	for f := range want {
		if !seen[f] {
			t.Errorf("no cgroup of the cell has %s", f)
		}
	}
	if _, err := os.Stat(filepath.Join(netnsDir, r.meta.Netns)); err != nil {
		t.Errorf("netns: %v", err)
	}
}

// TestTerminateKillsEverything: processes the agent started in nested cgroups and in their
// own sessions, and mounts under its state directory, are all gone after Terminate.
func TestTerminateKillsEverything(t *testing.T) {
	e := newEnv(t)
	c := e.cloud()
	ctx := context.Background()
	in := e.launch(c, "kill-1", "local.small")
	out, err := post(in.PrivateIP, "/spawn")
	if err != nil {
		t.Fatalf("spawn: %v", err)
	}
	child, _ := strconv.Atoi(out)
	if procState(child) == "" {
		t.Fatalf("spawned pid %d does not exist", child)
	}
	mnt, err := post(in.PrivateIP, "/mount")
	if err != nil {
		t.Fatalf("mount: %v", err)
	}
	if m, _ := mountsUnder("/proc/self/mountinfo", mnt); len(m) != 1 {
		t.Fatalf("mount %s not visible: %v", mnt, m)
	}
	r, err := e.backend().store.read(in.ID)
	if err != nil {
		t.Fatal(err)
	}
	br, err := netlink.LinkByName(e.cfg.Bridge)
	if err != nil {
		t.Fatal(err)
	}
	if !hasNeigh(t, br, in.PrivateIP) {
		t.Fatalf("the host has no neighbour entry for %s after talking to it", in.PrivateIP)
	}
	if err := c.Terminate(ctx, in.ID); err != nil {
		t.Fatalf("Terminate: %v", err)
	}
	if hasNeigh(t, br, in.PrivateIP) {
		t.Errorf("neighbour entry for %s survived Terminate", in.PrivateIP)
	}
	if s := procState(child); s != "" && s != "Z" {
		t.Errorf("spawned pid %d survived Terminate (state %s)", child, s)
	}
	if agentAlive(r.meta.PID, r.meta.PIDStart) {
		t.Errorf("agent pid %d survived Terminate", r.meta.PID)
	}
	if m, _ := mountsUnder("/proc/self/mountinfo", e.cfg.StateDir); len(m) != 0 {
		t.Errorf("mounts survived Terminate: %v", m)
	}
	for _, d := range r.meta.Cgroups {
		if _, err := os.Stat(d); err == nil {
			t.Errorf("cgroup %s survived Terminate", d)
		}
	}
	if _, err := c.Describe(ctx, in.ID); !cloud.IsNotFound(err) {
		t.Errorf("Describe after Terminate: %v, want NotFound", err)
	}
	if pids := processesOf(in.ID); len(pids) != 0 {
		t.Errorf("processes survived: %v", pids)
	}
}

// TestRestart: a new Backend on the same state directory lists, describes and terminates the
// cells of the old one, and reuses none of their addresses.
func TestRestart(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	old := e.cloud()
	a := e.launch(old, "rs-a", "local.nano")
	b := e.launch(old, "rs-b", "local.micro")

	fresh := e.cloud()
	got, err := fresh.List(ctx, map[string]string{cloud.TagCellID: "rs-a"})
	if err != nil || len(got) != 1 || got[0].ID != a.ID || got[0].PrivateIP != a.PrivateIP {
		t.Fatalf("List through a new backend = %v, %v; want [%s]", got, err, a.ID)
	}
	c := e.launch(fresh, "rs-c", "local.nano")
	if c.PrivateIP == a.PrivateIP || c.PrivateIP == b.PrivateIP {
		t.Errorf("new backend reused address %s", c.PrivateIP)
	}
	for _, in := range []*cloud.Instance{a, b, c} {
		if err := fresh.Terminate(ctx, in.ID); err != nil {
			t.Errorf("Terminate(%s) through the new backend: %v", in.ID, err)
		}
	}
	if l, _ := fresh.List(ctx, nil); len(l) != 0 {
		t.Errorf("List after terminating all: %v", l)
	}
}

// TestDeadAgent: a cell whose agent died is still listed as running (it still holds its
// namespace and address) and terminates cleanly.
func TestDeadAgent(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	c := e.cloud()
	in := e.launch(c, "dead-1", "local.nano")
	r, err := e.backend().store.read(in.ID)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(r.meta.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if !waitFor(time.Now().Add(5*time.Second), func() bool { return !agentAlive(r.meta.PID, r.meta.PIDStart) }) {
		t.Fatal("agent did not die")
	}
	d, err := c.Describe(ctx, in.ID)
	if err != nil || d.State != cloud.StateRunning {
		t.Errorf("Describe of a cell with a dead agent = %+v, %v; want running", d, err)
	}
	if err := c.Terminate(ctx, in.ID); err != nil {
		t.Fatalf("Terminate: %v", err)
	}
}

func TestLaunchRefusesBadSpecs(t *testing.T) {
	e := newProcessOnlyEnv(t)
	ok := cloud.LaunchSpec{CellID: "x", InstanceType: "local.nano"}
	tests := []struct {
		name   string
		mutate func(*cloud.LaunchSpec)
		field  string
	}{
		{"unknown type", func(s *cloud.LaunchSpec) { s.InstanceType = "m5.large" }, "InstanceType"},
		{"empty type", func(s *cloud.LaunchSpec) { s.InstanceType = "" }, "InstanceType"},
		{"no cell id", func(s *cloud.LaunchSpec) { s.CellID = "" }, "CellID"},
		{"slash in cell id", func(s *cloud.LaunchSpec) { s.CellID = "a/b" }, "CellID"},
		{"spot", func(s *cloud.LaunchSpec) { s.Spot = true }, "Spot"},
		{"zone", func(s *cloud.LaunchSpec) { s.Zone = "us-east-1a" }, "Zone"},
		{"bootstrap too big", func(s *cloud.LaunchSpec) { s.BootstrapData = make([]byte, DefaultMaxBootstrapBytes+1) }, "BootstrapData"},
		{"negative volume", func(s *cloud.LaunchSpec) { s.VolumeSizeGiB = -1 }, "VolumeSizeGiB"},
	}
	c := e.cloud()
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			spec := ok
			tc.mutate(&spec)
			_, err := c.Launch(context.Background(), spec)
			if !cloud.IsInvalidSpec(err) || !strings.Contains(err.Error(), tc.field) {
				t.Errorf("Launch: %v, want InvalidSpec naming %s", err, tc.field)
			}
		})
	}
	if l, err := c.List(context.Background(), nil); err != nil || len(l) != 0 {
		t.Errorf("refused launches left cells: %v %v", l, err)
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	dir := t.TempDir()
	good := Config{StateDir: dir, AgentCommand: []string{"/bin/true"}, ProcessOnly: true}
	tests := []struct {
		name   string
		mutate func(*Config)
		field  string
	}{
		{"no state dir", func(c *Config) { c.StateDir = "" }, "StateDir"},
		{"no agent", func(c *Config) { c.AgentCommand = nil }, "AgentCommand"},
		{"long bridge", func(c *Config) { c.Bridge = "a-very-long-bridge" }, "Bridge"},
		{"bad subnet", func(c *Config) { c.Subnet = "10.0.0.0/33" }, "Subnet"},
		{"ipv6 subnet", func(c *Config) { c.Subnet = "fd00::/64" }, "Subnet"},
		{"tiny subnet", func(c *Config) { c.Subnet = "127.0.0.1/32" }, "Subnet"},
		{"process-only off loopback", func(c *Config) { c.Subnet = "10.250.0.0/16" }, "Subnet"},
		{"absolute cgroup parent", func(c *Config) { c.CgroupParent = "/kip" }, "CgroupParent"},
		{"escaping cgroup parent", func(c *Config) { c.CgroupParent = "../kip" }, "CgroupParent"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := good
			tc.mutate(&cfg)
			_, err := New(cfg)
			if err == nil || !strings.Contains(err.Error(), tc.field) {
				t.Errorf("New: %v, want an error naming %s", err, tc.field)
			}
		})
	}
	if _, err := New(good); err != nil {
		t.Errorf("New(good): %v", err)
	}
}

func TestNewWithoutNamespacesSaysSo(t *testing.T) {
	denied := errors.New("creating a network namespace: operation not permitted")
	probe = func(string) Capabilities { return Capabilities{Netns: denied} }
	t.Cleanup(func() { probe = Probe })
	_, err := New(Config{StateDir: t.TempDir(), AgentCommand: []string{"/bin/true"}})
	if err == nil || !strings.Contains(err.Error(), "ProcessOnly") || !strings.Contains(err.Error(), denied.Error()) {
		t.Errorf("New without namespaces: %v, want an error giving the reason and pointing at ProcessOnly", err)
	}
	if _, err := New(Config{StateDir: t.TempDir(), AgentCommand: []string{"/bin/true"}, ProcessOnly: true}); err != nil {
		t.Errorf("New in process-only mode without namespaces: %v", err)
	}
}

func TestProbe(t *testing.T) {
	caps := Probe("")
	if os.Geteuid() == 0 && caps.Root != nil {
		t.Errorf("Probe says not root as root: %v", caps.Root)
	}
	if os.Geteuid() != 0 && caps.Root == nil {
		t.Errorf("Probe says root as euid %d", os.Geteuid())
	}
	t.Logf("root=%v netns=%v cgroups=%v runc=%v", caps.Root, caps.Netns, caps.Cgroups, caps.Runc)
}

func TestAllocIP(t *testing.T) {
	tests := []struct {
		subnet   string
		reserved string
		used     []string
		want     string
		wantErr  bool
	}{
		{"10.250.0.0/16", "10.250.0.1", nil, "10.250.0.2", false},
		{"10.250.0.0/16", "10.250.0.1", []string{"10.250.0.2", "10.250.0.3"}, "10.250.0.4", false},
		{"10.250.0.0/16", "10.250.0.1", []string{"10.250.0.2", "10.250.0.255"}, "10.250.0.3", false},
		{"10.250.7.0/24", "10.250.7.1", []string{"10.250.7.2"}, "10.250.7.3", false},
		{"10.250.7.0/30", "10.250.7.1", []string{"10.250.7.2"}, "", true},
		{"10.250.7.0/30", "10.250.7.1", nil, "10.250.7.2", false},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprintf("%s-%v", tc.subnet, tc.used), func(t *testing.T) {
			_, n, _ := net.ParseCIDR(tc.subnet)
			used := map[string]bool{}
			for _, u := range tc.used {
				used[u] = true
			}
			got, err := allocIP(n, net.ParseIP(tc.reserved), used)
			if tc.wantErr {
				if err == nil {
					t.Fatalf("allocIP = %v, want an error", got)
				}
				return
			}
			if err != nil || got.String() != tc.want {
				t.Errorf("allocIP = %v, %v; want %s", got, err, tc.want)
			}
		})
	}
}

func TestMountsUnder(t *testing.T) {
	mi := filepath.Join(t.TempDir(), "mountinfo")
	lines := []string{
		`22 1 0:21 / /proc rw - proc proc rw`,
		`30 22 0:30 / /var/kip/cells/lc-1/agent rw - tmpfs tmpfs rw`,
		`31 30 0:31 / /var/kip/cells/lc-1/agent/overlay/c\0401 rw - overlay overlay rw`,
		`32 1 0:32 / /var/kip/cells/lc-10 rw - tmpfs tmpfs rw`,
	}
	if err := os.WriteFile(mi, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := mountsUnder(mi, "/var/kip/cells/lc-1")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"/var/kip/cells/lc-1/agent/overlay/c 1", "/var/kip/cells/lc-1/agent"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("mountsUnder = %q, want %q", got, want)
	}
}

func TestTerminateUnknown(t *testing.T) {
	e := newProcessOnlyEnv(t)
	c := e.cloud()
	for _, id := range []string{"lc-0000000000", "../../etc", "", "i-123"} {
		if err := c.Terminate(context.Background(), id); !cloud.IsNotFound(err) {
			t.Errorf("Terminate(%q) = %v, want NotFound", id, err)
		}
		if _, err := c.Describe(context.Background(), id); !cloud.IsNotFound(err) {
			t.Errorf("Describe(%q) = %v, want NotFound", id, err)
		}
	}
}

// TestStaleLaunch: a launch that died half-way (its launcher was killed after recording the
// cell, making its cgroups and network and starting its agent) is resumed by the next Launch
// with the same token, in the same cell: the dead launcher's agent is gone, one new agent
// answers, same id and address. A launch still at work is not disturbed.
func TestStaleLaunch(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	spec := cloud.LaunchSpec{CellID: "stale-1", ClientToken: "stale-1", InstanceType: "local.nano"}
	b := e.backend()
	it, err := b.validate(spec)
	if err != nil {
		t.Fatal(err)
	}
	id, _, unlock, err := b.reserve(spec)
	if err != nil {
		t.Fatal(err)
	}
	e.ids[id] = true
	// While the launch lock is held the launch is alive: the same token gets the pending cell.
	in, err := e.cloud().Launch(ctx, spec)
	if err != nil || in.ID != id || in.State != cloud.StatePending {
		t.Fatalf("Launch during a live launch = %+v, %v; want pending %s", in, err, id)
	}
	// The launcher gets as far as starting the agent in the cell, then "dies" before
	// recording it.
	r, err := b.store.read(id)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.cg.CreateCell(r.meta.Cgroups, cgroups.Limits{CPUs: it.VCPU, MemoryBytes: it.MemoryMiB << 20}); err != nil {
		t.Fatal(err)
	}
	if err := plumbCell(b.cellNet(r)); err != nil {
		t.Fatal(err)
	}
	dir := b.store.cellDir(id)
	bootstrap, err := writeBootstrap(dir, []byte("{}"), true)
	if err != nil {
		t.Fatal(err)
	}
	oldPID, oldStart, _, err := startAgent(agentSpec{
		argv: append(agentCommand(t), "--bootstrap", bootstrap, "--state-dir", filepath.Join(dir, "agent")),
		env:  []string{standinEnv + "=1", EnvCellID + "=stale-1", EnvCellIP + "=" + r.ip}, logPath: filepath.Join(dir, "agent.log"),
		netns: r.meta.Netns, hostname: "stale-1", cgroups: b.cg.AgentDirs(r.meta.Cgroups),
	})
	if err != nil {
		t.Fatal(err)
	}
	e.waitHealthy(r.ip)
	unlock()
	in, err = e.cloud().Launch(ctx, spec)
	if err != nil {
		t.Fatalf("Launch after a dead launch: %v", err)
	}
	if in.ID != id || in.State != cloud.StateRunning || in.PrivateIP != r.ip {
		t.Errorf("Launch after a dead launch = %s %s at %s, want the same cell %s running at %s", in.ID, in.State, in.PrivateIP, id, r.ip)
	}
	if agentAlive(oldPID, oldStart) {
		t.Errorf("the dead launcher's agent (pid %d) still runs beside the resumed one", oldPID)
	}
	e.waitHealthy(in.PrivateIP)
	r, err = b.store.read(id)
	if err != nil {
		t.Fatal(err)
	}
	if r.meta.Phase != phaseRunning || r.meta.PID == oldPID || !agentAlive(r.meta.PID, r.meta.PIDStart) {
		t.Errorf("resumed cell: phase %s, agent pid %d (the dead launcher's was %d)", r.meta.Phase, r.meta.PID, oldPID)
	}
	if ids, _ := b.store.ids(); len(ids) != 1 {
		t.Errorf("cells after the resumed launch: %v, want only %s", ids, id)
	}
	if err := b.Terminate(ctx, in.ID); err != nil {
		t.Fatal(err)
	}
}

func hasNeigh(t *testing.T, br netlink.Link, ip string) bool {
	t.Helper()
	ns, err := netlink.NeighList(br.Attrs().Index, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range ns {
		if n.IP.String() == ip {
			return true
		}
	}
	return false
}

// TestForwardAccept checks the iptables conversation with a scripted iptables on PATH (the
// real FORWARD policy is the host's and other tests' traffic depends on it).
func TestForwardAccept(t *testing.T) {
	tests := []struct {
		name      string
		policy    string
		ruleThere bool
		wantAdded bool
		wantCalls []string
	}{
		{"policy accept", "ACCEPT", false, false, []string{"-w -S FORWARD"}},
		{"policy drop", "DROP", false, true, []string{"-w -S FORWARD", "-w -C FORWARD -i kbr -o kbr -j ACCEPT", "-w -I FORWARD -i kbr -o kbr -j ACCEPT"}},
		{"policy drop, rule there", "DROP", true, false, []string{"-w -S FORWARD", "-w -C FORWARD -i kbr -o kbr -j ACCEPT"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			log := filepath.Join(dir, "calls")
			check := "exit 1"
			if tc.ruleThere {
				check = "exit 0"
			}
			script := fmt.Sprintf(`#!/bin/sh
echo "$*" >> %s
case "$2" in
-S) echo "-P FORWARD %s" ;;
-C) %s ;;
esac
`, log, tc.policy, check)
			if err := os.WriteFile(filepath.Join(dir, "iptables"), []byte(script), 0o755); err != nil {
				t.Fatal(err)
			}
			t.Setenv("PATH", dir)
			added, err := forwardAccept("kbr")
			if err != nil || added != tc.wantAdded {
				t.Fatalf("forwardAccept = %v, %v; want %v", added, err, tc.wantAdded)
			}
			b, _ := os.ReadFile(log)
			if got := strings.Split(strings.TrimSpace(string(b)), "\n"); strings.Join(got, "|") != strings.Join(tc.wantCalls, "|") {
				t.Errorf("iptables calls = %q, want %q", got, tc.wantCalls)
			}
		})
	}
}

// TestConcurrentTerminate: racing Terminates of one cell all succeed or say NotFound, and the
// cell is gone.
func TestConcurrentTerminate(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	in := e.launch(e.cloud(), "race-1", "local.nano")
	errs := make(chan error, 4)
	for range 4 {
		go func() { errs <- e.cloud().Terminate(ctx, in.ID) }()
	}
	for range 4 {
		if err := <-errs; err != nil && !cloud.IsNotFound(err) {
			t.Errorf("concurrent Terminate: %v", err)
		}
	}
	if _, err := e.cloud().Describe(ctx, in.ID); !cloud.IsNotFound(err) {
		t.Errorf("Describe after Terminate: %v, want NotFound", err)
	}
}

// TestPoolExhausted: with no address left, Launch says InsufficientCapacity and makes
// nothing; a terminated cell's address is free again.
func TestPoolExhausted(t *testing.T) {
	e := newProcessOnlyEnv(t)
	e.cfg.Subnet = fmt.Sprintf("127.%d.%d.0/30", randByte(t, 10, 250), randByte(t, 1, 250)) // one cell address
	c := e.cloud()
	ctx := context.Background()
	first := e.launch(c, "pool-1", "local.nano")
	_, err := c.Launch(ctx, cloud.LaunchSpec{CellID: "pool-2", ClientToken: "pool-2", InstanceType: "local.nano"})
	if !cloud.IsInsufficientCapacity(err) || !strings.Contains(err.Error(), "pool-2") {
		t.Fatalf("Launch with the pool exhausted: %v, want InsufficientCapacity naming the cell", err)
	}
	if l, _ := c.List(ctx, nil); len(l) != 1 {
		t.Errorf("List = %d cells, want 1", len(l))
	}
	if err := c.Terminate(ctx, first.ID); err != nil {
		t.Fatal(err)
	}
	second := e.launch(c, "pool-2", "local.nano")
	if second.PrivateIP != first.PrivateIP {
		t.Errorf("the freed address %s was not reused (got %s)", first.PrivateIP, second.PrivateIP)
	}
	if err := c.Terminate(ctx, second.ID); err != nil {
		t.Fatal(err)
	}
}

// TestBridgeKeepsItsMAC: the bridge has the MAC derived from its address and keeps it while
// ports come and go, and a cell still reaches the bridge address after a port left. (A
// bridge whose MAC was never set takes its lowest port's MAC; when that port's cell is
// terminated, the other cells keep sending to a MAC that no longer exists, and their
// connections to kip or the registry on the bridge address stall for many seconds.) Setup
// fixes the MAC of a bridge it adopts.
func TestBridgeKeepsItsMAC(t *testing.T) {
	e := newEnv(t)
	b := e.backend()
	want := macFor(b.BridgeIP()).String()
	mac := func() string {
		t.Helper()
		br, err := netlink.LinkByName(e.cfg.Bridge)
		if err != nil {
			t.Fatal(err)
		}
		return br.Attrs().HardwareAddr.String()
	}
	if got := mac(); got != want {
		t.Errorf("bridge MAC after Setup = %s, want %s", got, want)
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(b.BridgeIP().String(), "0"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()

	// A port with the lowest possible MAC joins, as another cell's veth might.
	low := &netlink.Veth{
		LinkAttrs: netlink.LinkAttrs{Name: "kl" + randTag(t), HardwareAddr: net.HardwareAddr{0, 0, 0, 0, 0, 1}},
		PeerName:  "kp" + randTag(t),
	}
	if err := netlink.LinkAdd(low); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = netlink.LinkDel(low) })
	br, err := netlink.LinkByName(e.cfg.Bridge)
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetMaster(low, br); err != nil {
		t.Fatal(err)
	}
	if got := mac(); got != want {
		t.Errorf("bridge MAC after a port with MAC 00:00:00:00:00:01 joined = %s, want %s", got, want)
	}
	// A cell boots (its agent answers, so it knows the bridge's MAC), then that port leaves.
	in := e.launch(e.cloud(), "mac-1", "local.nano")
	if err := netlink.LinkDel(low); err != nil {
		t.Fatal(err)
	}
	if got := mac(); got != want {
		t.Errorf("bridge MAC after the port left = %s, want %s", got, want)
	}
	// Dial from the cell's namespace directly: a request from the host to the agent would
	// make the host ask for the cell's MAC, which also tells the cell the bridge's new one.
	r, err := b.store.read(in.ID)
	if err != nil {
		t.Fatal(err)
	}
	if err := dialFromNetns(r.meta.Netns, ln.Addr().String()); err != nil {
		t.Errorf("after a port left the bridge, the cell cannot reach the bridge address: %v", err)
	}
	if err := e.cloud().Terminate(context.Background(), in.ID); err != nil {
		t.Fatal(err)
	}

	// An adopted bridge (made by an older kip, MAC never set) gets its MAC fixed.
	if err := netlink.LinkSetHardwareAddr(br, net.HardwareAddr{0x02, 0, 0, 0, 0, 0x42}); err != nil {
		t.Fatal(err)
	}
	if err := b.Setup(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := mac(); got != want {
		t.Errorf("bridge MAC after Setup adopted the bridge = %s, want %s", got, want)
	}
}

// dialFromNetns opens a TCP connection to addr from inside the named netns (500 ms at most:
// a lost SYN is only sent again after 1 s).
func dialFromNetns(name, addr string) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread is discarded, not returned
		ns, err := netns.GetFromName(name)
		if err != nil {
			errc <- err
			return
		}
		defer ns.Close()
		if err := netns.Set(ns); err != nil {
			errc <- err
			return
		}
		c, err := net.DialTimeout("tcp", addr, 500*time.Millisecond)
		if err == nil {
			c.Close()
		}
		errc <- err
	}()
	return <-errc
}

// TestNetnsSurvivesIPNetnsAdd: a cell made before someone on the host runs `ip netns add`
// (which bind-mounts /run/netns over itself when it is not already a mount point) can still be
// terminated without leaving its namespace behind.
func TestNetnsSurvivesIPNetnsAdd(t *testing.T) {
	e := newEnv(t)
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("skipping: iproute2's ip is not installed")
	}
	c := e.cloud()
	in := e.launch(c, "ipns-1", "local.nano")
	e.waitHealthy(in.PrivateIP)
	r, err := e.backend().store.read(in.ID)
	if err != nil {
		t.Fatal(err)
	}
	other := "kiptest-ipns-" + strconv.Itoa(os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", other).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", other, err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", other).Run() })
	if err := c.Terminate(context.Background(), in.ID); err != nil {
		t.Fatalf("terminating after ip netns add: %v", err)
	}
	if _, err := os.Stat(filepath.Join(netnsDir, r.meta.Netns)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("netns %s still exists after Terminate (stat: %v)", r.meta.Netns, err)
	}
}

// TestTerminateRemovesStrayPodCgroups: runc in hybrid mode puts a pod's cgroup2 directories at
// the root of the "unified" hierarchy, outside the cell; Terminate removes them by the pod's UID.
func TestTerminateRemovesStrayPodCgroups(t *testing.T) {
	e := newEnv(t)
	b := e.backend()
	strays := b.cg.StrayPodDirs("stray-uid-probe")
	if len(strays) == 0 {
		t.Skip("skipping: no cgroup2 hierarchy is mounted beside the v1 ones (not hybrid mode)")
	}
	uid := fmt.Sprintf("stray-%d-%d", os.Getpid(), time.Now().UnixNano())
	c := e.cloud()
	in, err := c.Launch(context.Background(), cloud.LaunchSpec{
		CellID: "stray-1", ClientToken: "stray-1", InstanceType: "local.nano",
		Tags:          map[string]string{cloud.TagCellID: "stray-1", cloud.TagPodUID: uid},
		BootstrapData: []byte("{}"),
	})
	if err != nil {
		t.Fatal(err)
	}
	e.waitHealthy(in.PrivateIP)
	var made []string
	for _, d := range b.cg.StrayPodDirs(uid) {
		leaf := filepath.Join(d, "main", "0") // as runc leaves it: <parent>/<pod>/<container>/<run>
		if err := os.MkdirAll(leaf, 0o755); err != nil {
			t.Fatal(err)
		}
		made = append(made, d)
	}
	if err := c.Terminate(context.Background(), in.ID); err != nil {
		t.Fatal(err)
	}
	for _, d := range made {
		if _, err := os.Stat(d); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("pod cgroup %s left after Terminate (stat: %v)", d, err)
		}
	}
}

// TestVanishedNetns: a cell whose network namespace is gone (the host rebooted: its agent and
// namespace are gone, its directory, address and token are not) is reported terminating, so
// List still shows it to garbage collection, and Terminate frees what is left.
func TestVanishedNetns(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	c := e.cloud()
	in := e.launch(c, "vanish-1", "local.nano")
	e.waitHealthy(in.PrivateIP)
	b := e.backend()
	r, err := b.store.read(in.ID)
	if err != nil {
		t.Fatal(err)
	}
	if err := killAgent(r.meta.PID, r.meta.PIDStart, killTimeout); err != nil {
		t.Fatal(err)
	}
	if err := netns.DeleteNamed(r.meta.Netns); err != nil {
		t.Fatal(err)
	}
	got, err := b.Describe(ctx, in.ID)
	if err != nil || got.State != cloud.StateTerminating {
		t.Fatalf("Describe after the netns vanished = %+v, %v; want terminating", got, err)
	}
	listed, err := b.List(ctx, nil)
	if err != nil || len(listed) != 1 || listed[0].ID != in.ID || listed[0].State != cloud.StateTerminating {
		t.Fatalf("List after the netns vanished = %+v, %v; want the cell, terminating", listed, err)
	}
	if err := b.Terminate(ctx, in.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(b.store.cellDir(in.ID)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("cell directory left after Terminate: %v", err)
	}
	if used, _ := b.store.usedIPs(); used[in.PrivateIP] {
		t.Errorf("address %s still held after Terminate", in.PrivateIP)
	}
	if err := b.Terminate(ctx, in.ID); !cloud.IsNotFound(err) {
		t.Errorf("second Terminate = %v, want NotFound", err)
	}
}

// TestUnfinishedRecordSwept: a launcher killed while writing a cell's record leaves a staging
// directory (never renamed into place, so no cell); the next backend made on the state
// directory (a restarted kip) and the next launch remove it.
func TestUnfinishedRecordSwept(t *testing.T) {
	e := newProcessOnlyEnv(t)
	b := e.backend()
	stage := func() string {
		d := filepath.Join(b.store.cellsDir(), stagingPrefix+"lc-0123456789")
		if err := os.MkdirAll(filepath.Join(d, "agent"), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, "bootstrap"), []byte("{}"), 0o600); err != nil {
			t.Fatal(err)
		}
		return d
	}
	d := stage()
	e.backend() // a restarted kip
	if _, err := os.Stat(d); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("staging directory left after New: %v", err)
	}
	d = stage()
	in := e.launch(e.cloud(), "swept-1", "local.nano")
	if _, err := os.Stat(d); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("staging directory left after a launch: %v", err)
	}
	if err := b.Terminate(context.Background(), in.ID); err != nil {
		t.Fatal(err)
	}
}
