package svcpush

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/kip-dev/kip/internal/cellapi"
	"github.com/kip-dev/kip/internal/cellapi/cellapitest"
)

// fakeTable is a Table whose versions the test makes: each Set publishes one Service change.
type fakeTable struct {
	mu       sync.Mutex
	version  uint64
	services map[string]cellapi.Service
	changed  map[string]uint64
	floor    uint64 // deltas from versions below are full tables
	onChange []func()
	sinces   []uint64
}

func newFakeTable() *fakeTable {
	return &fakeTable{version: 100, floor: 100, services: map[string]cellapi.Service{}, changed: map[string]uint64{}}
}

func (t *fakeTable) Version() uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.version
}

func (t *fakeTable) Since(v uint64) *cellapi.ServiceTable {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.sinces = append(t.sinces, v)
	if v < t.floor {
		v = 0
	}
	out := &cellapi.ServiceTable{Version: t.version, Base: v}
	for k, s := range t.services {
		if t.changed[k] > v {
			out.Services = append(out.Services, s)
		}
	}
	return out
}

func (t *fakeTable) OnChange(f func()) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.onChange = append(t.onChange, f)
}

func (t *fakeTable) WaitReady(context.Context) error { return nil }

// set changes Service ns/name (its cluster IP is ip) in a new version and notifies.
func (t *fakeTable) set(name, ip string) uint64 {
	t.mu.Lock()
	t.version++
	t.services["ns/"+name] = cellapi.Service{Namespace: "ns", Name: name, ClusterIPs: []string{ip}}
	t.changed["ns/"+name] = t.version
	v, subs := t.version, append([]func(){}, t.onChange...)
	t.mu.Unlock()
	for _, f := range subs {
		f()
	}
	return v
}

// programmer is an in-memory agent that programs Services: it applies full tables and deltas
// on top of its version, and answers Conflict otherwise.
type programmer struct {
	*cellapitest.Agent

	mu       sync.Mutex
	version  uint64
	services map[string]cellapi.Service
	puts     []*cellapi.ServiceTable
	failNext error
	block    chan struct{} // if set, PutServices waits on it
}

func newProgrammer() *programmer {
	return &programmer{Agent: &cellapitest.Agent{}, services: map[string]cellapi.Service{}}
}

func (p *programmer) PutServices(ctx context.Context, t *cellapi.ServiceTable) (*cellapi.ServiceTableStatus, error) {
	if p.block != nil {
		select {
		case <-p.block:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.puts = append(p.puts, t)
	if err := p.failNext; err != nil {
		p.failNext = nil
		return nil, err
	}
	if t.Base != 0 && t.Base != p.version {
		return nil, cellapi.Errorf(cellapi.KindConflict, "at version %d, not %d", p.version, t.Base)
	}
	if t.Base == 0 {
		p.services = map[string]cellapi.Service{}
	}
	for _, s := range t.Services {
		p.services[s.Key()] = s
	}
	for _, k := range t.Deleted {
		delete(p.services, k)
	}
	p.version = t.Version
	return &cellapi.ServiceTableStatus{Version: p.version, Services: len(p.services)}, nil
}

func (p *programmer) state() (uint64, int, []*cellapi.ServiceTable) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.version, len(p.services), append([]*cellapi.ServiceTable(nil), p.puts...)
}

// oldAgent does not implement ServiceProgrammer; over the wire it answers BadVersion.
type oldAgent struct{ *cellapitest.Agent }

// badVersionAgent answers BadVersion as an old agent behind cellapi.Handler does.
type badVersionAgent struct {
	*cellapitest.Agent
	mu    sync.Mutex
	calls int
}

func (a *badVersionAgent) PutServices(context.Context, *cellapi.ServiceTable) (*cellapi.ServiceTableStatus, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.calls++
	return nil, cellapi.Errorf(cellapi.KindBadVersion, "PUT /v1/services is not implemented by this agent")
}

// fakeCells is the running cells.
type fakeCells struct {
	mu    sync.Mutex
	cells map[string]cellapi.Agent
}

func (f *fakeCells) EachRunning(visit func(string, cellapi.Agent, time.Duration)) {
	f.mu.Lock()
	cs := map[string]cellapi.Agent{}
	for k, v := range f.cells {
		cs[k] = v
	}
	f.mu.Unlock()
	for k, v := range cs {
		visit(k, v, time.Minute)
	}
}

func (f *fakeCells) set(id string, a cellapi.Agent) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if a == nil {
		delete(f.cells, id)
		return
	}
	f.cells[id] = a
}

