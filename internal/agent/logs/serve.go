package logs

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/kip-dev/kip/internal/cellapi"
)

// pollInterval is how often a follower checks a log that no Writer in this process has open
// (a log left by an earlier agent run).
const pollInterval = 100 * time.Millisecond

// Serve writes the log at path, its rotated files first, to w as opts ask, the way kubelet
// serves `kubectl logs`:
//   - the content of each record, or with Timestamps "<RFC3339Nano time> <content>";
//   - SinceTime / SinceSeconds (relative to now) drop older records, then TailLines keeps the
//     last records (a negative TailLines means all);
//   - LimitBytes stops the output after that many bytes;
//   - Follow keeps streaming new records until ctx ends, the log's Writer is closed (its
//     done marker appears), or the log is removed. A follower of a Writer in this process is
//     woken by it; a log written by another process is polled every 100ms.
//
// Previous is the caller's business (it picks the path). Serve returns nil when the output
// ended as asked (ctx ending included); a log that does not exist gives an error wrapping
// fs.ErrNotExist, invalid options an error of kind cellapi.KindInvalid naming the field.
func Serve(ctx context.Context, w io.Writer, path string, opts cellapi.LogOptions) error {
	return serve(ctx, w, path, opts, time.Now())
}

var errLimit = errors.New("limitBytes reached")

func serve(ctx context.Context, w io.Writer, path string, opts cellapi.LogOptions, now time.Time) error {
	var since time.Time
	switch {
	case opts.SinceTime != nil && opts.SinceSeconds != nil:
		return cellapi.Errorf(cellapi.KindInvalid, "log options: at most one of sinceSeconds and sinceTime may be set")
	case opts.SinceSeconds != nil && *opts.SinceSeconds < 1:
		return cellapi.Errorf(cellapi.KindInvalid, "log options: sinceSeconds must be at least 1, got %d", *opts.SinceSeconds)
	case opts.SinceSeconds != nil:
		since = now.Add(-time.Duration(*opts.SinceSeconds) * time.Second)
	case opts.SinceTime != nil:
		since = *opts.SinceTime
	}
	if opts.LimitBytes != nil && *opts.LimitBytes < 1 {
		return cellapi.Errorf(cellapi.KindInvalid, "log options: limitBytes must be at least 1, got %d", *opts.LimitBytes)
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return fmt.Errorf("serving log %s: %w", path, err)
	}
	out := &output{w: w, timestamps: opts.Timestamps, remaining: -1}
	if opts.LimitBytes != nil {
		out.remaining = *opts.LimitBytes
	}
	if f, ok := w.(interface{ Flush() }); ok {
		out.flush = f.Flush
	}
	s := &server{path: abs, out: out, since: since}
	if opts.TailLines != nil && *opts.TailLines >= 0 {
		s.tail = &ring{max: int(*opts.TailLines)}
	}
	err = s.run(ctx, opts.Follow)
	if errors.Is(err, errLimit) {
		return nil
	}
	return err
}

type server struct {
	path  string
	out   *output
	since time.Time
	tail  *ring // nil: no tail
}

