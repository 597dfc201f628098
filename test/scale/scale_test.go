//go:build e2e

// Package scale holds the scale benchmark: a real control plane (internal/controlplane) and
// one kip (hack/tools/scalekip: the fake cloud, an in-process agent per cell) run
// KIP_SCALE_PODS pods (default 10,000), and the benchmark reports kip's RSS, CPU and API
// server requests per pod at a tenth of them and at all of them, and the ratios. It needs the
// control plane binaries (KIP_CP_BIN, hack/build-control-plane.sh) but not root: no cell is
// real. docs/design/scale.md has the numbers and how to read them.
//
//	KIP_CP_BIN=$(hack/build-control-plane.sh | tail -1) KIP_SCALE_PODS=1000 \
//	  go test -tags e2e -run '^$' -bench Scale -benchtime 1x -timeout 60m ./test/scale
package scale

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/kip-dev/kip/internal/controlplane"
	"github.com/kip-dev/kip/internal/crd"
)

// nodeName is the virtual node scalekip registers.
const nodeName = "kip-scale"

// sample is what was measured of kip at one point of the run.
type sample struct {
	at       time.Time
	cpu      float64 // kip's user+system CPU seconds so far
	hwm, rss int64   // bytes: peak and current resident set
	requests map[string]int64
	// cellSeconds is the integral of kip's live cells over time so far: what its steady,
	// per-cell cost (liveness probes, heartbeats) is proportional to.
	cellSeconds float64
}

// events is how many of the sample's requests created Events.
func (s sample) events() int64 { return s.requests["create events"] }

func (s sample) total() int64 {
	var n int64
	for _, v := range s.requests {
		n += v
	}
	return n
}

// BenchmarkScale runs KIP_SCALE_PODS (default 10,000) pods through one kip in two steps —
// a tenth of them, then the rest — waiting each time until all are Running, then deletes them
// all and waits until kip has no cell left. Run with -benchtime=1x.
func BenchmarkScale(b *testing.B) {
	cpBin, err := controlplane.FindBinDir()
	if err != nil {
		b.Skipf("skipping the scale benchmark: %v", err)
	}
	n := envInt("KIP_SCALE_PODS", 10000)
	first := max(n/10, 1)
	for range b.N {
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Minute)
		s := start(ctx, b, cpBin, n)

		ns := "scale"
		if _, err := s.client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
			b.Fatal(err)
		}
		pods := newPodCounter(ctx, b, s.client, ns)
		base := s.sample(b)

		t0 := time.Now()
		s.createPods(ctx, b, ns, 0, first)
		say(b, "%d pods created in %.1fs", first, time.Since(t0).Seconds())
		pods.waitRunning(ctx, b, s, first)
		s.settle(ctx, b)
		at1 := s.sample(b)
		idle1 := s.idle(b, 10*time.Second)
		say(b, "%d pods Running in %.1fs", first, time.Since(t0).Seconds())

		t1 := time.Now()
		s.createPods(ctx, b, ns, first, n)
		say(b, "%d more pods created in %.1fs", n-first, time.Since(t1).Seconds())
		pods.waitRunning(ctx, b, s, n)
		s.settle(ctx, b)
		atN := s.sample(b)
		idleN := s.idle(b, 10*time.Second)
		say(b, "%d more pods Running in %.1fs (%d in all)", n-first, time.Since(t1).Seconds(), n)
		// The numbers so far, at once: deleting 10,000 pods takes a while.
		s.report(b, base, at1, atN, nil, first, n, idle1, idleN)

		t2 := time.Now()
		s.deletePods(ctx, b, ns, n)
		pods.waitGone(ctx, b, s)
		s.waitNoCells(ctx, b)
		s.settle(ctx, b)
		gone := s.sample(b)
		say(b, "%d pods deleted and every cell gone in %.1fs", n, time.Since(t2).Seconds())

		s.report(b, base, at1, atN, &gone, first, n, idle1, idleN)
		s.stop(b)
		cancel()
	}
}

