package runtime

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/kip-dev/kip/internal/syncbuf"
)

// Runc runs containers with the runc binary. Its state lives under Root (runc --root).
type Runc struct {
	binary string
	root   string
}

var _ Runtime = (*Runc)(nil)

// NewRunc finds the runc binary (binary, or "runc" on PATH when empty) and keeps runc's
// state under root, which it creates.
func NewRunc(binary, root string) (*Runc, error) {
	if binary == "" {
		binary = "runc"
	}
	path, err := exec.LookPath(binary)
	if err != nil {
		return nil, fmt.Errorf("finding runc: %w", err)
	}
	if err := os.MkdirAll(root, 0o700); err != nil {
		return nil, fmt.Errorf("creating runc root: %w", err)
	}
	return &Runc{binary: path, root: root}, nil
}

const (
	pidFileName = "container.pid"
	logFileName = "runc.log"
)

// Start implements Runtime with `runc run` in the foreground: runc creates the container,
// starts it, writes the pid file once the process runs, relays the output, and exits with
// the container's status after deleting it.
func (r *Runc) Start(ctx context.Context, id, bundle string, stdio IO) (*Container, error) {
	pidFile := filepath.Join(bundle, pidFileName)
	logFile := filepath.Join(bundle, logFileName)
	_ = os.Remove(pidFile)
	_ = os.Remove(logFile)

	watch, err := newFileWatch(bundle, pidFileName)
	if err != nil {
		return nil, fmt.Errorf("starting container %s: %w", id, err)
	}
	defer watch.close()

	cmd := exec.Command(r.binary, "--root", r.root, "--log", logFile, "--log-format", "json",
		"run", "--bundle", bundle, "--pid-file", pidFile, "--no-new-keyring", id)
	cmd.Stdout, cmd.Stderr = stdio.Stdout, stdio.Stderr
	if stdio.Stdin != nil {
		cmd.Stdin = stdio.Stdin
	}
	// Own process group: a terminal's ^C reaches the agent, which stops pods in order.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	var tty *runTTY
	if stdio.Terminal {
		if tty, err = newRunTTY(cmd); err != nil {
			return nil, fmt.Errorf("starting container %s: %w", id, err)
		}
	}
	if err := cmd.Start(); err != nil {
		if tty != nil {
			tty.close()
		}
		return nil, fmt.Errorf("starting runc for container %s: %w", id, err)
	}
	c := &Container{ID: id, done: make(chan struct{})}
	if tty != nil {
		c.resize = tty.resize
		tty.relay(stdio)
	}
	go func() {
		err := cmd.Wait()
		if tty != nil {
			tty.drain()
		}
		c.status = exitStatus(cmd.ProcessState, err)
		close(c.done)
	}()

	select {
	case <-watch.ready:
	case <-c.done:
		// runc exited: did it ever start the process? The pid file says so.
		if _, err := os.Stat(pidFile); err != nil {
			_ = r.Delete(context.WithoutCancel(ctx), id)
			return nil, &StartError{ID: id, Message: runcError(logFile, c.status)}
		}
	case <-ctx.Done():
		_ = r.Delete(context.WithoutCancel(ctx), id)
		<-c.done
		return nil, fmt.Errorf("starting container %s: %w", id, ctx.Err())
	}
	c.StartedAt = time.Now()
	if b, err := os.ReadFile(pidFile); err == nil {
		fmt.Sscan(string(b), &c.Pid)
	}
	return c, nil
}

// runTTY is the pseudo-terminal `runc run` gets for a terminal container. In the
// foreground runc makes the container's own terminal and relays between it and its stdio;
// as its controlling terminal ours also passes our size changes on (SIGWINCH), as for exec.
type runTTY struct {
	master, slave *os.File
	outDone       chan struct{}
}

func newRunTTY(cmd *exec.Cmd) (*runTTY, error) {
	m, sl, err := openPTY()
	if err != nil {
		return nil, err
	}
	_ = unix.IoctlSetWinsize(int(m.Fd()), unix.TIOCSWINSZ, &unix.Winsize{Row: 24, Col: 80})
	cmd.Stdin, cmd.Stdout, cmd.Stderr = sl, sl, sl
	// A session of its own, which also keeps a terminal's ^C from the agent.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	return &runTTY{master: m, slave: sl, outDone: make(chan struct{})}, nil
}

// relay copies the terminal's output to stdio.Stdout and stdio.Stdin to it, once runc has
// started with the slave side.
func (t *runTTY) relay(stdio IO) {
	t.slave.Close() // runc holds it now: reading the master ends once runc exits
	out := stdio.Stdout
	if out == nil {
		out = io.Discard
	}
	go func() {
		_, _ = io.Copy(out, t.master) // ends with EIO once the slave is closed everywhere
		close(t.outDone)
	}()
	if stdio.Stdin != nil {
		go func() { _, _ = io.Copy(t.master, stdio.Stdin) }()
	}
}

// drain waits, after runc has exited, for the output it relayed, then closes the terminal.
func (t *runTTY) drain() {
	select {
	case <-t.outDone:
	case <-time.After(2 * time.Second):
	}
	t.master.Close()
}

