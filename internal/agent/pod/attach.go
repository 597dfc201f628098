package pod

import (
	"context"
	"io"
	"os"
	"sync"

	corev1 "k8s.io/api/core/v1"

	"github.com/kip-dev/kip/internal/agent/runtime"
	"github.com/kip-dev/kip/internal/cellapi"
)

// attachable is one run's standard streams as kubelet's runtimes keep them for attach: its
// output goes to the log and to every attached client, and with spec.stdin its stdin is a
// pipe the agent holds open, written by attached clients. With stdinOnce the pipe is closed
// once the first attach that used it ends, so the process then reads EOF.
type attachable struct {
	tty, stdinOnce bool

	mu      sync.Mutex
	stdinR  *os.File // the process's side; nil without spec.stdin
	stdinW  *os.File // ours; nil once closed
	clients map[*attachment]struct{}
	run     *runtime.Container
	ended   chan struct{}
}

type attachment struct{ stdout, stderr io.Writer }

// newAttachable makes the streams of one run of spec.
func newAttachable(spec *corev1.Container) (*attachable, error) {
	a := &attachable{tty: spec.TTY, stdinOnce: spec.StdinOnce, clients: map[*attachment]struct{}{}, ended: make(chan struct{})}
	if spec.Stdin {
		r, w, err := os.Pipe()
		if err != nil {
			return nil, err
		}
		a.stdinR, a.stdinW = r, w
	}
	return a, nil
}

// io returns the runtime streams: logs' stdout and stderr writers, each copied to clients.
func (a *attachable) io(stdout, stderr io.Writer) runtime.IO {
	o := runtime.IO{
		Stdout:   io.MultiWriter(stdout, a.fanout(func(c *attachment) io.Writer { return c.stdout })),
		Stderr:   io.MultiWriter(stderr, a.fanout(func(c *attachment) io.Writer { return c.stderr })),
		Terminal: a.tty,
	}
	if a.stdinR != nil {
		o.Stdin = a.stdinR
	}
	return o
}

// fanout writes to each client's stream; a client that fails is dropped, never the log.
func (a *attachable) fanout(pick func(*attachment) io.Writer) io.Writer {
	return writerFunc(func(p []byte) (int, error) {
		a.mu.Lock()
		defer a.mu.Unlock()
		for c := range a.clients {
			if w := pick(c); w != nil {
				if _, err := w.Write(p); err != nil {
					delete(a.clients, c)
				}
			}
		}
		return len(p), nil
	})
}

type writerFunc func([]byte) (int, error)

func (w writerFunc) Write(p []byte) (int, error) { return w(p) }

// started records the running container (for resizes).
func (a *attachable) started(c *runtime.Container) {
	a.mu.Lock()
	a.run = c
	a.mu.Unlock()
}

// end closes the streams once the run is over: attaches return.
func (a *attachable) end() {
	a.mu.Lock()
	defer a.mu.Unlock()
	select {
	case <-a.ended:
		return
	default:
	}
	close(a.ended)
	if a.stdinW != nil {
		a.stdinW.Close()
		a.stdinW = nil
	}
	if a.stdinR != nil {
		a.stdinR.Close()
	}
}

func (a *attachable) closeStdin() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.stdinW != nil {
		a.stdinW.Close()
		a.stdinW = nil
	}
}

// attach serves one client until the run ends, ctx ends, or its stdin ends (see
// cellapi.Attacher).
func (a *attachable) attach(ctx context.Context, opts cellapi.AttachOptions, stdio cellapi.ExecIO) {
	c := &attachment{stdout: stdio.Stdout, stderr: stdio.Stderr}
	if a.tty {
		c.stderr = nil // a terminal has one output stream
	}
	a.mu.Lock()
	a.clients[c] = struct{}{}
	stdinW := a.stdinW
	run := a.run
	a.mu.Unlock()
	defer func() {
		a.mu.Lock()
		delete(a.clients, c)
		a.mu.Unlock()
	}()

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if stdio.Resize != nil && run != nil {
		go func() {
			for {
				select {
				case ts, ok := <-stdio.Resize:
					if !ok {
						return
					}
					_ = run.Resize(ts.Width, ts.Height)
				case <-ctx.Done():
					return
				}
			}
		}()
	}
	stdinDone := make(chan struct{})
	useStdin := opts.Stdin && stdio.Stdin != nil && stdinW != nil
	if useStdin {
		go func() {
			_, _ = io.Copy(stdinW, stdio.Stdin)
			close(stdinDone)
		}()
	}
	// stdinOnce without a terminal: the client's EOF closes the process's stdin and the
	// output streams on until it exits; otherwise the client's EOF ends the attach.
	stdinEnds := stdinDone
	if !useStdin {
		stdinEnds = nil
	}
	for {
		select {
		case <-a.ended:
			return
		case <-ctx.Done():
			if useStdin && a.stdinOnce {
				a.closeStdin()
			}
			return
		case <-stdinEnds:
			if a.stdinOnce {
				a.closeStdin()
			}
			if a.stdinOnce && !a.tty {
				stdinEnds = nil
				continue
			}
			return
		}
	}
}

// Attach implements cellapi.Attacher for one container of the pod.
func (p *Pod) Attach(ctx context.Context, name string, opts cellapi.AttachOptions, stdio cellapi.ExecIO) error {
	p.mu.Lock()
	c, ok := p.ctrs[name]
	var a *attachable
	if ok {
		a = c.attach
	}
	p.mu.Unlock()
	if !ok {
		return cellapi.Errorf(cellapi.KindNotFound, "container %q is not in pod %s", name, p.req.Pod.Name)
	}
	if opts.Stdin && !c.spec.Stdin {
		return cellapi.Errorf(cellapi.KindInvalid, "attach: container %q has no stdin to write to (spec.containers[].stdin is false)", name)
	}
	if opts.TTY && !c.spec.TTY {
		return cellapi.Errorf(cellapi.KindInvalid, "attach: container %q has no terminal (spec.containers[].tty is false)", name)
	}
	if a == nil {
		return cellapi.Errorf(cellapi.KindNotFound, "container %q of pod %s is not running", name, p.req.Pod.Name)
	}
	select {
	case <-a.ended:
		return cellapi.Errorf(cellapi.KindNotFound, "container %q of pod %s is not running", name, p.req.Pod.Name)
	default:
	}
	a.attach(ctx, opts, stdio)
	return nil
}
