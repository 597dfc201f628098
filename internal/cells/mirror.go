package cells

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// mirrorQueue applies Mirror updates off the critical path: one worker, and per cell only
// the latest wanted state (an upsert or a delete) is kept, so a slow API server delays the
// Cell resources, never the pods.
type mirrorQueue struct {
	mirror Mirror
	log    *slog.Logger

	mu      sync.Mutex
	pending map[string]*CellInfo // cell id → latest info; nil means delete
	order   []string
	wake    chan struct{}
	idle    chan struct{} // closed and replaced whenever the queue drains
}

func newMirrorQueue(mirror Mirror, log *slog.Logger) *mirrorQueue {
	return &mirrorQueue{mirror: mirror, log: log, pending: map[string]*CellInfo{}, wake: make(chan struct{}, 1), idle: make(chan struct{})}
}

func (q *mirrorQueue) upsert(info CellInfo) { q.put(info.CellID, &info) }

func (q *mirrorQueue) delete(cellID string) { q.put(cellID, nil) }

func (q *mirrorQueue) put(id string, info *CellInfo) {
	q.mu.Lock()
	if _, ok := q.pending[id]; !ok {
		q.order = append(q.order, id)
	}
	q.pending[id] = info
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// run applies updates until ctx ends, then drains what is pending (bounded by a deadline).
func (q *mirrorQueue) run(ctx context.Context) {
	for {
		select {
		case <-q.wake:
			q.drain(ctx)
		case <-ctx.Done():
			dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			q.drain(dctx)
			cancel()
			return
		}
	}
}

func (q *mirrorQueue) drain(ctx context.Context) {
	for {
		q.mu.Lock()
		if len(q.order) == 0 {
			close(q.idle)
			q.idle = make(chan struct{})
			q.mu.Unlock()
			return
		}
		id := q.order[0]
		q.order = q.order[1:]
		info := q.pending[id]
		delete(q.pending, id)
		q.mu.Unlock()
		var err error
		if info == nil {
			err = q.mirror.Delete(ctx, id)
		} else {
			err = q.mirror.Upsert(ctx, *info)
		}
		if err != nil {
			q.log.Warn("mirroring cell", "cell", id, "err", err)
		}
	}
}
