//go:build chaos

// Package chaos is `make chaos` (docs/chaos.md): seeded, randomized rounds of faults over the
// local backend with the real control plane, kip as a process it SIGKILLs and restarts, and
// real cells. Each round makes a burst of pods (bare pods, Deployments, Jobs), injects faults
// (kip killed, an agent killed, a cell partitioned shorter or longer than the lost timeout, a
// cell's netns deleted, cloud errors through cloud.faults) and then asserts that every pod ends
// in the phase kubelet semantics give it, that no pod ever had two cells at once, and that
// nothing of any cell is left on the host once the round's pods are gone. A tally ends the run.
//
//	CHAOS_ROUNDS=50 CHAOS_SEED=1 KIP_CP_BIN=... KIP_BIN=$PWD/bin go test -tags chaos -v ./test/chaos/
//
// CHAOS_ONLY=3,7 replays only those rounds of the seed (each round's plan depends on the seed
// and its number alone).
package chaos

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"

	"github.com/kip-dev/kip/internal/annotations"
	"github.com/kip-dev/kip/internal/cells"
	"github.com/kip-dev/kip/internal/cloud"
	"github.com/kip-dev/kip/internal/testenv"
	"github.com/kip-dev/kip/test/e2e/framework"
)

// How long a round waits for each outcome; generous, as the reference machine has two
// shared cores. These bound waits, they are not assertions on speed.
const (
	settleTimeout  = 5 * time.Minute
	cellsTimeout   = 90 * time.Second
	goneTimeout    = 3 * time.Minute
	leftoverWindow = 2 * time.Minute
)

// idle runs until killed and exits at once on SIGTERM.
const idle = "trap 'exit 0' TERM; while true; do sleep 1; done"

func envInt(name string, def int) int {
	if v := os.Getenv(name); v != "" {
		if n, err := strconv.Atoi(v); err == nil {
			return n
		}
	}
	return def
}

func TestChaos(t *testing.T) {
	if err := framework.Missing(); err != nil {
		if os.Getenv(testenv.RequireEnv) == "1" {
			t.Fatalf("%s=1 but chaos cannot run: %v", testenv.RequireEnv, err)
		}
		t.Skipf("skipping chaos: %v", err)
	}
	seed := uint64(time.Now().UnixNano() % 1_000_000)
	if v := os.Getenv("CHAOS_SEED"); v != "" {
		s, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatalf("CHAOS_SEED=%q: not a number", v)
		}
		seed = s
	}
	rounds := envInt("CHAOS_ROUNDS", 50)
	// CHAOS_DURATION (a Go duration) stops starting rounds once that much time has passed,
	// so that a run bounded in time still ends with its tally.
	var budget time.Duration
	if v := os.Getenv("CHAOS_DURATION"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("CHAOS_DURATION=%q: %v", v, err)
		}
		budget = d
	}
	var only []int
	for _, f := range strings.FieldsFunc(os.Getenv("CHAOS_ONLY"), func(r rune) bool { return r == ',' || r == ' ' }) {
		n, err := strconv.Atoi(f)
		if err != nil {
			t.Fatalf("CHAOS_ONLY=%q: %q is not a round number", os.Getenv("CHAOS_ONLY"), f)
		}
		only = append(only, n)
	}
	fmt.Printf("chaos: seed %d, %d rounds%s (rerun with CHAOS_SEED=%d)\n", seed, rounds, onlyNote(only), seed)

	ctx := context.Background()
	started := time.Now()
	env, err := framework.Setup(ctx, framework.Options{})
	if err != nil {
		t.Fatalf("setting up: %v", err)
	}
	c := &chaos{t: t, env: env, seed: seed}
	defer func() {
		if err := env.Teardown(context.Background()); err != nil {
			t.Errorf("teardown: %v", err)
		}
	}()
	if err := c.readConfig(); err != nil {
		t.Fatal(err)
	}
	// A capacity error makes kip try an instance type last for capacityErrorMemory; the
	// local catalog's types would all sink for the default 3 minutes.
	if err := c.restartWith(nil); err != nil {
		t.Fatal(err)
	}
	fmt.Printf("chaos: environment ready in %v\n", time.Since(started).Round(time.Second))

	var results []*result
	for r := 0; r < rounds; r++ {
		if len(only) > 0 && !slices.Contains(only, r) {
			continue
		}
		if budget > 0 && time.Since(started) > budget {
			fmt.Printf("\nchaos: CHAOS_DURATION=%v reached: stopping before round %d of %d\n", budget, r, rounds)
			break
		}
		p := NewPlan(seed, r)
		fmt.Printf("\n=== chaos %s\n", p)
		res := c.round(ctx, p)
		results = append(results, res)
		fmt.Printf("--- chaos round %d: %s in %v\n", r, res.verdict(), res.took.Round(time.Second))
		for _, l := range res.lines() {
			fmt.Printf("    %s\n", l)
		}
		if !res.ok() {
			fmt.Printf("    rerun alone: CHAOS_SEED=%d CHAOS_ONLY=%d make chaos\n", seed, r)
		}
		if res.fatal != "" {
			t.Errorf("round %d: %s; stopping", r, res.fatal)
			break
		}
	}
	tally := c.tally(results, time.Since(started))
	fmt.Println()
	fmt.Print(tally)
	for _, res := range results {
		if !res.ok() {
			t.Errorf("round %d failed: %s", res.plan.Round, res.verdict())
		}
	}
}

