// Package servicetable builds the cluster's Services as cells program them: from the shared
// Service and EndpointSlice informers it keeps the table kube-proxy would (cluster IPs, ports,
// each port's ready endpoints or kube-proxy's fallbacks), versioned, so that each cell can be
// sent only what changed since the version it holds (cellapi.ServiceTable, full or delta).
//
// One watch for all cells: informer events only mark Services dirty; one goroutine (Run)
// rebuilds the dirty ones and publishes them as one new version, so a burst of EndpointSlice
// updates that arrives while a rebuild or a push runs becomes one version, without a timer.
package servicetable

import (
	"context"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	corev1informers "k8s.io/client-go/informers/core/v1"
	discoveryinformers "k8s.io/client-go/informers/discovery/v1"
	corev1listers "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/utils/clock"

	"github.com/kip-dev/kip/internal/cellapi"
)

// DefaultMaxTombstones is how many deleted Services are remembered for deltas by default.
const DefaultMaxTombstones = 4096

// DefaultAffinitySeconds is sessionAffinity ClientIP's timeout when the Service sets none
// (the API's default, 3 hours).
const DefaultAffinitySeconds = 10800

// byServiceIndex indexes EndpointSlices by "namespace/<kubernetes.io/service-name label>".
const byServiceIndex = "kip.dev/service"

// Config is what a Table is built from.
type Config struct {
	// Services and EndpointSlices are the shared informers (internal/vnode.Informers); New
	// adds an index to EndpointSlices, so it must run before they start.
	Services       corev1informers.ServiceInformer
	EndpointSlices discoveryinformers.EndpointSliceInformer
	// NodeName is kip's node: internalTrafficPolicy Local keeps the endpoints on it.
	NodeName string
	// Events gets a Warning on each Service (or port) kip cannot program; nil records none.
	Events record.EventRecorder
	// Clock gives the first version (the time in microseconds, so versions keep increasing
	// across restarts of kip); nil means the real clock.
	Clock clock.PassiveClock
	// MaxTombstones bounds the deleted Services remembered; a cell older than the oldest one
	// forgotten gets the full table. 0 means DefaultMaxTombstones.
	MaxTombstones int
	// Log receives the table's logs; nil means slog.Default().
	Log *slog.Logger
}

// Table is the versioned service table. Make it with New, run it with Run; its methods are
// safe for concurrent use.
type Table struct {
	cfg       Config
	services  corev1listers.ServiceLister
	slices    cache.Indexer
	synced    []cache.InformerSynced
	log       *slog.Logger
	queue     workqueue.TypedInterface[string] // one key: "rebuild"
	maxTombs  int
	readyOnce sync.Once
	readyCh   chan struct{}

	dirtyMu sync.Mutex
	dirty   map[string]bool // Service keys to rebuild

	mu         sync.Mutex
	version    uint64
	floor      uint64 // deltas are answered only from versions >= floor
	entries    map[string]*entry
	tombstones map[string]uint64 // deleted key → the version that deleted it
	warned     map[string]string // key → the last warning recorded
	onChange   []func()
	cache      map[uint64]*cellapi.ServiceTable // Since answers for the current version
}

type entry struct {
	svc     cellapi.Service
	changed uint64
}

// New returns a table fed by the informers. Nothing is built until Run.
func New(cfg Config) (*Table, error) {
	if cfg.Services == nil || cfg.EndpointSlices == nil {
		return nil, fmt.Errorf("building the service table: the Service and EndpointSlice informers are required")
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	maxTombs := cfg.MaxTombstones
	if maxTombs <= 0 {
		maxTombs = DefaultMaxTombstones
	}
	start := uint64(cfg.Clock.Now().UnixMicro())
	t := &Table{
		cfg:        cfg,
		services:   cfg.Services.Lister(),
		log:        cfg.Log.With("component", "servicetable"),
		queue:      workqueue.NewTypedWithConfig(workqueue.TypedQueueConfig[string]{Name: "servicetable"}),
		maxTombs:   maxTombs,
		readyCh:    make(chan struct{}),
		dirty:      map[string]bool{},
		version:    start,
		floor:      start + 1,
		entries:    map[string]*entry{},
		tombstones: map[string]uint64{},
		warned:     map[string]string{},
	}
	si := cfg.Services.Informer()
	ei := cfg.EndpointSlices.Informer()
	if err := ei.AddIndexers(cache.Indexers{byServiceIndex: sliceServiceKeys}); err != nil {
		return nil, fmt.Errorf("building the service table: indexing EndpointSlices: %w", err)
	}
	t.slices = ei.GetIndexer()
	if _, err := si.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { t.markObj(obj, serviceKey) },
		UpdateFunc: func(_, obj any) { t.markObj(obj, serviceKey) },
		DeleteFunc: func(obj any) { t.markObj(obj, serviceKey) },
	}); err != nil {
		return nil, fmt.Errorf("building the service table: watching Services: %w", err)
	}
	if _, err := ei.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) { t.markObj(obj, sliceKey) },
		UpdateFunc: func(old, obj any) {
			t.markObj(old, sliceKey) // the label may have moved the slice to another Service
			t.markObj(obj, sliceKey)
		},
		DeleteFunc: func(obj any) { t.markObj(obj, sliceKey) },
	}); err != nil {
		return nil, fmt.Errorf("building the service table: watching EndpointSlices: %w", err)
	}
	t.synced = []cache.InformerSynced{si.HasSynced, ei.HasSynced}
	return t, nil
}

