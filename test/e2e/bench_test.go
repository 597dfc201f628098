//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/cache"

	"github.com/kip-dev/kip/internal/cloud"
	"github.com/kip-dev/kip/internal/imagebuild"
	"github.com/kip-dev/kip/internal/registry"
	"github.com/kip-dev/kip/test/e2e/framework"
)

// phases of a pod's start, in order, each marked by what the client sees first: the pod
// created (Create returned), bound (spec.nodeName set), kip's events (InstanceTypeSelected →
// CellLaunched → CellReady → Pulled → Started) and the pod Running. Event times are when the
// watch delivered them, so they include kip's event recorder's small delay.
var phases = []string{"created", "scheduled", "InstanceTypeSelected", "CellLaunched", "CellBound", "CellReady", "Pulled", "Started", "running"}

// tracker records, per pod, when each phase was first seen.
type tracker struct {
	mu    sync.Mutex
	seen  map[string]map[string]time.Time
	ready chan string // pod names as they turn Running
}

func (tr *tracker) mark(pod, phase string, at time.Time) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	m := tr.seen[pod]
	if m == nil {
		m = map[string]time.Time{}
		tr.seen[pod] = m
	}
	if _, ok := m[phase]; ok {
		return
	}
	m[phase] = at
	if phase == "running" {
		tr.ready <- pod
	}
}

// watchNamespace feeds the tracker from informers on the namespace's pods and events until
// ctx ends. Informers, not bare watches: the API server closes a watch that falls behind
// (a burst's hundreds of updates on a loaded machine), and a relist must not lose a pod.
func (tr *tracker) watchNamespace(ctx context.Context, e *framework.Env, ns string) error {
	f := informers.NewSharedInformerFactoryWithOptions(e.Client, 0, informers.WithNamespace(ns))
	onPod := func(obj any) {
		p, ok := obj.(*corev1.Pod)
		if !ok {
			return
		}
		now := time.Now()
		if p.Spec.NodeName != "" {
			tr.mark(p.Name, "scheduled", now)
		}
		if p.Status.Phase == corev1.PodRunning {
			tr.mark(p.Name, "running", now)
		}
	}
	if _, err := f.Core().V1().Pods().Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    onPod,
		UpdateFunc: func(_, obj any) { onPod(obj) },
	}); err != nil {
		return err
	}
	onEvent := func(obj any) {
		if k, ok := obj.(*corev1.Event); ok && k.InvolvedObject.Kind == "Pod" {
			tr.mark(k.InvolvedObject.Name, k.Reason, time.Now())
		}
	}
	if _, err := f.Core().V1().Events().Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    onEvent,
		UpdateFunc: func(_, obj any) { onEvent(obj) },
	}); err != nil {
		return err
	}
	f.Start(ctx.Done())
	for typ, ok := range f.WaitForCacheSync(ctx.Done()) {
		if !ok {
			return fmt.Errorf("watching namespace %s: the %v informer did not sync", ns, typ)
		}
	}
	return nil
}