func onlyNote(only []int) string {
	if len(only) == 0 {
		return ""
	}
	return fmt.Sprintf(", only round(s) %v", only)
}

type chaos struct {
	t    *testing.T
	env  *framework.Env
	seed uint64
	// cfg is kip's config as the framework wrote it; cloud is the faults kip runs with now.
	cfg   map[string]any
	cloud *Plan
	// pods counts the pods every round made.
	pods int
}

func (c *chaos) readConfig() error {
	b, err := os.ReadFile(c.env.Kip.Config)
	if err != nil {
		return err
	}
	return yaml.Unmarshal(b, &c.cfg)
}

// restartWith rewrites kip's config (cloud.faults from p, or none) and restarts kip
// gracefully; no pod exists at that moment.
func (c *chaos) restartWith(p *Plan) error {
	cfg := c.cfg
	cloudSec, _ := cfg["cloud"].(map[string]any)
	delete(cloudSec, "faults")
	if p != nil {
		cloudSec["faults"] = map[string]any{
			"seed": p.CloudSeed, "throttleRate": cloudThrottleRate, "serverErrorRate": cloudServerErrorRate,
			"capacityErrorRate": cloudCapacityRate, "lostResponseRate": cloudLostResponseRate,
		}
	}
	cellsSec, _ := cfg["cells"].(map[string]any)
	if cellsSec == nil {
		cellsSec = map[string]any{}
		cfg["cells"] = cellsSec
	}
	cellsSec["capacityErrorMemory"] = "5s"
	b, err := yaml.Marshal(cfg)
	if err != nil {
		return err
	}
	if err := os.WriteFile(c.env.Kip.Config, b, 0o600); err != nil {
		return err
	}
	if err := c.env.Kip.Stop(); err != nil {
		return err
	}
	c.cloud = p
	return c.env.Kip.Start(context.Background())
}

// result is what one round found.
type result struct {
	plan  Plan
	took  time.Duration
	wrong []string // pods (or controllers) not in the phase they should be in
	leaks []string // what a cell left behind, or cells that do not match the pods
	dups  []string // pods with two live cells at once
	// relaunched: pods that got a second cell one after the other (informational).
	relaunched []string
	// harness: the round could not do what it planned (an API error, a fault that found no
	// target); fatal: the run cannot go on.
	harness []string
	fatal   string
}

func (r *result) ok() bool {
	return len(r.wrong) == 0 && len(r.leaks) == 0 && len(r.dups) == 0 && len(r.harness) == 0 && r.fatal == ""
}

