package agent_test

import (
	"context"
	"errors"
	"log/slog"
	"reflect"
	"testing"

	"github.com/kip-dev/kip/internal/agent"
	"github.com/kip-dev/kip/internal/agent/pod"
	"github.com/kip-dev/kip/internal/agent/runtime"
	"github.com/kip-dev/kip/internal/cellapi"
	"github.com/kip-dev/kip/internal/logctx"
)

// fakeRules is an in-memory agent.ServiceRules with a call log and an injectable error.
type fakeRules struct {
	svcs  map[string]cellapi.Service
	calls []string
	err   error // returned (once) by the next call
}

func (f *fakeRules) Replace(_ context.Context, svcs []cellapi.Service) error {
	f.calls = append(f.calls, "replace")
	if err := f.takeErr(); err != nil {
		return err
	}
	f.svcs = map[string]cellapi.Service{}
	for _, s := range svcs {
		f.svcs[s.Key()] = s
	}
	return nil
}

func (f *fakeRules) Update(_ context.Context, upsert []cellapi.Service, deleted []string) error {
	f.calls = append(f.calls, "update")
	if err := f.takeErr(); err != nil {
		return err
	}
	for _, k := range deleted {
		delete(f.svcs, k)
	}
	for _, s := range upsert {
		f.svcs[s.Key()] = s
	}
	return nil
}

func (f *fakeRules) Len() int { return len(f.svcs) }

func (f *fakeRules) takeErr() error {
	err := f.err
	f.err = nil
	return err
}

// newServicesAgent makes an agent that is only asked about Services (its pod parts are
// empty stand-ins that panic if used).
func newServicesAgent(t *testing.T, rules agent.ServiceRules) *agent.Agent {
	t.Helper()
	quiet := logctx.Into(context.Background(), slog.New(slog.DiscardHandler))
	a, err := agent.New(quiet, agent.Config{
		CellID:   "cell-1",
		StateDir: t.TempDir(),
		Runtime:  struct{ runtime.Runtime }{},
		Images:   struct{ pod.Images }{},
		Cgroups:  struct{ pod.Cgroups }{},
		Services: rules,
	})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func named(names ...string) []cellapi.Service {
	var out []cellapi.Service
	for _, n := range names {
		out = append(out, cellapi.Service{Namespace: "ns", Name: n, ClusterIPs: []string{"10.96.0.1"}})
	}
	return out
}

func TestPutServicesVersions(t *testing.T) {
	ctx := context.Background()
	rules := &fakeRules{}
	a := newServicesAgent(t, rules)
	step := func(what string, tab cellapi.ServiceTable, wantKind cellapi.ErrorKind, wantVersion uint64, wantN int) {
		t.Helper()
		st, err := a.PutServices(ctx, &tab)
		if wantKind != 0 {
			if err == nil || cellapi.KindOf(err) != wantKind {
				t.Fatalf("%s: PutServices = %v, %v; want an error of kind %d", what, st, err, wantKind)
			}
			return
		}
		if err != nil {
			t.Fatalf("%s: PutServices: %v", what, err)
		}
		if st.Version != wantVersion || st.Services != wantN {
			t.Fatalf("%s: status %+v, want version %d with %d services", what, st, wantVersion, wantN)
		}
	}
	step("delta before any full table", cellapi.ServiceTable{Version: 2, Base: 1, Services: named("a")}, cellapi.KindConflict, 0, 0)
	step("full", cellapi.ServiceTable{Version: 5, Services: named("a", "b")}, 0, 5, 2)
	step("delta on 5", cellapi.ServiceTable{Version: 6, Base: 5, Services: named("c"), Deleted: []string{"ns/a"}}, 0, 6, 2)
	step("delta on a stale base", cellapi.ServiceTable{Version: 7, Base: 5, Services: named("d")}, cellapi.KindConflict, 0, 0)
	step("delta going backwards", cellapi.ServiceTable{Version: 6, Base: 6}, cellapi.KindInvalid, 0, 0)
	step("version 0", cellapi.ServiceTable{}, cellapi.KindInvalid, 0, 0)
	step("full with deletions", cellapi.ServiceTable{Version: 9, Deleted: []string{"ns/a"}}, cellapi.KindInvalid, 0, 0)
	if want := []string{"replace", "update"}; !reflect.DeepEqual(rules.calls, want) {
		t.Errorf("programmer calls %v, want %v (refused tables must not reach it)", rules.calls, want)
	}

	// A failed apply keeps the version: the next delta on 6 still applies.
	rules.err = cellapi.Errorf(cellapi.KindInvalid, "service ns/x port TCP/0: bad")
	step("refused delta", cellapi.ServiceTable{Version: 7, Base: 6, Services: named("x")}, cellapi.KindInvalid, 0, 0)
	rules.err = errors.New("netlink: boom")
	step("failed full", cellapi.ServiceTable{Version: 8, Services: named("y")}, cellapi.KindInternal, 0, 0)
	step("delta after failures", cellapi.ServiceTable{Version: 7, Base: 6, Deleted: []string{"ns/b"}}, 0, 7, 1)

	// A restarted agent has no version: deltas conflict until kip sends the full table.
	a = newServicesAgent(t, rules)
	step("delta after restart", cellapi.ServiceTable{Version: 8, Base: 7}, cellapi.KindConflict, 0, 0)
	step("full after restart", cellapi.ServiceTable{Version: 8, Services: named("z")}, 0, 8, 1)
}

func TestPutServicesWithoutProgrammer(t *testing.T) {
	a := newServicesAgent(t, nil)
	_, err := a.PutServices(context.Background(), &cellapi.ServiceTable{Version: 1})
	if cellapi.KindOf(err) != cellapi.KindBadVersion {
		t.Errorf("PutServices without a programmer = %v, want KindBadVersion", err)
	}
}
