package local

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/kip-dev/kip/internal/cgroups"
)

// agentSpec is how to start one cell's agent.
type agentSpec struct {
	argv     []string // AgentCommand plus --bootstrap and --state-dir (startAgent adds --start-fd)
	env      []string
	logPath  string
	netns    string // empty: stay in the host netns (process-only mode)
	hostname string // set in a new UTS namespace when netns is set
	cgroups  []string
	// unified says cgroups is the one cgroup v2 directory of a cgroup v2-only host: the
	// agent is cloned straight into it.
	unified bool
}

// startFD is the descriptor on which the agent reads its start byte (--start-fd): the first
// of cmd.ExtraFiles. readyFD is the one it writes a byte on once it serves (--ready-fd), the
// second.
const (
	startFD = 3
	readyFD = 4
)

// startAgent starts the agent inside the cell's namespaces and cgroups and returns its pid
// and start time. No agent ever runs outside its cell, even if this process dies half-way:
//
//   - it is started blocked on a pipe (kip-cell --start-fd 3 reads one byte before anything
//     else) and released only once it is in every cgroup of the cell; if this process dies
//     before, the pipe closes without the byte and the agent exits at once;
//   - on a cgroup v2-only host it is also cloned straight into its cgroup (CLONE_INTO_CGROUP),
//     so it is never outside it even while blocked. cgroup v1 has no such clone: there the
//     pipe alone keeps it from doing anything before the move (writing the pid to
//     cgroup.procs moves every thread it has).
//
// The netns is entered with setns on a locked OS thread, never with `ip netns exec` (which
// remounts /sys and hides the cgroup mounts runc needs). On that same thread a new UTS
// namespace gets the cell's hostname, and the child, cloned from the thread, inherits both.
//
// The returned channel is closed once the agent serves (it wrote its byte on --ready-fd) or
// has exited: whoever connects to it waits for that instead of polling.
func startAgent(s agentSpec) (pid int, start uint64, serving <-chan struct{}, err error) {
	a, err := spawnAgent(s)
	if err != nil {
		return 0, 0, nil, err
	}
	defer a.abort() // a no-op once released
	pid = a.cmd.Process.Pid
	if err := cgroups.Join(s.cgroups, pid); err != nil {
		a.kill()
		return 0, 0, nil, err
	}
	start, err = procStartTime(pid)
	if err != nil {
		a.kill()
		return 0, 0, nil, fmt.Errorf("reading start time of agent pid %d: %w", pid, err)
	}
	if err := a.release(); err != nil {
		a.kill()
		return 0, 0, nil, fmt.Errorf("releasing agent pid %d: %w", pid, err)
	}
	return pid, start, a.serving, nil
}

// heldAgent is an agent process started but blocked on its start pipe.
type heldAgent struct {
	cmd  *exec.Cmd
	gate *os.File // the pipe's write end; nil once released or aborted
	// serving is closed once the agent writes on its ready pipe, or the pipe closes (the
	// agent exited).
	serving chan struct{}
}

// watchReady closes serving once the agent writes its ready byte on r, or exits.
func watchReady(r *os.File, serving chan struct{}) {
	defer close(serving)
	defer r.Close()
	var b [1]byte
	_, _ = r.Read(b[:])
}

// release lets the agent run.
func (a *heldAgent) release() error {
	_, err := a.gate.Write([]byte{1})
	if cerr := a.gate.Close(); err == nil {
		err = cerr
	}
	a.gate = nil
	return err
}

// abort closes the pipe without the byte: the agent exits without doing anything.
func (a *heldAgent) abort() {
	if a.gate != nil {
		a.gate.Close()
		a.gate = nil
	}
}

// kill SIGKILLs the agent's process group and closes its pipe.
func (a *heldAgent) kill() {
	a.abort()
	_ = syscall.Kill(-a.cmd.Process.Pid, syscall.SIGKILL)
}

// spawnAgent starts the agent in the cell's namespaces, blocked on its start pipe (and, on a
// cgroup v2-only host, already in its cgroup).
func spawnAgent(s agentSpec) (*heldAgent, error) {
	if len(s.argv) == 0 {
		return nil, errors.New("no agent command configured")
	}
	logf, err := os.OpenFile(s.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening agent log: %w", err)
	}
	defer logf.Close()
	held, gate, err := os.Pipe() // close-on-exec: no other child keeps the write end
	if err != nil {
		return nil, fmt.Errorf("making the agent's start pipe: %w", err)
	}
	defer held.Close()
	readyR, readyW, err := os.Pipe()
	if err != nil {
		gate.Close()
		return nil, fmt.Errorf("making the agent's ready pipe: %w", err)
	}
	defer readyW.Close() // the agent's copy is the only one left: its exit closes the pipe
	newCmd := func() *exec.Cmd {
		argv := append(slices.Clone(s.argv), "--start-fd", strconv.Itoa(startFD), "--ready-fd", strconv.Itoa(readyFD))
		cmd := exec.Command(argv[0], argv[1:]...)
		cmd.Env = s.env
		cmd.Stdout, cmd.Stderr = logf, logf
		cmd.Dir = "/"
		cmd.ExtraFiles = []*os.File{held, readyW} // startFD, readyFD
		// Its own session: it outlives kip (a cell survives a restart of kip) and Terminate
		// can signal its whole process group.
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
		return cmd
	}
	cmd := newCmd()
	if s.unified && len(s.cgroups) == 1 {
		dir, err := os.OpenFile(s.cgroups[0], unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			gate.Close()
			return nil, fmt.Errorf("opening the agent's cgroup: %w", err)
		}
		defer dir.Close()
		cmd.SysProcAttr.UseCgroupFD, cmd.SysProcAttr.CgroupFD = true, int(dir.Fd())
	}
	startErr := startIn(cmd, s)
	if startErr != nil && cmd.SysProcAttr.UseCgroupFD {
		// A kernel without clone3 or CLONE_INTO_CGROUP: the pipe alone keeps the agent held.
		cmd = newCmd()
		startErr = startIn(cmd, s)
	}
	if startErr != nil {
		gate.Close()
		readyR.Close()
		return nil, startErr
	}
	// Reap it when it exits, so that it never lingers as a zombie of this process.
	go func() { _ = cmd.Wait() }()
	serving := make(chan struct{})
	go watchReady(readyR, serving)
	return &heldAgent{cmd: cmd, gate: gate, serving: serving}, nil
}