func (r *result) verdict() string {
	if r.ok() {
		return "ok"
	}
	return fmt.Sprintf("FAILED (wrong phases %d, leaks %d, duplicates %d, harness errors %d)", len(r.wrong), len(r.leaks), len(r.dups), len(r.harness))
}

func (r *result) lines() []string {
	var out []string
	for _, w := range r.wrong {
		out = append(out, "wrong phase: "+w)
	}
	for _, l := range r.leaks {
		out = append(out, "leak: "+l)
	}
	for _, d := range r.dups {
		out = append(out, "duplicate: "+d)
	}
	for _, h := range r.harness {
		out = append(out, "harness: "+h)
	}
	for _, l := range r.relaunched {
		out = append(out, "relaunched (informational): "+l)
	}
	return out
}

// problems collects findings from concurrent checks.
type problems struct {
	mu  sync.Mutex
	out *[]string
}

func (p *problems) add(format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	*p.out = append(*p.out, fmt.Sprintf(format, args...))
}

func (c *chaos) logf(format string, args ...any) {
	fmt.Printf("    [%s] %s\n", time.Now().Format("15:04:05.0"), fmt.Sprintf(format, args...))
}

// round runs one plan.
func (c *chaos) round(ctx context.Context, p Plan) *result {
	res := &result{plan: p}
	t0 := time.Now()
	defer func() { res.took = time.Since(t0) }()
	e := c.env
	if err := e.Kip.Exited(); err != nil {
		c.logf("kip is not running (%v): starting it", err)
		if err := e.Kip.Start(ctx); err != nil {
			res.fatal = fmt.Sprintf("restarting kip: %v", err)
			return res
		}
	}
	if p.Cloud || c.cloud != nil {
		var want *Plan
		if p.Cloud {
			want = &p
		}
		if err := c.restartWith(want); err != nil {
			res.fatal = fmt.Sprintf("restarting kip with cloud faults %v: %v", p.Cloud, err)
			return res
		}
	}
	nsObj, err := e.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: fmt.Sprintf("chaos-%d-", p.Round)}}, metav1.CreateOptions{})
	if err != nil {
		res.fatal = fmt.Sprintf("creating namespace: %v", err)
		return res
	}
	ns := nsObj.Name
	tr := newTracker(filepath.Join(e.Dir, "cells"))
	tr.start()
	wrong := &problems{out: &res.wrong}
	harness := &problems{out: &res.harness}

	// The burst, with kip SIGKILLed at a random moment of it.
	kipDone := make(chan error, 1)
	go func() {
		if !p.KipKill {
			kipDone <- nil
			return
		}
		time.Sleep(p.KillAfter)
		c.logf("SIGKILL kip")
		e.Kip.Kill()
		time.Sleep(p.DownFor)
		c.logf("restarting kip")
		kipDone <- e.Kip.Start(ctx)
	}()
	c.burst(ctx, ns, p, harness)
	c.pods += p.Pods()
	if err := <-kipDone; err != nil {
		res.fatal = fmt.Sprintf("restarting kip after SIGKILL: %v", err)
		tr.finish()
		return res
	}

	// Targeted faults, once their pods run.
	before := map[string]corev1.ContainerStatus{}
	judged := map[string]bool{}
	var faultWG sync.WaitGroup
	for _, tg := range p.Targets {
		pod, err := e.WaitForPod(ctx, ns, tg.Pod, settleTimeout, func(p *corev1.Pod) bool {
			return framework.Running(p) && framework.Ready(p) || framework.Finished(p)
		})
		if err != nil || !framework.Running(pod) {
			wrong.add("%s never Running and Ready before its %s: %v %s\n%s", tg.Pod, tg.Fault, err, framework.DescribePod(pod), e.EventsFor(ctx, ns, tg.Pod))
			judged[tg.Pod] = true // counted once: no fault, no second verdict
			continue
		}
		before[tg.Pod] = pod.Status.ContainerStatuses[0]
		faultWG.Add(1)
		go func(tg Target) {
			defer faultWG.Done()
			time.Sleep(tg.After)
			if err := c.inject(ctx, ns, tg); err != nil {
				harness.add("%s on %s: %v", tg.Fault, tg.Pod, err)
			}
		}(tg)
	}
	faultWG.Wait()

	// Every pod in the phase it should be in.
	c.expect(ctx, ns, p, before, judged, wrong)
	// Cells match pods: one per running pod, none for finished ones, none for others.
	c.cellsMatchPods(ctx, ns, res)

	// Remove everything; nothing of any cell may be left.
	if err := c.deleteNamespace(ctx, ns); err != nil {
		harness.add("%v", err)
	}
	tr.finish()
	left := c.leftovers(tr)
	res.leaks = append(res.leaks, left...)
	if len(left) > 0 {
		c.cleanUp(ctx, tr)
	}
	res.dups = tr.duplicates()
	res.relaunched = tr.relaunched()
	if err := e.Kip.Exited(); err != nil {
		harness.add("kip died during the round: %v; log %s:\n%s", err, e.Kip.LogPath(), e.Kip.LogTail(30))
	}
	return res
}

