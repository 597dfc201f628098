package logs

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"time"

	"k8s.io/utils/clock"
)

// Writer writes one container run's log file, rotating it by size. Both streams go into the
// same file; records are written whole and in order.
type Writer struct {
	path     string
	maxBytes int64
	maxFiles int
	clock    clock.PassiveClock
	note     *notifier

	mu      sync.Mutex
	f       *os.File
	size    int64
	closed  bool
	streams map[string]*stream
	buf     []byte
}

// NewWriter opens (appending) the log at path, creating its directory; when the file would
// grow past maxBytes (0: never) it is rotated to path.1, path.2 ... keeping at most maxFiles
// files in all, the current one included.
func NewWriter(path string, maxBytes int64, maxFiles int) (*Writer, error) {
	return NewWriterWithClock(path, maxBytes, maxFiles, clock.RealClock{})
}

// NewWriterWithClock is NewWriter with the clock that stamps records.
func NewWriterWithClock(path string, maxBytes int64, maxFiles int, clk clock.PassiveClock) (*Writer, error) {
	switch {
	case path == "":
		return nil, errors.New("opening log: path is empty")
	case maxBytes < 0:
		return nil, fmt.Errorf("opening log %s: maxBytes %d is negative", path, maxBytes)
	case maxFiles < 1:
		return nil, fmt.Errorf("opening log %s: maxFiles %d must be at least 1", path, maxFiles)
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("opening log %s: %w", path, err)
	}
	w := &Writer{path: abs, maxBytes: maxBytes, maxFiles: maxFiles, clock: clk, note: newNotifier(), streams: map[string]*stream{}}
	if _, loaded := live.LoadOrStore(abs, w.note); loaded {
		return nil, fmt.Errorf("opening log %s: another writer has it open", path)
	}
	if err := w.open(); err != nil {
		live.Delete(abs)
		return nil, err
	}
	// Reopened for appending: the run is not complete any more.
	if err := os.Remove(abs + doneSuffix); err != nil && !errors.Is(err, os.ErrNotExist) {
		w.f.Close()
		live.Delete(abs)
		return nil, fmt.Errorf("opening log %s: removing done marker: %w", path, err)
	}
	return w, nil
}

