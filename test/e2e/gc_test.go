//go:build e2e

package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/utils/ptr"

	"github.com/vishvananda/netns"

	"github.com/kip-dev/kip/internal/cloud"
	"github.com/kip-dev/kip/test/e2e/framework"
)

// TestVanishedNetnsCollected: a cell whose network namespace vanishes is collected — its
// directory (agent key, images, secret files) and address freed — and its pod fails CellLost,
// as a pod whose cell is lost does: once under a running kip (someone deletes the namespace),
// once across a restart of kip (the host "rebooted": the cell's processes and namespace are
// gone, its files are not).
func TestVanishedNetnsCollected(t *testing.T) {
	e := need(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	ns := e.Namespace(t)
	names := []string{"netns-deleted", "host-rebooted"}
	cells := map[string]*cloud.Instance{}
	for _, n := range names {
		p := framework.Pod(n, framework.Busybox("main", idle))
		p.Spec.TerminationGracePeriodSeconds = ptr.To[int64](2)
		if _, err := e.Client.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range names {
		if _, err := e.WaitForPod(ctx, ns, n, podTimeout, framework.Running); err != nil {
			t.Fatalf("%v\nevents:\n%s", err, e.EventsFor(ctx, ns, n))
		}
		got, err := e.Cells(ctx, framework.PodCells(ns, n))
		if err != nil || len(got) != 1 {
			t.Fatalf("pod %s cells %v (%v), want one", n, got, err)
		}
		cells[n] = got[0]
	}

	// Under a running kip: the namespace is deleted (its agent still runs in it, unreachable
	// by name).
	deleted := cells["netns-deleted"]
	t.Logf("deleting the netns of cell %s (pod netns-deleted)", deleted.ID)
	if err := netns.DeleteNamed("kip-" + deleted.ID); err != nil {
		t.Fatal(err)
	}
	expectCollected(ctx, t, e, ns, "netns-deleted", deleted)

	// Across a restart: kip is killed, the cell's processes and namespace vanish as in a
	// reboot, kip starts again.
	rebooted := cells["host-rebooted"]
	e.Kip.Kill()
	n, err := killNetns("kip-" + rebooted.ID)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("killed the %d processes of cell %s (pod host-rebooted) and deleted its netns while kip was down", n, rebooted.ID)
	if err := netns.DeleteNamed("kip-" + rebooted.ID); err != nil {
		t.Fatal(err)
	}
	if err := e.Kip.Start(ctx); err != nil {
		t.Fatal(err)
	}
	expectCollected(ctx, t, e, ns, "host-rebooted", rebooted)
}

// expectCollected waits for pod name to fail CellLost and for its cell to be gone: no
// directory, its address free, no netns.
func expectCollected(ctx context.Context, t *testing.T, e *framework.Env, ns, name string, cell *cloud.Instance) {
	t.Helper()
	p, err := e.WaitForPod(ctx, ns, name, 2*time.Minute, func(p *corev1.Pod) bool { return p.Status.Phase != corev1.PodRunning })
	if err != nil {
		t.Fatalf("%v\nevents:\n%s\nkip log:\n%s", err, e.EventsFor(ctx, ns, name), e.Kip.LogTail(30))
	}
	if p.Status.Phase != corev1.PodFailed || p.Status.Reason != "CellLost" {
		t.Errorf("pod %s after its cell's netns vanished: %s", name, framework.DescribePod(p))
	}
	if _, err := e.WaitForEvent(ctx, ns, name, "CellLost", time.Minute); err != nil {
		t.Errorf("no CellLost Event on pod %s: %v", name, err)
	}
	dir := filepath.Join(e.Dir, "cells", "cells", cell.ID)
	err = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, time.Minute, true, func(context.Context) (bool, error) {
		_, err := os.Stat(dir)
		return errors.Is(err, os.ErrNotExist), nil
	})
	if err != nil {
		t.Errorf("cell %s of pod %s not collected: its directory %s is still there", cell.ID, name, dir)
	}
	all, err := e.Cells(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range all {
		if c.ID == cell.ID || c.PrivateIP == cell.PrivateIP {
			t.Errorf("cell %s (%s) still listed: %s %s", c.ID, c.PrivateIP, c.State, c.Tags)
		}
	}
	if _, err := os.Stat(filepath.Join("/run/netns", "kip-"+cell.ID)); err == nil {
		t.Errorf("netns kip-%s is back", cell.ID)
	}
	if !t.Failed() {
		t.Logf("pod %s: %s %s; cell %s and its address %s freed", name, p.Status.Phase, p.Status.Reason, cell.ID, cell.PrivateIP)
	}
}

// killNetns SIGKILLs every process in the named network namespace (a cell's agent, its
// sandbox and containers) and waits for them to be gone, as a host reboot would leave it.
func killNetns(name string) (int, error) {
	var want syscall.Stat_t
	if err := syscall.Stat(filepath.Join("/run/netns", name), &want); err != nil {
		return 0, err
	}
	in := func() []int {
		var pids []int
		ents, _ := os.ReadDir("/proc")
		for _, en := range ents {
			pid, err := strconv.Atoi(en.Name())
			if err != nil {
				continue
			}
			var st syscall.Stat_t
			if syscall.Stat(fmt.Sprintf("/proc/%d/ns/net", pid), &st) == nil && st.Ino == want.Ino && st.Dev == want.Dev {
				pids = append(pids, pid)
			}
		}
		return pids
	}
	pids := in()
	for _, pid := range pids {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	err := wait.PollUntilContextTimeout(context.Background(), 50*time.Millisecond, 10*time.Second, true, func(context.Context) (bool, error) {
		for _, pid := range in() {
			if b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); len(b) > 0 && !isZombie(b) {
				return false, nil
			}
		}
		return true, nil
	})
	return len(pids), err
}

func isZombie(stat []byte) bool {
	for i := len(stat) - 1; i >= 0; i-- {
		if stat[i] == ')' {
			return i+2 < len(stat) && stat[i+2] == 'Z'
		}
	}
	return false
}