func withChaos(meta *metav1.ObjectMeta, spec *corev1.PodSpec) {
	if meta.Annotations == nil {
		meta.Annotations = map[string]string{}
	}
	meta.Annotations[annotations.LostTimeout] = lostTimeout.String()
	spec.TerminationGracePeriodSeconds = ptr.To[int64](2)
}

// burst creates the plan's pods, Deployments and Jobs one after the other.
func (c *chaos) burst(ctx context.Context, ns string, p Plan, harness *problems) {
	e := c.env
	create := func(kind, name string, err error) {
		if err != nil {
			harness.add("creating %s %s: %v", kind, name, err)
		}
	}
	for i := range p.Long {
		pod := framework.Pod(fmt.Sprintf("long-%d", i), framework.Busybox("main", idle))
		withChaos(&pod.ObjectMeta, &pod.Spec)
		_, err := e.Client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{})
		create("pod", pod.Name, err)
	}
	for i, code := range p.ShortExit {
		pod := framework.Pod(fmt.Sprintf("short-%d", i), framework.Busybox("main", fmt.Sprintf("sleep 2; exit %d", code)))
		withChaos(&pod.ObjectMeta, &pod.Spec)
		_, err := e.Client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{})
		create("pod", pod.Name, err)
	}
	for i, n := range p.Deployments {
		name := fmt.Sprintf("deploy-%d", i)
		tmpl := framework.Pod("", framework.Busybox("main", idle))
		tmpl.Labels = map[string]string{"app": name}
		tmpl.Spec.RestartPolicy = corev1.RestartPolicyAlways
		withChaos(&tmpl.ObjectMeta, &tmpl.Spec)
		d := &appsv1.Deployment{
			ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: appsv1.DeploymentSpec{
				Replicas: ptr.To(int32(n)),
				Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": name}},
				Template: corev1.PodTemplateSpec{ObjectMeta: tmpl.ObjectMeta, Spec: tmpl.Spec},
			},
		}
		_, err := e.Client.AppsV1().Deployments(ns).Create(ctx, d, metav1.CreateOptions{})
		create("deployment", name, err)
	}
	for i, n := range p.Jobs {
		name := fmt.Sprintf("job-%d", i)
		tmpl := framework.Pod("", framework.Busybox("main", "sleep 2"))
		withChaos(&tmpl.ObjectMeta, &tmpl.Spec)
		j := &batchv1.Job{
			ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: batchv1.JobSpec{
				Completions: ptr.To(int32(n)), Parallelism: ptr.To(int32(n)), BackoffLimit: ptr.To(int32(6)),
				Template: corev1.PodTemplateSpec{ObjectMeta: tmpl.ObjectMeta, Spec: tmpl.Spec},
			},
		}
		_, err := e.Client.BatchV1().Jobs(ns).Create(ctx, j, metav1.CreateOptions{})
		create("job", name, err)
	}
}

