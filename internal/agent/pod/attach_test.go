package pod

import (
	"bytes"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/kip-dev/kip/internal/cellapi"
)

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}
func (l *lockedBuffer) String() string { l.mu.Lock(); defer l.mu.Unlock(); return l.b.String() }

// readStdin reads what the process would, up to EOF or timeout.
func readStdin(t *testing.T, a *attachable, n int) (string, bool) {
	t.Helper()
	type res struct {
		s   string
		eof bool
	}
	ch := make(chan res, 1)
	go func() {
		buf := make([]byte, 64)
		var got []byte
		for len(got) < n {
			k, err := a.stdinR.Read(buf)
			got = append(got, buf[:k]...)
			if err != nil {
				ch <- res{string(got), true}
				return
			}
		}
		_, err := a.stdinR.Read(buf[:1]) // EOF now, or blocks while the pipe stays open
		ch <- res{string(got), err == io.EOF}
	}()
	select {
	case r := <-ch:
		return r.s, r.eof
	case <-time.After(300 * time.Millisecond):
		return "", false
	}
}

func TestAttachStdinOnce(t *testing.T) {
	tests := []struct {
		name      string
		stdinOnce bool
		// wantEOF: the process reads EOF after the client's input; wantReturn: the attach ends
		// with the client's input rather than with the run.
		wantEOF, wantReturn bool
	}{
		{name: "stdinOnce closes stdin and streams on", stdinOnce: true, wantEOF: true, wantReturn: false},
		{name: "stdin stays open for the next attach", stdinOnce: false, wantEOF: false, wantReturn: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a, err := newAttachable(&corev1.Container{Name: "app", Stdin: true, StdinOnce: tc.stdinOnce})
			if err != nil {
				t.Fatal(err)
			}
			defer a.end()
			var logOut, clientOut lockedBuffer
			rio := a.io(&logOut, io.Discard)
			done := make(chan struct{})
			go func() {
				a.attach(t.Context(), cellapi.AttachOptions{Stdin: true}, cellapi.ExecIO{Stdin: strings.NewReader("hello\n"), Stdout: &clientOut})
				close(done)
			}()
			got, eof := readStdin(t, a, len("hello\n"))
			if tc.wantEOF && (got != "hello\n" || !eof) {
				t.Fatalf("process read %q (EOF %v), want hello and EOF", got, eof)
			}
			if !tc.wantEOF && eof {
				t.Fatal("process read EOF; stdin must stay open without stdinOnce")
			}
			returned := false
			select {
			case <-done:
				returned = true
			case <-time.After(200 * time.Millisecond):
			}
			if returned != tc.wantReturn {
				t.Fatalf("attach returned with the client's EOF: %v, want %v", returned, tc.wantReturn)
			}
			if !returned {
				io.WriteString(rio.Stdout, "got:hello\n")
				a.end()
				<-done
				if clientOut.String() != "got:hello\n" {
					t.Fatalf("client got %q", clientOut.String())
				}
			}
			if !returned && logOut.String() != "got:hello\n" {
				t.Fatalf("log got %q", logOut.String())
			}
		})
	}
}
