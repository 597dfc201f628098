package deploytest

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"helm.sh/helm/v4/pkg/action"
	"helm.sh/helm/v4/pkg/chart/v2/loader"
	release "helm.sh/helm/v4/pkg/release/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

// root is the repository root, from deploy/test.
var root = filepath.Join("..", "..")

// chartDir is the Helm chart.
var chartDir = filepath.Join(root, "deploy", "helm", "kip")

// kustomize renders the kustomization at deploy/<dir>.
func kustomize(t testing.TB, dir string) []*unstructured.Unstructured {
	t.Helper()
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	m, err := k.Run(filesys.MakeFsOnDisk(), filepath.Join(root, "deploy", dir))
	if err != nil {
		t.Fatalf("kustomize build deploy/%s: %v", dir, err)
	}
	out, err := m.AsYaml()
	if err != nil {
		t.Fatal(err)
	}
	return decode(t, out)
}

// helmTemplate renders the chart as `helm template kip deploy/helm/kip -n namespace
// --include-crds` with vals.
func helmTemplate(namespace string, vals map[string]any) ([]byte, error) {
	ch, err := loader.LoadDir(chartDir)
	if err != nil {
		return nil, err
	}
	inst := action.NewInstall(action.NewConfiguration())
	inst.DryRunStrategy = action.DryRunClient
	inst.ReleaseName = "kip"
	inst.Namespace = namespace
	inst.Replace = true
	inst.IncludeCRDs = true
	r, err := inst.Run(ch, vals)
	if err != nil {
		return nil, err
	}
	rel, ok := r.(*release.Release)
	if !ok {
		return nil, errors.New("helm returned an unexpected release type")
	}
	return []byte(rel.Manifest), nil
}

func helm(t testing.TB, vals map[string]any) []*unstructured.Unstructured {
	t.Helper()
	out, err := helmTemplate("kube-system", vals)
	if err != nil {
		t.Fatalf("helm template: %v", err)
	}
	return decode(t, out)
}

// decode splits a multi-document YAML stream into objects.
func decode(t testing.TB, data []byte) []*unstructured.Unstructured {
	t.Helper()
	d := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	var objs []*unstructured.Unstructured
	for {
		var m map[string]any
		if err := d.Decode(&m); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("decoding rendered YAML: %v\n%s", err, data)
		}
		if m == nil {
			continue
		}
		objs = append(objs, &unstructured.Unstructured{Object: m})
	}
	return objs
}

// key names an object: Kind namespace/name.
func key(o *unstructured.Unstructured) string {
	return o.GetKind() + " " + o.GetNamespace() + "/" + o.GetName()
}

func keys(objs []*unstructured.Unstructured) []string {
	var ks []string
	for _, o := range objs {
		ks = append(ks, key(o))
	}
	sort.Strings(ks)
	return ks
}

func find(t testing.TB, objs []*unstructured.Unstructured, k string) *unstructured.Unstructured {
	t.Helper()
	for _, o := range objs {
		if key(o) == k {
			return o
		}
	}
	t.Fatalf("no %s among %v", k, keys(objs))
	return nil
}

// wantObjects is what every rendering holds.
var wantObjects = []string{
	"ClusterRole /kip",
	"ClusterRoleBinding /kip",
	"ConfigMap kube-system/kip-config",
	"CustomResourceDefinition /cells.kip.dev",
	"Deployment kube-system/kip",
	"PodDisruptionBudget kube-system/kip",
	"Role kube-node-lease/kip",
	"Role kube-system/kip",
	"RoleBinding kube-node-lease/kip",
	"RoleBinding kube-system/kip",
	"ServiceAccount kube-system/kip",
}

// kipConfig is the ProviderConfig the ConfigMap carries, decoded.
func kipConfig(t testing.TB, objs []*unstructured.Unstructured) map[string]any {
	t.Helper()
	cm := find(t, objs, "ConfigMap kube-system/kip-config")
	s, _, _ := unstructured.NestedString(cm.Object, "data", "kip.yaml")
	var m map[string]any
	if err := yaml.Unmarshal([]byte(s), &m); err != nil {
		t.Fatalf("kip.yaml in the ConfigMap: %v", err)
	}
	return m
}

func str(t testing.TB, o *unstructured.Unstructured, path ...string) string {
	t.Helper()
	v, _, err := unstructured.NestedFieldNoCopy(o.Object, path...)
	if err != nil {
		t.Fatal(err)
	}
	s, _ := yaml.Marshal(v)
	return strings.TrimSpace(string(s))
}

// container is the Deployment's kip container.
func container(t testing.TB, objs []*unstructured.Unstructured) map[string]any {
	t.Helper()
	d := find(t, objs, "Deployment kube-system/kip")
	cs, _, _ := unstructured.NestedSlice(d.Object, "spec", "template", "spec", "containers")
	if len(cs) != 1 {
		t.Fatalf("the Deployment has %d containers, want 1", len(cs))
	}
	return cs[0].(map[string]any)
}

func readFile(t testing.TB, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