// say logs a line at once (a benchmark's own log shows only when it ends) and in its log.
func say(b *testing.B, format string, args ...any) {
	fmt.Printf("scale: "+format+"\n", args...)
	b.Logf(format, args...)
}

// scale is one run's control plane and kip.
type scale struct {
	dir     string
	cp      *controlplane.ControlPlane
	client  kubernetes.Interface
	dynamic dynamic.Interface
	kip     *exec.Cmd
	kipLog  string
	stats   string // URL of scalekip's /stats
	exited  chan struct{}

	mu          sync.Mutex
	cellSeconds float64
}

// integrateCells adds kip's live cells × time to cellSeconds every 500 ms until ctx ends.
func (s *scale) integrateCells(ctx context.Context) {
	last := time.Now()
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			st, err := s.readStats()
			if err != nil {
				continue
			}
			s.mu.Lock()
			s.cellSeconds += float64(st.LiveCells) * now.Sub(last).Seconds()
			s.mu.Unlock()
			last = now
		}
	}
}

// start builds scalekip, starts the control plane (etcd on tmpfs where there is one) and
// scalekip, and waits for the node to be Ready.
func start(ctx context.Context, b *testing.B, cpBin string, n int) *scale {
	root := "/dev/shm"
	if st, err := os.Stat(root); err != nil || !st.IsDir() {
		root = ""
	}
	dir, err := os.MkdirTemp(root, "kip-scale-")
	if err != nil {
		b.Fatal(err)
	}
	s := &scale{dir: dir, exited: make(chan struct{})}
	b.Cleanup(func() { s.stop(b) })

	bin := filepath.Join(dir, "scalekip")
	if out, err := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/kip-dev/kip/hack/tools/scalekip").CombinedOutput(); err != nil {
		b.Fatalf("building scalekip: %v\n%s", err, out)
	}

	// The scheduler binds every pod and records an Event for each: its client must not be
	// the bottleneck (its default is 50 requests/s).
	s.cp, err = controlplane.Start(ctx, controlplane.Options{BinDir: cpBin, Dir: filepath.Join(dir, "cp"), Log: os.Stderr,
		ExtraArgs: map[string][]string{
			"kube-scheduler":          {"--kube-api-qps=1000", "--kube-api-burst=2000"},
			"kube-controller-manager": {"--kube-api-qps=500", "--kube-api-burst=1000"},
		}})
	if err != nil {
		b.Fatal(err)
	}
	rc := s.cp.RESTConfig()
	rc.QPS, rc.Burst = 2000, 4000
	if s.client, err = kubernetes.NewForConfig(rc); err != nil {
		b.Fatal(err)
	}
	if s.dynamic, err = dynamic.NewForConfig(rc); err != nil {
		b.Fatal(err)
	}

	ip := hostIP()
	if ip == "" {
		b.Skip("skipping the scale benchmark: this host has no global unicast IPv4 address for the node's InternalIP")
	}
	ports := freePorts(b, 2)
	cfg := fmt.Sprintf(`apiVersion: kip.dev/v1alpha1
kind: ProviderConfig
cloud:
  provider: local
  local:
    bridge: kipscale0
    subnet: 10.251.0.0/24
node:
  name: %s
  internalIP: %s
  kubeletPort: %d
  capacity:
    pods: "%d"
    cpu: "100000"
    memory: 1000Ti
cells:
  clusterName: scale
`, nodeName, ip, ports[0], n+100)
	cfgPath := filepath.Join(dir, "kip.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		b.Fatal(err)
	}
	s.kipLog = filepath.Join(dir, "kip.log")
	logf, err := os.Create(s.kipLog)
	if err != nil {
		b.Fatal(err)
	}
	statsAddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[1]))
	s.stats = "http://" + statsAddr + "/stats"
	s.kip = exec.Command(bin, "--kubeconfig", s.cp.AdminKubeconfig(), "--config", cfgPath, "--stats-addr", statsAddr)
	s.kip.Stdout, s.kip.Stderr = logf, logf
	if err := s.kip.Start(); err != nil {
		logf.Close()
		b.Fatal(err)
	}
	go func() { _ = s.kip.Wait(); logf.Close(); close(s.exited) }()

	err = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
		if s.kipExited() {
			return false, fmt.Errorf("scalekip exited; log %s:\n%s", s.kipLog, controlplane.LogTail(s.kipLog, 30))
		}
		node, err := s.client.CoreV1().Nodes().Get(ctx, nodeName, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		for _, c := range node.Status.Conditions {
			if c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue {
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		b.Fatalf("waiting for node %s to be Ready: %v", nodeName, err)
	}
	go s.integrateCells(ctx)
	return s
}

func (s *scale) kipExited() bool {
	select {
	case <-s.exited:
		return true
	default:
		return false
	}
}

// stop ends scalekip and the control plane and removes the directory (KIP_SCALE_KEEP=1
// keeps it). It may be called more than once.
func (s *scale) stop(b *testing.B) {
	if s.kip != nil && s.kip.Process != nil && !s.kipExited() {
		_ = s.kip.Process.Signal(os.Interrupt)
		select {
		case <-s.exited:
		case <-time.After(30 * time.Second):
			_ = s.kip.Process.Kill()
			<-s.exited
		}
	}
	if s.cp != nil {
		s.cp.Stop()
		s.cp = nil
	}
	if s.dir != "" {
		if os.Getenv("KIP_SCALE_KEEP") == "1" {
			b.Logf("kept %s (kip log %s)", s.dir, s.kipLog)
		} else {
			_ = os.RemoveAll(s.dir)
		}
		s.dir = ""
	}
}

// createPods creates pods pod-<from>..pod-<to-1>, 32 at a time.
func (s *scale) createPods(ctx context.Context, b *testing.B, ns string, from, to int) {
	parallel(ctx, b, "creating pods", from, to, func(i int) error {
		_, err := s.client.CoreV1().Pods(ns).Create(ctx, pod(i), metav1.CreateOptions{})
		return err
	})
}

// deletePods deletes pods pod-0..pod-<n-1>, 32 at a time, with their grace period: kip stops
// each and deletes it for good once its cell is gone (one DeleteCollection of 10,000 pods
// outlasts the API server's request timeout).
func (s *scale) deletePods(ctx context.Context, b *testing.B, ns string, n int) {
	parallel(ctx, b, "deleting pods", 0, n, func(i int) error {
		return s.client.CoreV1().Pods(ns).Delete(ctx, pod(i).Name, metav1.DeleteOptions{})
	})
}

// parallel calls f for from..to-1, 32 at a time, and fails b with the first error.
func parallel(ctx context.Context, b *testing.B, what string, from, to int, f func(int) error) {
	next := atomic.Int64{}
	next.Store(int64(from))
	var wg sync.WaitGroup
	var errOnce sync.Once
	var firstErr error
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= to || ctx.Err() != nil {
					return
				}
				if err := f(i); err != nil {
					errOnce.Do(func() { firstErr = err })
					return
				}
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		b.Fatalf("%s: %v", what, firstErr)
	}
}

