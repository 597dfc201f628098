package runtime

import (
	goruntime "runtime"
	"slices"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// The RuntimeDefault seccomp profile, written for kip (not copied from a runtime's profile
// file). It allows every system call by default and refuses, with EPERM, those whose risk in
// a container outweighs their everyday use: calls that change kernel or host-wide state that
// no namespace isolates, that widen a container's view of the kernel, or that exploits have
// long relied on. Calls that a capability already guards are refused only when the container
// lacks that capability, as the runtimes' defaults do, so adding the capability keeps the call.
//
// Allow-by-default keeps every ordinary program working, new system calls included; the price
// is that a dangerous call added to the kernel later is not refused until it is listed here.

// seccompRule is one group of refused calls, and the capability that lifts the refusal ("" if none).
type seccompRule struct {
	names []string
	cap   string
	errno uint
}

var seccompRules = []seccompRule{
	// Loading or replacing kernel code, and power: host-wide.
	{names: []string{"kexec_load", "kexec_file_load", "reboot"}, cap: "CAP_SYS_BOOT"},
	{names: []string{"init_module", "finit_module", "delete_module"}, cap: "CAP_SYS_MODULE"},
	// Obsolete calls with no use left in a container.
	{names: []string{"create_module", "get_kernel_syms", "query_module", "uselib", "nfsservctl", "lookup_dcookie", "vm86", "vm86old", "ustat", "sysfs", "_sysctl"}},
	// Swap and process accounting act on the whole host.
	{names: []string{"swapon", "swapoff"}, cap: "CAP_SYS_ADMIN"},
	{names: []string{"acct"}, cap: "CAP_SYS_PACCT"},
	// Mounts, namespaces and other CAP_SYS_ADMIN-gated interfaces: new namespaces (a user
	// namespace in particular) hand an unprivileged process capabilities over kernel code
	// paths that have been a rich source of privilege escalations; eBPF and perf events
	// expose kernel memory and have the same history; the keyring is not namespaced.
	{names: []string{
		"mount", "umount", "umount2", "pivot_root", "fsopen", "fsconfig", "fsmount", "fspick",
		"move_mount", "open_tree", "mount_setattr", "unshare", "setns", "quotactl", "quotactl_fd",
		"bpf", "perf_event_open", "fanotify_init",
	}, cap: "CAP_SYS_ADMIN"},
	{names: []string{"keyctl", "add_key", "request_key"}},
	// Reading another process's memory; on old kernels ptrace also escaped seccomp itself.
	{names: []string{"ptrace", "process_vm_readv", "process_vm_writev", "kcmp"}, cap: "CAP_SYS_PTRACE"},
	// Opening any file of a mounted filesystem by its handle bypasses the mount (the
	// "shocker" container escape).
	{names: []string{"open_by_handle_at"}, cap: "CAP_DAC_READ_SEARCH"},
	// Widening race windows in kernel exploits, and io_uring's large, often-exploited surface.
	{names: []string{"userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register"}},
	// The clock is not namespaced.
	{names: []string{"settimeofday", "stime", "clock_settime", "clock_settime64"}, cap: "CAP_SYS_TIME"},
	// Raw I/O ports and the kernel log.
	{names: []string{"iopl", "ioperm"}, cap: "CAP_SYS_RAWIO"},
	{names: []string{"syslog"}, cap: "CAP_SYSLOG"},
	{names: []string{"vhangup"}, cap: "CAP_SYS_TTY_CONFIG"},
	// clone3 passes its flags in memory, which seccomp cannot read: without CAP_SYS_ADMIN it
	// fails with ENOSYS so that libc falls back to clone, whose namespace flags are refused below.
	{names: []string{"clone3"}, cap: "CAP_SYS_ADMIN", errno: uint(unix.ENOSYS)},
}

// cloneNamespaceFlags are clone's flags that create a namespace.
var cloneNamespaceFlags = []uint64{
	unix.CLONE_NEWNS, unix.CLONE_NEWUTS, unix.CLONE_NEWIPC, unix.CLONE_NEWUSER,
	unix.CLONE_NEWPID, unix.CLONE_NEWNET, unix.CLONE_NEWCGROUP,
}

// seccompArches are the architectures whose system calls a process of goarch can make: a
// 64-bit process can also enter the kernel through its 32-bit entry points, which a filter
// must cover or they would slip past the rules.
func seccompArches(goarch string) []specs.Arch {
	switch goarch {
	case "amd64":
		return []specs.Arch{specs.ArchX86_64, specs.ArchX86, specs.ArchX32}
	case "arm64":
		return []specs.Arch{specs.ArchAARCH64, specs.ArchARM}
	}
	return nil // the native architecture only
}

// RuntimeDefaultSeccomp is the seccomp filter of a container with seccompProfile
// RuntimeDefault and capabilities caps (the bounding set, as Capabilities returns it).
func RuntimeDefaultSeccomp(caps []string) *specs.LinuxSeccomp {
	return runtimeDefaultSeccomp(caps, goruntime.GOARCH)
}

func runtimeDefaultSeccomp(caps []string, goarch string) *specs.LinuxSeccomp {
	s := &specs.LinuxSeccomp{DefaultAction: specs.ActAllow, Architectures: seccompArches(goarch)}
	for _, r := range seccompRules {
		if r.cap != "" && slices.Contains(caps, r.cap) {
			continue
		}
		errno := r.errno
		if errno == 0 {
			errno = uint(unix.EPERM)
		}
		s.Syscalls = append(s.Syscalls, specs.LinuxSyscall{Names: r.names, Action: specs.ActErrno, ErrnoRet: &errno})
	}
	if !slices.Contains(caps, "CAP_SYS_ADMIN") {
		// clone's flags are its first argument on amd64 and arm64 (and their 32-bit modes).
		for _, f := range cloneNamespaceFlags {
			errno := uint(unix.EPERM)
			s.Syscalls = append(s.Syscalls, specs.LinuxSyscall{
				Names: []string{"clone"}, Action: specs.ActErrno, ErrnoRet: &errno,
				Args: []specs.LinuxSeccompArg{{Index: 0, Value: f, ValueTwo: f, Op: specs.OpMaskedEqual}},
			})
		}
	}
	return s
}