func start(t *testing.T, table Table, cells Cells, opts Options) *Controller {
	t.Helper()
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if opts.MinRetry == 0 {
		opts.MinRetry = time.Millisecond
	}
	c := New(opts, table, cells)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); c.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return c
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	if err := wait.PollUntilContextTimeout(context.Background(), time.Millisecond, wait.ForeverTestTimeout, true,
		func(context.Context) (bool, error) { return cond(), nil }); err != nil {
		t.Fatalf("timed out waiting for %s", what)
	}
}

func TestPushesDeltasThenFullOnConflict(t *testing.T) {
	table := newFakeTable()
	table.set("a", "10.96.0.1")
	p := newProgrammer()
	cells := &fakeCells{cells: map[string]cellapi.Agent{"c1": p}}
	c := start(t, table, cells, Options{})

	// A running cell the controller never saw gets the full table first.
	v := table.set("b", "10.96.0.2")
	waitFor(t, "c1 at the first version", func() bool { got, _, _ := p.state(); return got == v })
	_, n, puts := p.state()
	if n != 2 || puts[0].Base != 0 {
		t.Fatalf("first put base %d, services programmed %d; want a full table of 2", puts[0].Base, n)
	}
	if c.Acked("c1") != v {
		t.Errorf("acked %d, want %d", c.Acked("c1"), v)
	}

	// A change: only a delta from the acked version.
	v2 := table.set("a", "10.96.0.9")
	waitFor(t, "c1 at the second version", func() bool { got, _, _ := p.state(); return got == v2 })
	_, _, puts = p.state()
	last := puts[len(puts)-1]
	if last.Base != v || len(last.Services) != 1 || last.Services[0].Name != "a" {
		t.Errorf("second put: base %d with %d services, want a delta from %d with ns/a", last.Base, len(last.Services), v)
	}

	// The agent lost its table (restarted): the delta conflicts, the full table follows.
	p.mu.Lock()
	p.version, p.services = 0, map[string]cellapi.Service{}
	p.mu.Unlock()
	v3 := table.set("c", "10.96.0.3")
	waitFor(t, "c1 at the third version", func() bool { got, _, _ := p.state(); return got == v3 })
	_, n, puts = p.state()
	if n != 3 || puts[len(puts)-2].Base != v2 || puts[len(puts)-1].Base != 0 {
		t.Errorf("after a conflict: %d services; last puts based on %d then %d, want %d then 0 (full)",
			n, puts[len(puts)-2].Base, puts[len(puts)-1].Base, v2)
	}
}

func TestRetriesErrors(t *testing.T) {
	table := newFakeTable()
	p := newProgrammer()
	p.failNext = fmt.Errorf("connection reset")
	cells := &fakeCells{cells: map[string]cellapi.Agent{"c1": p}}
	start(t, table, cells, Options{})
	v := table.set("a", "10.96.0.1")
	waitFor(t, "c1 at the version after a failure", func() bool { got, _, _ := p.state(); return got == v })
	if _, _, puts := p.state(); len(puts) != 2 {
		t.Errorf("%d puts, want 2 (a failure, then the retry)", len(puts))
	}
}

