//go:build e2e

package e2e

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/kip-dev/kip/internal/cli/upcmd"
	"github.com/kip-dev/kip/internal/registry"
	"github.com/kip-dev/kip/internal/syncbuf"
	"github.com/kip-dev/kip/test/e2e/framework"
)

// upRun is one `kip up` process under test.
type upRun struct {
	cmd    *exec.Cmd
	home   string
	bridge string
	done   chan error
	ready  chan string // the ready line
	// readyLine is the ready line, once startUp has returned.
	readyLine string
	stderr    *syncbuf.Buffer // kip up's stderr, written by exec's copying goroutine
}

// startUp runs bin/kip up with its own home, bridge and subnet, and waits for its ready line.
func startUp(t *testing.T, e *framework.Env, home string) *upRun {
	t.Helper()
	b := make([]byte, 2)
	_, _ = rand.Read(b)
	subnet, err := framework.FreeSubnet()
	if err != nil {
		t.Fatal(err)
	}
	r := &upRun{
		home:   home,
		bridge: "kipup" + hex.EncodeToString(b),
		done:   make(chan error, 1),
		ready:  make(chan string, 1),
		stderr: &syncbuf.Buffer{},
	}
	r.cmd = exec.Command(filepath.Join(e.BinDir, "kip"), "up", "--home", home, "--bridge", r.bridge,
		"--subnet", subnet, "--registry-port", "0", "--node-name", "kip-up")
	r.cmd.Env = append(os.Environ(), "KIP_CP_BIN="+e.CPBin)
	r.cmd.Stderr = r.stderr
	out, err := r.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), "kip is up") {
				r.ready <- sc.Text()
			}
		}
		_, _ = io.Copy(io.Discard, out)
		r.done <- r.cmd.Wait()
	}()
	t.Cleanup(func() {
		if r.cmd.ProcessState == nil {
			_ = r.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-r.done:
			case <-time.After(3 * time.Minute):
				_ = r.cmd.Process.Kill()
			}
		}
		_ = exec.Command(filepath.Join(e.BinDir, "kip"), "down", "--home", home).Run()
	})
	select {
	case line := <-r.ready:
		t.Logf("ready: %s", line)
		r.readyLine = line
	case err := <-r.done:
		t.Fatalf("kip up exited before ready: %v\n%s", err, r.stderr)
	case <-time.After(5 * time.Minute):
		t.Fatalf("kip up not ready within 5 minutes:\n%s", r.stderr)
	}
	return r
}

// checkGone asserts that nothing of run r remains: home (but the registry credentials
// the next run reuses), bridge, control plane processes.
func checkGone(t *testing.T, r *upRun, pids []int) {
	t.Helper()
	if entries, err := os.ReadDir(r.home); !errors.Is(err, os.ErrNotExist) {
		if len(entries) != 1 || entries[0].Name() != upcmd.RegistryAuthDir {
			t.Errorf("home %s still holds more than %s (%v): %v", r.home, upcmd.RegistryAuthDir, err, entries)
		}
	}
	if _, err := netlink.LinkByName(r.bridge); err == nil {
		t.Errorf("bridge %s still exists", r.bridge)
	}
	for _, pid := range pids {
		if err := syscall.Kill(pid, 0); err == nil {
			if exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); exe != "" {
				t.Errorf("process %d (%s) still running", pid, exe)
			}
		}
	}
}

// controlPlanePIDs reads the PIDs kip up's control plane recorded.
func controlPlanePIDs(t *testing.T, home string) []int {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(home, "controlplane", "processes.json"))
	if err != nil {
		t.Fatalf("reading control plane processes: %v", err)
	}
	var recs []struct {
		PID int `json:"pid"`
	}
	if err := json.Unmarshal(data, &recs); err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, r := range recs {
		pids = append(pids, r.PID)
	}
	if len(pids) != 4 {
		t.Fatalf("control plane recorded %d processes, want 4", len(pids))
	}
	return pids
}

