package deploytest

import (
	"fmt"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"helm.sh/helm/v4/pkg/action"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"

	"github.com/kip-dev/kip/internal/config"
)

// TestKustomizeRenders builds the base and each overlay: every one holds the same objects in
// the right namespaces, a ProviderConfig kip accepts, and what the overlay is for.
func TestKustomizeRenders(t *testing.T) {
	for _, tt := range []struct {
		dir       string
		replicas  int64
		image     string
		provider  string
		hostNet   bool
		envSecret bool
		roleARN   bool
	}{
		{dir: "base", replicas: 2, image: "kip:v0.1.0", provider: "aws"},
		{dir: "overlays/aws", replicas: 2, image: "111122223333.dkr.ecr.us-east-1.amazonaws.com/kip:v0.1.0", provider: "aws", envSecret: true, roleARN: true},
		{dir: "overlays/local", replicas: 1, image: "kip:v0.1.0", provider: "local", hostNet: true},
	} {
		t.Run(tt.dir, func(t *testing.T) {
			objs := kustomize(t, tt.dir)
			if got := keys(objs); !slices.Equal(got, wantObjects) {
				t.Fatalf("objects:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(wantObjects, "\n"))
			}
			cm := find(t, objs, "ConfigMap kube-system/kip-config")
			data, _, _ := unstructured.NestedString(cm.Object, "data", "kip.yaml")
			cfg, err := config.Parse([]byte(data))
			if err != nil {
				t.Fatalf("kip.yaml does not load: %v\n%s", err, data)
			}
			if cfg.Cloud.Provider != tt.provider || cfg.Node.Name != "kip" {
				t.Errorf("kip.yaml: provider %q node %q, want %q, kip", cfg.Cloud.Provider, cfg.Node.Name, tt.provider)
			}
			d := find(t, objs, "Deployment kube-system/kip")
			if r := str(t, d, "spec", "replicas"); r != fmt.Sprint(tt.replicas) {
				t.Errorf("replicas %s, want %d", r, tt.replicas)
			}
			if hn, _, _ := unstructured.NestedBool(d.Object, "spec", "template", "spec", "hostNetwork"); hn != tt.hostNet {
				t.Errorf("hostNetwork %v, want %v", hn, tt.hostNet)
			}
			c := container(t, objs)
			if c["image"] != tt.image {
				t.Errorf("image %v, want %s", c["image"], tt.image)
			}
			if got := fmt.Sprint(c["args"]); got != "[run --config /etc/kip/kip.yaml --leader-elect --health-addr :10258]" {
				t.Errorf("args %s", got)
			}
			_, hasEnvFrom := c["envFrom"]
			if hasEnvFrom != tt.envSecret {
				t.Errorf("envFrom present %v, want %v", hasEnvFrom, tt.envSecret)
			}
			sa := find(t, objs, "ServiceAccount kube-system/kip")
			if arn := sa.GetAnnotations()["eks.amazonaws.com/role-arn"]; (arn != "") != tt.roleARN {
				t.Errorf("IRSA annotation %q, want one: %v", arn, tt.roleARN)
			}
			if d.GetNamespace() != "kube-system" {
				t.Errorf("Deployment in %q", d.GetNamespace())
			}
		})
	}
}

// TestCRDCopies: the manifests' Cell definition is the one kip installs (internal/crd).
func TestCRDCopies(t *testing.T) {
	want := readFile(t, filepath.Join(root, "internal", "crd", "cell-crd.yaml"))
	for _, p := range []string{
		filepath.Join(root, "deploy", "base", "cell-crd.yaml"),
		filepath.Join(chartDir, "crds", "cells.kip.dev.yaml"),
	} {
		if readFile(t, p) != want {
			t.Errorf("%s differs from internal/crd/cell-crd.yaml: copy it again", p)
		}
	}
}

// TestHelmLint lints the chart as `helm lint --strict`: no error, no warning.
func TestHelmLint(t *testing.T) {
	l := action.NewLint()
	l.Strict = true
	l.Namespace = "kube-system"
	res := l.Run([]string{chartDir}, map[string]any{})
	for _, err := range res.Errors {
		t.Errorf("lint error: %v", err)
	}
	for _, m := range res.Messages {
		t.Logf("lint: %s", m.Error())
	}
	if res.TotalChartsLinted != 1 {
		t.Errorf("linted %d charts, want 1", res.TotalChartsLinted)
	}
}

// normalize drops what only one renderer writes: Helm's config checksum annotation. The
// ConfigMap's kip.yaml is compared as data, not text.
func normalize(t testing.TB, objs []*unstructured.Unstructured) map[string]any {
	t.Helper()
	out := map[string]any{}
	for _, o := range objs {
		o = o.DeepCopy()
		if o.GetKind() == "Deployment" {
			unstructured.RemoveNestedField(o.Object, "spec", "template", "metadata", "annotations")
		}
		if o.GetKind() == "ConfigMap" {
			s, _, _ := unstructured.NestedString(o.Object, "data", "kip.yaml")
			var m map[string]any
			if err := yaml.Unmarshal([]byte(s), &m); err != nil {
				t.Fatal(err)
			}
			_ = unstructured.SetNestedField(o.Object, m, "data", "kip.yaml")
		}
		// Through JSON, so that numbers and lists compare alike from both decoders.
		b, err := yaml.Marshal(o.Object)
		if err != nil {
			t.Fatal(err)
		}
		var m map[string]any
		if err := yaml.Unmarshal(b, &m); err != nil {
			t.Fatal(err)
		}
		out[key(o)] = m
	}
	return out
}

// TestHelmMatchesKustomize: the chart with its default values renders the base's objects,
// field for field.
func TestHelmMatchesKustomize(t *testing.T) {
	k := normalize(t, kustomize(t, "base"))
	h := normalize(t, helm(t, nil))
	if !slices.Equal(sortedKeys(h), sortedKeys(k)) {
		t.Fatalf("helm renders %v, kustomize %v", sortedKeys(h), sortedKeys(k))
	}
	for name, ko := range k {
		if !reflect.DeepEqual(ko, h[name]) {
			kb, _ := yaml.Marshal(ko)
			hb, _ := yaml.Marshal(h[name])
			t.Errorf("%s differs:\nkustomize:\n%s\nhelm:\n%s", name, kb, hb)
		}
	}
}

func sortedKeys(m map[string]any) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

// TestHelmValues: the values that change objects change them where they should.
func TestHelmValues(t *testing.T) {
	objs := helm(t, map[string]any{
		"nodeName":    "edge",
		"clusterName": "prod",
		"replicas":    3,
		"image":       map[string]any{"repository": "registry.example/kip", "tag": "v9"},
		"aws":         map[string]any{"roleArn": "arn:aws:iam::1:role/kip", "credentialsSecret": "kip-aws"},
		"config":      map[string]any{"cells": map[string]any{"launchConcurrency": 7}},
	})
	cfg := kipConfig(t, objs)
	if got := fmt.Sprint(cfg["node"], cfg["cells"]); got != "map[name:edge] map[clusterName:prod launchConcurrency:7]" {
		t.Errorf("kip.yaml node and cells: %s", got)
	}
	for role, want := range map[string]string{
		"Role kube-system/kip":     "kip-ca kip-serving-edge kip-enrollments-edge kip-edge",
		"Role kube-node-lease/kip": "edge",
	} {
		var names []string
		rules, _, _ := unstructured.NestedSlice(find(t, objs, role).Object, "rules")
		for _, r := range rules {
			rn, _, _ := unstructured.NestedStringSlice(r.(map[string]any), "resourceNames")
			names = append(names, rn...)
		}
		if strings.Join(names, " ") != want {
			t.Errorf("%s names %v, want %s", role, names, want)
		}
	}
	if a := find(t, objs, "ServiceAccount kube-system/kip").GetAnnotations()["eks.amazonaws.com/role-arn"]; a != "arn:aws:iam::1:role/kip" {
		t.Errorf("IRSA annotation %q", a)
	}
	c := container(t, objs)
	if c["image"] != "registry.example/kip:v9" {
		t.Errorf("image %v", c["image"])
	}
	if got := fmt.Sprint(c["envFrom"]); got != "[map[secretRef:map[name:kip-aws optional:true]]]" {
		t.Errorf("envFrom %s", got)
	}
	if r := str(t, find(t, objs, "Deployment kube-system/kip"), "spec", "replicas"); r != "3" {
		t.Errorf("replicas %s", r)
	}

	// The config checksum follows the config, so a changed config rolls the pods.
	sum := func(objs []*unstructured.Unstructured) string {
		return str(t, find(t, objs, "Deployment kube-system/kip"), "spec", "template", "metadata", "annotations", "kip.dev/config-sha256")
	}
	if a, b := sum(helm(t, nil)), sum(objs); a == b || a == "null" {
		t.Errorf("config checksum %s for both configs", a)
	}
}

// TestHelmRefusesOtherNamespaces: kip's CA and Lease live in kube-system; installing elsewhere
// fails with a message saying so.
func TestHelmRefusesOtherNamespaces(t *testing.T) {
	_, err := helmTemplate("kip", nil)
	if err == nil || !strings.Contains(err.Error(), "install kip into kube-system") {
		t.Fatalf("err = %v, want one asking for kube-system", err)
	}
}
