// Package cellmirror is the controller that keeps the cluster-scoped Cell custom resources in
// step with the cells manager: the manager records each cell's wanted state (Upsert, Delete)
// without waiting, and this controller's workers write it through a client-go workqueue,
// coalesced per cell and retried with back-off, so the API server's latency never sits on a
// pod's start path.
package cellmirror

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/util/workqueue"

	"github.com/kip-dev/kip/internal/cells"
	"github.com/kip-dev/kip/internal/crd"
)

// maxRetries bounds how often one change is retried before it is dropped (the next change
// of the same cell writes the whole object again anyway).
const maxRetries = 8

// Mirror implements cells.Mirror by writing Cell objects through a dynamic client. Upsert and
// Delete only record the wanted state and return at once: writes happen on Mirror's own
// workers, coalesced per cell, so the API server's latency never sits on a pod's start path.
type Mirror struct {
	client dynamic.Interface
	node   string
	log    *slog.Logger
	queue  workqueue.TypedRateLimitingInterface[string]

	mu   sync.Mutex
	want map[string]*cells.CellInfo // nil value: delete
	// rv is the resourceVersion of each Cell as this mirror last wrote it, so that the next
	// write is one request (a create, or an update at that version) instead of a get first.
	rv map[string]string
}

var _ cells.Mirror = (*Mirror)(nil)

// New returns a Mirror writing Cells owned by node. Run must be called for writes to
// happen.
func New(client dynamic.Interface, node string, log *slog.Logger) *Mirror {
	if log == nil {
		log = slog.Default()
	}
	return &Mirror{
		client: client,
		node:   node,
		log:    log.With("component", "cell-mirror"),
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(
			workqueue.NewTypedItemExponentialFailureRateLimiter[string](200*time.Millisecond, 30*time.Second),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: "cell-mirror"}),
		want: map[string]*cells.CellInfo{},
		rv:   map[string]string{},
	}
}

// Upsert records that the Cell c.CellID should show c.
func (m *Mirror) Upsert(_ context.Context, c cells.CellInfo) error {
	if c.CellID == "" {
		return fmt.Errorf("mirroring cell: CellID is empty")
	}
	m.mu.Lock()
	m.want[c.CellID] = &c
	m.mu.Unlock()
	m.queue.Add(c.CellID)
	return nil
}

// Delete records that the Cell cellID should be gone.
func (m *Mirror) Delete(_ context.Context, cellID string) error {
	if cellID == "" {
		return fmt.Errorf("deleting cell mirror: cell id is empty")
	}
	m.mu.Lock()
	m.want[cellID] = nil
	m.mu.Unlock()
	m.queue.Add(cellID)
	return nil
}

// Run writes recorded changes with workers goroutines until ctx ends, then drains nothing
// more and returns.
func (m *Mirror) Run(ctx context.Context, workers int) {
	if workers < 1 {
		workers = 1
	}
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for m.next(ctx) {
			}
		}()
	}
	<-ctx.Done()
	m.queue.ShutDown()
	wg.Wait()
}

// Flush waits until every recorded change has been written (or dropped), or ctx ends.
func (m *Mirror) Flush(ctx context.Context) error {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		m.mu.Lock()
		n := len(m.want)
		m.mu.Unlock()
		if n == 0 && m.queue.Len() == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("flushing cell mirror: %w", ctx.Err())
		case <-t.C:
		}
	}
}

