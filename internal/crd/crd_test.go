package crd

import (
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
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