// inject strikes tg's pod's cell.
func (c *chaos) inject(ctx context.Context, ns string, tg Target) error {
	e := c.env
	cs, err := e.Cells(ctx, framework.PodCells(ns, tg.Pod))
	if err != nil || len(cs) != 1 {
		return fmt.Errorf("finding the cell of %s: %d cells (%v)", tg.Pod, len(cs), err)
	}
	id := cs[0].ID
	meta := newTracker(filepath.Join(e.Dir, "cells")).scan()[id]
	if meta == nil {
		return fmt.Errorf("cell %s has no meta.json", id)
	}
	c.logf("%s on %s (cell %s)", tg.Fault, tg.Pod, id)
	switch tg.Fault {
	case FaultPartitionShort, FaultPartitionLong:
		if err := e.Backend.Partition(ctx, id); err != nil {
			return err
		}
		time.Sleep(tg.For)
		// A long partition ends with the cell terminated: nothing left to heal.
		if err := e.Backend.Heal(ctx, id); err != nil && !cloud.IsNotFound(err) && tg.Fault == FaultPartitionShort {
			return fmt.Errorf("healing: %w", err)
		}
		c.logf("healed %s after %v", tg.Pod, tg.For)
	case FaultAgentKill:
		if meta.meta.PID == 0 {
			return fmt.Errorf("cell %s records no agent pid", id)
		}
		return syscall.Kill(meta.meta.PID, syscall.SIGKILL)
	case FaultNetnsDelete:
		if meta.meta.Netns == "" {
			return fmt.Errorf("cell %s records no netns", id)
		}
		return deleteNetns(meta.meta.Netns)
	}
	return nil
}

func podFailedLost(p *corev1.Pod) bool {
	return p.Status.Phase == corev1.PodFailed && p.Status.Reason == cells.ReasonCellLost
}