func TestBadVersionSkipsTheCell(t *testing.T) {
	table := newFakeTable()
	old := &badVersionAgent{Agent: &cellapitest.Agent{}}
	p := newProgrammer()
	cells := &fakeCells{cells: map[string]cellapi.Agent{"old": old, "older": oldAgent{&cellapitest.Agent{}}, "new": p}}
	c := start(t, table, cells, Options{})
	table.set("a", "10.96.0.1")
	v := table.set("b", "10.96.0.2")
	waitFor(t, "the new cell", func() bool { got, _, _ := p.state(); return got == v })
	v = table.set("c", "10.96.0.3")
	waitFor(t, "the new cell again", func() bool { got, _, _ := p.state(); return got == v })
	old.mu.Lock()
	calls := old.calls
	old.mu.Unlock()
	if calls != 1 {
		t.Errorf("the old agent was asked %d times, want once", calls)
	}
	if c.Acked("old") != 0 || c.Acked("older") != 0 {
		t.Errorf("old agents acked %d, %d", c.Acked("old"), c.Acked("older"))
	}
}

func TestSyncGivesANewCellTheFullTable(t *testing.T) {
	table := newFakeTable()
	table.set("a", "10.96.0.1")
	v := table.set("b", "10.96.0.2")
	cells := &fakeCells{cells: map[string]cellapi.Agent{}}
	c := start(t, table, cells, Options{})
	p := newProgrammer()
	if err := c.Sync(context.Background(), "c1", p); err != nil {
		t.Fatal(err)
	}
	got, n, puts := p.state()
	if got != v || n != 2 || len(puts) != 1 || puts[0].Base != 0 {
		t.Fatalf("after Sync: version %d, %d services, %d puts; want %d, 2, one full put", got, n, len(puts), v)
	}
	// Not yet running (its pod is being put), it still gets the next change.
	v2 := table.set("c", "10.96.0.3")
	waitFor(t, "the synced cell at the next version", func() bool { got, _, _ := p.state(); return got == v2 })
	if _, _, puts := p.state(); puts[len(puts)-1].Base != v {
		t.Errorf("the next change was based on %d, want a delta from %d", puts[len(puts)-1].Base, v)
	}

	// A failing Sync returns the error and leaves the cell to the retries.
	q := newProgrammer()
	q.failNext = fmt.Errorf("connection refused")
	if err := c.Sync(context.Background(), "c2", q); err == nil {
		t.Error("Sync with a failing agent returned nil")
	}
	waitFor(t, "c2 retried to the current version", func() bool { got, _, _ := q.state(); return got == v2 })
}

func TestForgetsVanishedCells(t *testing.T) {
	table := newFakeTable()
	p := newProgrammer()
	cells := &fakeCells{cells: map[string]cellapi.Agent{"c1": p}}
	c := start(t, table, cells, Options{SyncedGrace: time.Nanosecond})
	v := table.set("a", "10.96.0.1")
	waitFor(t, "c1 acked", func() bool { return c.Acked("c1") == v })
	cells.set("c1", nil)
	table.set("b", "10.96.0.2")
	waitFor(t, "c1 forgotten", func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.state["c1"] == nil
	})
	if _, _, puts := p.state(); len(puts) != 1 {
		t.Errorf("%d puts to a vanished cell, want only the one before", len(puts))
	}
}

// While pushes are in flight, many versions become one delta per cell.
func TestCoalescesBursts(t *testing.T) {
	table := newFakeTable()
	p := newProgrammer()
	cells := &fakeCells{cells: map[string]cellapi.Agent{"c1": p}}
	p.block = make(chan struct{})
	start(t, table, cells, Options{})
	v := table.set("a", "10.96.0.1")
	waitFor(t, "a push in flight", func() bool {
		table.mu.Lock()
		defer table.mu.Unlock()
		return len(table.sinces) > 0
	})
	for i := range 50 {
		v = table.set(fmt.Sprintf("s%d", i), "10.96.1.1")
	}
	close(p.block)
	waitFor(t, "c1 at the last version", func() bool { got, _, _ := p.state(); return got == v })
	if _, n, puts := p.state(); len(puts) > 3 || n != 51 {
		t.Errorf("%d puts for 51 versions (%d services programmed), want at most 3", len(puts), n)
	}
}
