package runtime

import (
	"context"
	"errors"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// blockingRuntime's Start counts the starts in progress and returns when release is closed.
type blockingRuntime struct {
	running, most atomic.Int32
	release       chan struct{}
}

func (b *blockingRuntime) Start(ctx context.Context, id, bundle string, stdio IO) (*Container, error) {
	n := b.running.Add(1)
	defer b.running.Add(-1)
	for {
		m := b.most.Load()
		if n <= m || b.most.CompareAndSwap(m, n) {
			break
		}
	}
	<-b.release
	return &Container{ID: id, done: make(chan struct{})}, nil
}
func (b *blockingRuntime) State(context.Context, string) (*State, error)      { return nil, nil }
func (b *blockingRuntime) Kill(context.Context, string, syscall.Signal) error { return nil }
func (b *blockingRuntime) Delete(context.Context, string) error               { return nil }
func (b *blockingRuntime) List(context.Context) ([]string, error)             { return nil, nil }

// TestStartSlots: two runtimes sharing one directory of 2 slots (two agents of a host) never
// run more than 2 starts at once between them, all 6 starts finish, and a start whose context
// ends while it waits for a slot gives up without starting.
func TestStartSlots(t *testing.T) {
	dir := t.TempDir()
	inner := &blockingRuntime{release: make(chan struct{})}
	a, err := WithStartSlots(inner, dir, 2)
	if err != nil {
		t.Fatal(err)
	}
	b, err := WithStartSlots(inner, dir, 2)
	if err != nil {
		t.Fatal(err)
	}
	errs := make(chan error, 6)
	for i := range 6 {
		rt := a
		if i%2 == 1 {
			rt = b
		}
		go func() {
			_, err := rt.Start(context.Background(), "c", "", IO{})
			errs <- err
		}()
	}
	deadline := time.Now().Add(10 * time.Second)
	for inner.running.Load() < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("%d starts running, want 2", inner.running.Load())
		}
		time.Sleep(time.Millisecond)
	}

	// A start that waits while both slots are held gives up when its context ends.
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := a.Start(ctx, "late", "", IO{}); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("a start waiting past its deadline: %v, want context.DeadlineExceeded", err)
	}

	close(inner.release)
	for range 6 {
		select {
		case err := <-errs:
			if err != nil {
				t.Errorf("start: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("starts did not finish once released")
		}
	}
	if m := inner.most.Load(); m != 2 {
		t.Errorf("at most %d starts ran at once, want 2", m)
	}
}

// TestStartSlotsNone: n < 1 leaves the runtime as it is.
func TestStartSlotsNone(t *testing.T) {
	inner := &blockingRuntime{}
	rt, err := WithStartSlots(inner, t.TempDir(), 0)
	if err != nil || rt != Runtime(inner) {
		t.Errorf("WithStartSlots(n=0) = %v, %v; want the runtime itself", rt, err)
	}
}

// execRuntime is a blockingRuntime that can exec.
type execRuntime struct{ blockingRuntime }

func (e *execRuntime) Exec(context.Context, string, []string, IO) (int, error) { return 7, nil }
func (e *execRuntime) ExecProcess(context.Context, string, ExecOptions) (int, error) {
	return 7, nil
}

// TestStartSlotsKeepExec: a runtime that execs (probes, hooks, kubectl exec) still does
// through the slots; one that does not, does not start to.
func TestStartSlotsKeepExec(t *testing.T) {
	rt, err := WithStartSlots(&execRuntime{}, t.TempDir(), 2)
	if err != nil {
		t.Fatal(err)
	}
	ex, ok := rt.(Execer)
	if !ok {
		t.Fatal("the slotted runtime lost Exec")
	}
	if code, err := ex.Exec(context.Background(), "c", []string{"true"}, IO{}); code != 7 || err != nil {
		t.Errorf("Exec = %d, %v; want the wrapped runtime's 7", code, err)
	}
	plain, err := WithStartSlots(&blockingRuntime{}, t.TempDir(), 2)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := plain.(Execer); ok {
		t.Error("a runtime that cannot exec gained Exec")
	}
}
