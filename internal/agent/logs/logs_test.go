package logs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"

	"github.com/kip-dev/kip/internal/cellapi"
)

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 600000000, time.UTC)

func ptr[T any](v T) *T { return &v }

func newWriter(t *testing.T, path string, maxBytes int64, maxFiles int, clk *clocktesting.FakeClock) *Writer {
	t.Helper()
	w, err := NewWriterWithClock(path, maxBytes, maxFiles, clk)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	return w
}

func write(t *testing.T, w *Writer, stream, s string) {
	t.Helper()
	if _, err := w.Stream(stream).Write([]byte(s)); err != nil {
		t.Fatal(err)
	}
}

func TestWriterFormat(t *testing.T) {
	clk := clocktesting.NewFakeClock(t0)
	path := filepath.Join(t.TempDir(), "ctr", "0.log")
	w := newWriter(t, path, 0, 1, clk)
	write(t, w, Stdout, "hello\nwor")
	clk.Step(time.Second)
	write(t, w, Stderr, "oops\n")
	write(t, w, Stdout, "ld\n\n")
	long := strings.Repeat("x", MaxLineBytes+5)
	write(t, w, Stdout, long+"\n")
	write(t, w, Stderr, "unterminated")
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, err := w.Stream(Stdout).Write([]byte("late\n")); !errors.Is(err, os.ErrClosed) {
		t.Errorf("write after Close: %v, want os.ErrClosed", err)
	}
	if _, err := w.Stream("stdin").Write([]byte("x")); err == nil {
		t.Error("write to stream stdin succeeded")
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	ts0, ts1 := "2026-01-02T03:04:05.6Z", "2026-01-02T03:04:06.6Z"
	want := ts0 + " stdout F hello\n" +
		ts1 + " stderr F oops\n" +
		ts1 + " stdout F world\n" +
		ts1 + " stdout F \n" +
		ts1 + " stdout P " + long[:MaxLineBytes] + "\n" +
		ts1 + " stdout F xxxxx\n" +
		ts1 + " stderr P unterminated\n" // as the runtime writes it: no newline was written
	if string(got) != want {
		t.Errorf("log file:\n%s\nwant:\n%s", trunc(got), trunc([]byte(want)))
	}
	if _, err := os.Stat(path + doneSuffix); err != nil {
		t.Errorf("no done marker after Close: %v", err)
	}
}

func trunc(b []byte) string {
	return strings.ReplaceAll(string(b), strings.Repeat("x", 100), "x…")
}

func TestNewWriterErrors(t *testing.T) {
	dir := t.TempDir()
	open := newWriter(t, filepath.Join(dir, "open.log"), 0, 1, clocktesting.NewFakeClock(t0))
	_ = open
	tests := []struct {
		name     string
		path     string
		maxBytes int64
		maxFiles int
	}{
		{"empty path", "", 0, 1},
		{"negative maxBytes", filepath.Join(dir, "a.log"), -1, 1},
		{"zero maxFiles", filepath.Join(dir, "a.log"), 0, 0},
		{"already open", filepath.Join(dir, "open.log"), 0, 1},
		{"directory in the way", filepath.Join(dir, "open.log", "x.log"), 0, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if w, err := NewWriter(tt.path, tt.maxBytes, tt.maxFiles); err == nil {
				w.Close()
				t.Error("NewWriter succeeded, want an error")
			}
		})
	}
}

// lines writes n stdout lines "line-<i>", one second apart starting at t0.
func lines(t *testing.T, w *Writer, clk *clocktesting.FakeClock, from, n int) {
	t.Helper()
	for i := from; i < from+n; i++ {
		write(t, w, Stdout, fmt.Sprintf("line-%02d\n", i))
		clk.Step(time.Second)
	}
}

func TestRotation(t *testing.T) {
	tests := []struct {
		maxFiles  int
		wantFiles []string
	}{
		{1, []string{"0.log"}},
		{3, []string{"0.log", "0.log.1", "0.log.2"}},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprint("maxFiles=", tt.maxFiles), func(t *testing.T) {
			clk := clocktesting.NewFakeClock(t0)
			dir := t.TempDir()
			path := filepath.Join(dir, "0.log")
			// Each record is 39 bytes; 100 bytes hold two.
			w := newWriter(t, path, 100, tt.maxFiles, clk)
			lines(t, w, clk, 0, 20)
			w.Close()
			var got []string
			ents, _ := os.ReadDir(dir)
			for _, e := range ents {
				if e.Name() != "0.log.done" {
					got = append(got, e.Name())
				}
				if st, _ := e.Info(); st.Size() > 100 {
					t.Errorf("%s has %d bytes, over maxBytes", e.Name(), st.Size())
				}
			}
			if strings.Join(got, " ") != strings.Join(tt.wantFiles, " ") {
				t.Errorf("files %q, want %q", got, tt.wantFiles)
			}
			// Served in order across the kept files: the last 2*maxFiles lines.
			var buf bytes.Buffer
			if err := Serve(context.Background(), &buf, path, cellapi.LogOptions{}); err != nil {
				t.Fatal(err)
			}
			var want strings.Builder
			for i := 20 - 2*tt.maxFiles; i < 20; i++ {
				fmt.Fprintf(&want, "line-%02d\n", i)
			}
			if buf.String() != want.String() {
				t.Errorf("served %q, want %q", buf.String(), want.String())
			}
		})
	}
}

