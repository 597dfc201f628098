package cellapi

import (
	"context"
	"io"
)

// AttachOptions say which of a container's streams an attach uses. On the wire they are
// query parameters of POST AttachPath<container>: stdin, tty.
type AttachOptions struct {
	// Stdin writes the client's input to the container's stdin, which the container must
	// hold open (spec.containers[].stdin).
	Stdin bool `json:"stdin,omitempty"`
	// TTY says the client expects the container's terminal (spec.containers[].tty): all
	// output comes on Stdout and the client may resize it.
	TTY bool `json:"tty,omitempty"`
}

// Attacher is implemented by agents that can attach to a running container's own process
// (kubectl attach): the agent and Client. It is separate from Streamer so that existing
// Streamer fakes stay valid.
type Attacher interface {
	// Attach streams the container's output to stdio and, with opts.Stdin, stdio.Stdin to
	// the container's stdin, until the container's run ends, ctx ends, or (as kubelet's
	// runtimes do) the client's stdin ends, unless the container has stdinOnce without a
	// terminal, in which case its stdin is closed and the output streams on until it exits.
	// With stdinOnce the container's stdin is closed once the first attach with stdin ends.
	// An error means it could not attach (kind NotFound: no such running container; kind
	// Invalid: stdin or tty asked of a container without them).
	Attach(ctx context.Context, container string, opts AttachOptions, stdio ExecIO) error
}

// serveAttach runs one attach over an upgraded connection (agent side); the exit frame
// carries code 0 or the error.
func serveAttach(ctx context.Context, a Attacher, container string, opts AttachOptions, conn io.ReadWriteCloser) {
	serveStream(ctx, opts.Stdin, conn, func(ctx context.Context, stdio ExecIO) (int, error) {
		return 0, a.Attach(ctx, container, opts, stdio)
	})
}

// clientAttach drives an attach over an upgraded connection (kip side).
func clientAttach(ctx context.Context, conn io.ReadWriteCloser, opts AttachOptions, stdio ExecIO) error {
	_, err := clientExec(ctx, conn, ExecOptions{Stdin: opts.Stdin, TTY: opts.TTY}, stdio)
	return err
}
