package runtime

import (
	"os"
	"slices"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func TestCapabilities(t *testing.T) {
	tests := []struct {
		name      string
		add, drop []string
		want      []string
	}{
		// containerd's default set for unprivileged containers (pkg/oci defaultUnixCaps, what
		// its CRI plugin starts from), spelt out so the set cannot drift.
		{"default is containerd's", nil, nil, []string{
			"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
			"CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
			"CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE"}},
		{"drop all", nil, []string{"ALL"}, nil},
		{"drop all, add one (without the prefix)", []string{"NET_BIND_SERVICE"}, []string{"ALL"}, []string{"CAP_NET_BIND_SERVICE"}},
		{"drop some", nil, []string{"NET_RAW", "CAP_MKNOD", "chown"}, []string{
			"CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP",
			"CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE"}},
		{"add one not in the default set", []string{"SYS_TIME"}, nil, append(append([]string(nil), defaultCaps...), "CAP_SYS_TIME")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Capabilities(tt.add, tt.drop); !slices.Equal(got, tt.want) {
				t.Errorf("Capabilities(%v, %v) = %v, want %v", tt.add, tt.drop, got, tt.want)
			}
		})
	}
	s, err := BuildSpec(ContainerConfig{RootFS: "/r", Process: Process{Args: []string{"x"}}, CapDrop: []string{"ALL"}, NoNewPrivileges: true})
	if err != nil {
		t.Fatal(err)
	}
	if c := s.Process.Capabilities; len(c.Bounding)+len(c.Effective)+len(c.Permitted) != 0 || !s.Process.NoNewPrivileges {
		t.Errorf("drop ALL + no_new_privs: capabilities %+v, noNewPrivileges %t", c, s.Process.NoNewPrivileges)
	}
}

