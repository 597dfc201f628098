//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/utils/ptr"

	"github.com/kip-dev/kip/internal/crd"
	"github.com/kip-dev/kip/test/e2e/framework"
)

// cellView is the part of a Cell object the test reads.
type cellView struct {
	Metadata struct {
		Name string `json:"name"`
	} `json:"metadata"`
	Spec struct {
		Pod          string  `json:"pod"`
		PodUID       string  `json:"podUID"`
		Node         string  `json:"node"`
		InstanceID   string  `json:"instanceID"`
		InstanceType string  `json:"instanceType"`
		PricePerHour float64 `json:"pricePerHour"`
	} `json:"spec"`
	Status struct {
		IP    string `json:"ip"`
		Phase string `json:"phase"`
	} `json:"status"`
}

// TestCellsResource: while a pod runs, `kubectl get cells` shows a Cell for it with its pod,
// instance type, price per hour, the pod's IP and phase Ready, and shows it again the same
// after a kip restart; once the pod is deleted the Cell is gone.
func TestCellsResource(t *testing.T) {
	e := need(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	ns := e.Namespace(t)
	pod := framework.Pod("celled", framework.Busybox("main", idle))
	pod.Spec.TerminationGracePeriodSeconds = ptr.To[int64](5)
	if _, err := e.Client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	running, err := e.WaitForPod(ctx, ns, "celled", podTimeout, framework.Running)
	if err != nil {
		t.Fatalf("%v\nevents:\n%s", err, e.EventsFor(ctx, ns, "celled"))
	}
	cells, err := e.Cells(ctx, framework.PodCells(ns, "celled"))
	if err != nil || len(cells) != 1 {
		t.Fatalf("pod's cells %v (%v), want one", cells, err)
	}
	backendCell := cells[0]

	// The mirror writes asynchronously: watch for the Cell to show the running pod.
	want := ns + "/celled"
	wctx, wcancel := context.WithTimeout(ctx, time.Minute)
	defer wcancel()
	var last *unstructured.Unstructured
	ev, err := framework.Until(wctx, e.Dynamic.Resource(crd.CellGVR), fields.Everything(), func(ev watch.Event) (bool, error) {
		u, ok := ev.Object.(*unstructured.Unstructured)
		if !ok || ev.Type == watch.Deleted {
			return false, nil
		}
		pod, _, _ := unstructured.NestedString(u.Object, "spec", "pod")
		if pod != want {
			return false, nil
		}
		last = u
		ip, _, _ := unstructured.NestedString(u.Object, "status", "ip")
		phase, _, _ := unstructured.NestedString(u.Object, "status", "phase")
		return ip == running.Status.PodIP && phase == "Ready", nil
	})
	if err != nil {
		var seen any
		if last != nil {
			seen = last.Object
		}
		t.Fatalf("no Ready Cell for %s with IP %s: %v; last seen %v", want, running.Status.PodIP, err, seen)
	}
	name := ev.Object.(*unstructured.Unstructured).GetName()

	// What a user sees: kubectl get cells -o json.
	out, err := e.Kubectl(ctx, "get", "cells", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var list struct{ Items []cellView }
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		t.Fatalf("decoding kubectl get cells: %v\n%s", err, out)
	}
	var c *cellView
	for i := range list.Items {
		if list.Items[i].Spec.Pod == want {
			if c != nil {
				t.Errorf("two Cells for %s: %s and %s", want, c.Metadata.Name, list.Items[i].Metadata.Name)
			}
			c = &list.Items[i]
		}
	}
	if c == nil {
		t.Fatalf("kubectl get cells shows no Cell for %s:\n%s", want, out)
	}
	for _, chk := range []struct {
		field    string
		got, exp any
	}{
		{"metadata.name", c.Metadata.Name, name},
		{"spec.podUID", c.Spec.PodUID, string(running.UID)},
		{"spec.node", c.Spec.Node, e.NodeName},
		{"spec.instanceID", c.Spec.InstanceID, backendCell.ID},
		{"spec.instanceType", c.Spec.InstanceType, backendCell.InstanceType},
		{"status.ip", c.Status.IP, running.Status.PodIP},
		{"status.phase", c.Status.Phase, "Ready"},
	} {
		if fmt.Sprint(chk.got) != fmt.Sprint(chk.exp) {
			t.Errorf("Cell %s: %s = %v, want %v", c.Metadata.Name, chk.field, chk.got, chk.exp)
		}
	}
	if c.Spec.InstanceType == "" {
		t.Errorf("Cell %s has no instance type", c.Metadata.Name)
	}
	if c.Spec.PricePerHour <= 0 {
		t.Errorf("Cell %s: pricePerHour %v, want the chosen offering's price", c.Metadata.Name, c.Spec.PricePerHour)
	}
	if ev, err := e.WaitForEvent(ctx, ns, "celled", "InstanceTypeSelected", 30*time.Second); err == nil {
		t.Logf("%s; Cell: %s %s $%v/h %s %s", ev.Message, c.Metadata.Name, c.Spec.InstanceType, c.Spec.PricePerHour, c.Status.IP, c.Status.Phase)
	}
	if table, err := e.Kubectl(ctx, "get", "cells"); err == nil {
		t.Logf("kubectl get cells:\n%s", table)
	}

	// A restarted kip adopts the cell and mirrors it in full again: with kip down, remove the
	// Cell, then watch the new kip write it back with the same type, price, IP and phase.
	e.Kip.Kill()
	if err := e.Dynamic.Resource(crd.CellGVR).Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
		t.Fatalf("deleting Cell %s while kip is down: %v", name, err)
	}
	if err := e.Kip.Start(ctx); err != nil {
		t.Fatalf("restarting kip: %v", err)
	}
	rctx, rcancel := context.WithTimeout(ctx, time.Minute)
	defer rcancel()
	last = nil
	_, err = framework.Until(rctx, e.Dynamic.Resource(crd.CellGVR), fields.OneTermEqualSelector("metadata.name", name), func(ev watch.Event) (bool, error) {
		u, ok := ev.Object.(*unstructured.Unstructured)
		if !ok || ev.Type == watch.Deleted {
			return false, nil
		}
		last = u
		phase, _, _ := unstructured.NestedString(u.Object, "status", "phase")
		return phase == "Ready", nil
	})
	if err != nil {
		t.Fatalf("Cell %s not written back Ready by the restarted kip: %v", name, err)
	}
	var again cellView
	if b, err := json.Marshal(last.Object); err != nil || json.Unmarshal(b, &again) != nil {
		t.Fatalf("decoding Cell %s: %v", name, err)
	}
	if again.Spec != c.Spec || again.Status != c.Status {
		t.Errorf("Cell %s after a kip restart: %+v %+v, before %+v %+v", name, again.Spec, again.Status, c.Spec, c.Status)
	}

	// Deleting the pod removes its cell and its Cell.
	cur, err := e.Dynamic.Resource(crd.CellGVR).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("reading Cell %s: %v", name, err)
	}
	if err := e.Client.CoreV1().Pods(ns).Delete(ctx, "celled", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	gctx, gcancel := context.WithTimeout(ctx, time.Minute)
	defer gcancel()
	_, err = framework.UntilOpts(gctx, e.Dynamic.Resource(crd.CellGVR), metav1.ListOptions{
		FieldSelector:   fields.OneTermEqualSelector("metadata.name", name).String(),
		ResourceVersion: cur.GetResourceVersion(),
	}, func(ev watch.Event) (bool, error) { return ev.Type == watch.Deleted, nil })
	if err != nil {
		t.Errorf("Cell %s not deleted after its pod: %v", name, err)
	}
	if _, err := e.WaitForCells(ctx, framework.PodCells(ns, "celled"), cellGoneTimeout, framework.NoCells); err != nil {
		t.Errorf("cell of the deleted pod not terminated: %v", err)
	}
	if _, err := e.Dynamic.Resource(crd.CellGVR).Get(ctx, name, metav1.GetOptions{}); err == nil {
		t.Errorf("Cell %s still exists after its pod was deleted", name)
	}
}