// startIn starts cmd in the cell's namespaces, or in this process's in process-only mode.
func startIn(cmd *exec.Cmd, s agentSpec) error {
	if s.netns == "" {
		if err := cmd.Start(); err != nil {
			return fmt.Errorf("starting agent %s: %w", s.argv[0], err)
		}
		return nil
	}
	return startInNamespaces(cmd, s.netns, s.hostname)
}

// startInNamespaces starts cmd from a locked thread that has joined the cell's netns and a
// new UTS namespace named hostname, then returns the thread to the host's namespaces. A
// thread that cannot return stays locked, so the runtime discards it.
func startInNamespaces(cmd *exec.Cmd, nsName, hostname string) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		restored := false
		defer func() {
			if restored {
				runtime.UnlockOSThread()
			}
		}()
		origNet, err := netns.Get()
		if err != nil {
			restored = true
			errc <- fmt.Errorf("reading this thread's netns: %w", err)
			return
		}
		defer origNet.Close()
		origUTS, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/uts", unix.Gettid()))
		if err != nil {
			restored = true
			errc <- fmt.Errorf("reading this thread's UTS namespace: %w", err)
			return
		}
		defer origUTS.Close()
		cellNS, err := netns.GetFromName(nsName)
		if err != nil {
			restored = true
			errc <- fmt.Errorf("opening netns %s: %w", nsName, err)
			return
		}
		defer cellNS.Close()

		startErr := func() error {
			if err := netns.Set(cellNS); err != nil {
				return fmt.Errorf("entering netns %s: %w", nsName, err)
			}
			if err := unix.Unshare(unix.CLONE_NEWUTS); err != nil {
				return fmt.Errorf("creating a UTS namespace: %w", err)
			}
			if err := unix.Sethostname([]byte(hostname)); err != nil {
				return fmt.Errorf("setting hostname %q: %w", hostname, err)
			}
			if err := cmd.Start(); err != nil {
				return fmt.Errorf("starting agent %s: %w", cmd.Path, err)
			}
			return nil
		}()
		utsErr := unix.Setns(int(origUTS.Fd()), unix.CLONE_NEWUTS)
		netErr := netns.Set(origNet)
		// If the thread cannot return it stays locked and is discarded; an agent that
		// started is kept either way.
		restored = utsErr == nil && netErr == nil
		errc <- startErr
	}()
	return <-errc
}

// procStartTime returns the start time of pid in clock ticks since boot (field 22 of
// /proc/<pid>/stat).
func procStartTime(pid int) (uint64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	// The command name (field 2) is in parentheses and may contain spaces.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	fields := strings.Fields(s[i+1:]) // starts at field 3
	if len(fields) < 20 {
		return 0, fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	return strconv.ParseUint(fields[19], 10, 64)
}

// procState returns the state letter of pid (R, S, Z, ...), "" if it does not exist.
func procState(pid int) string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return ""
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+2 >= len(s) {
		return ""
	}
	return string(s[i+2])
}

// agentAlive reports whether pid is still the agent that started at start.
func agentAlive(pid int, start uint64) bool {
	if pid <= 0 {
		return false
	}
	st, err := procStartTime(pid)
	if err != nil || st != start {
		return false
	}
	return procState(pid) != "Z"
}

// killAgent SIGKILLs the agent's process group if pid is still the agent, and waits until
// it has died (its address and files are free again) or timeout passes.
func killAgent(pid int, start uint64, timeout time.Duration) error {
	if pid <= 0 {
		return nil
	}
	if st, err := procStartTime(pid); err != nil || st != start {
		return nil // gone, or the pid was recycled: not ours to signal
	}
	if err := syscall.Kill(-pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("killing agent process group %d: %w", pid, err)
	}
	gone := func(context.Context) (bool, error) { return !agentAlive(pid, start), nil }
	if err := wait.PollUntilContextTimeout(context.Background(), 2*time.Millisecond, timeout, true, gone); err != nil {
		return fmt.Errorf("agent pid %d survived SIGKILL for %s", pid, timeout)
	}
	return nil
}
