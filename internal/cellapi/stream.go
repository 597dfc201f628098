package cellapi

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"sync"
)

// PortForwardPath is the route of port forwarding: POST /v1/portforward/<port>, upgraded to
// a raw byte stream connected to that port on the cell's loopback.
const PortForwardPath = "/v1/portforward/"

// StreamProtocol is the Upgrade token of exec and port-forward connections.
const StreamProtocol = "kip-stream/1"

// ExecOptions say what to run in a container. On the wire they are query parameters of
// POST ExecPath<container>: command (repeated), stdin, tty.
type ExecOptions struct {
	Command []string `json:"command"`
	Stdin   bool     `json:"stdin,omitempty"`
	TTY     bool     `json:"tty,omitempty"`
}

// TermSize is a terminal size.
type TermSize struct {
	Width  uint16 `json:"width"`
	Height uint16 `json:"height"`
}

// ExecIO are the streams of an exec. Stdin is read only with ExecOptions.Stdin; with a TTY
// all output goes to Stdout.
type ExecIO struct {
	Stdin          io.Reader
	Stdout, Stderr io.Writer
	Resize         <-chan TermSize
}

// Streamer is implemented by agents that can run commands in containers and forward ports:
// the agent and Client. It is separate from Agent so that existing Agent fakes stay valid.
type Streamer interface {
	// Exec runs opts.Command in the container and returns its exit code once it ends. An
	// error means it could not be run (kind NotFound: no such running container).
	Exec(ctx context.Context, container string, opts ExecOptions, stdio ExecIO) (int, error)
	// PortForward connects conn to port on the cell's loopback until either side closes.
	// Served by Handler, an error returned before conn is first read or written (nothing
	// listens on the port) is the request's error: the Client's PortForward returns it.
	PortForward(ctx context.Context, port int32, conn io.ReadWriteCloser) error
}

// Frame kinds of an exec stream. Each frame is kind (1 byte), length (4 bytes, big endian)
// and payload.
const (
	frameStdin    byte = 0 // client → agent
	frameStdout   byte = 1
	frameStderr   byte = 2
	frameResize   byte = 3 // client → agent, JSON TermSize
	frameExit     byte = 4 // agent → client, JSON exitFrame; the last frame
	frameStdinEOF byte = 5 // client → agent
)

const maxFrame = 1 << 20

type exitFrame struct {
	Code  int       `json:"code"`
	Error string    `json:"error,omitempty"`
	Kind  ErrorKind `json:"kind,omitempty"`
}

// frameWriter serialises frames from several goroutines.
type frameWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (f *frameWriter) frame(kind byte, p []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	var hdr [5]byte
	hdr[0] = kind
	binary.BigEndian.PutUint32(hdr[1:], uint32(len(p)))
	if _, err := f.w.Write(hdr[:]); err != nil {
		return err
	}
	_, err := f.w.Write(p)
	return err
}

// stream returns an io.Writer that sends each Write as frames of kind.
func (f *frameWriter) stream(kind byte) io.Writer {
	return writerFunc(func(p []byte) (int, error) {
		for off := 0; off < len(p); off += maxFrame {
			end := min(off+maxFrame, len(p))
			if err := f.frame(kind, p[off:end]); err != nil {
				return off, err
			}
		}
		return len(p), nil
	})
}

type writerFunc func([]byte) (int, error)

func (w writerFunc) Write(p []byte) (int, error) { return w(p) }

func readFrame(r io.Reader) (byte, []byte, error) {
	var hdr [5]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, nil, err
	}
	n := binary.BigEndian.Uint32(hdr[1:])
	if n > maxFrame {
		return 0, nil, fmt.Errorf("reading stream: frame of %d bytes is too long", n)
	}
	p := make([]byte, n)
	if _, err := io.ReadFull(r, p); err != nil {
		return 0, nil, err
	}
	return hdr[0], p, nil
}

// serveExec runs one exec over an upgraded connection (agent side).
func serveExec(ctx context.Context, s Streamer, container string, opts ExecOptions, conn io.ReadWriteCloser) {
	serveStream(ctx, opts.Stdin, conn, func(ctx context.Context, stdio ExecIO) (int, error) {
		return s.Exec(ctx, container, opts, stdio)
	})
}

