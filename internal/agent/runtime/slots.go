package runtime

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"

	"golang.org/x/sys/unix"
)

// WithStartSlots bounds how many container starts run at once across every agent that
// shares dir (the local backend's cells on one host, each agent its own process): Start takes
// one of n slots, flock(2)ed files dir/0 … dir/n-1, for as long as the runtime takes to
// execute the container's process, then gives it back. A burst of cells on a small host then
// starts its containers a few at a time instead of all of them sharing the CPUs at once, so
// that the first ones run early; a dead agent's slots are freed by the kernel with its files.
// n < 1 returns rt unchanged. The result is an Execer when rt is one (exec is not bounded).
func WithStartSlots(rt Runtime, dir string, n int) (Runtime, error) {
	if n < 1 {
		return rt, nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating the start slots %s: %w", dir, err)
	}
	s := &slotted{Runtime: rt, dir: dir, n: n}
	if ex, ok := rt.(Execer); ok {
		return &slottedExecer{slotted: s, Execer: ex}, nil
	}
	return s, nil
}

type slotted struct {
	Runtime
	dir string
	n   int
}

// slottedExecer is a slotted runtime that keeps the wrapped runtime's Exec.
type slottedExecer struct {
	*slotted
	Execer
}

func (s *slotted) Start(ctx context.Context, id, bundle string, stdio IO) (*Container, error) {
	release, err := s.acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("starting container %s: waiting for a start slot: %w", id, err)
	}
	defer release()
	return s.Runtime.Start(ctx, id, bundle, stdio)
}

// acquire takes a free slot if there is one, else waits for the slot this process is assigned
// (its pid modulo n, so that waiting agents spread over the slots) until ctx ends.
func (s *slotted) acquire(ctx context.Context) (release func(), err error) {
	for i := range s.n {
		f, ok, err := s.lock(i, unix.LOCK_NB)
		if err != nil {
			return nil, err
		}
		if ok {
			return sync.OnceFunc(func() { f.Close() }), nil
		}
	}
	type result struct {
		f   *os.File
		err error
	}
	done := make(chan result, 1)
	go func() {
		f, _, err := s.lock(os.Getpid()%s.n, 0)
		done <- result{f, err}
	}()
	select {
	case r := <-done:
		if r.err != nil {
			return nil, r.err
		}
		return sync.OnceFunc(func() { r.f.Close() }), nil
	case <-ctx.Done():
		// The slot may still come: give it back as soon as it does.
		go func() {
			if r := <-done; r.f != nil {
				r.f.Close()
			}
		}()
		return nil, ctx.Err()
	}
}

// lock opens slot i and flocks it exclusively (with how's LOCK_NB: only if it is free now).
func (s *slotted) lock(i, how int) (*os.File, bool, error) {
	path := filepath.Join(s.dir, strconv.Itoa(i))
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, false, fmt.Errorf("opening start slot %s: %w", path, err)
	}
	for {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX|how)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	switch {
	case err == nil:
		return f, true, nil
	case errors.Is(err, unix.EWOULDBLOCK):
		f.Close()
		return nil, false, nil
	default:
		f.Close()
		return nil, false, fmt.Errorf("locking start slot %s: %w", path, err)
	}
}