// OnChange registers f, called (from the table's goroutine; it must not block) after each
// new version.
func (t *Table) OnChange(f func()) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.onChange = append(t.onChange, f)
}

// Run waits for the informers' first list, builds the table, then rebuilds what changes
// until ctx ends.
func (t *Table) Run(ctx context.Context) {
	go func() {
		<-ctx.Done()
		t.queue.ShutDown()
	}()
	if !cache.WaitForCacheSync(ctx.Done(), t.synced...) {
		return
	}
	// Everything the first list added is already marked dirty; mark every Service anyway.
	for _, obj := range t.cfg.Services.Informer().GetStore().List() {
		t.markObj(obj, serviceKey)
	}
	t.queue.Add("rebuild")
	for {
		key, quit := t.queue.Get()
		if quit {
			return
		}
		t.rebuild()
		t.queue.Done(key)
	}
}

// Ready reports whether the first table was built.
func (t *Table) Ready() bool {
	select {
	case <-t.readyCh:
		return true
	default:
		return false
	}
}

// WaitReady waits until the first table is built, or ctx ends.
func (t *Table) WaitReady(ctx context.Context) error {
	select {
	case <-t.readyCh:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("waiting for the service table's first build: %w", ctx.Err())
	}
}

// Version is the current version; it only increases. Before the first build it is a version
// no cell can hold.
func (t *Table) Version() uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.version
}

// Since returns what brings a cell at version v to the current version: a delta (Base v,
// the Services changed since v and the keys deleted since v) or, when v is 0, from before
// this table, newer than it, or older than the deletions it remembers, the full table
// (Base 0). Services are sorted by key. The result is shared: callers must not modify it.
func (t *Table) Since(v uint64) *cellapi.ServiceTable {
	t.mu.Lock()
	defer t.mu.Unlock()
	if v == 0 || v < t.floor || v > t.version {
		v = 0
	}
	if got, ok := t.cache[v]; ok {
		return got
	}
	out := &cellapi.ServiceTable{Version: t.version, Base: v}
	for _, e := range t.entries {
		if e.changed > v {
			out.Services = append(out.Services, e.svc)
		}
	}
	sort.Slice(out.Services, func(i, j int) bool { return out.Services[i].Key() < out.Services[j].Key() })
	if v != 0 {
		for k, at := range t.tombstones {
			if at > v {
				out.Deleted = append(out.Deleted, k)
			}
		}
		sort.Strings(out.Deleted)
	}
	if t.cache == nil {
		t.cache = map[uint64]*cellapi.ServiceTable{}
	}
	t.cache[v] = out
	return out
}

// Len is how many Services the table holds.
func (t *Table) Len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.entries)
}

func (t *Table) markObj(obj any, keys func(any) []string) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	ks := keys(obj)
	if len(ks) == 0 {
		return
	}
	t.dirtyMu.Lock()
	for _, k := range ks {
		t.dirty[k] = true
	}
	t.dirtyMu.Unlock()
	t.queue.Add("rebuild")
}

func serviceKey(obj any) []string {
	s, ok := obj.(*corev1.Service)
	if !ok {
		return nil
	}
	return []string{s.Namespace + "/" + s.Name}
}

func sliceKey(obj any) []string {
	ks, _ := sliceServiceKeys(obj)
	return ks
}

