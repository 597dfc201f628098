package crd

import (
	"context"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	dynamicfake "k8s.io/client-go/dynamic/fake"

	"github.com/kip-dev/kip/internal/cells"
)

func TestDefinition(t *testing.T) {
	def, err := Definition()
	if err != nil {
		t.Fatal(err)
	}
	if def.GetName() != Resource+"."+Group {
		t.Errorf("name %q", def.GetName())
	}
	scope, _, _ := unstructured.NestedString(def.Object, "spec", "scope")
	if scope != "Cluster" {
		t.Errorf("scope %q, want Cluster", scope)
	}
	versions, _, _ := unstructured.NestedSlice(def.Object, "spec", "versions")
	if len(versions) != 1 {
		t.Fatalf("versions %v", versions)
	}
	v := versions[0].(map[string]any)
	if v["name"] != Version {
		t.Errorf("version %v", v["name"])
	}
	var cols []string
	for _, c := range v["additionalPrinterColumns"].([]any) {
		cols = append(cols, c.(map[string]any)["name"].(string))
	}
	for _, want := range []string{"Pod", "Instance-Type", "Price/Hour", "IP", "Phase"} {
		found := false
		for _, c := range cols {
			found = found || c == want
		}
		if !found {
			t.Errorf("no printer column %s in %v", want, cols)
		}
	}
}

func newFakeDynamic() *dynamicfake.FakeDynamicClient {
	return dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(),
		map[schema.GroupVersionResource]string{CellGVR: "CellList"})
}

func TestMirrorWritesAndDeletes(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	client := newFakeDynamic()
	m := NewMirror(client, "kip", nil)
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
	got, err := client.Resource(CellGVR).Get(ctx, info.CellID, metav1.GetOptions{})
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
	if got.GetKind() != Kind || got.GetAPIVersion() != Group+"/"+Version {
		t.Errorf("kind %s apiVersion %s", got.GetKind(), got.GetAPIVersion())
	}

	if err := m.Delete(ctx, info.CellID); err != nil {
		t.Fatal(err)
	}
	flush(t, m)
	if _, err := client.Resource(CellGVR).Get(ctx, info.CellID, metav1.GetOptions{}); err == nil {
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