// upClient returns a clientset for the control plane of the kip up run in home.
func upClient(t *testing.T, home string) kubernetes.Interface {
	t.Helper()
	cfg, err := clientcmd.BuildConfigFromFlags("", filepath.Join(home, "kubeconfig"))
	if err != nil {
		t.Fatalf("loading kip up's kubeconfig: %v", err)
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

// TestKipUp: `kip up` runs a pod end to end with its own control plane, and Ctrl-C removes
// everything it made.
func TestKipUp(t *testing.T) {
	e := need(t)
	home := filepath.Join(t.TempDir(), "kiphome")
	r := startUp(t, e, home)
	pids := controlPlanePIDs(t, home)
	cs := upClient(t, home)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	pod := framework.Pod("hello", framework.Busybox("main", "echo hello-up"))
	if _, err := cs.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	_, err := framework.Until(ctx, cs.CoreV1().Pods("default"), fields.OneTermEqualSelector("metadata.name", "hello"),
		func(ev watch.Event) (bool, error) {
			p, ok := ev.Object.(*corev1.Pod)
			return ok && (p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed), nil
		})
	if err != nil {
		t.Fatalf("pod on kip up's node did not finish: %v\n%s", err, r.stderr)
	}
	logs, err := cs.CoreV1().Pods("default").GetLogs("hello", &corev1.PodLogOptions{}).DoRaw(ctx)
	if err != nil || strings.TrimSpace(string(logs)) != "hello-up" {
		t.Errorf("logs = %q, %v; want hello-up", logs, err)
	}
	checkUpRegistry(ctx, t, r)
	// Leave a pod running so Ctrl-C has a live cell to remove.
	startSleeper(ctx, t, cs)

	_ = r.cmd.Process.Signal(syscall.SIGINT)
	select {
	case err := <-r.done:
		if err != nil {
			t.Errorf("kip up exited with %v after Ctrl-C:\n%s", err, r.stderr)
		}
	case <-time.After(3 * time.Minute):
		t.Fatalf("kip up did not exit within 3 minutes of SIGINT:\n%s", r.stderr)
	}
	checkGone(t, r, pids)
}

// TestKipDown: after `kip up` is SIGKILLed (no cleanup runs), `kip down` removes what it left.
func TestKipDown(t *testing.T) {
	e := need(t)
	home := filepath.Join(t.TempDir(), "kiphome")
	r := startUp(t, e, home)
	pids := controlPlanePIDs(t, home)
	cs := upClient(t, home)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	startSleeper(ctx, t, cs) // a live cell for kip down to remove
	_ = r.cmd.Process.Kill()
	<-r.done
	out, err := exec.Command(filepath.Join(e.BinDir, "kip"), "down", "--home", home).CombinedOutput()
	if err != nil {
		t.Fatalf("kip down: %v\n%s", err, out)
	}
	t.Logf("kip down:\n%s", out)
	checkGone(t, r, pids)
}

// startSleeper runs a long-running pod on kip up's node and waits for it to be Running.
func startSleeper(ctx context.Context, t *testing.T, cs kubernetes.Interface) {
	t.Helper()
	run := framework.Pod("sleeper", framework.Busybox("main", "while true; do sleep 1 & wait $!; done"))
	if _, err := cs.CoreV1().Pods("default").Create(ctx, run, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := framework.Until(ctx, cs.CoreV1().Pods("default"), fields.OneTermEqualSelector("metadata.name", "sleeper"),
		func(ev watch.Event) (bool, error) {
			p, ok := ev.Object.(*corev1.Pod)
			return ok && p.Status.Phase == corev1.PodRunning, nil
		}); err != nil {
		t.Fatalf("sleeper pod not Running: %v", err)
	}
}

// checkUpRegistry: kip up's registry refuses a push without credentials (401) and takes one
// with the credentials it printed (DOCKER_CONFIG, through go-containerregistry's default
// keychain, as make images does); the credentials file is 0600.
func checkUpRegistry(ctx context.Context, t *testing.T, r *upRun) {
	t.Helper()
	ready := r.readyLine
	i := strings.Index(ready, "(registry ")
	j := strings.Index(ready, "DOCKER_CONFIG=")
	if i < 0 || j < 0 {
		t.Fatalf("the ready line names no registry or DOCKER_CONFIG: %s", ready)
	}
	host := strings.SplitN(ready[i+len("(registry "):], ";", 2)[0]
	dir := strings.SplitN(ready[j+len("DOCKER_CONFIG="):], ";", 2)[0]
	if st, err := os.Stat(filepath.Join(dir, registry.DockerConfigFile)); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("credentials file: %v, mode %v, want 0600", err, st)
	}
	img, err := registry.BusyboxImage("library/mine")
	if err != nil {
		t.Fatal(err)
	}
	_, err = registry.Push(ctx, host, "library/mine:latest", img, nil)
	var te *transport.Error
	if !errors.As(err, &te) || te.StatusCode != 401 {
		t.Errorf("push without credentials: %v, want 401", err)
	}
	t.Setenv("DOCKER_CONFIG", dir)
	regName, err := name.NewRegistry(host, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	auth, err := authn.DefaultKeychain.Resolve(regName)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := registry.Push(ctx, host, "library/mine:latest", img, auth); err != nil {
		t.Errorf("push with DOCKER_CONFIG=%s: %v", dir, err)
	}
}
