package provider

import (
	"bytes"
	"context"
	"io"
	"net"
	"strings"
	"testing"

	"github.com/virtual-kubelet/virtual-kubelet/errdefs"
	"github.com/virtual-kubelet/virtual-kubelet/node/api"
	utilexec "k8s.io/utils/exec"

	"github.com/kip-dev/kip/internal/cellapi"
)

// streamingAgent adds cellapi.Streamer to fakeAgent: exec echoes its command and stdin and
// exits with the code in exitCodes; port-forward echoes bytes back.
type streamingAgent struct {
	fakeAgent
	gotOpts   cellapi.ExecOptions
	gotPort   int32
	exitCodes map[string]int
}

func (a *streamingAgent) Exec(_ context.Context, container string, opts cellapi.ExecOptions, stdio cellapi.ExecIO) (int, error) {
	a.gotOpts = opts
	if container != "app" {
		return -1, cellapi.Errorf(cellapi.KindNotFound, "no running container %s", container)
	}
	if stdio.Stdout != nil {
		io.WriteString(stdio.Stdout, strings.Join(opts.Command, " ")+"\n")
	}
	if opts.Stdin && stdio.Stdin != nil {
		b, _ := io.ReadAll(stdio.Stdin)
		if stdio.Stderr != nil {
			stdio.Stderr.Write(b)
		}
	}
	return a.exitCodes[opts.Command[0]], nil
}

func (a *streamingAgent) PortForward(_ context.Context, port int32, conn io.ReadWriteCloser) error {
	a.gotPort = port
	defer conn.Close()
	_, err := io.Copy(conn, conn)
	return err
}

type attachIO struct {
	stdin          io.Reader
	stdout, stderr io.WriteCloser
	tty            bool
	resize         chan api.TermSize
}

func (a attachIO) Stdin() io.Reader            { return a.stdin }
func (a attachIO) Stdout() io.WriteCloser      { return a.stdout }
func (a attachIO) Stderr() io.WriteCloser      { return a.stderr }
func (a attachIO) TTY() bool                   { return a.tty }
func (a attachIO) Resize() <-chan api.TermSize { return a.resize }

type nopCloser struct{ *bytes.Buffer }

func (nopCloser) Close() error { return nil }

func TestRunInContainer(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name       string
		cmd        []string
		stdin      string
		wantOut    string
		wantErrOut string
		wantCode   int
		wantErr    func(error) bool
	}{
		{name: "exit 0", cmd: []string{"echo", "hi"}, wantOut: "echo hi\n"},
		{name: "stdin", cmd: []string{"cat"}, stdin: "typed", wantOut: "cat\n", wantErrOut: "typed"},
		{name: "non-zero exit keeps its code", cmd: []string{"false"}, wantOut: "false\n", wantCode: 3},
		{name: "no command", cmd: nil, wantErr: errdefs.IsInvalidInput},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := newFakeCells(runningPod("ns", "web", "app"))
			agent := &streamingAgent{exitCodes: map[string]int{"false": 3}}
			c.agentsAny = map[string]cellapi.Agent{"ns/web": agent}
			p, _ := newTestProvider(t, c)
			var out, errOut bytes.Buffer
			aio := attachIO{stdout: nopCloser{&out}, stderr: nopCloser{&errOut}}
			if tc.stdin != "" {
				aio.stdin = strings.NewReader(tc.stdin)
			}
			err := p.RunInContainer(ctx, "ns", "web", "app", tc.cmd, aio)
			switch {
			case tc.wantErr != nil:
				if !tc.wantErr(err) {
					t.Fatalf("error %v", err)
				}
				return
			case tc.wantCode != 0:
				// The kubelet API type-asserts (not errors.As) the exit error.
				ee, ok := err.(utilexec.ExitError)
				if !ok || !ee.Exited() || ee.ExitStatus() != tc.wantCode {
					t.Fatalf("error %#v; want an unwrapped exit error with code %d", err, tc.wantCode)
				}
			case err != nil:
				t.Fatal(err)
			}
			if out.String() != tc.wantOut || errOut.String() != tc.wantErrOut {
				t.Errorf("stdout %q stderr %q; want %q, %q", out.String(), errOut.String(), tc.wantOut, tc.wantErrOut)
			}
			if agent.gotOpts.Stdin != (tc.stdin != "") {
				t.Errorf("agent's Stdin option %v", agent.gotOpts.Stdin)
			}
		})
	}

	// An agent that cannot stream.
	c := newFakeCells(runningPod("ns", "web", "app"))
	c.agents["ns/web"] = &fakeAgent{}
	p, _ := newTestProvider(t, c)
	if err := p.RunInContainer(ctx, "ns", "web", "app", []string{"sh"}, attachIO{}); !errdefs.IsInvalidInput(err) {
		t.Errorf("exec through a non-streaming agent: %v", err)
	}
}

func TestPortForward(t *testing.T) {
	c := newFakeCells(runningPod("ns", "web", "app"))
	agent := &streamingAgent{}
	c.agentsAny = map[string]cellapi.Agent{"ns/web": agent}
	p, _ := newTestProvider(t, c)
	local, remote := net.Pipe()
	done := make(chan error, 1)
	go func() { done <- p.PortForward(context.Background(), "ns", "web", 8080, remote) }()
	if _, err := local.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(local, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("echo %q, %v", buf, err)
	}
	local.Close()
	if err := <-done; err != nil {
		t.Errorf("PortForward: %v", err)
	}
	if agent.gotPort != 8080 {
		t.Errorf("agent got port %d", agent.gotPort)
	}
}