// pod is one simulated pod: one container, no requests, tolerating the virtual node's taint.
func pod(i int) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("pod-%05d", i), Labels: map[string]string{"app": "scale"}},
		Spec: corev1.PodSpec{
			Containers:   []corev1.Container{{Name: "main", Image: "busybox", Command: []string{"sleep", "infinity"}}},
			NodeSelector: map[string]string{"kubernetes.io/hostname": nodeName},
			Tolerations:  []corev1.Toleration{{Key: "virtual-kubelet.io/provider", Operator: corev1.TolerationOpExists}},
		},
	}
}

// sample reads kip's CPU and memory from /proc and its request counts from /stats.
func (s *scale) sample(b *testing.B) sample {
	b.Helper()
	st, err := s.readStats()
	if err != nil {
		b.Fatal(err)
	}
	cpu, hwm, rss, err := procUsage(s.kip.Process.Pid)
	if err != nil {
		b.Fatal(err)
	}
	s.mu.Lock()
	cs := s.cellSeconds
	s.mu.Unlock()
	return sample{at: time.Now(), cpu: cpu, hwm: hwm, rss: rss, requests: st.Requests, cellSeconds: cs}
}

// settle waits until kip has made no API request for 2 seconds besides its node's Lease and
// status: its Events, Cell objects and status updates trail the pods turning Running.
func (s *scale) settle(ctx context.Context, b *testing.B) {
	busy := func(st *stats) int64 {
		var n int64
		for k, v := range st.Requests {
			if !strings.HasSuffix(k, " leases") && !strings.HasSuffix(k, " nodes") && !strings.HasSuffix(k, " nodes/status") {
				n += v
			}
		}
		return n
	}
	last, quiet := int64(-1), 0
	err := wait.PollUntilContextTimeout(ctx, time.Second, 10*time.Minute, true, func(context.Context) (bool, error) {
		st, err := s.readStats()
		if err != nil {
			return false, err
		}
		if n := busy(st); n == last {
			quiet++
		} else {
			last, quiet = n, 0
		}
		return quiet >= 2, nil
	})
	if err != nil {
		b.Fatalf("waiting for kip to settle: %v", err)
	}
}

