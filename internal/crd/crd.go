// Package crd owns the cluster-scoped Cell custom resource (cells.kip.dev): its definition,
// embedded and installed at startup, and a Mirror that keeps one Cell object per live cell so
// `kubectl get cells` shows pod, instance type, price per hour, IP and phase. The objects
// are a view for people; the cloud's tags stay the truth kip recovers from.
package crd

import (
	"context"
	_ "embed"
	"fmt"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"sigs.k8s.io/yaml"
)

//go:embed cell-crd.yaml
var cellCRD []byte

// Group, version and resource of the Cell custom resource.
const (
	Group    = "kip.dev"
	Version  = "v1alpha1"
	Kind     = "Cell"
	Resource = "cells"
)

// CellGVR names the Cell resource for dynamic clients.
var CellGVR = schema.GroupVersionResource{Group: Group, Version: Version, Resource: Resource}

var crdGVR = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

// FieldManager is the manager name kip writes Cell objects (and the definition) as.
const FieldManager = "kip"

// Definition returns the CustomResourceDefinition of Cell.
func Definition() (*unstructured.Unstructured, error) {
	obj := map[string]any{}
	if err := yaml.Unmarshal(cellCRD, &obj); err != nil {
		return nil, fmt.Errorf("decoding the embedded Cell definition: %w", err)
	}
	return &unstructured.Unstructured{Object: obj}, nil
}

// Install creates or updates the Cell definition and waits until the API server serves it
// (condition Established), or ctx ends.
func Install(ctx context.Context, client dynamic.Interface) error {
	def, err := Definition()
	if err != nil {
		return err
	}
	crds := client.Resource(crdGVR)
	_, err = crds.Apply(ctx, def.GetName(), def, metav1.ApplyOptions{FieldManager: FieldManager, Force: true})
	if err != nil {
		return fmt.Errorf("installing the Cell definition: %w", err)
	}
	return waitEstablished(ctx, client, def.GetName())
}

// waitEstablished watches the definition until it is Established.
func waitEstablished(ctx context.Context, client dynamic.Interface, name string) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	crds := client.Resource(crdGVR)
	for {
		cur, err := crds.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return fmt.Errorf("reading the Cell definition: %w", err)
		}
		if established(cur) {
			return nil
		}
		w, err := crds.Watch(ctx, metav1.ListOptions{
			FieldSelector:   "metadata.name=" + name,
			ResourceVersion: cur.GetResourceVersion(),
		})
		if err != nil {
			return fmt.Errorf("watching the Cell definition: %w", err)
		}
		for ev := range w.ResultChan() {
			if u, ok := ev.Object.(*unstructured.Unstructured); ok && established(u) {
				w.Stop()
				return nil
			}
		}
		w.Stop()
		if ctx.Err() != nil {
			return fmt.Errorf("waiting for the Cell definition to be established: %w", ctx.Err())
		}
	}
}

func established(u *unstructured.Unstructured) bool {
	conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
	for _, c := range conds {
		m, ok := c.(map[string]any)
		if ok && m["type"] == "Established" && m["status"] == "True" {
			return true
		}
	}
	return false
}