func (s *server) run(ctx context.Context, follow bool) error {
	// Subscribe before reading so no change between the read and the wait is missed.
	changed := s.changed()
	names, err := files(s.path)
	if err != nil {
		return err
	}
	if len(names) == 0 {
		return fmt.Errorf("serving log %s: %w", s.path, fs.ErrNotExist)
	}
	var cur *tailer
	for i, name := range names {
		t, err := openTailer(name)
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				continue // rotated away meanwhile
			}
			return err
		}
		if err := s.drain(t); err != nil {
			t.close()
			return err
		}
		if i == len(names)-1 && name == s.path {
			cur = t
		} else {
			t.close()
		}
	}
	if s.tail != nil {
		for _, r := range s.tail.records() {
			if err := s.out.write(r); err != nil {
				return err
			}
		}
		s.tail = nil
	}
	s.out.doFlush()
	if !follow {
		if cur != nil {
			cur.close()
		}
		return nil
	}
	if cur == nil {
		// Only rotated files exist: the current file is being recreated.
		if cur, err = openTailer(s.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	defer func() {
		if cur != nil {
			cur.close()
		}
	}()
	ticker := time.NewTicker(pollInterval)
	defer ticker.Stop()
	for {
		done := s.done()
		if cur != nil {
			if err := s.drain(cur); err != nil {
				return err
			}
			// Rotated: finish the old file, continue with the new one.
			if rotated, err := cur.replaced(s.path); err != nil {
				return err
			} else if rotated {
				// The writer closed the old file before renaming it: read its last records.
				if err := s.drain(cur); err != nil {
					return err
				}
				next, err := openTailer(s.path)
				if err != nil && !errors.Is(err, fs.ErrNotExist) {
					return err
				}
				cur.close()
				cur = next
				continue
			}
		} else if next, err := openTailer(s.path); err == nil {
			cur = next
			continue
		}
		s.out.doFlush()
		if done {
			return nil
		}
		if _, err := os.Stat(s.path); errors.Is(err, fs.ErrNotExist) && !s.isLive() {
			if names, _ := files(s.path); len(names) == 0 {
				return nil // the log was removed
			}
		}
		// A live writer wakes us; a log nobody here writes is polled.
		var tick <-chan time.Time
		if changed == nil {
			tick = ticker.C
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		case <-tick:
		}
		changed = s.changed()
	}
}

// changed returns a channel closed when the live writer of the log changes it; nil (never
// ready) when no writer in this process has it open.
func (s *server) changed() <-chan struct{} {
	if n, ok := live.Load(s.path); ok {
		return n.(*notifier).changed()
	}
	return nil
}

func (s *server) isLive() bool {
	_, ok := live.Load(s.path)
	return ok
}

// done reports whether the log's writer has been closed.
func (s *server) done() bool {
	_, err := os.Stat(s.path + doneSuffix)
	return err == nil
}

// drain writes every complete record t has, skipping lines that do not parse.
func (s *server) drain(t *tailer) error {
	for {
		line, err := t.next()
		if err != nil {
			return err
		}
		if line == nil {
			return nil
		}
		r, err := parseRecord(line)
		if err != nil {
			continue
		}
		if !s.since.IsZero() && r.time.Before(s.since) {
			continue
		}
		if s.tail != nil {
			s.tail.add(r)
			continue
		}
		if err := s.out.write(r); err != nil {
			return err
		}
	}
}

// tailer reads complete lines from a file that may still be growing.
type tailer struct {
	f       *os.File
	br      *bufio.Reader
	pending []byte
}

func openTailer(path string) (*tailer, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("opening log %s: %w", path, err)
	}
	return &tailer{f: f, br: bufio.NewReaderSize(f, 64*1024)}, nil
}

// next returns the next complete line without its newline, or nil at the current end.
func (t *tailer) next() ([]byte, error) {
	for {
		b, err := t.br.ReadSlice('\n')
		switch {
		case err == nil && len(t.pending) == 0:
			return b[:len(b)-1], nil
		case err == nil:
			t.pending = append(t.pending, b...)
			line := t.pending[:len(t.pending)-1]
			t.pending = nil
			return line, nil
		case errors.Is(err, bufio.ErrBufferFull):
			t.pending = append(t.pending, b...)
		case errors.Is(err, io.EOF):
			// A record still being written: keep its start for the next call.
			t.pending = append(t.pending, b...)
			return nil, nil
		default:
			return nil, fmt.Errorf("reading log %s: %w", t.f.Name(), err)
		}
	}
}

// replaced reports whether path now names a different file than the one t reads.
func (t *tailer) replaced(path string) (bool, error) {
	st, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("inspecting log %s: %w", path, err)
	}
	mine, err := t.f.Stat()
	if err != nil {
		return false, fmt.Errorf("inspecting log %s: %w", t.f.Name(), err)
	}
	return !os.SameFile(st, mine), nil
}

func (t *tailer) close() { t.f.Close() }

// ring keeps the last max records.
type ring struct {
	max  int
	buf  []record
	next int
	full bool
}

func (r *ring) add(rec record) {
	if r.max == 0 {
		return
	}
	rec.content = append([]byte(nil), rec.content...) // the tailer reuses its buffer
	if len(r.buf) < r.max {
		r.buf = append(r.buf, rec)
		return
	}
	r.buf[r.next] = rec
	r.next = (r.next + 1) % r.max
	r.full = true
}

func (r *ring) records() []record {
	if !r.full {
		return r.buf
	}
	return append(append([]record(nil), r.buf[r.next:]...), r.buf[:r.next]...)
}

// output formats records as kubelet does and enforces limitBytes.
type output struct {
	w          io.Writer
	timestamps bool
	remaining  int64 // -1: unlimited
	flush      func()
	buf        []byte
}

func (o *output) write(r record) error {
	o.buf = o.buf[:0]
	if o.timestamps {
		o.buf = r.time.UTC().AppendFormat(o.buf, time.RFC3339Nano)
		o.buf = append(o.buf, ' ')
	}
	o.buf = append(o.buf, r.content...)
	if r.full {
		o.buf = append(o.buf, '\n')
	}
	b := o.buf
	if o.remaining >= 0 && int64(len(b)) > o.remaining {
		b = b[:o.remaining]
	}
	if _, err := o.w.Write(b); err != nil {
		return fmt.Errorf("writing log output: %w", err)
	}
	if o.remaining >= 0 {
		o.remaining -= int64(len(b))
		if o.remaining == 0 {
			o.doFlush()
			return errLimit
		}
	}
	return nil
}

func (o *output) doFlush() {
	if o.flush != nil {
		o.flush()
	}
}