func TestServe(t *testing.T) {
	clk := clocktesting.NewFakeClock(t0)
	dir := t.TempDir()
	path := filepath.Join(dir, "0.log")
	// Rotated into 0.log.2, 0.log.1, 0.log: lines 0..9, a partial line and stderr.
	w := newWriter(t, path, 200, 5, clk)
	lines(t, w, clk, 0, 8)
	write(t, w, Stderr, "err-1\n")
	write(t, w, Stdout, strings.Repeat("p", MaxLineBytes)+"q\n") // P then F
	lines(t, w, clk, 8, 2)
	w.Close()
	// A line that does not parse is skipped.
	f, _ := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString("garbage\n")
	f.Close()
	longLine := strings.Repeat("p", MaxLineBytes) + "q\n"
	all := "line-00\nline-01\nline-02\nline-03\nline-04\nline-05\nline-06\nline-07\nerr-1\n" + longLine + "line-08\nline-09\n"
	ts := func(sec int) string { return t0.Add(time.Duration(sec) * time.Second).Format(time.RFC3339Nano) }

	tests := []struct {
		name    string
		opts    cellapi.LogOptions
		now     time.Time
		want    string
		invalid bool
	}{
		{name: "all", want: all},
		{name: "tail 2", opts: cellapi.LogOptions{TailLines: ptr[int64](2)}, want: "line-08\nline-09\n"},
		{name: "tail counts records", opts: cellapi.LogOptions{TailLines: ptr[int64](3)}, want: "q\nline-08\nline-09\n"},
		{name: "tail 0", opts: cellapi.LogOptions{TailLines: ptr[int64](0)}, want: ""},
		{name: "tail -1 is all", opts: cellapi.LogOptions{TailLines: ptr[int64](-1)}, want: all},
		{name: "tail more than there is", opts: cellapi.LogOptions{TailLines: ptr[int64](1000)}, want: all},
		{name: "since time", opts: cellapi.LogOptions{SinceTime: ptr(t0.Add(8 * time.Second))}, want: "err-1\n" + longLine + "line-08\nline-09\n"},
		{name: "since seconds", opts: cellapi.LogOptions{SinceSeconds: ptr[int64](2)}, now: t0.Add(11 * time.Second), want: "line-09\n"},
		{name: "since then tail", opts: cellapi.LogOptions{SinceTime: ptr(t0.Add(8 * time.Second)), TailLines: ptr[int64](1)}, want: "line-09\n"},
		{name: "timestamps", opts: cellapi.LogOptions{TailLines: ptr[int64](2), Timestamps: true}, want: ts(8) + " line-08\n" + ts(9) + " line-09\n"},
		{name: "limit bytes", opts: cellapi.LogOptions{LimitBytes: ptr[int64](12)}, want: "line-00\nline"},
		{name: "limit bytes exact", opts: cellapi.LogOptions{LimitBytes: ptr[int64](8)}, want: "line-00\n"},
		{name: "limit with tail", opts: cellapi.LogOptions{TailLines: ptr[int64](1), LimitBytes: ptr[int64](100)}, want: "line-09\n"},
		{name: "follow on a finished log", opts: cellapi.LogOptions{Follow: true, TailLines: ptr[int64](1)}, want: "line-09\n"},
		{name: "both since", opts: cellapi.LogOptions{SinceSeconds: ptr[int64](1), SinceTime: &t0}, invalid: true},
		{name: "zero since seconds", opts: cellapi.LogOptions{SinceSeconds: ptr[int64](0)}, invalid: true},
		{name: "zero limit", opts: cellapi.LogOptions{LimitBytes: ptr[int64](0)}, invalid: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			now := tt.now
			if now.IsZero() {
				now = t0.Add(time.Hour)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			var buf bytes.Buffer
			err := serve(ctx, &buf, path, tt.opts, now)
			if tt.invalid {
				if !cellapi.IsInvalid(err) {
					t.Errorf("error %v, want kind Invalid", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if ctx.Err() != nil {
				t.Fatal("Serve ran until the deadline")
			}
			if buf.String() != tt.want {
				t.Errorf("got\n%q\nwant\n%q", trunc(buf.Bytes()), trunc([]byte(tt.want)))
			}
		})
	}
}

func TestServeMissing(t *testing.T) {
	err := Serve(context.Background(), &bytes.Buffer{}, filepath.Join(t.TempDir(), "none.log"), cellapi.LogOptions{})
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("error %v, want fs.ErrNotExist", err)
	}
}

// syncBuffer is an io.Writer whose content tests can wait for.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
	ch  chan struct{}
}

func newSyncBuffer() *syncBuffer { return &syncBuffer{ch: make(chan struct{}, 1)} }

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	select {
	case b.ch <- struct{}{}:
	default:
	}
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// waitFor waits until the buffer holds want exactly, or fails after a deadline.
func (b *syncBuffer) waitFor(t *testing.T, want string) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for b.String() != want {
		select {
		case <-b.ch:
		case <-deadline:
			t.Fatalf("waiting for %q, have %q", want, b.String())
		}
	}
}

