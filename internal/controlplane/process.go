package controlplane

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"
)

// stateFile records the processes of a control plane under its Dir so that StopLeftovers can
// end them after the parent crashed.
const stateFile = "processes.json"

// process is one running component.
type process struct {
	name  string
	cmd   *exec.Cmd
	start uint64 // start time in clock ticks since boot, from /proc/<pid>/stat
	done  chan struct{}
	err   error // set before done is closed
	log   string
}

// record is what stateFile stores per process.
type record struct {
	Name  string `json:"name"`
	PID   int    `json:"pid"`
	Start uint64 `json:"start"`
}

// spawner starts children from one OS thread that it keeps locked for its whole life. The
// children get PR_SET_PDEATHSIG, which fires when the *thread* that forked them exits; Go may
// end a thread when a goroutine that locked it returns (the local backend does this to drop a
// thread that entered a cell's namespace), so forking from an arbitrary thread could kill the
// control plane at random. A dedicated locked thread never exits before Stop.
type spawner struct {
	reqs chan spawnReq
}

type spawnReq struct {
	cmd  *exec.Cmd
	errc chan error
}

func newSpawner() *spawner {
	s := &spawner{reqs: make(chan spawnReq)}
	ready := make(chan struct{})
	go func() {
		runtime.LockOSThread()
		// Never unlocked: when close(s.reqs) ends this goroutine the thread exits with it,
		// which is what delivers the death signal to any child still alive then.
		close(ready)
		for r := range s.reqs {
			r.errc <- r.cmd.Start()
		}
	}()
	<-ready
	return s
}

func (s *spawner) start(cmd *exec.Cmd) error {
	errc := make(chan error, 1)
	s.reqs <- spawnReq{cmd: cmd, errc: errc}
	return <-errc
}

func (s *spawner) close() { close(s.reqs) }

// startProcess runs bin with args, its output appended to logPath, in its own process group
// (so a terminal's Ctrl-C reaches only the parent, which then stops it in order).
func startProcess(sp *spawner, name, bin string, args []string, logPath string) (*process, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening log of %s: %w", name, err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := sp.start(cmd); err != nil {
		logf.Close()
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	p := &process{name: name, cmd: cmd, done: make(chan struct{}), log: logPath}
	p.start, _ = procStart(cmd.Process.Pid)
	go func() {
		p.err = cmd.Wait()
		logf.Close()
		close(p.done)
	}()
	return p, nil
}

// exited reports whether the process has ended.
func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// exitError describes how the process ended, with the end of its log.
func (p *process) exitError() error {
	return fmt.Errorf("%s exited (%v); last log lines:\n%s", p.name, p.err, LogTail(p.log, 15))
}

// stop sends SIGTERM to the process group, waits up to grace, then SIGKILLs and waits.
func (p *process) stop(grace time.Duration) {
	pid := p.cmd.Process.Pid
	_ = syscall.Kill(-pid, syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		_ = syscall.Kill(-pid, syscall.SIGKILL)
		<-p.done
	}
	// Children of the component (none expected) share its group; make sure none outlive it.
	_ = syscall.Kill(-pid, syscall.SIGKILL)
}

// writeState records procs in dir/processes.json.
func writeState(dir string, procs []*process) error {
	recs := make([]record, 0, len(procs))
	for _, p := range procs {
		recs = append(recs, record{Name: p.name, PID: p.cmd.Process.Pid, Start: p.start})
	}
	data, err := json.MarshalIndent(recs, "", "  ")
	if err != nil {
		return fmt.Errorf("encoding process state: %w", err)
	}
	tmp := filepath.Join(dir, stateFile+".tmp")
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return fmt.Errorf("writing process state: %w", err)
	}
	return os.Rename(tmp, filepath.Join(dir, stateFile))
}

// StopLeftovers ends the processes a control plane started under dir that are still alive —
// for `kip down` after a crash. A recorded PID whose start time differs belongs to another
// process now and is left alone. It returns the names of the processes it stopped.
func StopLeftovers(dir string, grace time.Duration) ([]string, error) {
	data, err := os.ReadFile(filepath.Join(dir, stateFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading process state: %w", err)
	}
	var recs []record
	if err := json.Unmarshal(data, &recs); err != nil {
		return nil, fmt.Errorf("decoding %s: %w", filepath.Join(dir, stateFile), err)
	}
	var stopped []string
	for i := len(recs) - 1; i >= 0; i-- {
		r := recs[i]
		if !sameProcess(r.PID, r.Start) {
			continue
		}
		_ = syscall.Kill(-r.PID, syscall.SIGTERM)
		_ = syscall.Kill(r.PID, syscall.SIGTERM)
		// The process is not our child: no wait(2) to block on, so poll.
		_ = wait.PollUntilContextTimeout(context.Background(), 50*time.Millisecond, grace, true, func(context.Context) (bool, error) {
			return !sameProcess(r.PID, r.Start), nil
		})
		if sameProcess(r.PID, r.Start) {
			_ = syscall.Kill(-r.PID, syscall.SIGKILL)
			_ = syscall.Kill(r.PID, syscall.SIGKILL)
		}
		stopped = append(stopped, r.Name)
	}
	if err := os.Remove(filepath.Join(dir, stateFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return stopped, fmt.Errorf("removing process state: %w", err)
	}
	return stopped, nil
}

// sameProcess reports whether pid is alive (not a zombie) and started at start.
func sameProcess(pid int, start uint64) bool {
	if pid <= 0 {
		return false
	}
	got, state, err := procStat(pid)
	if err != nil || state == "Z" {
		return false
	}
	return start == 0 || got == start
}

// procStart returns the start time of pid in clock ticks since boot.
func procStart(pid int) (uint64, error) {
	start, _, err := procStat(pid)
	return start, err
}

// procStat reads field 22 (starttime) and field 3 (state) of /proc/<pid>/stat.
func procStat(pid int) (start uint64, state string, err error) {
	data, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return 0, "", err
	}
	// The command name (field 2) is in parentheses and may contain spaces.
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, "", fmt.Errorf("parsing /proc/%d/stat", pid)
	}
	fields := strings.Fields(s[i+1:])
	if len(fields) < 20 {
		return 0, "", fmt.Errorf("parsing /proc/%d/stat: %d fields", pid, len(fields))
	}
	start, err = strconv.ParseUint(fields[19], 10, 64)
	return start, fields[0], err
}

// LogTail returns the last n lines of the log file at path, or a note saying why it could
// not be read, for error messages that quote a component's log: the control plane's own
// components here, kip's log in the e2e framework.
func LogTail(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(reading %s: %v)", path, err)
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
