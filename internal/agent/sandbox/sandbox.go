// Package sandbox holds a pod's shared namespaces, as kubelet's pause container does: one
// process, started by the agent, that owns the pod's UTS namespace (its hostname, set once)
// and, when the pod asks for shareProcessNamespace, a PID namespace in which it is PID 1 and
// reaps the orphans. The pod's containers join these namespaces by path.
//
// The holder is the agent's own binary run again with Command as its first argument; the
// binary's main must hand that case to Hold.
package sandbox

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// Command is the first argument that makes the agent's binary a holder (Hold).
const Command = "pod-sandbox"

// ready is what a holder writes to its stdout once its namespaces are set up.
const ready = "ready\n"

// Sandbox is a running holder, or a pinned UTS namespace (Pin).
type Sandbox struct {
	cmd      *exec.Cmd // nil when pinned
	sharePID bool
	done     chan struct{}
	// pinned is the file the UTS namespace is bind-mounted on, when Pin made it.
	pinned   string
	stopOnce sync.Once
}

// Pin makes the pod's UTS namespace, named hostname, without a process: on a locked
// thread that unshares a new UTS namespace, sets the hostname and bind-mounts the namespace
// on path (created; its directory must exist), then returns to this process's namespace.
// It is what Start does for a pod that shares no PID namespace, without starting a process
// (the agent's binary, run again, costs a process start on every pod's path). Stop unmounts
// and removes path; anything unmounting path's directory also ends it.
func Pin(path, hostname string) (*Sandbox, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_RDONLY, 0o400)
	if err != nil {
		return nil, fmt.Errorf("pinning the pod's UTS namespace: %w", err)
	}
	f.Close()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/uts")
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer orig.Close()
		err = func() error {
			if err := unix.Unshare(unix.CLONE_NEWUTS); err != nil {
				return fmt.Errorf("creating a UTS namespace: %w", err)
			}
			if err := unix.Sethostname([]byte(hostname)); err != nil {
				return fmt.Errorf("setting the hostname: %w", err)
			}
			if err := unix.Mount("/proc/thread-self/ns/uts", path, "", unix.MS_BIND, ""); err != nil {
				return fmt.Errorf("bind-mounting it on %s: %w", path, err)
			}
			return nil
		}()
		// A thread that cannot return to the agent's namespace stays locked, so the
		// runtime ends it with this goroutine.
		if unix.Setns(int(orig.Fd()), unix.CLONE_NEWUTS) == nil {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	if err := <-errc; err != nil {
		_ = os.Remove(path)
		return nil, fmt.Errorf("pinning the pod's UTS namespace: %w", err)
	}
	return &Sandbox{pinned: path}, nil
}

// Start runs binary (the agent's executable) as a holder in a new UTS namespace with
// hostname, and in a new PID namespace when sharePID is set. It returns once the hostname is
// set. The holder is killed if the agent dies.
func Start(binary, hostname string, sharePID bool) (*Sandbox, error) {
	cmd := exec.Command(binary, Command, hostname)
	flags := uintptr(unix.CLONE_NEWUTS)
	if sharePID {
		flags |= unix.CLONE_NEWPID
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: flags, Pdeathsig: syscall.SIGKILL, Setsid: true}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("starting the pod's sandbox: %w", err)
	}
	var stderr limitedBuffer
	cmd.Stderr = &stderr
	// The parent-death signal follows the OS thread that started the holder, not the agent:
	// the holder is started, and waited for, from one goroutine locked to its thread, so
	// that thread lives as long as the holder does and no other goroutine's exit can end it.
	started := make(chan error, 1)
	s := &Sandbox{cmd: cmd, sharePID: sharePID, done: make(chan struct{})}
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		_ = cmd.Wait()
		close(s.done)
	}()
	if err := <-started; err != nil {
		return nil, fmt.Errorf("starting the pod's sandbox: %w", err)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if line != ready {
		_ = cmd.Process.Kill()
		<-s.done
		return nil, fmt.Errorf("starting the pod's sandbox: it did not get ready (%v): %s", err, stderr.String())
	}
	return s, nil
}

// UTSPath is the pod's UTS namespace.
func (s *Sandbox) UTSPath() string {
	if s.cmd == nil {
		return s.pinned
	}
	return fmt.Sprintf("/proc/%d/ns/uts", s.cmd.Process.Pid)
}

// PIDPath is the pod's shared PID namespace; "" when the pod does not share one.
func (s *Sandbox) PIDPath() string {
	if !s.sharePID {
		return ""
	}
	return fmt.Sprintf("/proc/%d/ns/pid", s.cmd.Process.Pid)
}

// Pid is the holder's process id, as the agent sees it; 0 for a pinned namespace.
func (s *Sandbox) Pid() int {
	if s.cmd == nil {
		return 0
	}
	return s.cmd.Process.Pid
}

// Stop kills the holder and waits for it; with a shared PID namespace the kernel then kills
// whatever is left in it. A pinned namespace is unmounted. Stop is safe to call more than
// once.
func (s *Sandbox) Stop() {
	if s.cmd == nil {
		s.stopOnce.Do(func() {
			_ = unix.Unmount(s.pinned, unix.MNT_DETACH)
			_ = os.Remove(s.pinned)
		})
		return
	}
	_ = s.cmd.Process.Signal(syscall.SIGKILL)
	<-s.done
}

// Hold is the holder's body: args are those after Command (the hostname). It sets the
// hostname, says it is ready on stdout, then reaps children until it is signalled to stop.
func Hold(args []string, stdout io.Writer) error {
	if len(args) != 1 {
		return errors.New("pod-sandbox: want one argument, the hostname")
	}
	if err := unix.Sethostname([]byte(args[0])); err != nil {
		return fmt.Errorf("pod-sandbox: setting the hostname: %w", err)
	}
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, unix.SIGCHLD, unix.SIGTERM, unix.SIGINT)
	if _, err := io.WriteString(stdout, ready); err != nil {
		return err
	}
	for sig := range sigs {
		if sig != unix.SIGCHLD {
			return nil
		}
		// As PID 1 of a shared PID namespace, the holder inherits the pod's orphans.
		for {
			pid, err := unix.Wait4(-1, nil, unix.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
	return nil
}

// limitedBuffer keeps the first 4 KiB written to it.
type limitedBuffer struct{ b []byte }

func (l *limitedBuffer) Write(p []byte) (int, error) {
	if room := 4096 - len(l.b); room > 0 {
		l.b = append(l.b, p[:min(room, len(p))]...)
	}
	return len(p), nil
}

func (l *limitedBuffer) String() string { return string(l.b) }