func (t *runTTY) close() { t.master.Close(); t.slave.Close() }

func (t *runTTY) resize(width, height uint16) error {
	return unix.IoctlSetWinsize(int(t.master.Fd()), unix.TIOCSWINSZ, &unix.Winsize{Row: height, Col: width})
}

func exitStatus(ps *os.ProcessState, err error) ExitStatus {
	st := ExitStatus{At: time.Now(), Code: -1}
	if ps == nil {
		return st
	}
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		// runc itself was killed; the container went with it.
		st.Signal = ws.Signal()
		st.Code = 128 + int(ws.Signal())
		return st
	}
	st.Code = ps.ExitCode()
	// runc reports a container killed by signal N as exit status 128+N.
	if st.Code > 128 && st.Code <= 128+64 {
		st.Signal = syscall.Signal(st.Code - 128)
	}
	_ = err
	return st
}

// runcError returns the last error runc logged, the best description of why a container
// could not start.
func runcError(logFile string, st ExitStatus) string {
	f, err := os.Open(logFile)
	if err != nil {
		return fmt.Sprintf("runc exited with status %d before the process started", st.Code)
	}
	defer f.Close()
	var last string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var e struct {
			Level string `json:"level"`
			Msg   string `json:"msg"`
		}
		if json.Unmarshal(sc.Bytes(), &e) == nil && (e.Level == "error" || e.Level == "fatal") && e.Msg != "" {
			last = e.Msg
		}
	}
	if last == "" {
		return fmt.Sprintf("runc exited with status %d before the process started", st.Code)
	}
	return last
}

// Exec implements Execer with `runc exec`, which starts from the container's own process
// settings. When ctx ends the exec'd process is killed.
func (r *Runc) Exec(ctx context.Context, id string, args []string, stdio IO) (int, error) {
	return r.ExecProcess(ctx, id, ExecOptions{Args: args, Stdout: stdio.Stdout, Stderr: stdio.Stderr})
}

// ExecProcess implements Execer.
//
// With a terminal, runc in the foreground needs one itself: it gets the slave side of a pty
// as its stdio and controlling terminal, makes the container process's own pty and relays
// between the two, resizing the container's when ours changes (SIGWINCH).
func (r *Runc) ExecProcess(ctx context.Context, id string, o ExecOptions) (int, error) {
	if len(o.Args) == 0 {
		return -1, fmt.Errorf("executing in container %s: no command", id)
	}
	runcArgs := []string{"--root", r.root, "exec"}
	if o.TTY {
		runcArgs = append(runcArgs, "--tty")
	}
	cmd := exec.Command(r.binary, append(append(runcArgs, id), o.Args...)...)
	stderr := syncbuf.Buffer{Max: 4 << 10} // runc's error messages
	cmd.Stderr = &stderr
	var master *os.File
	var stdinPipe io.WriteCloser
	if o.TTY {
		m, slave, err := openPTY()
		if err != nil {
			return -1, fmt.Errorf("executing in container %s: %w", id, err)
		}
		master = m
		defer master.Close()
		defer slave.Close()
		_ = unix.IoctlSetWinsize(int(master.Fd()), unix.TIOCSWINSZ, &unix.Winsize{Row: 24, Col: 80})
		cmd.Stdin, cmd.Stdout = slave, slave
		cmd.Stderr = io.MultiWriter(slave, &stderr)
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	} else {
		cmd.Stdout = o.Stdout
		if o.Stderr != nil {
			cmd.Stderr = io.MultiWriter(&stderr, o.Stderr)
		}
		if o.Stdin != nil {
			// Not cmd.Stdin: Wait would wait for a reader that may never end.
			var err error
			if stdinPipe, err = cmd.StdinPipe(); err != nil {
				return -1, fmt.Errorf("executing in container %s: %w", id, err)
			}
		}
	}
	if err := cmd.Start(); err != nil {
		return -1, fmt.Errorf("executing %q in container %s: %w", o.Args[0], id, err)
	}
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	outDone := make(chan struct{})
	switch {
	case master != nil:
		if o.Stdin != nil {
			go func() { _, _ = io.Copy(master, o.Stdin) }()
		}
		if o.Resize != nil {
			go func() {
				for ts := range o.Resize {
					_ = unix.IoctlSetWinsize(int(master.Fd()), unix.TIOCSWINSZ, &unix.Winsize{Row: ts[1], Col: ts[0]})
				}
			}()
		}
		out := o.Stdout
		if out == nil {
			out = io.Discard
		}
		go func() {
			_, _ = io.Copy(out, master) // ends with EIO once the slave is closed everywhere
			close(outDone)
		}()
	default:
		if stdinPipe != nil {
			go func() {
				_, _ = io.Copy(stdinPipe, o.Stdin)
				stdinPipe.Close()
			}()
		}
		close(outDone)
	}
	var err error
	select {
	case err = <-waited:
		if master != nil {
			// Drain what runc relayed; our copy of the slave must go for the read to end.
			cmd.Stdin.(*os.File).Close()
			select {
			case <-outDone:
			case <-time.After(2 * time.Second):
			}
		}
	case <-ctx.Done():
		_ = cmd.Process.Signal(syscall.SIGKILL)
		<-waited
		return -1, fmt.Errorf("executing %q in container %s: %w", o.Args[0], id, ctx.Err())
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		// runc exits 255 with a message when it could not start the process.
		if ee.ExitCode() == 255 && strings.Contains(stderr.String(), "exec failed") {
			return -1, fmt.Errorf("executing %q in container %s: %s", o.Args[0], id, strings.TrimSpace(stderr.String()))
		}
		return ee.ExitCode(), nil
	}
	if err != nil {
		return -1, fmt.Errorf("executing %q in container %s: %w", o.Args[0], id, err)
	}
	return 0, nil
}

