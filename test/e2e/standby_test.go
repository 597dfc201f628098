//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/utils/ptr"

	"github.com/kip-dev/kip/internal/cloud"
	"github.com/kip-dev/kip/internal/config"
	"github.com/kip-dev/kip/internal/crd"
	"github.com/kip-dev/kip/internal/selector"
	"github.com/kip-dev/kip/test/e2e/framework"
)

// standbyType is the instance type kip chooses for pod (what a warm cell must be to take it).
func standbyType(ctx context.Context, tb testing.TB, e *framework.Env, pod *corev1.Pod) string {
	tb.Helper()
	cfg, err := config.Load(e.Kip.Config)
	if err != nil {
		tb.Fatal(err)
	}
	types, err := e.Backend.InstanceTypes(ctx)
	if err != nil {
		tb.Fatal(err)
	}
	sel := &selector.Selector{Options: cfg.SelectorOptions()}
	choice, err := sel.Select(pod, types)
	if err != nil {
		tb.Fatal(err)
	}
	return choice.Candidate.Type.Name
}

// withStandbyKip stops the shared kip and starts one whose config adds a cells.standby pool
// of count cells of instanceType; restore stops it and starts the shared kip again, whose
// Recover terminates the standby cells it has no pool for.
func withStandbyKip(ctx context.Context, tb testing.TB, e *framework.Env, instanceType string, count int) (restore func()) {
	tb.Helper()
	base, err := os.ReadFile(e.Kip.Config)
	if err != nil {
		tb.Fatal(err)
	}
	if !strings.Contains(string(base), "\ncells:\n") {
		tb.Fatalf("kip's config has no cells section:\n%s", base)
	}
	cfg := strings.Replace(string(base), "\ncells:\n",
		fmt.Sprintf("\ncells:\n  standby:\n  - {instanceType: %s, count: %d}\n", instanceType, count), 1)
	path := filepath.Join(e.Dir, "kip-standby.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		tb.Fatal(err)
	}
	orig := e.Kip
	if err := orig.Stop(); err != nil {
		tb.Fatal(err)
	}
	k := orig.Replica("standby")
	k.Config = path
	e.Kip = k
	restore = func() {
		if err := k.Stop(); err != nil {
			tb.Error(err)
		}
		e.Kip = orig
		if err := orig.Start(context.Background()); err != nil {
			tb.Fatalf("restarting the shared kip: %v", err)
		}
	}
	if err := k.Start(ctx); err != nil {
		restore()
		tb.Fatal(err)
	}
	return restore
}

// standbyCells returns the live standby cells no pod is bound to.
func standbyCells(ctx context.Context, e *framework.Env) ([]*cloud.Instance, error) {
	all, err := e.Cells(ctx, map[string]string{cloud.TagCluster: e.ClusterName, cloud.TagStandby: "true"})
	var out []*cloud.Instance
	for _, c := range all {
		if c.Tags[cloud.TagPodUID] == "" && c.State == cloud.StateRunning {
			out = append(out, c)
		}
	}
	return out, err
}

// waitStandbyCell waits for a Cell resource in phase Standby (its agent answered) whose
// name is not in not, and returns its name, IP and resource version.
func waitStandbyCell(ctx context.Context, e *framework.Env, timeout time.Duration, not ...string) (name, ip, rv string, err error) {
	return waitCell(ctx, e, timeout, func(u *unstructured.Unstructured) bool {
		for _, n := range not {
			if u.GetName() == n {
				return false
			}
		}
		return true
	})
}

// waitCell waits for a Cell resource in phase Standby, with no pod, that match accepts.
func waitCell(ctx context.Context, e *framework.Env, timeout time.Duration, match func(*unstructured.Unstructured) bool) (name, ip, rv string, err error) {
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	ev, err := framework.Until(wctx, e.Dynamic.Resource(crd.CellGVR), fields.Everything(), func(ev watch.Event) (bool, error) {
		u, ok := ev.Object.(*unstructured.Unstructured)
		if !ok || ev.Type == watch.Deleted || !match(u) {
			return false, nil
		}
		phase, _, _ := unstructured.NestedString(u.Object, "status", "phase")
		pod, _, _ := unstructured.NestedString(u.Object, "spec", "pod")
		return phase == "Standby" && pod == "", nil
	})
	if err != nil {
		return "", "", "", fmt.Errorf("no Standby Cell: %w", err)
	}
	u := ev.Object.(*unstructured.Unstructured)
	ip, _, _ = unstructured.NestedString(u.Object, "status", "ip")
	return u.GetName(), ip, u.GetResourceVersion(), nil
}