// idle measures kip's CPU over d with nothing changing: the steady cost of the pods it runs.
func (s *scale) idle(b *testing.B, d time.Duration) float64 {
	from := s.sample(b)
	time.Sleep(d) // a measurement window, not a wait for a condition
	to := s.sample(b)
	return (to.cpu - from.cpu) / to.at.Sub(from.at).Seconds()
}

// stats is scalekip's /stats.
type stats struct {
	Requests  map[string]int64 `json:"requests"`
	LiveCells int              `json:"liveCells"`
}

func (s *scale) readStats() (*stats, error) {
	resp, err := http.Get(s.stats)
	if err != nil {
		return nil, fmt.Errorf("reading scalekip's stats: %w", err)
	}
	defer resp.Body.Close()
	var st stats
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return nil, fmt.Errorf("decoding scalekip's stats: %w", err)
	}
	return &st, nil
}

// waitNoCells waits until kip has terminated every cell and its Cell objects are gone.
func (s *scale) waitNoCells(ctx context.Context, b *testing.B) {
	var live, mirrored int
	err := wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, 15*time.Minute, true, func(ctx context.Context) (bool, error) {
		st, err := s.readStats()
		if err != nil {
			return false, err
		}
		live = st.LiveCells
		l, err := s.dynamic.Resource(crd.CellGVR).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, nil
		}
		mirrored = len(l.Items)
		return live == 0 && mirrored == 0, nil
	})
	if err != nil {
		b.Fatalf("kip still has %d cells (%d Cell objects): %v; log %s", live, mirrored, err, s.kipLog)
	}
}

