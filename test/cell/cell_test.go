// Package cell_test runs the real cell agent (kip-cell) in real local cells: a network
// namespace on a bridge with its own cgroup, launched by the local cloud backend; images come
// from a registry listening on the bridge address, and the agent is reached over mutual TLS
// at the cell's address. Needs root, runc and busybox-static.
package cell_test

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/kip-dev/kip/internal/cellapi"
	"github.com/kip-dev/kip/internal/cloud"
	"github.com/kip-dev/kip/internal/cloud/local"
	"github.com/kip-dev/kip/internal/pki"
	"github.com/kip-dev/kip/internal/registry"
	"github.com/kip-dev/kip/internal/testenv"
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// kipCell returns the agent binary: $KIP_CELL_BIN, or cmd/kip-cell built once per run.
func kipCell(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("KIP_CELL_BIN"); p != "" {
		return p
	}
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "kip-cell-bin")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "kip-cell")
		out, err := exec.Command("go", "build", "-o", binPath, "github.com/kip-dev/kip/cmd/kip-cell").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("building kip-cell: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binPath != "" {
		os.RemoveAll(filepath.Dir(binPath))
	}
	os.Exit(code)
}

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// vpc is a local backend with its own bridge, subnet and cgroup parent, a registry on the
// bridge address and a CA.
type vpc struct {
	t       testing.TB
	backend *local.Backend
	state   string
	bridge  string
	cgroup  string
	reg     string
	ca      *pki.CA
}