// TestStandbyCells runs kip with a pool of one warm cell of the type a plain busybox pod gets:
// the pool fills (a cell tagged standby, no pod, Cell phase Standby); a pod binds to it (its
// IP is the warm cell's, the cell's tags name the pod, no cell was launched for it: the only
// cell tagged with its UID existed before the pod); the pool refills with another cell; the
// bound cell is terminated with its pod; after a SIGKILL of kip the surviving warm cell is
// kept, not doubled; and the shared kip, without pools, terminates it.
func TestStandbyCells(t *testing.T) {
	e := need(t)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	ns := e.Namespace(t)
	mk := func(name string) *corev1.Pod {
		p := framework.Pod(name, framework.Busybox("main", idle))
		p.Spec.TerminationGracePeriodSeconds = ptr.To[int64](1)
		return p
	}
	typ := standbyType(ctx, t, e, mk("probe"))
	restore := withStandbyKip(ctx, t, e, typ, 1)
	restored := false
	defer func() {
		if !restored {
			restore()
		}
	}()

	warm, warmIP, _, err := waitStandbyCell(ctx, e, 2*time.Minute)
	if err != nil {
		t.Fatalf("%v; kip log %s", err, e.Kip.LogPath())
	}
	pool, err := standbyCells(ctx, e)
	if err != nil || len(pool) != 1 || pool[0].CellID != warm || pool[0].InstanceType != typ || pool[0].PrivateIP != warmIP {
		t.Fatalf("standby cells %v (%v), want one %s cell %s at %s", pool, err, typ, warm, warmIP)
	}
	warmInst := pool[0]

	beforePod := time.Now()
	created, err := e.Client.CoreV1().Pods(ns).Create(ctx, mk("warm"), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	running, err := e.WaitForPod(ctx, ns, "warm", podTimeout, framework.Running)
	if err != nil {
		t.Fatalf("%v\nevents:\n%s", err, e.EventsFor(ctx, ns, "warm"))
	}
	if running.Status.PodIP != warmIP {
		t.Errorf("pod IP %s, want the warm cell's %s", running.Status.PodIP, warmIP)
	}
	cells, err := e.Cells(ctx, map[string]string{cloud.TagPodUID: string(created.UID)})
	if err != nil || len(cells) != 1 || cells[0].ID != warmInst.ID {
		t.Fatalf("the pod's cells %v (%v), want only the warm cell %s", cells, err, warmInst.ID)
	}
	// The same instance was listed, running, before the pod was created.
	if c := cells[0]; c.CellID != warm || c.Tags[cloud.TagPodName] != "warm" || c.Tags[cloud.TagPodNamespace] != ns || !c.LaunchTime.Before(beforePod) {
		t.Errorf("bound cell %+v: want cell %s launched before the pod (created after %s), tagged with it", c, warm, beforePod)
	}
	if _, err := e.WaitForEvent(ctx, ns, "warm", "CellBound", 30*time.Second); err != nil {
		t.Errorf("no CellBound event: %v\n%s", err, e.EventsFor(ctx, ns, "warm"))
	}
	if strings.Contains(e.EventsFor(ctx, ns, "warm"), "CellLaunched") {
		t.Errorf("a cell was launched for the pod:\n%s", e.EventsFor(ctx, ns, "warm"))
	}
	if out, err := e.Kubectl(ctx, "exec", "-n", ns, "warm", "--", "hostname"); err != nil || strings.TrimSpace(out) != "warm" {
		t.Errorf("hostname in the pod: %q (%v), want the pod's name", out, err)
	}

	// The pool refills with another cell.
	refill, _, refillRV, err := waitStandbyCell(ctx, e, 2*time.Minute, warm)
	if err != nil {
		t.Fatalf("%v; kip log %s", err, e.Kip.LogPath())
	}
	if table, err := e.Kubectl(ctx, "get", "cells"); err == nil {
		t.Logf("kubectl get cells:\n%s", table)
	}

	// The bound cell goes with its pod, never back to the pool.
	if err := e.Client.CoreV1().Pods(ns).Delete(ctx, "warm", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.WaitForCells(ctx, map[string]string{cloud.TagCellID: warm}, time.Minute, framework.NoCells); err != nil {
		t.Fatal(err)
	}

	// A crash keeps the pool as it is: the refill cell survives and is kept, not doubled.
	e.Kip.Kill()
	if err := e.Kip.Start(ctx); err != nil {
		t.Fatal(err)
	}
	// The restarted kip takes the surviving cell back (Booting while it asks its agent, then
	// Standby again: a new version of its Cell).
	if _, _, _, err := waitCell(ctx, e, 2*time.Minute, func(u *unstructured.Unstructured) bool {
		return u.GetName() == refill && u.GetResourceVersion() != refillRV
	}); err != nil {
		t.Fatalf("after the crash, cell %s not Standby again: %v; kip log %s", refill, err, e.Kip.LogPath())
	}
	pool, err = standbyCells(ctx, e)
	if err != nil || len(pool) != 1 || pool[0].CellID != refill {
		t.Errorf("standby cells after the crash %v (%v), want only %s", pool, err, refill)
	}

	restore()
	restored = true
	if _, err := e.WaitForCells(ctx, map[string]string{cloud.TagCluster: e.ClusterName, cloud.TagStandby: "true"}, time.Minute, framework.NoCells); err != nil {
		t.Errorf("the shared kip, with no pools, kept standby cells: %v", err)
	}
}