// report prints and reports the per-pod numbers at the first step and at all pods, and their
// ratios.
//
// Without gone (the pods are not deleted yet) it prints the numbers up to all Running and
// reports nothing.
func (s *scale) report(b *testing.B, base, at1, atN sample, gone *sample, first, n int, idle1, idleN float64) {
	deleted := gone != nil
	if !deleted {
		gone = &atN
	}
	perPod := func(from, to sample, pods int) (cpuMS, reqs float64) {
		return (to.cpu - from.cpu) * 1000 / float64(pods), float64(to.total()-from.total()) / float64(pods)
	}
	cpu1, req1 := perPod(base, at1, first)
	cpuN, reqN := perPod(base, atN, n)
	cpuMarg, reqMarg := perPod(at1, atN, n-first)
	cpuDel, reqDel := perPod(atN, *gone, n)
	// The same without the steady cost of the cells while they waited (idle CPU per cell-second,
	// as measured at each step, times the cell-seconds), and without Events (which client-go
	// drops when the API server falls behind).
	steady1 := idle1 / float64(first)
	steadyN := idleN / float64(n)
	life1 := cpu1 - steady1*(at1.cellSeconds-base.cellSeconds)*1000/float64(first)
	lifeN := cpuN - steadyN*(atN.cellSeconds-base.cellSeconds)*1000/float64(n)
	noEv1 := req1 - float64(at1.events()-base.events())/float64(first)
	noEvN := reqN - float64(atN.events()-base.events())/float64(n)
	mib := func(v int64) float64 { return float64(v) / (1 << 20) }

	var out bytes.Buffer
	w := bufio.NewWriter(&out)
	fmt.Fprintf(w, "scale: %d pods through one kip (fake cloud, in-process agents)\n", n)
	fmt.Fprintf(w, "  %-34s %12s %12s %8s\n", "", fmt.Sprintf("at %d", first), fmt.Sprintf("at %d", n), "ratio")
	fmt.Fprintf(w, "  %-34s %12.0f %12.0f %8.2f\n", "kip RSS peak (VmHWM, MiB)", mib(at1.hwm), mib(atN.hwm), mib(atN.hwm)/mib(at1.hwm))
	fmt.Fprintf(w, "  %-34s %12.2f %12.2f %8.2f\n", "kip CPU per pod to Running (ms)", cpu1, cpuN, cpuN/cpu1)
	fmt.Fprintf(w, "  %-34s %12.2f %12.2f %8.2f\n", "  less the idle cost while waiting", life1, lifeN, lifeN/life1)
	fmt.Fprintf(w, "  %-34s %12.2f %12.2f %8.2f\n", "API requests per pod to Running", req1, reqN, reqN/req1)
	fmt.Fprintf(w, "  %-34s %12.2f %12.2f %8.2f\n", "  of which Events", req1-noEv1, reqN-noEvN, (reqN-noEvN)/(req1-noEv1))
	fmt.Fprintf(w, "  %-34s %12.2f %12.2f %8.2f\n", "  other than Events", noEv1, noEvN, noEvN/noEv1)
	fmt.Fprintf(w, "  %-34s %12.1f %12.1f %8.2f\n", "idle kip CPU per running pod (µs/s)", idle1*1e6/float64(first), idleN*1e6/float64(n), (idleN/float64(n))/(idle1/float64(first)))
	fmt.Fprintf(w, "  pods %d..%d alone: %.2f ms CPU and %.2f requests per pod\n", first, n, cpuMarg, reqMarg)
	if deleted {
		fmt.Fprintf(w, "  deleting all %d: %.2f ms CPU and %.2f requests per pod; RSS peak at the end %.0f MiB, now %.0f MiB\n",
			n, cpuDel, reqDel, mib(gone.hwm), mib(gone.rss))
	}
	fmt.Fprintf(w, "  API requests per pod by verb and resource (to Running at %d, at %d; deleting):\n", first, n)
	keys := map[string]bool{}
	for _, m := range []map[string]int64{at1.requests, atN.requests, gone.requests} {
		for k := range m {
			keys[k] = true
		}
	}
	sorted := make([]string, 0, len(keys))
	for k := range keys {
		sorted = append(sorted, k)
	}
	slices.Sort(sorted)
	for _, k := range sorted {
		a := float64(at1.requests[k]-base.requests[k]) / float64(first)
		c := float64(atN.requests[k]-base.requests[k]) / float64(n)
		d := float64(gone.requests[k]-atN.requests[k]) / float64(n)
		fmt.Fprintf(w, "    %-40s %9.3f %9.3f %9.3f\n", k, a, c, d)
	}
	w.Flush()
	fmt.Print(out.String())
	if !deleted {
		return
	}
	b.Log("\n" + out.String())

	b.ReportMetric(mib(atN.hwm), "kip-rss-MiB")
	b.ReportMetric(cpu1, "cpu-ms/pod@first")
	b.ReportMetric(cpuN, "cpu-ms/pod@all")
	b.ReportMetric(cpuN/cpu1, "cpu-per-pod-ratio")
	b.ReportMetric(req1, "api-req/pod@first")
	b.ReportMetric(reqN, "api-req/pod@all")
	b.ReportMetric(reqN/req1, "api-req-per-pod-ratio")
	b.ReportMetric(lifeN/life1, "cpu-less-idle-per-pod-ratio")
	b.ReportMetric(noEvN/noEv1, "api-req-less-events-per-pod-ratio")
	b.ReportMetric(cpuDel, "delete-cpu-ms/pod")
	b.ReportMetric(reqDel, "delete-api-req/pod")
}

