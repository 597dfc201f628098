package deploytest

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/restmapper"

	"github.com/kip-dev/kip/internal/controlplane"
)

// TestApplyToAPIServer applies each rendering (the base, both overlays, the chart) to a real
// kube-apiserver: a server-side dry run first (validated and admitted, nothing stored), then
// for real, each object read back afterwards.
func TestApplyToAPIServer(t *testing.T) {
	if testing.Short() {
		t.Skip("skipping: starts a control plane (-short)")
	}
	bin, err := controlplane.FindBinDir()
	if err != nil {
		t.Skipf("skipping: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cp, err := controlplane.Start(ctx, controlplane.Options{BinDir: bin, Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cp.Stop)
	dyn, err := dynamic.NewForConfig(cp.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	dc, err := discovery.NewDiscoveryClientForConfig(cp.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc))

	apply := func(t *testing.T, o *unstructured.Unstructured, dryRun bool) {
		t.Helper()
		m, err := mapper.RESTMapping(o.GroupVersionKind().GroupKind(), o.GroupVersionKind().Version)
		if err != nil {
			t.Fatalf("%s: %v", key(o), err)
		}
		var r dynamic.ResourceInterface = dyn.Resource(m.Resource)
		if m.Scope.Name() == meta.RESTScopeNameNamespace {
			r = dyn.Resource(m.Resource).Namespace(o.GetNamespace())
		}
		data, err := json.Marshal(o.Object)
		if err != nil {
			t.Fatal(err)
		}
		opts := metav1.PatchOptions{FieldManager: "kip-deploy-test", Force: new(true)}
		if dryRun {
			opts.DryRun = []string{metav1.DryRunAll}
		}
		if _, err := r.Patch(context.Background(), o.GetName(), types.ApplyPatchType, data, opts); err != nil {
			t.Errorf("applying %s (dry run %v): %v", key(o), dryRun, err)
			return
		}
		_, err = r.Get(context.Background(), o.GetName(), metav1.GetOptions{})
		switch {
		case dryRun && err == nil && !applied[key(o)]:
			t.Errorf("%s exists after a dry run", key(o))
		case dryRun && err != nil && !apierrors.IsNotFound(err):
			t.Errorf("reading %s: %v", key(o), err)
		case !dryRun && err != nil:
			t.Errorf("%s was applied but reads back %v", key(o), err)
		}
		if !dryRun {
			applied[key(o)] = true
		}
	}
	for _, r := range []struct {
		name string
		objs func(t *testing.T) []*unstructured.Unstructured
	}{
		{"base", func(t *testing.T) []*unstructured.Unstructured { return kustomize(t, "base") }},
		{"overlays/aws", func(t *testing.T) []*unstructured.Unstructured { return kustomize(t, "overlays/aws") }},
		{"overlays/local", func(t *testing.T) []*unstructured.Unstructured { return kustomize(t, "overlays/local") }},
		{"helm", func(t *testing.T) []*unstructured.Unstructured { return helm(t, nil) }},
	} {
		t.Run(r.name, func(t *testing.T) {
			objs := r.objs(t)
			for _, dry := range []bool{true, false} {
				for _, o := range objs {
					apply(t, o, dry)
				}
			}
		})
	}
}

// applied holds the objects applied for real so far (a later dry run finds them there).
var applied = map[string]bool{}
