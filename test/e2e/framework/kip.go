package framework

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"syscall"
	"time"

	coordv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/watch"

	"github.com/kip-dev/kip/internal/controlplane"
)

// Kip runs `kip run` as a subprocess so tests can stop, kill and restart it.
type Kip struct {
	Bin, Config, Kubeconfig string
	// LogDir receives one log file per start (kip-1.log, kip-2.log, ...).
	LogDir string
	// Args are extra arguments to `kip run`.
	Args []string
	// Env are extra environment variables (KEY=value) of `kip run`.
	Env []string

	env     *Env
	cmd     *exec.Cmd
	done    chan struct{}
	waitErr error
	runs    int
	logPath string
}

// Start starts kip and waits until the virtual node is Ready and its Lease was renewed by this
// process (so a restart does not pass on the previous run's Ready).
func (k *Kip) Start(ctx context.Context) error {
	started := time.Now()
	if err := k.Launch(); err != nil {
		return err
	}
	if err := k.waitNodeReady(ctx, started); err != nil {
		return err
	}
	k.env.logf("node %s Ready after %v", k.env.NodeName, time.Since(started).Round(time.Millisecond))
	return nil
}

// Replica returns another `kip run` with the same config (so the same node and the same
// local backend state), kubeconfig and arguments plus args, logging under LogDir/name: a
// second process for the same node, as a Deployment's replicas are. Start or Launch it.
func (k *Kip) Replica(name string, args ...string) *Kip {
	return &Kip{
		Bin: k.Bin, Config: k.Config, Kubeconfig: k.Kubeconfig,
		LogDir: filepath.Join(k.LogDir, name),
		Args:   append(slices.Clone(k.Args), args...),
		Env:    k.Env,
		env:    k.env,
	}
}

// Launch starts kip and returns at once: it waits for nothing (a follower replica never
// makes the node Ready). Start is Launch and the wait.
func (k *Kip) Launch() error {
	if k.cmd != nil && !k.exited() {
		return errors.New("starting kip: already running")
	}
	if err := os.MkdirAll(k.LogDir, 0o755); err != nil {
		return fmt.Errorf("starting kip: %w", err)
	}
	k.runs++
	k.logPath = filepath.Join(k.LogDir, fmt.Sprintf("kip-%d.log", k.runs))
	logf, err := os.Create(k.logPath)
	if err != nil {
		return fmt.Errorf("starting kip: %w", err)
	}
	args := append([]string{"run", "--config", k.Config, "--kubeconfig", k.Kubeconfig}, k.Args...)
	cmd := exec.Command(k.Bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if len(k.Env) > 0 {
		cmd.Env = append(os.Environ(), k.Env...)
	}
	// Its own process group; SIGKILL if the test binary dies (see startLocked).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := startLocked(cmd); err != nil {
		logf.Close()
		return fmt.Errorf("starting kip: %w", err)
	}
	k.cmd = cmd
	k.done = make(chan struct{})
	go func() {
		k.waitErr = cmd.Wait()
		logf.Close()
		close(k.done)
	}()
	k.env.logf("started kip (pid %d, log %s)", cmd.Process.Pid, k.logPath)
	return nil
}

// waitNodeReady waits for the node's Ready condition and a Lease renewal after since.
func (k *Kip) waitNodeReady(ctx context.Context, since time.Time) error {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	// Stop waiting as soon as kip exits.
	go func() {
		select {
		case <-k.done:
			cancel()
		case <-ctx.Done():
		}
	}()
	name := k.env.NodeName
	_, err := Until(ctx, k.env.Client.CoreV1().Nodes(), fields.OneTermEqualSelector("metadata.name", name),
		func(ev watch.Event) (bool, error) {
			n, ok := ev.Object.(*corev1.Node)
			return ok && nodeReady(n), nil
		})
	if err == nil {
		sel := fields.OneTermEqualSelector("metadata.name", name)
		_, err = Until(ctx, k.env.Client.CoordinationV1().Leases("kube-node-lease"), sel,
			func(ev watch.Event) (bool, error) {
				l, ok := ev.Object.(*coordv1.Lease)
				// Strictly after this start: the previous kip may have renewed it a moment ago.
				return ok && l.Spec.RenewTime != nil && l.Spec.RenewTime.Time.After(since), nil
			})
	}
	if err == nil {
		// The node's status and Lease may be written before the kubelet API listens; the
		// previous kip's are no proof at all. Nothing announces the listener: dial it.
		err = waitListening(ctx, net.JoinHostPort(k.env.NodeIP.String(), "10250"))
	}
	if err != nil {
		if k.exited() {
			return fmt.Errorf("kip exited (%v) before node %s was Ready; log %s:\n%s", k.waitErr, name, k.logPath, k.LogTail(30))
		}
		return fmt.Errorf("waiting for node %s to be Ready: %w; kip log %s:\n%s", name, err, k.logPath, k.LogTail(30))
	}
	return nil
}

// waitListening dials addr until it accepts a TCP connection or ctx ends.
func waitListening(ctx context.Context, addr string) error {
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	var d net.Dialer
	for {
		c, err := d.DialContext(ctx, "tcp", addr)
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for the kubelet API on %s: %w (last: %v)", addr, ctx.Err(), err)
		case <-tick.C:
		}
	}
}

func nodeReady(n *corev1.Node) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// Stop sends kip SIGTERM (its graceful shutdown) and waits up to a minute, then SIGKILLs it.
func (k *Kip) Stop() error {
	if k.cmd == nil || k.exited() {
		return nil
	}
	_ = syscall.Kill(k.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-k.done:
		return nil
	case <-time.After(time.Minute):
		_ = syscall.Kill(-k.cmd.Process.Pid, syscall.SIGKILL)
		<-k.done
		return fmt.Errorf("kip did not exit within a minute of SIGTERM; log %s", k.logPath)
	}
}

// Kill SIGKILLs kip (a crash: no cleanup runs) and waits for it to be gone.
func (k *Kip) Kill() {
	if k.cmd == nil || k.exited() {
		return
	}
	_ = syscall.Kill(-k.cmd.Process.Pid, syscall.SIGKILL)
	<-k.done
}

// Exited returns why kip is no longer running, or nil while it runs.
func (k *Kip) Exited() error {
	if k.cmd == nil {
		return errors.New("kip was never started")
	}
	if !k.exited() {
		return nil
	}
	return fmt.Errorf("kip exited: %v", k.waitErr)
}

func (k *Kip) exited() bool {
	select {
	case <-k.done:
		return true
	default:
		return false
	}
}

// LogPath is the log file of the current (or last) run.
func (k *Kip) LogPath() string { return k.logPath }

// Log returns the current run's whole log so far.
func (k *Kip) Log() string {
	b, err := os.ReadFile(k.logPath)
	if err != nil {
		return fmt.Sprintf("(reading %s: %v)", k.logPath, err)
	}
	return string(b)
}

// LogTail returns the last n lines of the current run's log.
func (k *Kip) LogTail(n int) string { return controlplane.LogTail(k.logPath, n) }

// startLocked starts cmd from a goroutine locked to a fresh OS thread that stays alive
// (parked) for the life of the test binary. PR_SET_PDEATHSIG fires when the forking thread
// exits, and Go ends threads whose locked goroutine returns (the local backend does so after
// entering a cell's namespace), so forking from an arbitrary thread could kill kip at random.
func startLocked(cmd *exec.Cmd) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		errc <- cmd.Start()
		select {} // keep this thread, and so the child's death signal, for the process's life
	}()
	return <-errc
}