// podCounter follows the namespace's pods: how many exist and how many are Running.
type podCounter struct {
	mu      sync.Mutex
	running map[string]bool
	exist   map[string]bool
}

func newPodCounter(ctx context.Context, b *testing.B, client kubernetes.Interface, ns string) *podCounter {
	pc := &podCounter{running: map[string]bool{}, exist: map[string]bool{}}
	f := informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithNamespace(ns))
	inf := f.Core().V1().Pods().Informer()
	set := func(obj any) {
		p, ok := obj.(*corev1.Pod)
		if !ok {
			return
		}
		pc.mu.Lock()
		defer pc.mu.Unlock()
		pc.exist[p.Name] = true
		if p.Status.Phase == corev1.PodRunning {
			pc.running[p.Name] = true
		} else {
			delete(pc.running, p.Name)
		}
	}
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    set,
		UpdateFunc: func(_, obj any) { set(obj) },
		DeleteFunc: func(obj any) {
			if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = d.Obj
			}
			if p, ok := obj.(*corev1.Pod); ok {
				pc.mu.Lock()
				delete(pc.exist, p.Name)
				delete(pc.running, p.Name)
				pc.mu.Unlock()
			}
		},
	}); err != nil {
		b.Fatal(err)
	}
	f.Start(ctx.Done())
	f.WaitForCacheSync(ctx.Done())
	return pc
}

func (pc *podCounter) counts() (exist, running int) {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	return len(pc.exist), len(pc.running)
}

func (pc *podCounter) waitRunning(ctx context.Context, b *testing.B, s *scale, want int) {
	err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 40*time.Minute, true, func(context.Context) (bool, error) {
		if s.kipExited() {
			return false, fmt.Errorf("scalekip exited")
		}
		_, r := pc.counts()
		return r >= want, nil
	})
	if err != nil {
		_, r := pc.counts()
		b.Fatalf("%d of %d pods Running: %v; kip log %s:\n%s", r, want, err, s.kipLog, controlplane.LogTail(s.kipLog, 30))
	}
}

func (pc *podCounter) waitGone(ctx context.Context, b *testing.B, s *scale) {
	err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 40*time.Minute, true, func(context.Context) (bool, error) {
		if s.kipExited() {
			return false, fmt.Errorf("scalekip exited")
		}
		e, _ := pc.counts()
		return e == 0, nil
	})
	if err != nil {
		e, _ := pc.counts()
		b.Fatalf("%d pods not deleted: %v; kip log %s", e, err, s.kipLog)
	}
}

// procUsage reads a process's user+system CPU seconds (/proc/<pid>/stat, in USER_HZ = 100
// ticks a second on Linux) and its peak and current resident set (/proc/<pid>/status).
func procUsage(pid int) (cpu float64, hwm, rss int64, err error) {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, 0, err
	}
	// Fields after the command name (which may hold spaces) start at state, field 3.
	f := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
	utime, err1 := strconv.ParseFloat(f[11], 64)
	stime, err2 := strconv.ParseFloat(f[12], 64)
	if err1 != nil || err2 != nil {
		return 0, 0, 0, fmt.Errorf("parsing /proc/%d/stat: %v %v", pid, err1, err2)
	}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, 0, err
	}
	for _, line := range strings.Split(string(status), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		switch k {
		case "VmHWM":
			hwm = kb << 10
		case "VmRSS":
			rss = kb << 10
		}
	}
	return (utime + stime) / 100, hwm, rss, nil
}

// hostIP is this host's first global unicast IPv4 address: the node's InternalIP (the API
// server refuses a loopback one).
func hostIP() string {
	as, err := net.InterfaceAddrs()
	if err != nil {
		return ""
	}
	for _, a := range as {
		if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil && n.IP.IsGlobalUnicast() {
			return n.IP.String()
		}
	}
	return ""
}

func freePorts(b *testing.B, n int) []int {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}
