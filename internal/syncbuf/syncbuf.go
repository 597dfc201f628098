// Package syncbuf is a byte buffer that the goroutines copying a process's output may write
// while another goroutine reads it, optionally keeping only the first bytes (enough for an
// error message) however much the process writes.
package syncbuf

import (
	"bytes"
	"sync"
)

// Buffer is safe for concurrent Write and String; the zero value keeps everything.
type Buffer struct {
	// Max, when positive, is how many bytes the buffer keeps; what is written past it is
	// reported written and dropped, so a chatty process is never blocked or failed.
	Max int

	mu  sync.Mutex
	buf bytes.Buffer
}

// Write appends p, or as much of it as Max leaves room for; it always reports len(p).
func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.Max <= 0 {
		return b.buf.Write(p)
	}
	if room := b.Max - b.buf.Len(); room > 0 {
		b.buf.Write(p[:min(room, len(p))])
	}
	return len(p), nil
}

// String returns what the buffer holds.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
