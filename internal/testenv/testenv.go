// Package testenv tells tests what this machine allows (root, network namespaces, runc) and
// skips the tests that need what is missing, with a clear message. Where KIP_REQUIRE_NETNS=1
// (CI sets it) a missing capability fails the test instead, so a green run cannot hide a lost
// capability.
package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"

	"github.com/vishvananda/netns"
)

// RequireEnv is the variable that turns skips into failures.
const RequireEnv = "KIP_REQUIRE_NETNS"

var (
	probeOnce sync.Once
	probeErr  error
)

// probe checks once that this process can make a network namespace.
func probe() error {
	probeOnce.Do(func() {
		if runtime.GOOS != "linux" {
			probeErr = fmt.Errorf("network namespaces need Linux, this is %s", runtime.GOOS)
			return
		}
		if os.Geteuid() != 0 {
			probeErr = fmt.Errorf("network namespaces, cgroups and runc need root (euid %d)", os.Geteuid())
			return
		}
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		orig, err := netns.Get()
		if err != nil {
			probeErr = fmt.Errorf("reading this thread's network namespace: %w", err)
			return
		}
		defer orig.Close()
		ns, err := netns.New()
		if err != nil {
			probeErr = fmt.Errorf("creating a network namespace: %w", err)
			return
		}
		ns.Close()
		if err := netns.Set(orig); err != nil {
			probeErr = fmt.Errorf("returning to the original network namespace: %w", err)
		}
	})
	return probeErr
}

// NetnsError returns why network namespaces cannot be used here, or nil.
func NetnsError() error { return probe() }

// RequireNetns skips (or, under KIP_REQUIRE_NETNS=1, fails) t unless this process is root and
// can create network namespaces.
func RequireNetns(t testing.TB) {
	t.Helper()
	if err := probe(); err != nil {
		missing(t, err.Error())
	}
}

// RequireRunc is RequireNetns plus a runc binary on PATH.
func RequireRunc(t testing.TB) {
	t.Helper()
	RequireNetns(t)
	if _, err := exec.LookPath("runc"); err != nil {
		missing(t, "runc is not installed (apt-get install runc)")
	}
}

func missing(t testing.TB, why string) {
	t.Helper()
	if os.Getenv(RequireEnv) == "1" {
		t.Fatalf("%s=1 but this test cannot run: %s", RequireEnv, why)
	}
	t.Skipf("skipping: %s (set %s=1 to make this a failure)", why, RequireEnv)
}

// BusyboxRootFS copies Debian's busybox-static into a fresh rootfs under t.TempDir(), with a
// symlink per applet the root tests run and an /etc/passwd naming root, and returns its path;
// without busybox-static the test is skipped, saying what to install.
func BusyboxRootFS(t testing.TB) string {
	t.Helper()
	bb, err := exec.LookPath("busybox")
	if err != nil {
		t.Skip("busybox-static is not installed (apt-get install busybox-static)")
	}
	root := filepath.Join(t.TempDir(), "rootfs")
	for _, d := range []string{"bin", "etc", "proc", "sys", "dev", "tmp"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	data, err := os.ReadFile(bb)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "bin/busybox"), data, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, a := range []string{"sh", "echo", "cat", "dd", "sleep", "true", "head", "test", "ls"} {
		if err := os.Symlink("busybox", filepath.Join(root, "bin", a)); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(root, "etc/passwd"), []byte("root:x:0:0:root:/root:/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return root
}
