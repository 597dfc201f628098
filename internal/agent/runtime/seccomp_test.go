package runtime

import (
	"slices"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// refused returns the errno each call name is refused with, unconditionally; clone's
// argument rules are returned apart, as the flags they match.
func refused(s *specs.LinuxSeccomp) (map[string]uint, []uint64) {
	out := map[string]uint{}
	var clone []uint64
	for _, r := range s.Syscalls {
		if r.Action != specs.ActErrno || r.ErrnoRet == nil {
			continue
		}
		if len(r.Args) > 0 {
			for _, n := range r.Names {
				if n == "clone" && len(r.Args) == 1 && r.Args[0].Op == specs.OpMaskedEqual && r.Args[0].Value == r.Args[0].ValueTwo {
					clone = append(clone, r.Args[0].Value)
				}
			}
			continue
		}
		for _, n := range r.Names {
			out[n] = *r.ErrnoRet
		}
	}
	return out, clone
}

func TestRuntimeDefaultSeccomp(t *testing.T) {
	def := Capabilities(nil, nil)
	s := runtimeDefaultSeccomp(def, "amd64")
	if s.DefaultAction != specs.ActAllow {
		t.Errorf("default action %s, want allow", s.DefaultAction)
	}
	if want := []specs.Arch{specs.ArchX86_64, specs.ArchX86, specs.ArchX32}; !slices.Equal(s.Architectures, want) {
		t.Errorf("amd64 architectures %v, want %v", s.Architectures, want)
	}
	if got := runtimeDefaultSeccomp(def, "arm64").Architectures; !slices.Equal(got, []specs.Arch{specs.ArchAARCH64, specs.ArchARM}) {
		t.Errorf("arm64 architectures %v", got)
	}
	names, clone := refused(s)
	for _, n := range []string{"mount", "umount2", "unshare", "setns", "pivot_root", "kexec_load", "reboot", "init_module", "finit_module",
		"delete_module", "swapon", "bpf", "perf_event_open", "keyctl", "add_key", "request_key", "ptrace", "open_by_handle_at", "userfaultfd"} {
		if names[n] != uint(unix.EPERM) {
			t.Errorf("%s: errno %d, want EPERM", n, names[n])
		}
	}
	if names["clone3"] != uint(unix.ENOSYS) {
		t.Errorf("clone3: errno %d, want ENOSYS (libc falls back to clone)", names["clone3"])
	}
	for _, n := range []string{"read", "clone", "execve", "openat", "socket"} {
		if _, ok := names[n]; ok {
			t.Errorf("%s refused unconditionally", n)
		}
	}
	if !slices.Contains(clone, unix.CLONE_NEWUSER) || !slices.Contains(clone, unix.CLONE_NEWNS) || len(clone) != 7 {
		t.Errorf("clone refused for flags %#x, want the 7 namespace flags", clone)
	}

	// A capability lifts the refusal of the calls it guards, and only those.
	names, clone = refused(runtimeDefaultSeccomp(append(def, "CAP_SYS_ADMIN", "CAP_SYS_PTRACE"), "amd64"))
	for _, n := range []string{"mount", "unshare", "setns", "bpf", "clone3", "ptrace"} {
		if _, ok := names[n]; ok {
			t.Errorf("%s refused with its capability", n)
		}
	}
	if len(clone) != 0 {
		t.Errorf("clone namespace flags refused with CAP_SYS_ADMIN")
	}
	for _, n := range []string{"kexec_load", "keyctl", "userfaultfd"} {
		if _, ok := names[n]; !ok {
			t.Errorf("%s allowed by CAP_SYS_ADMIN/CAP_SYS_PTRACE", n)
		}
	}
}

func TestBuildSpecSeccomp(t *testing.T) {
	cc := ContainerConfig{RootFS: "/r", Process: Process{Args: []string{"x"}}}
	s, err := BuildSpec(cc)
	if err != nil || s.Linux.Seccomp != nil {
		t.Fatalf("unconfined: seccomp %v, %v; want none", s.Linux.Seccomp, err)
	}
	cc.SeccompRuntimeDefault = true
	if s, err = BuildSpec(cc); err != nil || s.Linux.Seccomp == nil || s.Linux.Seccomp.DefaultAction != specs.ActAllow {
		t.Fatalf("RuntimeDefault: seccomp %v, %v", s.Linux.Seccomp, err)
	}
}