// serveStream runs one framed stream (exec, attach) over an upgraded connection: run gets
// the streams (stdin only when stdin is true) and its result is the exit frame.
//
// One goroutine reads the client's frames and another feeds stdin, so that a command not
// reading its stdin yet (or ever) does not hold up resizes, end-of-stdin or noticing that
// the client went away; up to stdinQueue frames wait for the command, then reading the
// stream waits for it too.
func serveStream(ctx context.Context, stdin bool, conn io.ReadWriteCloser, run func(context.Context, ExecIO) (int, error)) {
	fw := &frameWriter{w: conn}
	stdinR, stdinW := io.Pipe()
	resize := make(chan TermSize, 4)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	queue := make(chan []byte, stdinQueue)
	fed := make(chan struct{}) // closed once stdin takes no more
	go func() {
		defer close(fed)
		defer stdinW.Close()
		for p := range queue {
			if _, err := stdinW.Write(p); err != nil {
				return
			}
		}
	}()
	go func() {
		// Only this goroutine sends on queue and closes it: stdin frames after the client's
		// end of stdin are dropped, never sent on the closed queue.
		ended := false
		endStdin := func() {
			if !ended {
				ended = true
				close(queue)
			}
		}
		defer endStdin()
		defer cancel() // the client went away: stop the process
		for {
			kind, p, err := readFrame(conn)
			if err != nil {
				return
			}
			switch kind {
			case frameStdin:
				if !stdin || ended {
					continue // nobody reads it
				}
				select {
				case queue <- p:
				case <-fed:
				}
			case frameStdinEOF:
				endStdin()
			case frameResize:
				var ts TermSize
				if json.Unmarshal(p, &ts) == nil {
					select {
					case resize <- ts:
					default:
					}
				}
			}
		}
	}()
	stdio := ExecIO{Stdout: fw.stream(frameStdout), Stderr: fw.stream(frameStderr), Resize: resize}
	if stdin {
		stdio.Stdin = stdinR
	}
	code, err := run(ctx, stdio)
	// Unblock a stdin write the command will never read.
	stdinR.CloseWithError(io.ErrClosedPipe)
	ef := exitFrame{Code: code}
	if err != nil {
		ef.Error, ef.Kind = err.Error(), KindOf(err)
	}
	b, _ := json.Marshal(ef)
	_ = fw.frame(frameExit, b)
	conn.Close()
}

// stdinQueue is how many stdin frames (of up to maxFrame bytes each) an exec or attach
// holds for a command that does not read them yet.
const stdinQueue = 16

// clientExec drives an exec over an upgraded connection (kip side).
func clientExec(ctx context.Context, conn io.ReadWriteCloser, opts ExecOptions, stdio ExecIO) (int, error) {
	fw := &frameWriter{w: conn}
	done := make(chan struct{})
	defer close(done)
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	if opts.Stdin && stdio.Stdin != nil {
		go func() {
			buf := make([]byte, 32<<10)
			for {
				n, err := stdio.Stdin.Read(buf)
				if n > 0 && fw.frame(frameStdin, buf[:n]) != nil {
					return
				}
				if err != nil {
					_ = fw.frame(frameStdinEOF, nil)
					return
				}
			}
		}()
	}
	if stdio.Resize != nil {
		go func() {
			for {
				select {
				case ts, ok := <-stdio.Resize:
					if !ok {
						return
					}
					b, _ := json.Marshal(ts)
					if fw.frame(frameResize, b) != nil {
						return
					}
				case <-done:
					return
				}
			}
		}()
	}
	for {
		kind, p, err := readFrame(conn)
		if err != nil {
			if ctx.Err() != nil {
				return -1, ctx.Err()
			}
			return -1, fmt.Errorf("reading exec stream: %w", err)
		}
		switch kind {
		case frameStdout:
			if stdio.Stdout != nil {
				_, _ = stdio.Stdout.Write(p)
			}
		case frameStderr:
			if stdio.Stderr != nil {
				_, _ = stdio.Stderr.Write(p)
			}
		case frameExit:
			var ef exitFrame
			if err := json.Unmarshal(p, &ef); err != nil {
				return -1, fmt.Errorf("decoding exit frame: %w", err)
			}
			if ef.Error != "" {
				return ef.Code, &Error{Kind: ef.Kind, Message: ef.Error}
			}
			return ef.Code, nil
		}
	}
}

// pipe copies both ways between a and b until either side ends, then closes both.
func pipe(a, b io.ReadWriteCloser) {
	var once sync.Once
	closeBoth := func() { a.Close(); b.Close() }
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(a, b); once.Do(closeBoth); done <- struct{}{} }()
	go func() { _, _ = io.Copy(b, a); once.Do(closeBoth); done <- struct{}{} }()
	<-done
	<-done
}
