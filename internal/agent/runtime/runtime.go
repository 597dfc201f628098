// Package runtime runs a pod's OCI containers for the cell agent: it builds the OCI runtime
// spec of a container (the pod's command, env, user and limits merged with the image config
// the way kubelet does) and runs it with runc.
package runtime

import (
	"context"
	"errors"
	"io"
	"syscall"
	"time"
)

// Runtime runs containers from OCI bundles (a directory holding config.json; the rootfs path
// is absolute inside it).
//
// Start creates and starts in one step: with runc that is `runc run` kept in the foreground,
// which is what lets the agent learn each container's exit status without a shim process.
type Runtime interface {
	// Start runs container id from bundle with its stdout and stderr written to stdio, and
	// returns once the container's process has been executed. When the process cannot be
	// started (no such command, a bad mount, a bad user) the error satisfies IsStartError and
	// carries the runtime's message; nothing is left behind.
	Start(ctx context.Context, id, bundle string, stdio IO) (*Container, error)
	// State reports a container; an error satisfying IsNotExist once it is gone.
	State(ctx context.Context, id string) (*State, error)
	// Kill sends sig to the container's init process; killing a stopped or missing container
	// is not an error.
	Kill(ctx context.Context, id string, sig syscall.Signal) error
	// Delete removes the container, killing it first if it still runs; deleting a missing one
	// is not an error.
	Delete(ctx context.Context, id string) error
	// List returns the ids of all containers the runtime knows.
	List(ctx context.Context) ([]string, error)
}

// IO is where a container's output goes, and where its input comes from.
type IO struct {
	Stdout, Stderr io.Writer
	// Stdin, when set, is the container's standard input (spec.containers[].stdin); an
	// *os.File is handed to the process as is. Without it the process reads /dev/null.
	Stdin io.Reader
	// Terminal says the container's process runs on a terminal (the bundle's
	// process.terminal): Start gives the runtime a pseudo-terminal, all output arrives on
	// Stdout, and Container.Resize sets its size.
	Terminal bool
}

// State is a container's runtime state.
type State struct {
	ID string `json:"id"`
	// Status is "created", "running", "paused" or "stopped".
	Status string `json:"status"`
	Pid    int    `json:"pid"`
}

// ExitStatus is how a container's process ended.
type ExitStatus struct {
	// Code is the exit code; for a process killed by a signal it is 128+signal, as shells
	// and kubelet report it.
	Code int
	// Signal is the signal that killed the process, 0 when it exited.
	Signal syscall.Signal
	// At is when the exit was observed.
	At time.Time
}

// Container is one started container.
type Container struct {
	ID  string
	Pid int
	// StartedAt is when the process was seen running.
	StartedAt time.Time

	done   chan struct{}
	status ExitStatus
	resize func(width, height uint16) error
}

// Resize sets the size of a terminal container's terminal; on a container without one it
// does nothing.
func (c *Container) Resize(width, height uint16) error {
	if c.resize == nil {
		return nil
	}
	return c.resize(width, height)
}

// Done is closed when the container has exited and the runtime has cleaned it up.
func (c *Container) Done() <-chan struct{} { return c.done }

// ExitStatus is valid after Done is closed.
func (c *Container) ExitStatus() ExitStatus { return c.status }

// StartError says a container's process could not be started.
type StartError struct {
	ID      string
	Message string
}

func (e *StartError) Error() string { return "starting container " + e.ID + ": " + e.Message }

// IsStartError reports whether err is a *StartError.
func IsStartError(err error) bool {
	var e *StartError
	return errors.As(err, &e)
}

// errNotExist says a container is unknown to the runtime.
var errNotExist = errors.New("container does not exist")

// IsNotExist reports whether err says the container does not exist.
func IsNotExist(err error) bool { return errors.Is(err, errNotExist) }

// NewContainer returns a started container and the function that records its exit (closing
// Done); for Runtime implementations and their fakes.
func NewContainer(id string, pid int, startedAt time.Time) (*Container, func(ExitStatus)) {
	c := &Container{ID: id, Pid: pid, StartedAt: startedAt, done: make(chan struct{})}
	return c, func(st ExitStatus) {
		c.status = st
		close(c.done)
	}
}

// Execer runs an extra process in a running container (probes, hooks, kubectl exec).
type Execer interface {
	// Exec runs args in container id with the container's user, environment and working
	// directory, and returns its exit code. An error means it could not be run at all.
	Exec(ctx context.Context, id string, args []string, stdio IO) (int, error)
	// ExecProcess is Exec with stdin and optionally a terminal.
	ExecProcess(ctx context.Context, id string, o ExecOptions) (int, error)
}

// ExecOptions describe an exec'd process. With TTY, output comes on Stdout only, and Resize
// carries terminal sizes as [width, height].
type ExecOptions struct {
	Args           []string
	TTY            bool
	Stdin          io.Reader
	Stdout, Stderr io.Writer
	Resize         <-chan [2]uint16
}