// BenchmarkPodStartup creates pods one after another and reports created → Running p50/p99
// and each phase's p50/p99, in three series: "cold", KIP_BENCH_COLD (default 10) pods each with
// an image of its own that no cell on the host has pulled (the first pull on the host: fetch
// and unpack), then "cached", KIP_BENCH_PODS (default 30) pods of busybox, which one
// unmeasured pod pulled into the host's image store first (each cell still fetches the
// manifest), then "warm", KIP_BENCH_WARM (default 20) busybox pods each binding to a warm
// cell (cells.standby, one cell of the pods' type, kip restarted with it; each pod created
// once the pool has a ready cell again; docs/standby.md). Then it creates KIP_BENCH_BURST
// (default 100) pods at once and reports the time until all are Running (target ≤ 10 s on a
// 2-core machine). Run with -benchtime=1x.
func BenchmarkPodStartup(b *testing.B) {
	e := need(b)
	n := envInt("KIP_BENCH_PODS", 30)
	cold := envInt("KIP_BENCH_COLD", 10)
	burst := envInt("KIP_BENCH_BURST", 100)
	warm := envInt("KIP_BENCH_WARM", 20)
	for range b.N {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
		ns := e.Namespace(b)
		tr := &tracker{seen: map[string]map[string]time.Time{}, ready: make(chan string, n+cold+1+warm+burst)}
		if err := tr.watchNamespace(ctx, e, ns); err != nil {
			b.Fatal(err)
		}
		mk := func(name string) *corev1.Pod {
			p := framework.Pod(name, framework.Busybox("main", "while true; do sleep 1 & wait $!; done"))
			p.Spec.TerminationGracePeriodSeconds = new(int64) // SIGKILL on delete: do not time the teardown
			return p
		}
		createPod := func(p *corev1.Pod) {
			if _, err := e.Client.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{}); err != nil {
				b.Fatal(err)
			}
			tr.mark(p.Name, "created", time.Now())
		}
		waitRunningWithin := func(count int, timeout time.Duration) {
			timer := time.NewTimer(timeout)
			defer timer.Stop()
			for i := range count {
				select {
				case <-tr.ready:
				case <-timer.C:
					b.Fatalf("%d of %d pods not Running within %v; kip log %s", count-i, count, timeout, e.Kip.LogPath())
				case <-ctx.Done():
					b.Fatalf("pods not Running: %v", ctx.Err())
				}
			}
		}
		waitRunning := func(count int) { waitRunningWithin(count, podTimeout) }

		// Sequential: one pod at a time, each deleted once Running so cells never pile up.
		startOne := func(p *corev1.Pod) {
			createPod(p)
			waitRunning(1)
			if err := e.Client.CoreV1().Pods(ns).Delete(ctx, p.Name, metav1.DeleteOptions{}); err != nil {
				b.Fatal(err)
			}
		}
		// Cold: an image never pulled on this host per pod (same files, its own config, so
		// its own digest and unpack).
		tag := strconv.FormatInt(time.Now().UnixNano(), 36)
		for i := range cold {
			img, err := imagebuild.Busybox(imagebuild.Options{Labels: map[string]string{"kip.dev/bench-cold": tag + "-" + strconv.Itoa(i)}})
			if err != nil {
				b.Fatal(err)
			}
			repo := fmt.Sprintf("bench/cold-%s-%d:latest", tag, i)
			if _, err := registry.Push(ctx, e.Registry.Host(), repo, img, e.Registry.Auth()); err != nil {
				b.Fatal(err)
			}
			p := mk(fmt.Sprintf("cold-%02d", i))
			p.Spec.Containers[0].Image = e.Registry.Host() + "/" + repo
			startOne(p)
		}
		tr.mu.Lock()
		report(b, "cold", tr.seen, cold)
		tr.mu.Unlock()
		// Cached: busybox, pulled into the host's store by one unmeasured pod first.
		startOne(mk("warm"))
		for i := range n {
			startOne(mk(fmt.Sprintf("seq-%02d", i)))
		}
		tr.mu.Lock()
		report(b, "cached", tr.seen, n)
		tr.mu.Unlock()
		// Warm: the same pods, each bound to a warm cell of a one-cell pool, created once
		// the pool has a ready cell (its Cell resource turned Standby).
		if warm > 0 {
			restore := withStandbyKip(ctx, b, e, standbyType(ctx, b, e, mk("probe")), 1)
			var used []string
			for i := range warm {
				id, _, _, err := waitStandbyCell(ctx, e, 2*time.Minute, used...)
				if err != nil {
					restore()
					b.Fatalf("%v; kip log %s", err, e.Kip.LogPath())
				}
				used = append(used, id)
				startOne(mk(fmt.Sprintf("warm-%02d", i)))
			}
			tr.mu.Lock()
			report(b, "warm", tr.seen, warm)
			tr.mu.Unlock()
			restore()
		}
		// Let the sequential pods' cells go before the burst.
		if _, err := e.WaitForCells(ctx, map[string]string{cloud.TagPodNamespace: ns}, 2*time.Minute,
			framework.NoCells); err != nil {
			b.Fatal(err)
		}

		if burst > 0 {
			// The burst's pods are created together (a few requests in flight at a time, as a
			// controller scaling up would), and given longer than one pod is: on a loaded
			// machine the number is worth more than a failure.
			start := time.Now()
			var wg sync.WaitGroup
			sem := make(chan struct{}, 16)
			for i := range burst {
				wg.Add(1)
				sem <- struct{}{}
				go func() {
					defer func() { <-sem; wg.Done() }()
					p := mk(fmt.Sprintf("burst-%03d", i))
					if _, err := e.Client.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{}); err != nil {
						b.Error(err)
						return
					}
					tr.mark(p.Name, "created", time.Now())
				}()
			}
			wg.Wait()
			if b.Failed() {
				b.FailNow()
			}
			created := time.Since(start)
			waitRunningWithin(burst, 10*time.Minute)
			all := time.Since(start)
			b.ReportMetric(all.Seconds(), "burst-all-running-s")
			tr.mu.Lock()
			p50, p99, phases := startTimes(tr.seen, "burst", burst)
			tr.mu.Unlock()
			b.ReportMetric(p50, "burst-start-p50-ms")
			b.ReportMetric(p99, "burst-start-p99-ms")
			// Two lines: testing keeps only ten lines of a benchmark's log.
			b.Logf("burst: %d pods created at once (creating them took %.2fs) → all Running in %.2fs (target ≤ 10s); each created → Running p50 %.0f ms p99 %.0f ms",
				burst, created.Seconds(), all.Seconds(), p50, p99)
			b.Logf("  burst phases p50 ms: %s", phases)
		}
		cancel()
	}
}

