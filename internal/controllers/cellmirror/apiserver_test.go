package cellmirror

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/dynamic"

	"github.com/kip-dev/kip/internal/cells"
	"github.com/kip-dev/kip/internal/controlplane"
	"github.com/kip-dev/kip/internal/crd"
)

// TestAgainstAPIServer installs the definition into a real kube-apiserver (the control plane
// harness), mirrors a cell and reads it back with kubectl's printer columns.
func TestAgainstAPIServer(t *testing.T) {
	if testing.Short() {
		t.Skip("skipping: starts a control plane (-short)")
	}
	bin, err := controlplane.FindBinDir()
	if err != nil {
		t.Skipf("skipping: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cp, err := controlplane.Start(ctx, controlplane.Options{BinDir: bin, Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cp.Stop)
	client, err := dynamic.NewForConfig(cp.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	if err := crd.Install(ctx, client); err != nil {
		t.Fatal(err)
	}
	// Installing again (a restart) is fine.
	if err := crd.Install(ctx, client); err != nil {
		t.Fatalf("second install: %v", err)
	}

	m := New(client, "kip", nil)
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { m.Run(runCtx, 1); close(done) }()
	defer func() { stop(); <-done }()
	info := cells.CellInfo{CellID: "c-0123456789ab", InstanceID: "lc-1", InstanceType: "local.nano", PricePerHour: 0.0025,
		IP: "10.250.0.2", Phase: cells.PhaseLaunching, PodNamespace: "default", PodName: "hello", PodUID: "uid-1", LaunchTime: time.Now()}
	for _, phase := range []string{cells.PhaseLaunching, cells.PhaseBooting, cells.PhaseReady} {
		info.Phase = phase
		if err := m.Upsert(ctx, info); err != nil {
			t.Fatal(err)
		}
	}
	flush(t, m)

	out, err := exec.CommandContext(ctx, cp.Kubectl(), "--kubeconfig", cp.AdminKubeconfig(), "get", "cells").CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl get cells: %v\n%s", err, out)
	}
	t.Logf("kubectl get cells:\n%s", out)
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) != 2 {
		t.Fatalf("want a header and one cell, got:\n%s", out)
	}
	header, row := strings.Fields(lines[0]), strings.Fields(lines[1])
	wantHeader := []string{"NAME", "POD", "INSTANCE-TYPE", "PRICE/HOUR", "IP", "PHASE", "AGE"}
	if strings.Join(header, " ") != strings.Join(wantHeader, " ") {
		t.Errorf("header %v, want %v", header, wantHeader)
	}
	wantRow := []string{"c-0123456789ab", "default/hello", "local.nano", "0.0025", "10.250.0.2", "Ready"}
	if len(row) < len(wantRow) || strings.Join(row[:len(wantRow)], " ") != strings.Join(wantRow, " ") {
		t.Errorf("row %v, want %v + age", row, wantRow)
	}

	if err := m.Delete(ctx, info.CellID); err != nil {
		t.Fatal(err)
	}
	flush(t, m)
	out, err = exec.CommandContext(ctx, cp.Kubectl(), "--kubeconfig", cp.AdminKubeconfig(), "get", "cells", "-o", "name").CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "" {
		t.Errorf("after Delete, kubectl get cells says %q (%v)", out, err)
	}
}
