package upcmd

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	watchtools "k8s.io/client-go/tools/watch"

	"github.com/kip-dev/kip/internal/controlplane"
)

// provider is kip's provider (`kip run`), run by `kip up` as a child process with its own
// log file, so that its logs do not bury kip up's progress lines and a crash of one does not
// take the other down without cleanup.
type provider struct {
	cmd    *exec.Cmd
	done   chan struct{}
	waitEr error
	client kubernetes.Interface
	node   string
	log    string
}

// providerPIDFile records the provider's PID under the log dir for kip down.
const providerPIDFile = "kip.pid"

func startProvider(ctx context.Context, st *state, cp *controlplane.ControlPlane, node string) (*provider, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("starting kip's provider: finding this executable: %w", err)
	}
	client, err := kubernetes.NewForConfig(cp.RESTConfig())
	if err != nil {
		return nil, fmt.Errorf("starting kip's provider: %w", err)
	}
	logPath := filepath.Join(st.LogDir, "kip.log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("starting kip's provider: %w", err)
	}
	cmd := exec.Command(self, "run", "--config", st.Config, "--kubeconfig", st.Kubeconfig)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := startLocked(cmd); err != nil {
		logf.Close()
		return nil, fmt.Errorf("starting kip's provider: %w", err)
	}
	p := &provider{cmd: cmd, done: make(chan struct{}), client: client, node: node, log: logPath}
	_ = os.WriteFile(filepath.Join(st.LogDir, providerPIDFile), []byte(fmt.Sprint(cmd.Process.Pid)), 0o600)
	go func() {
		p.waitEr = cmd.Wait()
		logf.Close()
		close(p.done)
	}()
	return p, nil
}

// waitReady watches the node until it is Ready, the provider exits, or timeout passes.
func (p *provider) waitReady(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	go func() {
		select {
		case <-p.done:
			cancel()
		case <-ctx.Done():
		}
	}()
	sel := fields.OneTermEqualSelector("metadata.name", p.node).String()
	for {
		w, err := p.client.CoreV1().Nodes().Watch(ctx, metav1.ListOptions{FieldSelector: sel})
		if err == nil {
			_, err = watchtools.UntilWithoutRetry(ctx, w, func(ev watch.Event) (bool, error) {
				n, ok := ev.Object.(*corev1.Node)
				if !ok {
					return false, nil
				}
				for _, c := range n.Status.Conditions {
					if c.Type == corev1.NodeReady {
						return c.Status == corev1.ConditionTrue, nil
					}
				}
				return false, nil
			})
		}
		switch {
		case err == nil:
			return nil
		case p.exited():
			return fmt.Errorf("kip's provider exited (%v) before node %s was Ready; see %s", p.waitEr, p.node, p.log)
		case ctx.Err() != nil:
			return fmt.Errorf("waiting for node %s to be Ready: %w; see %s", p.node, ctx.Err(), p.log)
		case errors.Is(err, watchtools.ErrWatchClosed):
			continue
		default:
			return fmt.Errorf("watching node %s: %w", p.node, err)
		}
	}
}

func (p *provider) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (p *provider) err() error { return p.waitEr }

// stop sends SIGTERM and waits for the provider to exit (SIGKILL when ctx ends first).
func (p *provider) stop(ctx context.Context) error {
	if p.exited() {
		return nil
	}
	_ = syscall.Kill(p.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-p.done:
		return nil
	case <-ctx.Done():
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
		return fmt.Errorf("kip's provider did not stop after SIGTERM; killed it")
	}
}

// startLocked starts cmd from a goroutine locked to its own OS thread, kept for the life of
// the process: PR_SET_PDEATHSIG fires when the forking *thread* exits, and the local backend
// ends threads (locked goroutines that entered a cell's namespace return without unlocking).
func startLocked(cmd *exec.Cmd) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		errc <- cmd.Start()
		select {} // park: this thread must outlive the child
	}()
	return <-errc
}
