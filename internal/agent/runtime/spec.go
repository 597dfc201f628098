package runtime

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// SpecVersion is the OCI runtime spec version written into bundles; Debian's runc 1.1.5
// implements 1.0.2.
const SpecVersion = "1.0.2"

// Mount is a bind mount into the container.
type Mount struct {
	// Source is a host path (file or directory).
	Source string
	// Destination is the absolute path in the container.
	Destination string
	ReadOnly    bool
	// NoExec adds nosuid, nodev and noexec, as on the pod's shared /dev/shm.
	NoExec bool
}

// Resources are the cgroup limits of one container; zero means unlimited.
type Resources struct {
	MemoryLimitBytes int64
	// CPUQuota and CPUPeriod (µs) cap CPU time; CPUShares weighs it.
	CPUQuota  int64
	CPUPeriod uint64
	CPUShares uint64
}

// ContainerConfig is everything BuildSpec needs for one container.
type ContainerConfig struct {
	// RootFS is the container's (writable) root directory.
	RootFS   string
	Process  Process
	Hostname string
	// Mounts are bind mounts added after the standard /proc, /dev, /sys ones.
	Mounts    []Mount
	Resources Resources
	// CgroupsPath is relative ("kip/<pod>/<ctr>"), so runc nests it under the agent's own
	// cgroup in every hierarchy.
	CgroupsPath string
	// ReadOnlyRootFS mounts the root read-only (securityContext.readOnlyRootFilesystem).
	ReadOnlyRootFS bool
	// CapAdd and CapDrop change the default capability set (securityContext.capabilities;
	// names with or without "CAP_", "ALL" in CapDrop drops every default one).
	CapAdd, CapDrop []string
	// NoNewPrivileges sets no_new_privs (securityContext.allowPrivilegeEscalation: false).
	NoNewPrivileges bool
	// SeccompRuntimeDefault installs RuntimeDefaultSeccomp (seccompProfile RuntimeDefault);
	// without it the container runs unconfined.
	SeccompRuntimeDefault bool
	// Seccomp is a Localhost seccomp profile (seccompProfile Localhost), installed as given.
	Seccomp *specs.LinuxSeccomp
	// PIDNamespacePath, when set, is the PID namespace to join (/proc/<pid>/ns/pid of another
	// container: an ephemeral container's targetContainerName) instead of a new one.
	PIDNamespacePath string
	// UTSNamespacePath, when set, is the pod's UTS namespace to join (its sandbox's, whose
	// hostname is already set); Hostname is then not set again. Without it the container gets
	// a new UTS namespace with Hostname.
	UTSNamespacePath string
	// Privileged is securityContext.privileged, as runc's privileged containers under
	// containerd: every capability (CapAdd and CapDrop are ignored), no seccomp filter, no
	// masked or read-only paths, writable /sys and /sys/fs/cgroup, every device allowed in
	// the device cgroup and Devices created in /dev.
	Privileged bool
	// Devices are created in a privileged container's /dev (HostDevices of the cell's).
	Devices []specs.LinuxDevice
}