func sliceServiceKeys(obj any) ([]string, error) {
	s, ok := obj.(*discoveryv1.EndpointSlice)
	if !ok {
		return nil, nil
	}
	name := s.Labels[discoveryv1.LabelServiceName]
	if name == "" {
		return nil, nil
	}
	return []string{s.Namespace + "/" + name}, nil
}

// rebuild builds every dirty Service and publishes the changes as one version.
func (t *Table) rebuild() {
	t.dirtyMu.Lock()
	keys := t.dirty
	t.dirty = map[string]bool{}
	t.dirtyMu.Unlock()

	type built struct {
		svc      *cellapi.Service
		obj      *corev1.Service
		problems []Problem
	}
	results := make(map[string]built, len(keys))
	for k := range keys {
		svc, obj, problems := t.build(k)
		results[k] = built{svc, obj, problems}
	}

	t.mu.Lock()
	next := t.version + 1
	changed := false
	for k, b := range results {
		old, ok := t.entries[k]
		if b.svc == nil {
			if ok {
				delete(t.entries, k)
				t.tombstones[k] = next
				changed = true
			}
			continue
		}
		if ok && apiequality.Semantic.DeepEqual(old.svc, *b.svc) {
			continue
		}
		t.entries[k] = &entry{svc: *b.svc, changed: next}
		delete(t.tombstones, k)
		changed = true
	}
	first := !t.Ready()
	if changed || first {
		t.version = next
		t.cache = nil
		t.pruneTombstones()
	}
	var warn []func()
	for k, b := range results {
		msg := ""
		for _, p := range b.problems {
			msg += "; " + p.Field + ": " + p.Message
		}
		msg = strings.TrimPrefix(msg, "; ")
		if msg == t.warned[k] {
			continue
		}
		if msg == "" {
			delete(t.warned, k)
			continue
		}
		t.warned[k] = msg
		if b.obj != nil {
			obj, left := b.obj, "the rest of the Service is programmed"
			if b.svc == nil {
				left = "the Service is left out of every cell"
			}
			warn = append(warn, func() {
				t.log.Warn("a Service kip cannot program", "service", k, "problems", msg)
				if t.cfg.Events != nil {
					t.cfg.Events.Eventf(obj, corev1.EventTypeWarning, "UnsupportedService", "kip cannot program %s (%s)", msg, left)
				}
			})
		}
	}
	subs := append([]func(){}, t.onChange...)
	version := t.version
	t.mu.Unlock()

	for _, w := range warn {
		w()
	}
	if first {
		t.log.Info("service table built", "services", t.Len(), "version", version)
		t.readyOnce.Do(func() { close(t.readyCh) })
	}
	if changed || first {
		for _, f := range subs {
			f()
		}
	}
}

// pruneTombstones forgets the oldest deletions past the limit; deltas from versions before
// the newest forgotten one are answered with the full table. t.mu must be held.
func (t *Table) pruneTombstones() {
	if len(t.tombstones) <= t.maxTombs {
		return
	}
	type tomb struct {
		key string
		at  uint64
	}
	all := make([]tomb, 0, len(t.tombstones))
	for k, at := range t.tombstones {
		all = append(all, tomb{k, at})
	}
	sort.Slice(all, func(i, j int) bool { return all[i].at < all[j].at })
	for _, tb := range all[:len(all)-t.maxTombs] {
		delete(t.tombstones, tb.key)
		// A cell at tb.at or later saw this deletion; one before it needs it.
		if tb.at > t.floor {
			t.floor = tb.at
		}
	}
}

// build returns the Service of key as cells program it, nil when it has none (gone, headless,
// ExternalName, or nothing programmable), with the problems found.
func (t *Table) build(key string) (*cellapi.Service, *corev1.Service, []Problem) {
	ns, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil {
		return nil, nil, nil
	}
	obj, err := t.services.Services(ns).Get(name)
	if apierrors.IsNotFound(err) || err != nil {
		return nil, nil, nil
	}
	var slices []*discoveryv1.EndpointSlice
	items, err := t.slices.ByIndex(byServiceIndex, key)
	if err != nil {
		t.log.Error("reading the EndpointSlices of a Service", "service", key, "err", err)
	}
	for _, it := range items {
		if s, ok := it.(*discoveryv1.EndpointSlice); ok {
			slices = append(slices, s)
		}
	}
	svc, problems := Build(obj, slices, t.cfg.NodeName)
	return svc, obj, problems
}
