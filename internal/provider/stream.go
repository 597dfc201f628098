package provider

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/virtual-kubelet/virtual-kubelet/errdefs"
	"github.com/virtual-kubelet/virtual-kubelet/node/api"
	utilexec "k8s.io/utils/exec"

	"github.com/kip-dev/kip/internal/cellapi"
)

// streamer returns the pod's agent as a cellapi.Streamer, after checking the container.
func (p *Provider) streamer(namespace, podName, container string) (cellapi.Streamer, error) {
	pod, ok := p.cells.GetPod(namespace, podName)
	if !ok {
		return nil, errdefs.NotFoundf("pod %s/%s is not known to kip", namespace, podName)
	}
	if container != "" && !hasContainer(pod, container) {
		return nil, errdefs.NotFoundf("container %q is not in pod %s/%s", container, namespace, podName)
	}
	agent, err := p.cells.Agent(namespace, podName)
	if err != nil {
		return nil, classify(fmt.Errorf("reaching the cell of pod %s/%s: %w", namespace, podName, err))
	}
	s, ok := agent.(cellapi.Streamer)
	if !ok {
		return nil, errdefs.InvalidInputf("the cell of pod %s/%s cannot stream (exec, port-forward): %v", namespace, podName, errNotImplemented)
	}
	return s, nil
}

// RunInContainer runs cmd in a container through the cell agent (kubectl exec). A command
// that ran and exited non-zero is returned as a utilexec.CodeExitError, unwrapped, so that the
// kubelet API reports its exit code the way kubelet does.
func (p *Provider) RunInContainer(ctx context.Context, namespace, podName, containerName string, cmd []string, attach api.AttachIO) error {
	s, err := p.streamer(namespace, podName, containerName)
	if err != nil {
		return err
	}
	if len(cmd) == 0 {
		return errdefs.InvalidInput("exec: a command is required")
	}
	stdio := cellapi.ExecIO{Stdin: attach.Stdin(), Stdout: writerOrNil(attach.Stdout()), Stderr: writerOrNil(attach.Stderr())}
	if attach.TTY() && attach.Resize() != nil {
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		stdio.Resize = relayResize(ctx, attach.Resize())
	}
	code, err := s.Exec(ctx, containerName, cellapi.ExecOptions{Command: cmd, Stdin: stdio.Stdin != nil, TTY: attach.TTY()}, stdio)
	if err != nil {
		return classify(fmt.Errorf("exec in %s/%s/%s: %w", namespace, podName, containerName, err))
	}
	if code != 0 {
		return utilexec.CodeExitError{Err: fmt.Errorf("command terminated with exit code %d", code), Code: code}
	}
	return nil
}

// writerOrNil keeps a nil stream nil (a nil io.WriteCloser must not become a non-nil
// io.Writer holding nil).
func writerOrNil(w io.WriteCloser) io.Writer {
	if w == nil {
		return nil
	}
	return w
}

// AttachToContainer attaches to a running container's own process through the cell agent
// (kubectl attach, kubectl run -i): its output, and with stdin its stdin, which the
// container holds open when it has stdin: true.
func (p *Provider) AttachToContainer(ctx context.Context, namespace, podName, containerName string, attach api.AttachIO) error {
	s, err := p.streamer(namespace, podName, containerName)
	if err != nil {
		return err
	}
	a, ok := s.(cellapi.Attacher)
	if !ok {
		return errdefs.InvalidInputf("the cell of pod %s/%s cannot attach: %v", namespace, podName, errNotImplemented)
	}
	stdio := cellapi.ExecIO{Stdin: attach.Stdin(), Stdout: writerOrNil(attach.Stdout()), Stderr: writerOrNil(attach.Stderr())}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if attach.TTY() && attach.Resize() != nil {
		stdio.Resize = relayResize(ctx, attach.Resize())
	}
	if err := a.Attach(ctx, containerName, cellapi.AttachOptions{Stdin: stdio.Stdin != nil, TTY: attach.TTY()}, stdio); err != nil && !errors.Is(err, context.Canceled) {
		return classify(fmt.Errorf("attach to %s/%s/%s: %w", namespace, podName, containerName, err))
	}
	return nil
}

// relayResize turns the kubelet API's terminal sizes into cellapi's until ctx ends.
func relayResize(ctx context.Context, in <-chan api.TermSize) <-chan cellapi.TermSize {
	out := make(chan cellapi.TermSize)
	go func() {
		for {
			select {
			case sz, ok := <-in:
				if !ok {
					return
				}
				select {
				case out <- cellapi.TermSize{Width: sz.Width, Height: sz.Height}:
				case <-ctx.Done():
					return
				}
			case <-ctx.Done():
				return
			}
		}
	}()
	return out
}

// PortForward connects stream to port on the pod's cell (kubectl port-forward).
func (p *Provider) PortForward(ctx context.Context, namespace, podName string, port int32, stream io.ReadWriteCloser) error {
	if port <= 0 || port > 65535 {
		return errdefs.InvalidInputf("port-forward: port %d is out of range", port)
	}
	s, err := p.streamer(namespace, podName, "")
	if err != nil {
		return err
	}
	if err := s.PortForward(ctx, port, stream); err != nil && !errors.Is(err, context.Canceled) {
		return classify(fmt.Errorf("port-forward to %s/%s:%d: %w", namespace, podName, port, err))
	}
	return nil
}
