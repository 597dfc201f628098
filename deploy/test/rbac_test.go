package deploytest

import (
	"slices"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// TestOnlyKipReadsItsCA: in the kustomize base, each overlay and the Helm chart, kip's Role
// in kube-system reads Secret kip-ca by name, and every role that lets a subject read that
// Secret (a ClusterRole, or a Role in kube-system, with a matching rule) is bound only to
// kip's ServiceAccount: whoever reads the CA key can mint certificates every cell accepts.
func TestOnlyKipReadsItsCA(t *testing.T) {
	sets := map[string][]*unstructured.Unstructured{
		"base":           kustomize(t, "base"),
		"overlays/aws":   kustomize(t, "overlays/aws"),
		"overlays/local": kustomize(t, "overlays/local"),
		"helm":           helm(t, nil),
	}
	for name, objs := range sets {
		t.Run(name, func(t *testing.T) {
			role := find(t, objs, "Role kube-system/kip")
			if !readsCA(t, role, true) {
				t.Error("Role kube-system/kip has no rule reading Secret kip-ca by name")
			}
			readers := map[string]bool{} // "Kind namespace/name" of roles that can read kip-ca
			for _, o := range objs {
				if (o.GetKind() == "ClusterRole" || o.GetKind() == "Role" && o.GetNamespace() == "kube-system") && readsCA(t, o, false) {
					readers[o.GetKind()+" "+o.GetNamespace()+"/"+o.GetName()] = true
				}
			}
			for _, b := range objs {
				var ref string
				switch {
				case b.GetKind() == "ClusterRoleBinding":
					ref = str(t, b, "roleRef", "kind") + " /" + str(t, b, "roleRef", "name")
				case b.GetKind() == "RoleBinding" && b.GetNamespace() == "kube-system":
					k := str(t, b, "roleRef", "kind")
					ns := "kube-system"
					if k == "ClusterRole" {
						ns = ""
					}
					ref = k + " " + ns + "/" + str(t, b, "roleRef", "name")
				default:
					continue
				}
				if !readers[ref] {
					continue
				}
				subjects, _, _ := unstructured.NestedSlice(b.Object, "subjects")
				for _, s := range subjects {
					m := s.(map[string]any)
					if m["kind"] != "ServiceAccount" || m["name"] != "kip" || m["namespace"] != "kube-system" {
						t.Errorf("%s %s/%s lets %v read Secret kube-system/kip-ca (through %s)", b.GetKind(), b.GetNamespace(), b.GetName(), m, ref)
					}
				}
			}
		})
	}
}

// readsCA reports whether a rule of role allows get on Secret kip-ca; byName only counts
// rules that name it in resourceNames.
func readsCA(t *testing.T, role *unstructured.Unstructured, byName bool) bool {
	t.Helper()
	rules, _, err := unstructured.NestedSlice(role.Object, "rules")
	if err != nil {
		t.Fatal(err)
	}
	has := func(r map[string]any, field string, want ...string) bool {
		vs, _ := r[field].([]any)
		for _, v := range vs {
			if slices.Contains(want, v.(string)) {
				return true
			}
		}
		return false
	}
	for _, r := range rules {
		rule := r.(map[string]any)
		if !has(rule, "apiGroups", "", "*") || !has(rule, "resources", "secrets", "*") || !has(rule, "verbs", "get", "*") {
			continue
		}
		names, _ := rule["resourceNames"].([]any)
		if byName && has(rule, "resourceNames", "kip-ca") || !byName && (len(names) == 0 || has(rule, "resourceNames", "kip-ca")) {
			return true
		}
	}
	return false
}
