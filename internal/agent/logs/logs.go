// Package logs writes container output in kubelet's CRI log format and serves it back the way
// kubelet does for `kubectl logs` (tail, since, timestamps, limitBytes, follow).
//
// Every record is one line "<RFC3339Nano time> <stdout|stderr> <F|P> <content>\n": F ends a
// line of output, P is a piece of a longer line (or of a line still being written) that the
// next record continues. A log is one file per container run; the agent keeps the previous
// run's file so `kubectl logs --previous` works (RunPath names them, Prune drops older runs).
// A file grows to maxBytes and is then rotated to <path>.1, <path>.2, ... When the writer
// is closed it creates <path>.done, which tells followers (in this process or, by polling,
// in a later one) that the run's output is complete.
package logs

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

const (
	// Stdout and Stderr are the stream names a Writer accepts.
	Stdout = "stdout"
	Stderr = "stderr"

	tagFull    = "F"
	tagPartial = "P"

	// doneSuffix marks a log whose writer was closed.
	doneSuffix = ".done"

	// MaxLineBytes is the longest content one record carries; longer output lines are split
	// into P records (as containerd does at 16 KiB).
	MaxLineBytes = 16 * 1024
)

// RunPath returns the log file of one container run in the container's log directory, as
// kubelet names them: "<dir>/<restartCount>.log".
func RunPath(containerDir string, restartCount int) string {
	return filepath.Join(containerDir, strconv.Itoa(restartCount)+".log")
}

// Prune removes the logs (rotated files and markers included) of every run in containerDir
// older than keepFrom, so a container keeps only its current and previous runs.
func Prune(containerDir string, keepFrom int) error {
	ents, err := os.ReadDir(containerDir)
	if err != nil {
		return fmt.Errorf("pruning logs in %s: %w", containerDir, err)
	}
	var errs []error
	for _, e := range ents {
		run, _, ok := strings.Cut(e.Name(), ".log")
		n, err := strconv.Atoi(run)
		if !ok || err != nil || n >= keepFrom {
			continue
		}
		if err := os.Remove(filepath.Join(containerDir, e.Name())); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("pruning logs in %s: %w", containerDir, err)
	}
	return nil
}

// files returns the log's files, oldest first: <path>.N ... <path>.1, then <path> itself
// (when it exists).
func files(path string) ([]string, error) {
	matches, err := filepath.Glob(globEscape(path) + ".*")
	if err != nil {
		return nil, fmt.Errorf("listing rotated logs of %s: %w", path, err)
	}
	type rotated struct {
		n    int
		path string
	}
	var rs []rotated
	for _, m := range matches {
		n, err := strconv.Atoi(strings.TrimPrefix(m, path+"."))
		if err == nil && n > 0 {
			rs = append(rs, rotated{n, m})
		}
	}
	sort.Slice(rs, func(i, j int) bool { return rs[i].n > rs[j].n })
	out := make([]string, 0, len(rs)+1)
	for _, r := range rs {
		out = append(out, r.path)
	}
	if _, err := os.Stat(path); err == nil {
		out = append(out, path)
	}
	return out, nil
}

func globEscape(p string) string {
	var b strings.Builder
	for _, r := range p {
		if strings.ContainsRune(`*?[\`, r) {
			b.WriteRune('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}

// record is one parsed log line.
type record struct {
	time    time.Time
	stream  string
	full    bool
	content []byte
}

// parseRecord parses "<time> <stream> <tag> <content>".
func parseRecord(line []byte) (record, error) {
	var r record
	ts, rest, ok := bytes.Cut(line, []byte(" "))
	if !ok {
		return r, errors.New("missing stream")
	}
	t, err := time.Parse(time.RFC3339Nano, string(ts))
	if err != nil {
		return r, fmt.Errorf("parsing time: %w", err)
	}
	stream, rest, ok := bytes.Cut(rest, []byte(" "))
	if !ok || (string(stream) != Stdout && string(stream) != Stderr) {
		return r, fmt.Errorf("bad stream %q", stream)
	}
	tag, content, ok := bytes.Cut(rest, []byte(" "))
	if !ok {
		// A record may end right after the tag (empty partial content).
		tag, content = rest, nil
	}
	first, _, _ := strings.Cut(string(tag), ":")
	if first != tagFull && first != tagPartial {
		return r, fmt.Errorf("bad tag %q", tag)
	}
	return record{time: t, stream: string(stream), full: first == tagFull, content: content}, nil
}

// notifier wakes followers when a live writer appends, rotates or closes.
type notifier struct {
	mu sync.Mutex
	ch chan struct{}
}

func newNotifier() *notifier { return &notifier{ch: make(chan struct{})} }

// changed returns a channel closed at the next change.
func (n *notifier) changed() <-chan struct{} {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.ch
}

func (n *notifier) notify() {
	n.mu.Lock()
	close(n.ch)
	n.ch = make(chan struct{})
	n.mu.Unlock()
}

// live maps the absolute path of each open Writer's log to its notifier.
var live sync.Map
