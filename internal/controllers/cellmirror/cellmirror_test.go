package cellmirror

import (
	"context"
	"maps"
	"sync/atomic"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/kip-dev/kip/internal/cells"
	"github.com/kip-dev/kip/internal/crd"
)

func newFakeDynamic() *dynamicfake.FakeDynamicClient {
	return dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(),
		map[schema.GroupVersionResource]string{crd.CellGVR: "CellList"})
}

func TestMirrorWritesAndDeletes(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	client := newFakeDynamic()
	m := New(client, "kip", nil)
	done := make(chan struct{})
	go func() { m.Run(ctx, 2); close(done) }()

	info := cells.CellInfo{CellID: "c-0123456789ab", InstanceID: "lc-1", InstanceType: "local.nano", PricePerHour: 0.0025,
		IP: "10.250.0.2", Phase: cells.PhaseLaunching, PodNamespace: "ns", PodName: "web", PodUID: "uid-1", LaunchTime: time.Unix(100, 0)}
	if err := m.Upsert(ctx, info); err != nil {
		t.Fatal(err)
	}
	info.Phase = cells.PhaseReady
	if err := m.Upsert(ctx, info); err != nil {
		t.Fatal(err)
	}
	flush(t, m)
	got, err := client.Resource(crd.CellGVR).Get(ctx, info.CellID, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]any{
		"spec.pod": "ns/web", "spec.instanceType": "local.nano", "spec.pricePerHour": 0.0025, "spec.node": "kip",
		"spec.instanceID": "lc-1", "status.ip": "10.250.0.2", "status.phase": cells.PhaseReady,
	} {
		v, _, _ := unstructured.NestedFieldNoCopy(got.Object, splitPath(path)...)
		if v != want {
			t.Errorf("%s = %v, want %v", path, v, want)
		}
	}
	if got.GetKind() != crd.Kind || got.GetAPIVersion() != crd.Group+"/"+crd.Version {
		t.Errorf("kind %s apiVersion %s", got.GetKind(), got.GetAPIVersion())
	}

	if err := m.Delete(ctx, info.CellID); err != nil {
		t.Fatal(err)
	}
	flush(t, m)
	if _, err := client.Resource(crd.CellGVR).Get(ctx, info.CellID, metav1.GetOptions{}); err == nil {
		t.Error("the Cell is still there after Delete")
	}
	// Deleting what is gone is fine.
	if err := m.Delete(ctx, info.CellID); err != nil {
		t.Fatal(err)
	}
	flush(t, m)
	if err := m.Upsert(ctx, cells.CellInfo{}); err == nil {
		t.Error("Upsert accepted an empty cell id")
	}
	cancel()
	<-done
}

func flush(t *testing.T, m *Mirror) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := m.Flush(ctx); err != nil {
		t.Fatal(err)
	}
}

func splitPath(p string) []string {
	var out []string
	start := 0
	for i := 0; i < len(p); i++ {
		if p[i] == '.' {
			out = append(out, p[start:i])
			start = i + 1
		}
	}
	return append(out, p[start:])
}

// TestSlowAPIServerDoesNotDelayUpserts: while every write hangs in the API server, Upsert and
// Delete still return at once (the cells manager calls them on a pod's start path).
func TestSlowAPIServerDoesNotDelayUpserts(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	client := newFakeDynamic()
	release := make(chan struct{})
	var blocked atomic.Int32
	client.PrependReactor("*", "*", func(k8stesting.Action) (bool, runtime.Object, error) {
		blocked.Add(1)
		<-release
		return false, nil, nil
	})
	m := New(client, "kip", nil)
	done := make(chan struct{})
	go func() { m.Run(ctx, 1); close(done) }()
	defer func() { close(release); cancel(); <-done }()

	finished := make(chan struct{})
	go func() {
		defer close(finished)
		for i := range 100 {
			info := cells.CellInfo{CellID: "c-0123456789ab", Phase: cells.PhaseLaunching, PodNamespace: "ns", PodName: "web", InstanceID: string(rune('a' + i%26))}
			if err := m.Upsert(ctx, info); err != nil {
				t.Error(err)
			}
			if err := m.Delete(ctx, "c-other"); err != nil {
				t.Error(err)
			}
		}
	}()
	select {
	case <-finished:
	case <-time.After(10 * time.Second):
		t.Fatal("Upsert/Delete blocked behind a hanging API server")
	}
	err := wait.PollUntilContextTimeout(ctx, 10*time.Millisecond, 10*time.Second, true, func(context.Context) (bool, error) {
		return blocked.Load() > 0, nil
	})
	if err != nil {
		t.Error("no write reached the API server; the test did not exercise a hanging one")
	}
}

// TestWritesWithoutGet: a Cell the mirror wrote is replaced with one request (no get first);
// one that someone else deleted since is created again.
func TestWritesWithoutGet(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	client := newFakeDynamic()
	m := New(client, "kip", nil)
	done := make(chan struct{})
	go func() { m.Run(ctx, 1); close(done) }()
	verbs := func() map[string]int {
		n := map[string]int{}
		for _, a := range client.Actions() {
			n[a.GetVerb()]++
		}
		client.ClearActions()
		return n
	}
	info := cells.CellInfo{CellID: "c-1", Phase: cells.PhaseLaunching, PodNamespace: "ns", PodName: "web"}
	for _, step := range []struct {
		phase string
		want  map[string]int
	}{
		{cells.PhaseLaunching, map[string]int{"create": 1}},
		{cells.PhaseBooting, map[string]int{"update": 1}},
		{cells.PhaseReady, map[string]int{"update": 1}},
	} {
		info.Phase = step.phase
		if err := m.Upsert(ctx, info); err != nil {
			t.Fatal(err)
		}
		flush(t, m)
		if got := verbs(); !maps.Equal(got, step.want) {
			t.Errorf("writing phase %s: requests %v, want %v", step.phase, got, step.want)
		}
	}
	if err := client.Resource(crd.CellGVR).Delete(ctx, info.CellID, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	client.ClearActions()
	info.Phase = cells.PhaseTerminating
	if err := m.Upsert(ctx, info); err != nil {
		t.Fatal(err)
	}
	flush(t, m)
	if got, want := verbs(), map[string]int{"update": 1, "get": 1, "create": 1}; !maps.Equal(got, want) {
		t.Errorf("writing a Cell deleted behind the mirror's back: requests %v, want %v", got, want)
	}
	got, err := client.Resource(crd.CellGVR).Get(ctx, info.CellID, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if phase, _, _ := unstructured.NestedString(got.Object, "status", "phase"); phase != cells.PhaseTerminating {
		t.Errorf("status.phase = %q, want %s", phase, cells.PhaseTerminating)
	}
	cancel()
	<-done
}