// A bind at /dev/shm (the pod's shared one) replaces the standard tmpfs there, nosuid,
// nodev and noexec kept; other standard mounts stay.
func TestBindReplacesStandardMount(t *testing.T) {
	s, err := BuildSpec(ContainerConfig{RootFS: "/r", Process: Process{Args: []string{"x"}}, Mounts: []Mount{
		{Source: "/pod/shm", Destination: "/dev/shm", NoExec: true},
		{Source: "/pod/v", Destination: "/data"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	var shm []string
	dev := false
	for _, m := range s.Mounts {
		if m.Destination == "/dev/shm" {
			shm = append(shm, m.Type+":"+m.Source+":"+strings.Join(m.Options, ","))
		}
		dev = dev || m.Destination == "/dev"
	}
	if want := []string{"bind:/pod/shm:rbind,rprivate,rw,nosuid,nodev,noexec"}; !slices.Equal(shm, want) {
		t.Errorf("/dev/shm mounts %q, want %q", shm, want)
	}
	if !dev {
		t.Error("the standard /dev mount is gone")
	}
}

// TestPodNamespaces: a container joins the pod's UTS and PID namespaces by path, without
// setting the hostname again; alone it gets new ones, with the hostname.
func TestPodNamespaces(t *testing.T) {
	ns := func(s []specs.LinuxNamespace, typ specs.LinuxNamespaceType) (string, bool) {
		for _, n := range s {
			if n.Type == typ {
				return n.Path, true
			}
		}
		return "", false
	}
	base := ContainerConfig{RootFS: "/r", Process: Process{Args: []string{"x"}}, Hostname: "web-0"}
	own, err := BuildSpec(base)
	if err != nil {
		t.Fatal(err)
	}
	if p, ok := ns(own.Linux.Namespaces, specs.UTSNamespace); !ok || p != "" || own.Hostname != "web-0" {
		t.Errorf("alone: UTS %q (%v), hostname %q; want a new UTS namespace with hostname web-0", p, ok, own.Hostname)
	}
	shared := base
	shared.UTSNamespacePath, shared.PIDNamespacePath = "/proc/7/ns/uts", "/proc/7/ns/pid"
	s, err := BuildSpec(shared)
	if err != nil {
		t.Fatal(err)
	}
	if p, _ := ns(s.Linux.Namespaces, specs.UTSNamespace); p != "/proc/7/ns/uts" || s.Hostname != "" {
		t.Errorf("shared: UTS %q, hostname %q; want /proc/7/ns/uts and no hostname", p, s.Hostname)
	}
	if p, _ := ns(s.Linux.Namespaces, specs.PIDNamespace); p != "/proc/7/ns/pid" {
		t.Errorf("shared: PID namespace %q, want /proc/7/ns/pid", p)
	}
	if _, ok := ns(s.Linux.Namespaces, specs.IPCNamespace); ok {
		t.Error("an IPC namespace entry: the pod's containers share the cell's")
	}
}

// TestBuildSpecPrivileged: a privileged container gets every capability, no seccomp filter
// even under RuntimeDefault, no masked or read-only paths, a writable /sys, every device
// allowed and the devices given; an unprivileged one keeps the defaults.
func TestBuildSpecPrivileged(t *testing.T) {
	mode := os.FileMode(0o666)
	dev := specs.LinuxDevice{Path: "/dev/fuse", Type: "c", Major: 10, Minor: 229, FileMode: &mode}
	base := ContainerConfig{RootFS: "/r", Process: Process{Args: []string{"x"}}, SeccompRuntimeDefault: true,
		CapDrop: []string{"ALL"}, Devices: []specs.LinuxDevice{dev}}
	sysRO := func(s *specs.Spec) bool {
		for _, m := range s.Mounts {
			if m.Destination == "/sys" {
				return slices.Contains(m.Options, "ro")
			}
		}
		t.Fatal("no /sys mount")
		return false
	}
	plain, err := BuildSpec(base)
	if err != nil {
		t.Fatal(err)
	}
	if plain.Linux.Seccomp == nil || len(plain.Linux.MaskedPaths) == 0 || !sysRO(plain) ||
		len(plain.Process.Capabilities.Bounding) != 0 || plain.Linux.Resources.Devices[0].Allow || len(plain.Linux.Devices) != 0 {
		t.Errorf("unprivileged: want seccomp, masked paths, ro /sys, no capabilities, devices denied, no devices; got %+v", plain.Linux)
	}
	priv := base
	priv.Privileged = true
	s, err := BuildSpec(priv)
	if err != nil {
		t.Fatal(err)
	}
	if s.Linux.Seccomp != nil {
		t.Error("privileged: a seccomp filter")
	}
	if len(s.Linux.MaskedPaths) != 0 || len(s.Linux.ReadonlyPaths) != 0 {
		t.Errorf("privileged: masked %v read-only %v, want none", s.Linux.MaskedPaths, s.Linux.ReadonlyPaths)
	}
	if sysRO(s) {
		t.Error("privileged: /sys read-only")
	}
	if caps := s.Process.Capabilities; !slices.Contains(caps.Bounding, "CAP_SYS_ADMIN") || !slices.Equal(caps.Bounding, AllCapabilities()) || !slices.Equal(caps.Effective, AllCapabilities()) {
		t.Errorf("privileged: capabilities %v, want all %v", caps.Bounding, AllCapabilities())
	}
	if d := s.Linux.Resources.Devices; len(d) != 1 || !d[0].Allow || d[0].Access != "rwm" {
		t.Errorf("privileged: device cgroup %+v, want all allowed", d)
	}
	if len(s.Linux.Devices) != 1 || s.Linux.Devices[0].Path != "/dev/fuse" {
		t.Errorf("privileged: devices %+v, want /dev/fuse", s.Linux.Devices)
	}
}

func TestHostDevices(t *testing.T) {
	devs, err := HostDevices("/dev")
	if err != nil {
		t.Fatal(err)
	}
	var null *specs.LinuxDevice
	for i, d := range devs {
		if strings.HasPrefix(d.Path, "/dev/pts/") {
			t.Errorf("%s listed: /dev/pts is the container's own", d.Path)
		}
		if d.Path == "/dev/null" {
			null = &devs[i]
		}
	}
	if null == nil || null.Type != "c" || null.Major != 1 || null.Minor != 3 {
		t.Errorf("/dev/null: %+v, want char 1:3", null)
	}
	if _, err := HostDevices("/no/such/dir"); err == nil {
		t.Error("HostDevices of a missing directory: no error")
	}
}

func TestBoundingSet(t *testing.T) {
	got := boundingSet("Name:\tx\nCapBnd:\t0000000000200401\nCapAmb:\t0\n")
	if want := []string{"CAP_CHOWN", "CAP_NET_BIND_SERVICE", "CAP_SYS_ADMIN"}; !slices.Equal(got, want) {
		t.Errorf("boundingSet %v, want %v", got, want)
	}
}

// TestBuildSpecLocalhostSeccomp: a Localhost profile is installed as given, over
// RuntimeDefault; a privileged container gets none.
func TestBuildSpecLocalhostSeccomp(t *testing.T) {
	prof := &specs.LinuxSeccomp{DefaultAction: specs.ActAllow, Syscalls: []specs.LinuxSyscall{{Names: []string{"mkdir"}, Action: specs.ActErrno}}}
	c := ContainerConfig{RootFS: "/r", Process: Process{Args: []string{"x"}}, SeccompRuntimeDefault: true, Seccomp: prof}
	s, err := BuildSpec(c)
	if err != nil {
		t.Fatal(err)
	}
	if s.Linux.Seccomp != prof {
		t.Errorf("seccomp %+v, want the Localhost profile", s.Linux.Seccomp)
	}
	c.Privileged = true
	if s, _ := BuildSpec(c); s.Linux.Seccomp != nil {
		t.Errorf("privileged: seccomp %+v, want none", s.Linux.Seccomp)
	}
}