// expect waits for every object of the plan to reach its expected end and records those
// that do not.
func (c *chaos) expect(ctx context.Context, ns string, p Plan, before map[string]corev1.ContainerStatus, judged map[string]bool, wrong *problems) {
	e := c.env
	faultOf := map[string]string{}
	for _, tg := range p.Targets {
		faultOf[tg.Pod] = tg.Fault
	}
	var wg sync.WaitGroup
	check := func(f func()) {
		wg.Add(1)
		go func() { defer wg.Done(); f() }()
	}
	for i := range p.Long {
		name := fmt.Sprintf("long-%d", i)
		fault := faultOf[name]
		if judged[name] {
			continue
		}
		check(func() {
			switch fault {
			case FaultPartitionLong, FaultAgentKill, FaultNetnsDelete:
				// The cell is silent past the lost timeout (partitioned, agent dead), or the
				// backend reports it terminated (its netns is gone, as after a host reboot):
				// Failed, CellLost, as a pod of a lost node; its cell is terminated.
				got, err := e.WaitForPod(ctx, ns, name, settleTimeout, framework.Finished)
				if err != nil || !podFailedLost(got) {
					wrong.add("%s after %s: want Failed/%s, got %s (%v)\n%s", name, fault, cells.ReasonCellLost, framework.DescribePod(got), err, e.EventsFor(ctx, ns, name))
				}
			default:
				// No fault, a short partition, kip killed: the same container keeps
				// running, no restart.
				if fault != "" {
					time.Sleep(5 * time.Second) // let kip notice what it will
				}
				got, err := e.WaitForPod(ctx, ns, name, settleTimeout, func(p *corev1.Pod) bool {
					return framework.Running(p) && framework.Ready(p) || framework.Finished(p)
				})
				if err != nil || !framework.Running(got) {
					wrong.add("%s (%s): want Running and Ready, got %s (%v)\n%s", name, orNone(fault), framework.DescribePod(got), err, e.EventsFor(ctx, ns, name))
					return
				}
				cs := got.Status.ContainerStatuses[0]
				if b, ok := before[name]; ok && (cs.ContainerID != b.ContainerID || cs.RestartCount != b.RestartCount) {
					wrong.add("%s after %s: container %s restarts %d, before %s restarts %d", name, fault, cs.ContainerID, cs.RestartCount, b.ContainerID, b.RestartCount)
				}
				if cs.RestartCount != 0 {
					wrong.add("%s: restartCount %d with restartPolicy Never", name, cs.RestartCount)
				}
			}
		})
	}
	for i, code := range p.ShortExit {
		name := fmt.Sprintf("short-%d", i)
		check(func() {
			got, err := e.WaitForPod(ctx, ns, name, settleTimeout, framework.Finished)
			want := corev1.PodSucceeded
			if code != 0 {
				want = corev1.PodFailed
			}
			var exit int32 = -1
			if got != nil && len(got.Status.ContainerStatuses) == 1 && got.Status.ContainerStatuses[0].State.Terminated != nil {
				exit = got.Status.ContainerStatuses[0].State.Terminated.ExitCode
			}
			if err != nil || got.Status.Phase != want || exit != int32(code) {
				wrong.add("%s (exit %d): want %s with exit code %d, got %s (%v)\n%s", name, code, want, code, framework.DescribePod(got), err, e.EventsFor(ctx, ns, name))
			}
		})
	}
	for i, n := range p.Deployments {
		name := fmt.Sprintf("deploy-%d", i)
		check(func() {
			var last *appsv1.Deployment
			err := wait.PollUntilContextTimeout(ctx, time.Second, settleTimeout, true, func(ctx context.Context) (bool, error) {
				d, err := e.Client.AppsV1().Deployments(ns).Get(ctx, name, metav1.GetOptions{})
				if err != nil {
					return false, nil
				}
				last = d
				return d.Status.ReadyReplicas == int32(n) && d.Status.UpdatedReplicas == int32(n) && d.Status.Replicas == int32(n), nil
			})
			if err != nil {
				wrong.add("deployment %s: want %d ready replicas, got %+v\n%s", name, n, statusOf(last), c.podsOf(ctx, ns, "app="+name))
				return
			}
			pods, _ := e.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=" + name})
			for _, pod := range pods.Items {
				if !(framework.Running(&pod) && framework.Ready(&pod)) && pod.DeletionTimestamp == nil {
					wrong.add("deployment %s: pod %s is %s; no fault targeted it", name, pod.Name, framework.DescribePod(&pod))
				}
			}
		})
	}
	for i, n := range p.Jobs {
		name := fmt.Sprintf("job-%d", i)
		check(func() {
			var last *batchv1.Job
			err := wait.PollUntilContextTimeout(ctx, time.Second, settleTimeout, true, func(ctx context.Context) (bool, error) {
				j, err := e.Client.BatchV1().Jobs(ns).Get(ctx, name, metav1.GetOptions{})
				if err != nil {
					return false, nil
				}
				last = j
				for _, cond := range j.Status.Conditions {
					if (cond.Type == batchv1.JobComplete || cond.Type == batchv1.JobFailed) && cond.Status == corev1.ConditionTrue {
						return true, nil
					}
				}
				return false, nil
			})
			if err != nil || last.Status.Succeeded != int32(n) {
				wrong.add("job %s: want %d completions, got succeeded %d failed %d (%v)\n%s", name, n, last.Status.Succeeded, last.Status.Failed, err, c.podsOf(ctx, ns, "job-name="+name))
				return
			}
			pods, _ := e.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "job-name=" + name})
			succeeded := 0
			for _, pod := range pods.Items {
				switch pod.Status.Phase {
				case corev1.PodSucceeded:
					succeeded++
				default:
					wrong.add("job %s: pod %s is %s; each of its pods should succeed\n%s", name, pod.Name, framework.DescribePod(&pod), e.EventsFor(ctx, ns, pod.Name))
				}
			}
			if succeeded != n {
				wrong.add("job %s: %d pods succeeded, want %d", name, succeeded, n)
			}
		})
	}
	wg.Wait()
}

