package cellapi

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"testing"
	"time"
)

// TestServeStreamResizeNotBehindStdin: a command that waits for its terminal size before
// reading stdin gets the size even when the client sent stdin first (kubectl attach -it
// sends both at once, in either order). The stream used to deliver stdin and resizes from one
// loop, which blocked on the stdin nobody read yet.
func TestServeStreamResizeNotBehindStdin(t *testing.T) {
	in := rawFrames(
		frame{frameStdin, []byte("hello\n")},
		frame{frameResize, []byte(`{"width":100,"height":30}`)},
		frame{frameStdinEOF, nil},
	)
	c := &conn{Reader: io.MultiReader(bytes.NewReader(in), blockUntilClosed(t))}
	serveStream(context.Background(), true, c, func(ctx context.Context, stdio ExecIO) (int, error) {
		select {
		case ts := <-stdio.Resize:
			b, _ := json.Marshal(ts)
			stdio.Stdout.Write(append(b, ' '))
		case <-time.After(10 * time.Second): // a hang guard, not a timing assertion
			t.Fatal("the resize frame never reached the command: it waits behind unread stdin")
		}
		_, err := io.Copy(stdio.Stdout, stdio.Stdin)
		return 0, err
	})
	out, _ := frames(&c.out)
	var stdout bytes.Buffer
	for _, f := range out {
		if f.kind == frameStdout {
			stdout.Write(f.payload)
		}
	}
	if want := `{"width":100,"height":30} hello` + "\n"; stdout.String() != want {
		t.Fatalf("stdout %q, want %q", stdout.String(), want)
	}
}

// blockUntilClosed is a reader that blocks until the test ends: a client that stays
// connected.
func blockUntilClosed(t *testing.T) io.Reader {
	r, w := io.Pipe()
	t.Cleanup(func() { w.Close() })
	return r
}