func newVPC(t testing.TB) *vpc {
	t.Helper()
	if testing.Short() {
		t.Skip("skipping in -short mode: boots real cells and builds cmd/kip-cell")
	}
	testenv.RequireRunc(t)
	if _, err := exec.LookPath("busybox"); err != nil {
		t.Skip("busybox-static is not installed")
	}
	tag := randHex(2)
	var sub [1]byte
	rand.Read(sub[:])
	v := &vpc{t: t, state: filepath.Join(t.TempDir(), "state"), bridge: "kcell" + tag, cgroup: "kip-celltest-" + tag}
	var err error
	v.backend, err = local.New(local.Config{
		StateDir:     v.state,
		Bridge:       v.bridge,
		Subnet:       fmt.Sprintf("10.250.%d.0/24", 2+int(sub[0])%250),
		AgentCommand: []string{kipCell(t), "--backoff-base", "300ms", "--backoff-max", "3s"},
		CgroupParent: v.cgroup,
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := v.backend.Setup(context.Background()); err != nil {
		t.Fatalf("Setup: %v", err)
	}
	t.Cleanup(func() {
		if err := v.backend.Teardown(context.Background()); err != nil {
			t.Errorf("Teardown: %v", err)
		}
		v.assertNothingLeft()
	})
	reg, err := registry.Start(net.JoinHostPort(v.backend.BridgeIP().String(), "0"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { reg.Close() })
	v.reg = reg.Host()
	if err := registry.SeedBusybox(t.Context(), v.reg, nil, "library/busybox:latest", "library/nginx:latest", "library/sleeper:latest"); err != nil {
		t.Fatal(err)
	}
	if v.ca, err = pki.NewCA("kip-cell-test"); err != nil {
		t.Fatal(err)
	}
	return v
}

// assertNothingLeft checks that no namespace, link, cgroup or mount of this VPC remains.
func (v *vpc) assertNothingLeft() {
	t := v.t
	if out, _ := exec.Command("ip", "-o", "link", "show").Output(); strings.Contains(string(out), v.bridge) {
		t.Errorf("bridge %s left", v.bridge)
	}
	for _, root := range []string{"memory", "cpu", "cpuacct", "pids", "freezer"} {
		matches, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", root, "*", v.cgroup))
		direct, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", root, v.cgroup))
		for _, m := range append(matches, direct...) {
			t.Errorf("cgroup left: %s", m)
		}
	}
	mi, _ := os.ReadFile("/proc/self/mountinfo")
	if strings.Contains(string(mi), v.state) {
		t.Errorf("mounts under %s left", v.state)
	}
	if entries, _ := os.ReadDir(filepath.Join(v.state, "cells")); len(entries) > 0 {
		t.Errorf("cell directories left: %d", len(entries))
	}
}

// cell is one launched cell and a client for its agent.
type cell struct {
	id     string // the instance id
	cellID string // the name in the agent's certificate
	ip     string
	client *cellapi.Client
	tls    func(*pki.CA) *cellapi.Client
}

func (v *vpc) launch(name string) *cell {
	t := v.t
	t.Helper()
	id := name + "-" + randHex(2)
	cert, key, err := v.ca.Issue(pki.LeafSpec{CommonName: id, DNSNames: []string{id}, Server: true})
	if err != nil {
		t.Fatal(err)
	}
	bs, _ := json.Marshal(cellapi.Bootstrap{
		CellID: id, CACert: v.ca.CertPEM, Cert: cert, Key: key,
		Registry: cellapi.RegistryConfig{DefaultRegistry: v.reg, Insecure: []string{v.reg}},
	})
	in, err := v.backend.Launch(t.Context(), cloud.LaunchSpec{CellID: id, ClientToken: id, InstanceType: "local.small", BootstrapData: bs})
	if err != nil {
		t.Fatalf("launching %s: %v", id, err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(filepath.Join(v.state, "cells", in.ID, "agent.log"))
			t.Logf("agent log of %s:\n%s", id, b)
		}
		if err := v.backend.Terminate(context.Background(), in.ID); err != nil && !cloud.IsNotFound(err) {
			t.Errorf("terminating %s: %v", id, err)
		}
	})
	c := &cell{id: in.ID, cellID: id, ip: in.PrivateIP}
	c.tls = func(signer *pki.CA) *cellapi.Client {
		ccert, ckey, err := signer.Issue(pki.LeafSpec{CommonName: "kip", Client: true})
		if err != nil {
			t.Fatal(err)
		}
		ctls, err := pki.ClientTLS(v.ca.CertPEM, ccert, ckey, id)
		if err != nil {
			t.Fatal(err)
		}
		cl := cellapi.NewClient(fmt.Sprintf("https://%s:%d", in.PrivateIP, cellapi.DefaultPort), ctls)
		t.Cleanup(cl.Close)
		return cl
	}
	c.client = c.tls(v.ca)
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		h, err := c.client.Health(ctx)
		cancel()
		if err == nil {
			if h.CellID != id {
				t.Fatalf("agent says it is %q, want %q", h.CellID, id)
			}
			return c
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent of %s never answered: %v", id, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func newPod(name string, policy corev1.RestartPolicy, cs ...corev1.Container) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default", UID: types.UID("uid-" + randHex(4))},
		Spec:       corev1.PodSpec{RestartPolicy: policy, Containers: cs},
	}
}

func sh(name, script string) corev1.Container {
	return corev1.Container{Name: name, Image: "busybox", Command: []string{"/bin/sh", "-c", script}}
}

// run puts p and follows its status until cond, returning the statuses seen.
func (c *cell) run(t *testing.T, req *cellapi.PodRequest, timeout time.Duration, cond func(*cellapi.PodStatus) bool) []*cellapi.PodStatus {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	defer cancel()
	ch, err := c.client.WatchPod(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.client.PutPod(ctx, req); err != nil {
		t.Fatalf("PutPod: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = c.client.DeletePod(ctx, 2*time.Second)
	})
	var seen []*cellapi.PodStatus
	for st := range ch {
		if st.UID != string(req.Pod.UID) {
			continue
		}
		seen = append(seen, st)
		if cond(st) {
			return seen
		}
	}
	if len(seen) > 0 {
		last := seen[len(seen)-1]
		b, _ := json.Marshal(last)
		t.Fatalf("condition not reached in %s; last status %s", timeout, b)
	}
	t.Fatalf("no status in %s", timeout)
	return nil
}

func (c *cell) logs(t *testing.T, container string) string {
	t.Helper()
	rc, err := c.client.Logs(t.Context(), container, cellapi.LogOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, _ := io.ReadAll(rc)
	return string(b)
}

func (c *cell) del(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if err := c.client.DeletePod(ctx, 2*time.Second); err != nil {
		t.Fatalf("DeletePod: %v", err)
	}
}

func phaseIs(ph corev1.PodPhase) func(*cellapi.PodStatus) bool {
	return func(s *cellapi.PodStatus) bool { return s.Phase == ph }
}

func finished(s *cellapi.PodStatus) bool {
	return s.Phase == corev1.PodSucceeded || s.Phase == corev1.PodFailed
}

// TestPodsInACell runs the issue's container cases one after the other in one cell.
func TestPodsInACell(t *testing.T) {
	v := newVPC(t)
	c := v.launch("pods")

	t.Run("echo exits 0 with logs", func(t *testing.T) {
		p := newPod("echo", corev1.RestartPolicyNever, sh("app", "echo hello from $(hostname); ip -o -4 addr show eth0 | wc -l"))
		seen := c.run(t, &cellapi.PodRequest{Pod: p}, 60*time.Second, finished)
		st := seen[len(seen)-1]
		term := st.ContainerStatuses[0].State.Terminated
		if st.Phase != corev1.PodSucceeded || term == nil || term.ExitCode != 0 || term.Reason != "Completed" {
			t.Fatalf("status %+v", st.ContainerStatuses[0].State)
		}
		// The container shares the cell's network namespace: it sees eth0.
		if got, want := c.logs(t, "app"), "hello from echo\n1\n"; got != want {
			t.Errorf("logs %q, want %q", got, want)
		}
		c.del(t)
	})

	t.Run("exit 3", func(t *testing.T) {
		seen := c.run(t, &cellapi.PodRequest{Pod: newPod("exit3", corev1.RestartPolicyNever, sh("app", "exit 3"))}, 60*time.Second, finished)
		term := seen[len(seen)-1].ContainerStatuses[0].State.Terminated
		if seen[len(seen)-1].Phase != corev1.PodFailed || term == nil || term.ExitCode != 3 || term.Reason != "Error" {
			t.Fatalf("terminated %+v", term)
		}
		c.del(t)
	})

	t.Run("init container fills an emptyDir", func(t *testing.T) {
		p := newPod("init", corev1.RestartPolicyNever, sh("app", "cat /in/msg"))
		p.Spec.InitContainers = []corev1.Container{sh("init", "echo made-by-init > /out/msg")}
		p.Spec.InitContainers[0].VolumeMounts = []corev1.VolumeMount{{Name: "scratch", MountPath: "/out"}}
		p.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{{Name: "scratch", MountPath: "/in", ReadOnly: true}}
		p.Spec.Volumes = []corev1.Volume{{Name: "scratch", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}}
		seen := c.run(t, &cellapi.PodRequest{Pod: p}, 60*time.Second, finished)
		if st := seen[len(seen)-1]; st.Phase != corev1.PodSucceeded {
			t.Fatalf("phase %s", st.Phase)
		}
		if got := c.logs(t, "app"); got != "made-by-init\n" {
			t.Errorf("app logs %q", got)
		}
		c.del(t)
	})

	t.Run("OnFailure restarts with growing back-off", func(t *testing.T) {
		var msgs []string
		c.run(t, &cellapi.PodRequest{Pod: newPod("crash", corev1.RestartPolicyOnFailure, sh("app", "exit 1"))}, 60*time.Second, func(s *cellapi.PodStatus) bool {
			cs := s.ContainerStatuses[0]
			if w := cs.State.Waiting; w != nil && w.Reason == "CrashLoopBackOff" && (len(msgs) == 0 || msgs[len(msgs)-1] != w.Message) {
				msgs = append(msgs, w.Message)
			}
			return cs.RestartCount >= 3 && len(msgs) >= 3
		})
		for i, want := range []string{"back-off 300ms", "back-off 600ms", "back-off 1.2s"} {
			if !strings.HasPrefix(msgs[i], want) {
				t.Errorf("back-off %d: %q, want %q", i, msgs[i], want)
			}
		}
		c.del(t)
	})

	t.Run("memory limit gets OOMKilled", func(t *testing.T) {
		ct := sh("hog", "dd if=/dev/zero of=/dev/null bs=64M count=1")
		ct.Resources.Limits = corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("16Mi")}
		seen := c.run(t, &cellapi.PodRequest{Pod: newPod("oom", corev1.RestartPolicyNever, ct)}, 60*time.Second, finished)
		term := seen[len(seen)-1].ContainerStatuses[0].State.Terminated
		if term == nil || term.Reason != "OOMKilled" || term.ExitCode != 137 {
			t.Fatalf("terminated %+v", term)
		}
		c.del(t)
	})

	t.Run("missing image", func(t *testing.T) {
		p := newPod("missing", corev1.RestartPolicyAlways, corev1.Container{Name: "app", Image: "no-such-image"})
		var reasons []string
		c.run(t, &cellapi.PodRequest{Pod: p}, 60*time.Second, func(s *cellapi.PodStatus) bool {
			if w := s.ContainerStatuses[0].State.Waiting; w != nil && w.Reason != "ContainerCreating" && (len(reasons) == 0 || reasons[len(reasons)-1] != w.Reason) {
				reasons = append(reasons, w.Reason)
			}
			return len(reasons) >= 2
		})
		if strings.Join(reasons, ",") != "ErrImagePull,ImagePullBackOff" {
			t.Errorf("waiting reasons %v", reasons)
		}
		c.del(t)
	})

	t.Run("bad input", func(t *testing.T) {
		// A command that is not in the image.
		p := newPod("nocmd", corev1.RestartPolicyNever, corev1.Container{Name: "app", Image: "busybox", Command: []string{"/not/here"}})
		seen := c.run(t, &cellapi.PodRequest{Pod: p}, 60*time.Second, finished)
		if term := seen[len(seen)-1].ContainerStatuses[0].State.Terminated; term == nil || term.Reason != "ContainerCannotRun" || !strings.Contains(term.Message, "/not/here") {
			t.Fatalf("terminated %+v", term)
		}
		c.del(t)
		// An image reference that does not parse.
		c.run(t, &cellapi.PodRequest{Pod: newPod("badref", corev1.RestartPolicyNever, corev1.Container{Name: "app", Image: "Bad//Ref::"})}, 30*time.Second, func(s *cellapi.PodStatus) bool {
			w := s.ContainerStatuses[0].State.Waiting
			return w != nil && w.Reason == "InvalidImageName"
		})
		c.del(t)
		// Malformed JSON and an unknown field, over the wire.
		for _, body := range []string{`{"pod":`, `{"pod":{"metadata":{"uid":"x"},"spek":{}}}`} {
			req, _ := http.NewRequest(http.MethodPut, fmt.Sprintf("https://%s:%d%s", c.ip, cellapi.DefaultPort, cellapi.PodPath), strings.NewReader(body))
			hc := &http.Client{Transport: &http.Transport{TLSClientConfig: tlsFor(t, v, c)}}
			resp, err := hc.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			hc.CloseIdleConnections()
			if resp.StatusCode != http.StatusBadRequest {
				t.Errorf("%s: %d %s, want 400", body, resp.StatusCode, b)
			}
		}
		if _, err := c.client.Health(t.Context()); err != nil {
			t.Fatalf("agent stopped serving: %v", err)
		}
	})

	t.Run("client from another CA is refused", func(t *testing.T) {
		other, _ := pki.NewCA("intruder")
		if _, err := c.tls(other).GetPod(t.Context()); err == nil {
			t.Fatal("a certificate from another CA was accepted")
		}
	})

	t.Run("stats come from the cell's cgroups", func(t *testing.T) {
		c.run(t, &cellapi.PodRequest{Pod: newPod("busy", corev1.RestartPolicyNever, corev1.Container{Name: "app", Image: "sleeper"})}, 60*time.Second, phaseIs(corev1.PodRunning))
		st, err := c.client.Stats(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if st.Cell.MemoryUsageBytes == 0 || st.Cell.CPUUsageNanoSeconds == 0 || len(st.Containers) != 1 || st.Containers[0].Usage.MemoryWorkingSetBytes == 0 {
			t.Errorf("stats %+v", st)
		}
		c.del(t)
	})
}

func tlsFor(t *testing.T, v *vpc, c *cell) *tls.Config {
	t.Helper()
	ccert, ckey, err := v.ca.Issue(pki.LeafSpec{CommonName: "kip", Client: true})
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := pki.ClientTLS(v.ca.CertPEM, ccert, ckey, c.cellID)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// TestCellsReachEachOther runs a web server pod in two cells; a pod in a third cell reaches
// both over the bridge, then one of them is cut off and no longer answers, until healed.
func TestCellsReachEachOther(t *testing.T) {
	v := newVPC(t)
	a, b, client := v.launch("web-a"), v.launch("web-b"), v.launch("client")
	for _, c := range []*cell{a, b} {
		c.run(t, &cellapi.PodRequest{Pod: newPod("web", corev1.RestartPolicyAlways, corev1.Container{Name: "httpd", Image: "nginx"})}, 60*time.Second,
			func(s *cellapi.PodStatus) bool { return s.Phase == corev1.PodRunning && s.ContainerStatuses[0].Ready })
	}
	probe := func(name string) string {
		script := fmt.Sprintf(`for ip in %s %s; do if timeout 3 wget -q -O /dev/null http://$ip/; then echo "$ip ok"; else echo "$ip fail"; fi; done`, a.ip, b.ip)
		client.run(t, &cellapi.PodRequest{Pod: newPod(name, corev1.RestartPolicyNever, sh("probe", script))}, 60*time.Second, finished)
		var out string
		for _, l := range strings.SplitAfter(client.logs(t, "probe"), "\n") {
			if strings.HasSuffix(l, " ok\n") || strings.HasSuffix(l, " fail\n") {
				out += l // the shell may also report the command timeout killed
			}
		}
		client.del(t)
		return out
	}
	if got, want := probe("probe1"), fmt.Sprintf("%s ok\n%s ok\n", a.ip, b.ip); got != want {
		t.Fatalf("before the cut: %q, want %q", got, want)
	}
	if err := v.backend.Partition(t.Context(), b.id); err != nil {
		t.Fatal(err)
	}
	if got, want := probe("probe2"), fmt.Sprintf("%s ok\n%s fail\n", a.ip, b.ip); got != want {
		t.Fatalf("after cutting %s: %q, want %q", b.ip, got, want)
	}
	if err := v.backend.Heal(t.Context(), b.id); err != nil {
		t.Fatal(err)
	}
	// Once healed, b's agent answers again and so does its container.
	deadline := time.Now().Add(20 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		_, err := b.client.Health(ctx)
		cancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("healed cell never answered: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if got, want := probe("probe3"), fmt.Sprintf("%s ok\n%s ok\n", a.ip, b.ip); got != want {
		t.Fatalf("after healing: %q, want %q", got, want)
	}
	for _, c := range []*cell{a, b} {
		c.del(t)
	}
}

// BenchmarkContainerStartInCell measures pod put → container running inside a real cell with
// a cached image (the first, uncached start is not counted), and reports p50/p99 and the
// agent's memory (VmRSS and PSS of the kip-cell process).
func BenchmarkContainerStartInCell(b *testing.B) {
	v := newVPC(b)
	c := v.launch("bench")
	put := func() time.Duration {
		p := newPod("bench", corev1.RestartPolicyNever, corev1.Container{Name: "app", Image: "sleeper"})
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		ch, err := c.client.WatchPod(ctx)
		if err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		if _, err := c.client.PutPod(ctx, &cellapi.PodRequest{Pod: p}); err != nil {
			b.Fatal(err)
		}
		for st := range ch {
			if st.UID == string(p.UID) && st.ContainerStatuses[0].State.Running != nil {
				d := time.Since(start)
				if err := c.client.DeletePod(ctx, 5*time.Second); err != nil {
					b.Fatal(err)
				}
				return d
			}
		}
		b.Fatal("container never ran")
		return 0
	}
	put() // pull and unpack once
	b.ResetTimer()
	var durs []time.Duration
	for i := 0; i < b.N; i++ {
		durs = append(durs, put())
	}
	b.StopTimer()
	slices.Sort(durs)
	b.ReportMetric(float64(durs[len(durs)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(durs[(len(durs)-1)*99/100].Microseconds())/1000, "p99-ms")
	rss, pss := v.agentMemory(c)
	b.ReportMetric(float64(rss)/(1<<20), "agent-rss-MiB")
	b.ReportMetric(float64(pss)/(1<<20), "agent-pss-MiB")
}

// agentMemory finds the kip-cell process in the cell's memory cgroup and returns its VmRSS
// and PSS in bytes.
func (v *vpc) agentMemory(c *cell) (rss, pss int64) {
	own, _ := os.ReadFile("/proc/self/cgroup")
	var memPath string
	for _, l := range strings.Split(string(own), "\n") {
		if parts := strings.SplitN(l, ":", 3); len(parts) == 3 && parts[1] == "memory" {
			memPath = parts[2]
		}
	}
	procs, err := os.ReadFile(filepath.Join("/sys/fs/cgroup/memory", memPath, v.cgroup, c.id, "cgroup.procs"))
	if err != nil {
		v.t.Logf("reading the cell's processes: %v", err)
		return 0, 0
	}
	for _, pid := range strings.Fields(string(procs)) {
		comm, _ := os.ReadFile("/proc/" + pid + "/comm")
		if strings.TrimSpace(string(comm)) != "kip-cell" {
			continue
		}
		rss = kbField("/proc/"+pid+"/status", "VmRSS:")
		pss = kbField("/proc/"+pid+"/smaps_rollup", "Pss:")
	}
	return rss, pss
}

func kbField(path, key string) int64 {
	b, _ := os.ReadFile(path)
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == key {
			n, _ := strconv.ParseInt(f[1], 10, 64)
			return n << 10
		}
	}
	return 0
}
