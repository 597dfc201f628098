package health

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	testingclock "k8s.io/utils/clock/testing"

	"github.com/kip-dev/kip/internal/cellapi"
	"github.com/kip-dev/kip/internal/cellapi/cellapitest"
)

type flaky struct {
	cellapitest.Agent
	err error
}

func (f *flaky) Health(ctx context.Context) (*cellapi.Health, error) {
	if f.err != nil {
		return nil, f.err
	}
	return f.Agent.Health(ctx)
}

type fakeCells struct {
	agents map[string]*flaky
	lost   map[string]string
}

func (f *fakeCells) EachRunning(visit func(string, cellapi.Agent, time.Duration)) {
	for id, a := range f.agents {
		visit(id, a, 30*time.Second)
	}
}

func (f *fakeCells) MarkLost(cellID, message string) { f.lost[cellID] = message }

func TestProbes(t *testing.T) {
	clk := testingclock.NewFakeClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	ok, cut, back := &flaky{}, &flaky{err: errors.New("i/o timeout")}, &flaky{err: errors.New("i/o timeout")}
	cells := &fakeCells{agents: map[string]*flaky{"c-ok": ok, "c-cut": cut, "c-back": back}, lost: map[string]string{}}
	h := New(10*time.Second, cells, clk, nil)
	steps := []struct {
		after    time.Duration
		backOK   bool
		wantLost []string
	}{
		{0, false, nil},                                   // t=0: c-cut and c-back fail: noted
		{20 * time.Second, true, nil},                     // t=20: c-back answers: forgiven
		{9 * time.Second, false, nil},                     // t=29: c-back fails again, from now on
		{time.Second, false, []string{"c-cut"}},           // t=30: c-cut failed for its 30 s timeout
		{28 * time.Second, false, []string{"c-cut"}},      // t=58: c-back only 29 s
		{time.Second, false, []string{"c-cut", "c-back"}}, // t=59: c-back too
	}
	for i, s := range steps {
		clk.Step(s.after)
		if s.backOK {
			back.err = nil
		} else {
			back.err = errors.New("i/o timeout")
		}
		h.probe(context.Background())
		if len(cells.lost) != len(s.wantLost) {
			t.Fatalf("step %d: lost %v, want %v", i, cells.lost, s.wantLost)
		}
		for _, id := range s.wantLost {
			if !strings.Contains(cells.lost[id], "unreachable for 30s") {
				t.Errorf("step %d: %s lost with %q", i, id, cells.lost[id])
			}
		}
	}
}
