//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/utils/ptr"

	"github.com/kip-dev/kip/internal/cloud"
	"github.com/kip-dev/kip/internal/crd"
	"github.com/kip-dev/kip/test/e2e/framework"
)

// seedEnv names the variable that replays a seeded e2e run (its delays) exactly.
const seedEnv = "KIP_E2E_SEED"

// TestResumeAfterKill SIGKILLs kip three times during a burst of 20 pods, at seeded random
// moments of the launch window (cells being launched, booting, agents not yet answering,
// images pulling, containers starting), restarting it after each kill. Every launch the
// restarted kip finds must be resumed where it stood: all 20 pods end Running, none is ever
// Failed, each has had one cell and only one (no relaunch), the Cell resources say the same,
// and the pods' deletion leaves nothing behind.
func TestResumeAfterKill(t *testing.T) {
	e := need(t)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	rng := seeded(t)
	const burst, kills = 20, 3
	ns := e.Namespace(t)
	w := watchBurst(ctx, t, e, ns)

	name := func(i int) string { return fmt.Sprintf("resume-%02d", i) }
	var wg sync.WaitGroup
	for i := range burst {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := framework.Pod(name(i), framework.Busybox("main", idle))
			p.Spec.TerminationGracePeriodSeconds = ptr.To[int64](2)
			if _, err := e.Client.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{}); err != nil {
				t.Errorf("creating pod %s: %v", name(i), err)
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	// Each kill lands at a random moment of the launch window: the first after the burst's
	// creation (cells being launched, booting, pulling), the next ones after the restarted
	// kip's start, while it recovers and resumes what the previous one left (it is not
	// waited for: it may be killed before its node is Ready).
	for k := range kills {
		d := time.Duration(rng.Int64N(int64(1500 * time.Millisecond)))
		select {
		case <-time.After(d):
		case <-ctx.Done():
			t.Fatal(ctx.Err())
		}
		t.Logf("kill %d of %d, %v after the %s: %s", k+1, kills, d.Round(time.Millisecond), map[bool]string{true: "burst", false: "restart"}[k == 0], w.tally())
		e.Kip.Kill()
		if k < kills-1 {
			if err := e.Kip.Launch(); err != nil {
				t.Fatalf("restarting kip: %v", err)
			}
		}
	}
	if err := e.Kip.Start(ctx); err != nil {
		t.Fatalf("restarting kip: %v", err)
	}

	for i := range burst {
		// Running, or Failed (it will never run then: no need to wait longer).
		p, err := e.WaitForPod(ctx, ns, name(i), 2*podTimeout, func(p *corev1.Pod) bool { return p.Status.Phase != corev1.PodPending })
		if err == nil && p.Status.Phase != corev1.PodRunning {
			err = fmt.Errorf("phase %s", p.Status.Phase)
		}
		if err != nil {
			t.Errorf("pod %s after the kills: %v; %s\nevents:\n%s", name(i), err, framework.DescribePod(p), e.EventsFor(ctx, ns, name(i)))
		}
	}
	if t.Failed() {
		t.Fatalf("kip log:\n%s", e.Kip.LogTail(60))
	}
	w.check(t, burst)
	checkOneCellEach(ctx, t, e, ns, burst)

	t.Log("deleting the pods")
	if err := e.Client.CoreV1().Pods(ns).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{}); err != nil {
		t.Fatal(err)
	}
	if cells, err := e.WaitForCells(ctx, map[string]string{cloud.TagPodNamespace: ns}, 2*time.Minute, framework.NoCells); err != nil {
		t.Errorf("cells of the deleted pods left: %v", err)
		for _, c := range cells {
			t.Logf("left: %s %v", c.ID, c.Tags)
		}
	}
}

// seeded returns the run's random source, seeded from $KIP_E2E_SEED or the clock, and logs
// the seed so a failing run can be replayed.
func seeded(t *testing.T) *rand.Rand {
	t.Helper()
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv(seedEnv); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("$%s=%q: %v", seedEnv, s, err)
		}
		seed = v
	}
	t.Logf("seed %d (%s=%d replays these delays)", seed, seedEnv, seed)
	return rand.New(rand.NewPCG(seed, seed))
}

// burstWatch follows the pods of a namespace and the cells of the local backend for the
// length of a test: every pod that was ever Failed, and every cell each pod ever had.
type burstWatch struct {
	e  *framework.Env
	ns string

	mu      sync.Mutex
	failed  map[string]string              // pod -> why
	cells   map[string]map[string]struct{} // pod -> cell (instance) ids seen
	running map[string]bool
}

