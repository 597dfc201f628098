package gc

import (
	"context"
	"strings"
	"testing"

	"github.com/kip-dev/kip/internal/cloud"
	"github.com/kip-dev/kip/internal/cloud/fake"
)

// fakeCells is a cells manager with fixed pods.
type fakeCells struct {
	pods []struct{ uid, cell, inst string }
	lost map[string]string
}

func (f *fakeCells) EachCell(visit func(podUID, cellID, instanceID string)) {
	for _, p := range f.pods {
		visit(p.uid, p.cell, p.inst)
	}
}

func (f *fakeCells) MarkLost(cellID, message string) { f.lost[cellID] = message }

type fakeMirror struct{ deleted []string }

func (m *fakeMirror) Delete(_ context.Context, id string) error {
	m.deleted = append(m.deleted, id)
	return nil
}

func launch(t *testing.T, c *fake.Fake, cluster, uid, cell string) *cloud.Instance {
	t.Helper()
	in, err := c.Launch(context.Background(), cloud.LaunchSpec{CellID: cell, ClientToken: cell, InstanceType: "fake.small",
		Tags: map[string]string{cloud.TagCluster: cluster, cloud.TagNode: "kip", cloud.TagPodUID: uid, cloud.TagCellID: cell}})
	if err != nil {
		t.Fatal(err)
	}
	return in
}

func TestPasses(t *testing.T) {
	ctx := context.Background()
	c := fake.New()
	mine := launch(t, c, "kip", "uid-mine", "c-mine")
	gone := launch(t, c, "kip", "uid-gone", "c-gone")
	orphan := launch(t, c, "kip", "nobody", "c-orphan")
	other := launch(t, c, "another-cluster", "x", "c-other")
	booting := launch(t, c, "kip", "uid-booting", "c-booting")
	if err := c.SetState(gone.ID, cloud.StateTerminated); err != nil {
		t.Fatal(err)
	}
	cells := &fakeCells{lost: map[string]string{}, pods: []struct{ uid, cell, inst string }{
		{"uid-mine", "c-mine", mine.ID},
		{"uid-gone", "c-gone", gone.ID},
		{"uid-booting", "c-booting", ""}, // not yet launched as far as the manager knows
	}}
	mirror := &fakeMirror{}
	g := New(Options{ClusterName: "kip", NodeName: "kip"}, cells, c, mirror, nil, nil)
	state := func(id string) cloud.State {
		in, err := c.Describe(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		return in.State
	}

	g.pass(ctx)
	if len(cells.lost) != 0 || state(orphan.ID) != cloud.StateRunning {
		t.Fatalf("one pass acted: lost %v, orphan %s", cells.lost, state(orphan.ID))
	}
	g.pass(ctx)
	if msg := cells.lost["c-gone"]; len(cells.lost) != 1 || !strings.Contains(msg, "is gone") {
		t.Errorf("lost after two passes: %v, want c-gone only", cells.lost)
	}
	if state(orphan.ID) != cloud.StateTerminated {
		t.Error("the orphan survived two passes")
	}
	if len(mirror.deleted) != 1 || mirror.deleted[0] != "c-orphan" {
		t.Errorf("mirror deletes %v, want the orphan's cell", mirror.deleted)
	}
	for _, in := range []*cloud.Instance{mine, other, booting} {
		if state(in.ID) != cloud.StateRunning {
			t.Errorf("%s (%s) was terminated", in.ID, in.CellID)
		}
	}
}

// TestTerminatingOrphans: an instance left terminating that no pod owns (an interrupted
// terminate; a local cell whose network namespace vanished, still holding its files and
// address) is terminated again; one a pod still owns is the pod's to handle (MarkLost).
func TestTerminatingOrphans(t *testing.T) {
	ctx := context.Background()
	c := fake.New()
	left := launch(t, c, "kip", "nobody", "c-left")
	owned := launch(t, c, "kip", "uid-owned", "c-owned")
	for _, in := range []*cloud.Instance{left, owned} {
		if err := c.SetState(in.ID, cloud.StateTerminating); err != nil {
			t.Fatal(err)
		}
	}
	cells := &fakeCells{lost: map[string]string{}, pods: []struct{ uid, cell, inst string }{{"uid-owned", "c-owned", owned.ID}}}
	g := New(Options{ClusterName: "kip", NodeName: "kip"}, cells, c, nil, nil, nil)
	g.pass(ctx)
	if n := c.CallCount(fake.MethodTerminate); n != 0 {
		t.Fatalf("one pass terminated %d instances", n)
	}
	g.pass(ctx)
	var terminated []string
	for _, call := range c.Calls() {
		if call.Method == fake.MethodTerminate {
			terminated = append(terminated, call.Arg.(string))
		}
	}
	if len(terminated) != 1 || terminated[0] != left.ID {
		t.Errorf("terminated %v, want only the unowned terminating instance %s", terminated, left.ID)
	}
	if _, ok := cells.lost["c-owned"]; !ok {
		t.Errorf("the owned terminating cell was not reported lost: %v", cells.lost)
	}
}

// TestFormerNodeNames: the cluster's instances tagged with a former name of the node are
// terminated when the name is configured, and only then; other clusters' are never touched.
func TestFormerNodeNames(t *testing.T) {
	ctx := context.Background()
	for _, configured := range []bool{false, true} {
		t.Run(map[bool]string{false: "not configured", true: "configured"}[configured], func(t *testing.T) {
			c := fake.New()
			tagged := func(cluster, node, cell string) *cloud.Instance {
				in, err := c.Launch(ctx, cloud.LaunchSpec{CellID: cell, ClientToken: cell, InstanceType: "fake.small",
					Tags: map[string]string{cloud.TagCluster: cluster, cloud.TagNode: node, cloud.TagPodUID: "uid-" + cell, cloud.TagCellID: cell}})
				if err != nil {
					t.Fatal(err)
				}
				return in
			}
			old := tagged("kip", "old-node", "c-old")
			otherCluster := tagged("elsewhere", "old-node", "c-else")
			opts := Options{ClusterName: "kip", NodeName: "kip"}
			if configured {
				opts.FormerNodeNames = []string{"old-node"}
			}
			// A pod here with the same UID tag does not make the old node's instance its own.
			cells := &fakeCells{lost: map[string]string{}, pods: []struct{ uid, cell, inst string }{{"uid-c-old", "c-new", ""}}}
			g := New(opts, cells, c, nil, nil, nil)
			g.pass(ctx)
			g.pass(ctx)
			state := func(id string) cloud.State {
				in, err := c.Describe(ctx, id)
				if err != nil {
					t.Fatal(err)
				}
				return in.State
			}
			if want := map[bool]cloud.State{false: cloud.StateRunning, true: cloud.StateTerminated}[configured]; state(old.ID) != want {
				t.Errorf("the former node's instance is %s, want %s", state(old.ID), want)
			}
			if state(otherCluster.ID) != cloud.StateRunning {
				t.Errorf("another cluster's instance was terminated")
			}
		})
	}
}