// openPTY opens a new pseudo-terminal pair.
func openPTY() (master, slave *os.File, err error) {
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("opening a pty: %w", err)
	}
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		m.Close()
		return nil, nil, fmt.Errorf("unlocking the pty: %w", err)
	}
	n, err := unix.IoctlGetInt(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		m.Close()
		return nil, nil, fmt.Errorf("naming the pty: %w", err)
	}
	sl, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		m.Close()
		return nil, nil, fmt.Errorf("opening the pty's slave: %w", err)
	}
	return m, sl, nil
}

var _ Execer = (*Runc)(nil)

// State implements Runtime.
func (r *Runc) State(ctx context.Context, id string) (*State, error) {
	out, err := r.run(ctx, "state", id)
	if err != nil {
		return nil, fmt.Errorf("reading state of container %s: %w", id, err)
	}
	var st State
	if err := json.Unmarshal(out, &st); err != nil {
		return nil, fmt.Errorf("decoding state of container %s: %w", id, err)
	}
	return &st, nil
}

// Kill implements Runtime.
func (r *Runc) Kill(ctx context.Context, id string, sig syscall.Signal) error {
	_, err := r.run(ctx, "kill", id, fmt.Sprint(int(sig)))
	if err == nil || IsNotExist(err) || strings.Contains(err.Error(), "not running") {
		return nil
	}
	return fmt.Errorf("signalling container %s: %w", id, err)
}

// Delete implements Runtime.
func (r *Runc) Delete(ctx context.Context, id string) error {
	_, err := r.run(ctx, "delete", "--force", id)
	if err == nil || IsNotExist(err) {
		return nil
	}
	return fmt.Errorf("deleting container %s: %w", id, err)
}

// List implements Runtime.
func (r *Runc) List(ctx context.Context) ([]string, error) {
	out, err := r.run(ctx, "list", "--format", "json")
	if err != nil {
		return nil, fmt.Errorf("listing containers: %w", err)
	}
	var states []State
	if len(bytes.TrimSpace(out)) > 0 && !bytes.Equal(bytes.TrimSpace(out), []byte("null")) {
		if err := json.Unmarshal(out, &states); err != nil {
			return nil, fmt.Errorf("decoding container list: %w", err)
		}
	}
	ids := make([]string, len(states))
	for i, s := range states {
		ids[i] = s.ID
	}
	return ids, nil
}

func (r *Runc) run(ctx context.Context, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, r.binary, append([]string{"--root", r.root}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		msg := strings.TrimSpace(stderr.String())
		if strings.Contains(msg, "does not exist") {
			return nil, fmt.Errorf("%s: %w", msg, errNotExist)
		}
		if msg == "" {
			return nil, err
		}
		return nil, fmt.Errorf("runc %s: %s: %w", args[0], msg, err)
	}
	return out, nil
}

// fileWatch reports, through inotify, when a file appears in a directory: runc writes its
// pid file by renaming a temporary one into place.
type fileWatch struct {
	f     *os.File
	ready chan struct{}
}

func newFileWatch(dir, name string) (*fileWatch, error) {
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("creating inotify: %w", err)
	}
	if _, err := unix.InotifyAddWatch(fd, dir, unix.IN_MOVED_TO|unix.IN_CLOSE_WRITE|unix.IN_CREATE); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("watching %s: %w", dir, err)
	}
	w := &fileWatch{f: os.NewFile(uintptr(fd), "inotify"), ready: make(chan struct{})}
	go w.loop(filepath.Join(dir, name), name)
	return w, nil
}

func (w *fileWatch) loop(path, name string) {
	buf := make([]byte, 4096)
	if _, err := os.Stat(path); err == nil {
		close(w.ready)
		return
	}
	for {
		n, err := w.f.Read(buf)
		if err != nil {
			return
		}
		for off := 0; off+unix.SizeofInotifyEvent <= n; {
			ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
			nameBytes := buf[off+unix.SizeofInotifyEvent : off+unix.SizeofInotifyEvent+int(ev.Len)]
			off += unix.SizeofInotifyEvent + int(ev.Len)
			if string(bytes.TrimRight(nameBytes, "\x00")) == name && ev.Mask&(unix.IN_MOVED_TO|unix.IN_CLOSE_WRITE) != 0 {
				close(w.ready)
				return
			}
		}
	}
}

func (w *fileWatch) close() { _ = w.f.Close() }