// serveAsync runs Serve in the background and returns a channel with its result.
func serveAsync(ctx context.Context, w *syncBuffer, path string, opts cellapi.LogOptions) <-chan error {
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, w, path, opts) }()
	return done
}

func waitDone(t *testing.T, done <-chan error) {
	t.Helper()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return")
	}
}

func TestFollowLiveWriter(t *testing.T) {
	for _, rotate := range []bool{false, true} {
		t.Run(fmt.Sprint("rotate=", rotate), func(t *testing.T) {
			clk := clocktesting.NewFakeClock(t0)
			path := filepath.Join(t.TempDir(), "0.log")
			maxBytes := int64(0)
			if rotate {
				maxBytes = 50 // one record per file
			}
			w := newWriter(t, path, maxBytes, 3, clk)
			write(t, w, Stdout, "before\n")
			out := newSyncBuffer()
			done := serveAsync(context.Background(), out, path, cellapi.LogOptions{Follow: true})
			out.waitFor(t, "before\n")
			want := "before\n"
			for i := range 5 {
				write(t, w, Stdout, fmt.Sprintf("live-%d\n", i))
				want += fmt.Sprintf("live-%d\n", i)
				out.waitFor(t, want)
			}
			write(t, w, Stderr, "partial")
			select {
			case err := <-done:
				t.Fatalf("Serve returned %v while the writer is open", err)
			default:
			}
			w.Close()
			waitDone(t, done)
			// The unterminated last line comes back as written, without a newline.
			if got := out.String(); got != want+"partial" {
				t.Errorf("followed %q, want %q", got, want+"partial")
			}
		})
	}
}

func TestFollowFileOfAnotherProcess(t *testing.T) {
	path := filepath.Join(t.TempDir(), "0.log")
	rec := func(s string) string { return t0.Format(time.RFC3339Nano) + " stdout F " + s + "\n" }
	if err := os.WriteFile(path, []byte(rec("old")), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	out := newSyncBuffer()
	done := serveAsync(ctx, out, path, cellapi.LogOptions{Follow: true})
	out.waitFor(t, "old\n")
	// Another process appends, a record in two writes: only whole records are served.
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r := rec("new")
	f.WriteString(r[:10])
	f.WriteString(r[10:])
	out.waitFor(t, "old\nnew\n")
	cancel()
	waitDone(t, done)

	// A done marker ends following.
	done = serveAsync(context.Background(), newSyncBuffer(), path, cellapi.LogOptions{Follow: true})
	if err := os.WriteFile(path+doneSuffix, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	waitDone(t, done)
}

func TestFollowRemovedLog(t *testing.T) {
	path := filepath.Join(t.TempDir(), "0.log")
	os.WriteFile(path, []byte(t0.Format(time.RFC3339Nano)+" stdout F x\n"), 0o644)
	out := newSyncBuffer()
	done := serveAsync(context.Background(), out, path, cellapi.LogOptions{Follow: true})
	out.waitFor(t, "x\n")
	os.Remove(path)
	waitDone(t, done)
}

func TestRunPathAndPrune(t *testing.T) {
	dir := t.TempDir()
	for run := range 4 {
		p := RunPath(dir, run)
		for _, name := range []string{p, p + ".1", p + doneSuffix} {
			os.WriteFile(name, nil, 0o644)
		}
	}
	os.WriteFile(filepath.Join(dir, "other"), nil, 0o644)
	if err := Prune(dir, 2); err != nil {
		t.Fatal(err)
	}
	var got []string
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		got = append(got, e.Name())
	}
	want := "2.log 2.log.1 2.log.done 3.log 3.log.1 3.log.done other"
	if strings.Join(got, " ") != want {
		t.Errorf("after Prune: %q, want %q", strings.Join(got, " "), want)
	}
	if err := Prune(filepath.Join(dir, "missing"), 1); err == nil {
		t.Error("Prune of a missing directory succeeded")
	}
}

func TestWriterConcurrent(t *testing.T) {
	path := filepath.Join(t.TempDir(), "0.log")
	w := newWriter(t, path, 4096, 100, clocktesting.NewFakeClock(t0))
	var wg sync.WaitGroup
	for g := range 8 {
		stream := []string{Stdout, Stderr}[g%2]
		wg.Go(func() {
			for i := range 100 {
				// Split writes of one line interleave with other goroutines'.
				fmt.Fprintf(w.Stream(stream), "g%d-", g)
				fmt.Fprintf(w.Stream(stream), "%03d\n", i)
			}
		})
	}
	wg.Wait()
	w.Close()
	var buf bytes.Buffer
	if err := Serve(context.Background(), &buf, path, cellapi.LogOptions{}); err != nil {
		t.Fatal(err)
	}
	got := strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n")
	if len(got) != 800 {
		t.Fatalf("served %d lines, want 800", len(got))
	}
}