func orNone(s string) string {
	if s == "" {
		return "no fault"
	}
	return s
}

func statusOf(d *appsv1.Deployment) any {
	if d == nil {
		return "(never read)"
	}
	return d.Status
}

func (c *chaos) podsOf(ctx context.Context, ns, sel string) string {
	pods, err := c.env.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: sel})
	if err != nil {
		return err.Error()
	}
	var b strings.Builder
	for _, p := range pods.Items {
		fmt.Fprintf(&b, "  pod %s: %s\n", p.Name, framework.DescribePod(&p))
	}
	return b.String()
}

// cellsMatchPods waits until the namespace's cells are exactly one per pod that is not
// finished, and records what does not match: a finished or missing pod with a cell is a leak,
// a pod with two a duplicate, a running pod with none wrong.
func (c *chaos) cellsMatchPods(ctx context.Context, ns string, res *result) {
	e := c.env
	var mismatch []string
	var dups []string
	_ = wait.PollUntilContextTimeout(ctx, time.Second, cellsTimeout, true, func(ctx context.Context) (bool, error) {
		mismatch, dups = nil, nil
		pods, err := e.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, nil
		}
		cs, err := e.Cells(ctx, map[string]string{cloud.TagPodNamespace: ns})
		if err != nil {
			return false, nil
		}
		byUID := map[string][]string{}
		for _, cell := range cs {
			byUID[cell.Tags[cloud.TagPodUID]] = append(byUID[cell.Tags[cloud.TagPodUID]], cell.ID)
		}
		for _, p := range pods.Items {
			ids := byUID[string(p.UID)]
			delete(byUID, string(p.UID))
			switch {
			case len(ids) > 1:
				dups = append(dups, fmt.Sprintf("pod %s has cells %v", p.Name, ids))
			case framework.Finished(&p) && len(ids) == 1:
				mismatch = append(mismatch, fmt.Sprintf("finished pod %s (%s) still has cell %s", p.Name, p.Status.Phase, ids[0]))
			case !framework.Finished(&p) && p.DeletionTimestamp == nil && len(ids) == 0:
				mismatch = append(mismatch, fmt.Sprintf("pod %s (%s) has no cell", p.Name, framework.DescribePod(&p)))
			}
		}
		for uid, ids := range byUID {
			mismatch = append(mismatch, fmt.Sprintf("cells %v belong to pod UID %s, which no longer exists", ids, uid))
		}
		return len(mismatch) == 0 && len(dups) == 0, nil
	})
	res.dups = append(res.dups, dups...)
	res.leaks = append(res.leaks, mismatch...)
}

// deleteNamespace deletes ns and waits for its pods to be gone.
func (c *chaos) deleteNamespace(ctx context.Context, ns string) error {
	e := c.env
	if err := e.Client.CoreV1().Namespaces().Delete(ctx, ns, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("deleting namespace %s: %w", ns, err)
	}
	var left []corev1.Pod
	err := wait.PollUntilContextTimeout(ctx, time.Second, goneTimeout, true, func(ctx context.Context) (bool, error) {
		pods, err := e.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, nil
		}
		left = pods.Items
		return len(left) == 0, nil
	})
	if err != nil {
		var names []string
		for _, p := range left {
			names = append(names, p.Name+" "+framework.DescribePod(&p))
		}
		return fmt.Errorf("pods of namespace %s not gone after %v: %v", ns, goneTimeout, names)
	}
	return nil
}