// seriesPrefix is the pod name prefix of each series report names.
var seriesPrefix = map[string]string{"cold": "cold-", "cached": "seq-", "warm": "warm-", "burst": "burst-"}

// report prints created → Running and per-phase p50/p99 (milliseconds) for the pods of a
// series ("cold", "cached", "warm"), and reports start-p50/p99-ms (cached), cold-start-p50/p99-ms
// or warm-start-p50/p99-ms; a warm pod that launched a cell instead of binding one is left out.
func report(b *testing.B, series string, seen map[string]map[string]time.Time, n int) {
	total := []float64{}
	unbound := 0
	per := map[string][]float64{}
	slowest, slowestMS := "", 0.0
	for name, m := range seen {
		if !strings.HasPrefix(name, seriesPrefix[series]) {
			continue
		}
		c, r := m["created"], m["running"]
		if c.IsZero() || r.IsZero() {
			continue
		}
		if _, bound := m["CellBound"]; series == "warm" && !bound {
			unbound++ // launched its own cell: not a warm start
			continue
		}
		total = append(total, ms(r.Sub(c)))
		if d := ms(r.Sub(c)); d > slowestMS {
			slowest, slowestMS = name, d
		}
		prev := c
		for _, ph := range phases[1:] {
			t, ok := m[ph]
			if !ok {
				continue
			}
			per[ph] = append(per[ph], ms(t.Sub(prev)))
			prev = t
		}
	}
	if len(total) == 0 {
		return
	}
	p50, p99 := pct(total, 50), pct(total, 99)
	unit, target := "start", "p50 ≤ 300 ms, p99 ≤ 1 s"
	switch series {
	case "cold":
		unit, target = "cold-start", "reported apart"
	case "warm":
		unit, target = "warm-start", "p50 ≤ 150 ms"
	}
	b.ReportMetric(p50, unit+"-p50-ms")
	b.ReportMetric(p99, unit+"-p99-ms")
	b.Logf("%s: %d pods, created → Running p50 %.0f ms p99 %.0f ms (target %s)", series, len(total), p50, p99, target)
	// One line per percentile: testing keeps only ten lines of a benchmark's log.
	var p50s, p99s []string
	for _, ph := range phases[1:] {
		if v := per[ph]; len(v) > 0 {
			p50s = append(p50s, fmt.Sprintf("%s %.0f", ph, pct(v, 50)))
			p99s = append(p99s, fmt.Sprintf("%s %.0f", ph, pct(v, 99)))
		} else {
			p50s = append(p50s, ph+" -")
			p99s = append(p99s, ph+" -")
		}
	}
	b.Logf("  phases p50 ms: %s", strings.Join(p50s, ", "))
	b.Logf("  phases p99 ms: %s", strings.Join(p99s, ", "))
	if slowest != "" {
		var parts []string
		for _, ph := range phases {
			if t, ok := seen[slowest][ph]; ok {
				parts = append(parts, fmt.Sprintf("%s +%.0fms", ph, ms(t.Sub(seen[slowest]["created"]))))
			}
		}
		b.Logf("  slowest: %s %.0f ms (%s)", slowest, slowestMS, strings.Join(parts, ", "))
	}
	if len(total) < n {
		b.Logf("  (only %d of %d pods had both times; %d launched a cell instead of binding a warm one)", len(total), n, unbound)
	}
}

// startTimes returns the created → Running p50 and p99 (milliseconds) of a series' pods,
// and its phases' p50s as one line.
func startTimes(seen map[string]map[string]time.Time, series string, n int) (p50, p99 float64, phaseP50s string) {
	var total []float64
	per := map[string][]float64{}
	for name, m := range seen {
		c, r := m["created"], m["running"]
		if !strings.HasPrefix(name, seriesPrefix[series]) || c.IsZero() || r.IsZero() {
			continue
		}
		total = append(total, ms(r.Sub(c)))
		prev := c
		for _, ph := range phases[1:] {
			if t, ok := m[ph]; ok {
				per[ph] = append(per[ph], ms(t.Sub(prev)))
				prev = t
			}
		}
	}
	var parts []string
	for _, ph := range phases[1:] {
		if v := per[ph]; len(v) > 0 {
			parts = append(parts, fmt.Sprintf("%s %.0f", ph, pct(v, 50)))
		}
	}
	if len(total) < n {
		parts = append(parts, fmt.Sprintf("(only %d of %d pods had both times)", len(total), n))
	}
	return pct(total, 50), pct(total, 99), strings.Join(parts, ", ")
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// pct returns the p-th percentile (nearest rank) of v.
func pct(v []float64, p int) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	i := (p*len(s)+99)/100 - 1
	return s[max(0, min(i, len(s)-1))]
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v >= 0 {
		return v
	}
	return def
}
