package sandbox

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestMain makes the test binary a holder when run as one, as kip-cell's main does.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == Command {
		if err := Hold(os.Args[2:], os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func start(t *testing.T, hostname string, sharePID bool) *Sandbox {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create namespaces")
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	s, err := Start(self, hostname, sharePID)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
	return s
}

// hostnameIn reads the hostname of the UTS namespace at path, from a thread that joins it.
func hostnameIn(t *testing.T, path string) string {
	t.Helper()
	out := make(chan string, 1)
	go func() {
		// The thread is left locked, so it ends with this goroutine and never runs other
		// code in the joined namespace.
		runtime.LockOSThread()
		fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			out <- "error: " + err.Error()
			return
		}
		defer unix.Close(fd)
		if err := unix.Setns(fd, unix.CLONE_NEWUTS); err != nil {
			out <- "error: " + err.Error()
			return
		}
		var u unix.Utsname
		_ = unix.Uname(&u)
		out <- unix.ByteSliceToString(u.Nodename[:])
	}()
	return <-out
}

// nsPid is the last NSpid of /proc/<pid>/status: the process's id in its own PID namespace.
func nsPid(t *testing.T, pid int) string {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "NSpid:"); ok {
			f := strings.Fields(rest)
			return f[len(f)-1]
		}
	}
	t.Fatal("no NSpid line")
	return ""
}

func TestSandboxSharesPID(t *testing.T) {
	s := start(t, "kip-sandbox-test", true)
	self, _ := os.Readlink("/proc/self/ns/uts")
	if got, _ := os.Readlink(s.UTSPath()); got == self || got == "" {
		t.Errorf("sandbox UTS namespace %q, want a new one (ours is %q)", got, self)
	}
	if got := hostnameIn(t, s.UTSPath()); got != "kip-sandbox-test" {
		t.Errorf("hostname in the sandbox's UTS namespace %q, want kip-sandbox-test", got)
	}
	if s.PIDPath() == "" {
		t.Fatal("no PID namespace with sharePID")
	}
	if got := nsPid(t, s.Pid()); got != "1" {
		t.Errorf("holder is pid %s in its namespace, want 1", got)
	}
	s.Stop()
	if err := unix.Kill(s.Pid(), 0); err == nil {
		t.Errorf("holder %d still there after Stop", s.Pid())
	}
	s.Stop() // a second Stop returns
}

func TestSandboxUTSOnly(t *testing.T) {
	s := start(t, "kip-uts-only", false)
	if s.PIDPath() != "" {
		t.Errorf("PIDPath %q without sharePID, want none", s.PIDPath())
	}
	if got := nsPid(t, s.Pid()); got != fmt.Sprint(s.Pid()) {
		t.Errorf("holder is pid %s in its namespace, want %d (ours)", got, s.Pid())
	}
	if got := hostnameIn(t, s.UTSPath()); got != "kip-uts-only" {
		t.Errorf("hostname %q, want kip-uts-only", got)
	}
}

func TestStartFailsWhenHolderFails(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	self, _ := os.Executable()
	// An invalid hostname (over 64 bytes) makes sethostname fail.
	if _, err := Start(self, strings.Repeat("a", 100), false); err == nil || !strings.Contains(err.Error(), "hostname") {
		t.Errorf("Start with a bad hostname: %v, want the holder's error", err)
	}
}

// TestPin: a pinned UTS namespace is a new one with the hostname, outlives the call without
// any process, and is gone from its path after Stop.
func TestPin(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to create namespaces")
	}
	self, err := os.Readlink("/proc/self/ns/uts")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "uts")
	s, err := Pin(path, "kip-pinned")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
	if s.PIDPath() != "" || s.Pid() != 0 {
		t.Errorf("a pinned namespace has PIDPath %q, Pid %d; want none", s.PIDPath(), s.Pid())
	}
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	if pinned := fmt.Sprintf("uts:[%d]", st.Ino); pinned == self {
		t.Errorf("the pinned namespace is this process's own (%s)", self)
	}
	if host, _ := os.Hostname(); host == "kip-pinned" {
		t.Errorf("this process's hostname became the pod's")
	}
	if got := hostnameIn(t, s.UTSPath()); got != "kip-pinned" {
		t.Errorf("hostname in the pinned namespace %q, want kip-pinned", got)
	}
	s.Stop()
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("%s after Stop: %v, want it gone", path, err)
	}
	s.Stop() // a second Stop returns
}