func (m *Mirror) next(ctx context.Context) bool {
	id, quit := m.queue.Get()
	if quit {
		return false
	}
	defer m.queue.Done(id)
	m.mu.Lock()
	want, ok := m.want[id]
	m.mu.Unlock()
	if !ok {
		m.queue.Forget(id)
		return true
	}
	var err error
	if want == nil {
		err = m.client.Resource(crd.CellGVR).Delete(ctx, id, metav1.DeleteOptions{})
		if apierrors.IsNotFound(err) {
			err = nil
		}
		if err == nil {
			m.mu.Lock()
			delete(m.rv, id)
			m.mu.Unlock()
		}
	} else {
		err = m.write(ctx, m.object(want))
	}
	if err != nil && ctx.Err() == nil && m.queue.NumRequeues(id) < maxRetries {
		m.log.Debug("writing Cell object; retrying", "cell", id, "err", err)
		m.queue.AddRateLimited(id)
		return true
	}
	if err != nil && ctx.Err() == nil {
		m.log.Warn("writing Cell object; giving up", "cell", id, "err", err)
	}
	m.queue.Forget(id)
	m.mu.Lock()
	if cur, ok := m.want[id]; ok && cur == want {
		delete(m.want, id) // written; a newer change would have replaced the pointer
	}
	m.mu.Unlock()
	return true
}

// write creates the Cell or replaces its content (kip is its only writer): one request when
// the mirror knows the version it wrote last, else a get first; a conflict is retried from the
// queue.
func (m *Mirror) write(ctx context.Context, obj *unstructured.Unstructured) error {
	res := m.client.Resource(crd.CellGVR)
	id := obj.GetName()
	m.mu.Lock()
	rv, known := m.rv[id]
	m.mu.Unlock()
	var (
		got *unstructured.Unstructured
		err error
	)
	if known {
		obj.SetResourceVersion(rv)
		got, err = res.Update(ctx, obj, metav1.UpdateOptions{FieldManager: crd.FieldManager})
	} else {
		got, err = res.Create(ctx, obj, metav1.CreateOptions{FieldManager: crd.FieldManager})
	}
	if (known && (apierrors.IsConflict(err) || apierrors.IsNotFound(err))) || (!known && apierrors.IsAlreadyExists(err)) {
		// Written by someone else (another kip before this one took over), or gone.
		got, err = m.writeFresh(ctx, obj)
	}
	m.mu.Lock()
	if err == nil {
		m.rv[id] = got.GetResourceVersion()
	} else {
		delete(m.rv, id)
	}
	m.mu.Unlock()
	return err
}

// writeFresh reads the Cell's current version, then creates or updates it.
func (m *Mirror) writeFresh(ctx context.Context, obj *unstructured.Unstructured) (*unstructured.Unstructured, error) {
	res := m.client.Resource(crd.CellGVR)
	cur, err := res.Get(ctx, obj.GetName(), metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		obj.SetResourceVersion("")
		return res.Create(ctx, obj, metav1.CreateOptions{FieldManager: crd.FieldManager})
	}
	if err != nil {
		return nil, err
	}
	obj.SetResourceVersion(cur.GetResourceVersion())
	return res.Update(ctx, obj, metav1.UpdateOptions{FieldManager: crd.FieldManager})
}

// object renders the Cell object for c.
func (m *Mirror) object(c *cells.CellInfo) *unstructured.Unstructured {
	pod := c.PodNamespace + "/" + c.PodName
	if c.PodName == "" {
		pod = "" // a standby cell, no pod yet
	}
	spec := map[string]any{
		"pod":          pod,
		"podUID":       c.PodUID,
		"node":         m.node,
		"instanceID":   c.InstanceID,
		"instanceType": c.InstanceType,
		"pricePerHour": c.PricePerHour,
		"spot":         c.Spot,
	}
	status := map[string]any{"phase": c.Phase}
	if c.IP != "" {
		status["ip"] = c.IP
	}
	if !c.LaunchTime.IsZero() {
		status["launchTime"] = c.LaunchTime.UTC().Format(time.RFC3339)
	}
	u := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": crd.Group + "/" + crd.Version,
		"kind":       crd.Kind,
		"metadata": map[string]any{
			"name":   c.CellID,
			"labels": map[string]any{"kip.dev/node": m.node},
		},
		"spec":   spec,
		"status": status,
	}}
	return u
}