// leftovers waits (up to leftoverWindow) for everything the round's cells held to be gone,
// and returns what is still there.
func (c *chaos) leftovers(tr *tracker) []string {
	e := c.env
	agent := filepath.Join(e.BinDir, "kip-cell")
	var left []string
	_ = wait.PollUntilContextTimeout(context.Background(), time.Second, leftoverWindow, true, func(context.Context) (bool, error) {
		tr.poll() // a cell made after the last poll (a late launch) is checked too
		left = tr.leftovers(agent, e.Bridge)
		return len(left) == 0, nil
	})
	return left
}

// cleanUp terminates what a failed round left behind, so that the next round starts clean
// (its own findings are its own).
func (c *chaos) cleanUp(ctx context.Context, tr *tracker) {
	e := c.env
	for id := range tr.scan() {
		if err := e.Backend.Terminate(ctx, id); err != nil && !cloud.IsNotFound(err) {
			c.logf("cleaning up cell %s: %v", id, err)
		}
	}
	for _, pid := range agentProcs(filepath.Join(e.BinDir, "kip-cell")) {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	if left := c.leftovers(tr); len(left) > 0 {
		c.logf("still left after cleaning up: %v", left)
	}
}

var faultLine = regexp.MustCompile(`injected cloud fault.*fault=(\S+)`)

// tally is the run's summary table.
func (c *chaos) tally(results []*result, took time.Duration) string {
	faults := map[string]int{}
	var failed []string
	var wrong, leaks, dups, harness, relaunched int
	for _, r := range results {
		for _, f := range r.plan.Faults() {
			faults[f]++
		}
		wrong += len(r.wrong)
		leaks += len(r.leaks)
		dups += len(r.dups)
		harness += len(r.harness)
		relaunched += len(r.relaunched)
		if !r.ok() {
			failed = append(failed, strconv.Itoa(r.plan.Round))
		}
	}
	cloudFaults := map[string]int{}
	logs, _ := filepath.Glob(filepath.Join(c.env.Kip.LogDir, "kip-*.log"))
	for _, l := range logs {
		b, err := os.ReadFile(l)
		if err != nil {
			continue
		}
		for _, m := range faultLine.FindAllStringSubmatch(string(b), -1) {
			cloudFaults[strings.Trim(m[1], `"`)]++
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "chaos tally (seed %d)\n", c.seed)
	fmt.Fprintf(&b, "  rounds            %d (failed: %d%s)\n", len(results), len(failed), listNote(failed))
	fmt.Fprintf(&b, "  pods created      %d (bare, Deployment and Job pods; replacements not counted)\n", c.pods)
	fmt.Fprintf(&b, "  faults injected   %s\n", counts(faults, []string{FaultKipKill, FaultAgentKill, FaultPartitionShort, FaultPartitionLong, FaultNetnsDelete, FaultCloud}))
	fmt.Fprintf(&b, "  cloud faults      %s (calls kip saw fail, from its logs)\n", counts(cloudFaults, []string{"throttle", "server-error", "capacity", "lost-response"}))
	fmt.Fprintf(&b, "  leaks             %d\n", leaks)
	fmt.Fprintf(&b, "  duplicates        %d\n", dups)
	fmt.Fprintf(&b, "  wrong phases      %d\n", wrong)
	fmt.Fprintf(&b, "  harness errors    %d\n", harness)
	fmt.Fprintf(&b, "  relaunched pods   %d (a second cell after the first; informational)\n", relaunched)
	fmt.Fprintf(&b, "  runtime           %v\n", took.Round(time.Second))
	return b.String()
}

func listNote(rounds []string) string {
	if len(rounds) == 0 {
		return ""
	}
	return " — rounds " + strings.Join(rounds, ", ")
}

func counts(m map[string]int, order []string) string {
	var parts []string
	for _, k := range order {
		parts = append(parts, fmt.Sprintf("%s %d", k, m[k]))
	}
	var extra []string
	for k := range m {
		if !slices.Contains(order, k) {
			extra = append(extra, k)
		}
	}
	sort.Strings(extra)
	for _, k := range extra {
		parts = append(parts, fmt.Sprintf("%s %d", k, m[k]))
	}
	return strings.Join(parts, ", ")
}