// watchBurst starts following ns; it stops when t ends.
func watchBurst(ctx context.Context, t *testing.T, e *framework.Env, ns string) *burstWatch {
	t.Helper()
	w := &burstWatch{e: e, ns: ns, failed: map[string]string{}, cells: map[string]map[string]struct{}{}, running: map[string]bool{}}
	wctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	wg.Add(2)
	go func() {
		defer wg.Done()
		_, _ = framework.UntilOpts(wctx, e.Client.CoreV1().Pods(ns), metav1.ListOptions{}, func(ev watch.Event) (bool, error) {
			p, ok := ev.Object.(*corev1.Pod)
			if !ok || ev.Type == watch.Deleted {
				return false, nil
			}
			w.mu.Lock()
			defer w.mu.Unlock()
			w.running[p.Name] = p.Status.Phase == corev1.PodRunning
			if p.Status.Phase == corev1.PodFailed {
				if _, seen := w.failed[p.Name]; !seen {
					w.failed[p.Name] = p.Status.Reason + ": " + p.Status.Message
				}
			}
			return false, nil
		})
	}()
	go func() {
		defer wg.Done()
		// Cells are files: sample them often enough to see a pod's cell replaced.
		_ = wait.PollUntilContextCancel(wctx, 100*time.Millisecond, true, func(ctx context.Context) (bool, error) {
			cells, err := e.Cells(ctx, map[string]string{cloud.TagPodNamespace: ns})
			if err != nil {
				return false, nil
			}
			w.mu.Lock()
			defer w.mu.Unlock()
			for _, c := range cells {
				pod := c.Tags[cloud.TagPodName]
				if w.cells[pod] == nil {
					w.cells[pod] = map[string]struct{}{}
				}
				w.cells[pod][c.ID] = struct{}{}
			}
			return false, nil
		})
	}()
	return w
}

// tally says how far the burst got: pods Running and cells seen so far.
func (w *burstWatch) tally() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for _, r := range w.running {
		if r {
			n++
		}
	}
	return fmt.Sprintf("%d pods Running, %d with a cell", n, len(w.cells))
}

// check fails t for any pod that was ever Failed or ever had more than one cell.
func (w *burstWatch) check(t *testing.T, burst int) {
	t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	for pod, why := range w.failed {
		t.Errorf("pod %s was Failed (%s)", pod, why)
	}
	for pod, ids := range w.cells {
		if len(ids) > 1 {
			t.Errorf("pod %s had %d cells over the run: %v (relaunched instead of resumed)", pod, len(ids), slices.Sorted(mapKeys(ids)))
		}
	}
	if len(w.cells) != burst {
		t.Errorf("%d pods had a cell over the run, want %d", len(w.cells), burst)
	}
}

func mapKeys(m map[string]struct{}) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// checkOneCellEach checks that the burst's n pods of ns run on n cells, one each, counted
// three ways: the local backend's live cells, its cell directories and their network
// namespaces, and the Cell resources (written asynchronously: waited for).
func checkOneCellEach(ctx context.Context, t *testing.T, e *framework.Env, ns string, n int) {
	t.Helper()
	cells, err := e.Cells(ctx, map[string]string{cloud.TagPodNamespace: ns})
	if err != nil {
		t.Fatal(err)
	}
	perPod := map[string][]string{}
	for _, c := range cells {
		perPod[c.Tags[cloud.TagPodName]] = append(perPod[c.Tags[cloud.TagPodName]], c.ID)
		if c.State != cloud.StateRunning {
			t.Errorf("cell %s of pod %s is %s", c.ID, c.Tags[cloud.TagPodName], c.State)
		}
		if _, err := os.Stat(filepath.Join("/run/netns", "kip-"+c.ID)); err != nil {
			t.Errorf("cell %s of pod %s has no network namespace: %v", c.ID, c.Tags[cloud.TagPodName], err)
		}
	}
	if len(cells) != n || len(perPod) != n {
		t.Errorf("%d cells for %d pods (want %d): %v", len(cells), len(perPod), n, perPod)
	}
	for pod, ids := range perPod {
		if len(ids) != 1 {
			t.Errorf("pod %s has %d cells: %v", pod, len(ids), ids)
		}
	}
	// Every cell directory of the namespace (a half-made or half-removed cell included) is
	// one of those cells.
	dirs, err := cellDirsOf(e, ns)
	if err != nil {
		t.Fatal(err)
	}
	if len(dirs) != len(cells) {
		t.Errorf("%d cell directories for pods of %s, %d live cells: %v", len(dirs), ns, len(cells), dirs)
	}
	// The Cell resources: one per pod, naming its cell's instance.
	want := map[string]string{}
	for pod, ids := range perPod {
		want[ns+"/"+pod] = ids[0]
	}
	var got map[string][]string
	err = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		list, err := e.Dynamic.Resource(crd.CellGVR).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, nil
		}
		got = map[string][]string{}
		for _, u := range list.Items {
			pod, _, _ := unstructured.NestedString(u.Object, "spec", "pod")
			inst, _, _ := unstructured.NestedString(u.Object, "spec", "instanceID")
			if strings.HasPrefix(pod, ns+"/") {
				got[pod] = append(got[pod], inst)
			}
		}
		if len(got) != len(want) {
			return false, nil
		}
		for pod, id := range want {
			if ids := got[pod]; len(ids) != 1 || ids[0] != id {
				return false, nil
			}
		}
		return true, nil
	})
	if err != nil {
		t.Errorf("Cell resources of %s: %v, want one per pod naming its cell %v", ns, got, want)
	}
}

// cellDirsOf lists the local backend's cell directories whose tags name a pod of ns.
func cellDirsOf(e *framework.Env, ns string) ([]string, error) {
	root := filepath.Join(e.Dir, "cells", "cells")
	ents, err := os.ReadDir(root)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, en := range ents {
		b, err := os.ReadFile(filepath.Join(root, en.Name(), "tags.json"))
		if err != nil {
			continue
		}
		var tags map[string]string
		if json.Unmarshal(b, &tags) == nil && tags[cloud.TagPodNamespace] == ns {
			out = append(out, en.Name())
		}
	}
	return out, nil
}