// Capabilities is the set a container gets: the runtime's default set, less drop ("ALL"
// drops all), plus add, as containerd's CRI plugin computes it for kubelet.
func Capabilities(add, drop []string) []string {
	norm := func(c string) string {
		c = strings.ToUpper(c)
		if c != "ALL" && !strings.HasPrefix(c, "CAP_") {
			c = "CAP_" + c
		}
		return c
	}
	dropped := map[string]bool{}
	for _, d := range drop {
		dropped[norm(d)] = true
	}
	var out []string
	if !dropped["ALL"] {
		for _, c := range defaultCaps {
			if !dropped[c] {
				out = append(out, c)
			}
		}
	}
	for _, a := range add {
		if a := norm(a); !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	return out
}

// defaultCaps is the capability set docker and containerd give unprivileged containers.
var defaultCaps = []string{
	"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
	"CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
	"CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
}

// BuildSpec returns the OCI runtime spec for c. There is no network or IPC namespace entry, so
// the container shares those of the process that runs runc: the cell's, which are the pod's.
func BuildSpec(c ContainerConfig) (*specs.Spec, error) {
	if !filepath.IsAbs(c.RootFS) {
		return nil, fmt.Errorf("building spec: rootfs %q is not absolute", c.RootFS)
	}
	if len(c.Process.Args) == 0 {
		return nil, fmt.Errorf("building spec: no command to run")
	}
	if filepath.IsAbs(c.CgroupsPath) {
		return nil, fmt.Errorf("building spec: cgroups path %q must be relative", c.CgroupsPath)
	}
	caps := Capabilities(c.CapAdd, c.CapDrop)
	if c.Privileged {
		caps = AllCapabilities()
	}
	s := &specs.Spec{
		Version: SpecVersion,
		Root:    &specs.Root{Path: c.RootFS, Readonly: c.ReadOnlyRootFS},
		Process: &specs.Process{
			Args: c.Process.Args,
			Env:  c.Process.Env,
			Cwd:  c.Process.Cwd,
			User: specs.User{UID: c.Process.UID, GID: c.Process.GID, AdditionalGids: c.Process.AdditionalGids},
			Capabilities: &specs.LinuxCapabilities{
				Bounding: caps, Effective: caps, Permitted: caps,
			},
			NoNewPrivileges: c.NoNewPrivileges,
			Terminal:        c.Process.Terminal,
		},
		Mounts: []specs.Mount{
			{Destination: "/proc", Type: "proc", Source: "proc", Options: []string{"nosuid", "noexec", "nodev"}},
			{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
			{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"}},
			{Destination: "/dev/shm", Type: "tmpfs", Source: "shm", Options: []string{"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}},
			{Destination: "/dev/mqueue", Type: "mqueue", Source: "mqueue", Options: []string{"nosuid", "noexec", "nodev"}},
			{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "noexec", "nodev", "ro"}},
			{Destination: "/sys/fs/cgroup", Type: "cgroup", Source: "cgroup", Options: []string{"nosuid", "noexec", "nodev", "relatime", "ro"}},
		},
		Linux: &specs.Linux{
			CgroupsPath: c.CgroupsPath,
			// No IPC namespace entry: every container of the pod shares the cell's, which is
			// the pod's (one pod owns its cell), as kubelet's containers share the sandbox's.
			Namespaces: []specs.LinuxNamespace{
				{Type: specs.PIDNamespace, Path: c.PIDNamespacePath}, {Type: specs.UTSNamespace, Path: c.UTSNamespacePath},
				{Type: specs.MountNamespace},
			},
			Resources: resources(c.Resources),
			MaskedPaths: []string{
				"/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
				"/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi",
			},
			ReadonlyPaths: []string{
				"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
			},
		},
	}
	if c.UTSNamespacePath == "" {
		s.Hostname = c.Hostname
	}
	if c.Privileged {
		s.Linux.MaskedPaths, s.Linux.ReadonlyPaths = nil, nil
		for i, m := range s.Mounts {
			if m.Destination == "/sys" || m.Destination == "/sys/fs/cgroup" {
				s.Mounts[i].Options = slices.DeleteFunc(slices.Clone(m.Options), func(o string) bool { return o == "ro" })
				s.Mounts[i].Options = append(s.Mounts[i].Options, "rw")
			}
		}
		s.Linux.Resources.Devices = []specs.LinuxDeviceCgroup{{Allow: true, Access: "rwm"}}
		s.Linux.Devices = c.Devices
	} else if c.Seccomp != nil {
		s.Linux.Seccomp = c.Seccomp
	} else if c.SeccompRuntimeDefault {
		s.Linux.Seccomp = RuntimeDefaultSeccomp(caps)
	}
	for _, m := range c.Mounts {
		if !filepath.IsAbs(m.Destination) || strings.Contains(m.Destination, "..") {
			return nil, fmt.Errorf("building spec: mount destination %q must be an absolute path without ..", m.Destination)
		}
		opts := []string{"rbind", "rprivate"}
		if m.ReadOnly {
			opts = append(opts, "ro")
		} else {
			opts = append(opts, "rw")
		}
		if m.NoExec {
			opts = append(opts, "nosuid", "nodev", "noexec")
		}
		// A bind at a standard mount's destination (/dev/shm) replaces it, as containerd's
		// user mounts replace its defaults.
		s.Mounts = slices.DeleteFunc(s.Mounts, func(sm specs.Mount) bool {
			return sm.Type != "bind" && filepath.Clean(sm.Destination) == filepath.Clean(m.Destination)
		})
		s.Mounts = append(s.Mounts, specs.Mount{Destination: m.Destination, Type: "bind", Source: m.Source, Options: opts})
	}
	return s, nil
}

func resources(r Resources) *specs.LinuxResources {
	res := &specs.LinuxResources{
		Devices: []specs.LinuxDeviceCgroup{{Allow: false, Access: "rwm"}},
	}
	if r.MemoryLimitBytes > 0 {
		limit := r.MemoryLimitBytes
		res.Memory = &specs.LinuxMemory{Limit: &limit}
	}
	if r.CPUQuota > 0 || r.CPUShares > 0 {
		res.CPU = &specs.LinuxCPU{}
		if r.CPUQuota > 0 {
			q, p := r.CPUQuota, r.CPUPeriod
			if p == 0 {
				p = DefaultCPUPeriod
			}
			res.CPU.Quota, res.CPU.Period = &q, &p
		}
		if r.CPUShares > 0 {
			sh := r.CPUShares
			res.CPU.Shares = &sh
		}
	}
	return res
}

// WriteBundle writes spec as bundle/config.json.
func WriteBundle(bundle string, spec *specs.Spec) error {
	b, err := json.MarshalIndent(spec, "", "  ")
	if err != nil {
		return fmt.Errorf("encoding OCI spec: %w", err)
	}
	if err := os.WriteFile(filepath.Join(bundle, "config.json"), b, 0o600); err != nil {
		return fmt.Errorf("writing OCI spec: %w", err)
	}
	return nil
}