func (w *Writer) open() error {
	if err := os.MkdirAll(filepath.Dir(w.path), 0o755); err != nil {
		return fmt.Errorf("opening log %s: %w", w.path, err)
	}
	f, err := os.OpenFile(w.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return fmt.Errorf("opening log %s: %w", w.path, err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("opening log %s: %w", w.path, err)
	}
	w.f, w.size = f, st.Size()
	return nil
}

// Stream returns the writer for one stream, Stdout or Stderr; for any other name a writer
// whose writes fail. Output is split into lines; a line longer than MaxLineBytes is written
// as partial records, and an unterminated last line is written, as a partial record, when
// the Writer closes.
func (w *Writer) Stream(name string) io.Writer {
	if name != Stdout && name != Stderr {
		return errWriter{fmt.Errorf("log stream %q: want %s or %s", name, Stdout, Stderr)}
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	s, ok := w.streams[name]
	if !ok {
		s = &stream{w: w, name: name}
		w.streams[name] = s
	}
	return s
}

type errWriter struct{ err error }

func (e errWriter) Write([]byte) (int, error) { return 0, e.err }

type stream struct {
	w       *Writer
	name    string
	pending []byte
}

func (s *stream) Write(p []byte) (int, error) {
	w := s.w
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return 0, fmt.Errorf("writing log %s: %w", w.path, os.ErrClosed)
	}
	now := w.clock.Now()
	s.pending = append(s.pending, p...)
	for {
		i := indexNewline(s.pending)
		if i < 0 {
			break
		}
		if err := w.writeLine(now, s.name, s.pending[:i]); err != nil {
			return 0, err
		}
		s.pending = s.pending[i+1:]
	}
	for len(s.pending) >= MaxLineBytes {
		if err := w.writeRecord(now, s.name, tagPartial, s.pending[:MaxLineBytes]); err != nil {
			return 0, err
		}
		s.pending = s.pending[MaxLineBytes:]
	}
	if len(s.pending) == 0 {
		s.pending = nil
	}
	w.note.notify()
	return len(p), nil
}

func indexNewline(b []byte) int {
	for i, c := range b {
		if c == '\n' {
			return i
		}
	}
	return -1
}

// writeLine writes one complete line, split into partial records when long.
func (w *Writer) writeLine(now time.Time, stream string, line []byte) error {
	for len(line) > MaxLineBytes {
		if err := w.writeRecord(now, stream, tagPartial, line[:MaxLineBytes]); err != nil {
			return err
		}
		line = line[MaxLineBytes:]
	}
	return w.writeRecord(now, stream, tagFull, line)
}

// writeRecord appends one record, rotating first when it would not fit. Callers hold mu.
func (w *Writer) writeRecord(now time.Time, stream, tag string, content []byte) error {
	w.buf = now.UTC().AppendFormat(w.buf[:0], time.RFC3339Nano)
	w.buf = append(w.buf, ' ')
	w.buf = append(w.buf, stream...)
	w.buf = append(w.buf, ' ')
	w.buf = append(w.buf, tag...)
	w.buf = append(w.buf, ' ')
	w.buf = append(w.buf, content...)
	w.buf = append(w.buf, '\n')
	if w.maxBytes > 0 && w.size > 0 && w.size+int64(len(w.buf)) > w.maxBytes {
		if err := w.rotate(); err != nil {
			return err
		}
	}
	n, err := w.f.Write(w.buf)
	w.size += int64(n)
	if err != nil {
		return fmt.Errorf("writing log %s: %w", w.path, err)
	}
	return nil
}

// rotate shifts path.N to path.N+1 (dropping the oldest) and path to path.1, then starts a
// new path. Callers hold mu.
func (w *Writer) rotate() error {
	if err := w.f.Close(); err != nil {
		return fmt.Errorf("rotating log %s: %w", w.path, err)
	}
	if w.maxFiles == 1 {
		if err := os.Remove(w.path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("rotating log %s: %w", w.path, err)
		}
	} else {
		// Drop any file beyond the new limit, then shift.
		olds, _ := files(w.path)
		for _, p := range olds {
			if p == w.path {
				continue
			}
			if n, err := strconv.Atoi(p[len(w.path)+1:]); err == nil && n >= w.maxFiles-1 {
				os.Remove(p)
			}
		}
		for i := w.maxFiles - 2; i >= 1; i-- {
			from := w.path + "." + strconv.Itoa(i)
			if err := os.Rename(from, w.path+"."+strconv.Itoa(i+1)); err != nil && !errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("rotating log %s: %w", w.path, err)
			}
		}
		if err := os.Rename(w.path, w.path+".1"); err != nil {
			return fmt.Errorf("rotating log %s: %w", w.path, err)
		}
	}
	return w.open()
}

// Close writes any unterminated last lines (stdout first), closes the file, marks the log
// complete with <path>.done and wakes followers. Closing twice is a no-op.
func (w *Writer) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return nil
	}
	w.closed = true
	defer live.Delete(w.path)
	defer w.note.notify()
	now := w.clock.Now()
	names := make([]string, 0, len(w.streams))
	for n := range w.streams {
		names = append(names, n)
	}
	sort.Strings(names)
	var errs []error
	for _, n := range names {
		// An unterminated last line is a partial record, as the container runtime writes
		// it: readers then give it back without a newline the container never wrote.
		if s := w.streams[n]; len(s.pending) > 0 {
			errs = append(errs, w.writeRecord(now, n, tagPartial, s.pending))
			s.pending = nil
		}
	}
	errs = append(errs, w.f.Close())
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("closing log %s: %w", w.path, err)
	}
	if err := os.WriteFile(w.path+doneSuffix, nil, 0o640); err != nil {
		return fmt.Errorf("closing log %s: marking it done: %w", w.path, err)
	}
	return nil
}
