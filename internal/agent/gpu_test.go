package agent_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/kip-dev/kip/internal/agent"
	"github.com/kip-dev/kip/internal/agent/gpu"
	"github.com/kip-dev/kip/internal/cellapi"
)

// fakeGPUs makes a fake GPU instance in a temporary directory: character device nodes with
// /dev/null's numbers named nvidia0, nvidia1, nvidiactl, and a fake libcuda.so.1.
func fakeGPUs(t *testing.T) gpu.Config {
	t.Helper()
	root := t.TempDir()
	cfg := gpu.Config{DevRoot: filepath.Join(root, "dev"), LibDirs: []string{filepath.Join(root, "lib")}, BinDirs: []string{filepath.Join(root, "bin")}, CDIDirs: []string{}}
	var null unix.Stat_t
	if err := unix.Stat("/dev/null", &null); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{cfg.DevRoot, cfg.LibDirs[0], cfg.BinDirs[0]} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range []string{"nvidia0", "nvidia1", "nvidiactl"} {
		if err := unix.Mknod(filepath.Join(cfg.DevRoot, n), unix.S_IFCHR|0o666, int(null.Rdev)); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(cfg.LibDirs[0], "libcuda.so.1"), []byte("fake cuda\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return cfg
}

func withGPUs(res corev1.ResourceName, n int64, c corev1.Container) corev1.Container {
	q := *resource.NewQuantity(n, resource.DecimalSI)
	c.Resources.Limits = corev1.ResourceList{res: q}
	c.Resources.Requests = corev1.ResourceList{res: q}
	return c
}

// Each container of a real pod sees its own (fake) NVIDIA GPU and the driver library.
func TestPodContainersGetDisjointGPUs(t *testing.T) {
	var cfg gpu.Config
	h := newHarness(t, fastBackOff, func(c *agent.Config) { cfg = fakeGPUs(t); c.GPU = cfg })
	check := `set -e
for n in 0 1; do if [ -c /dev/nvidia$n ]; then echo has=nvidia$n; fi; done
[ -c /dev/nvidiactl ]
cat /dev/nvidia$NVIDIA_VISIBLE_DEVICES /usr/local/nvidia/lib64/libcuda.so.1
echo visible=$NVIDIA_VISIBLE_DEVICES`
	p := newPod("gpus", corev1.RestartPolicyNever,
		withGPUs(gpu.ResourceNVIDIA, 1, shell("a", h.img("busybox"), check)),
		withGPUs(gpu.ResourceNVIDIA, 1, shell("b", h.img("busybox"), check)))
	if _, err := h.client.PutPod(t.Context(), &cellapi.PodRequest{Pod: p}); err != nil {
		t.Fatal(err)
	}
	h.watchUntil(60*time.Second, func(s *cellapi.PodStatus) bool { return s.Phase == corev1.PodSucceeded || s.Phase == corev1.PodFailed })
	seen := map[string]string{}
	for _, c := range []string{"a", "b"} {
		out := h.logs(c, cellapi.LogOptions{})
		var has []string
		for _, l := range strings.Split(out, "\n") {
			if v, ok := strings.CutPrefix(l, "has="); ok {
				has = append(has, v)
			}
		}
		if len(has) != 1 || !strings.Contains(out, "fake cuda") || !strings.Contains(out, "visible="+strings.TrimPrefix(has[0], "nvidia")) {
			t.Fatalf("container %s: %q", c, out)
		}
		if other, dup := seen[has[0]]; dup {
			t.Errorf("containers %s and %s both got %s", other, c, has[0])
		}
		seen[has[0]] = c
	}
	h.deletePod(time.Second)
}

// A pod asking for more GPUs than the cell has is refused before anything runs.
func TestPodAskingForMissingGPUsIsRefused(t *testing.T) {
	h := newHarness(t, fastBackOff, func(c *agent.Config) { c.GPU = gpu.Config{DevRoot: t.TempDir(), CDIDirs: []string{}} })
	p := newPod("nogpu", corev1.RestartPolicyNever, withGPUs(gpu.ResourceNVIDIA, 1, shell("cuda", h.img("busybox"), "true")))
	_, err := h.client.PutPod(t.Context(), &cellapi.PodRequest{Pod: p})
	if !cellapi.IsInvalid(err) || !strings.Contains(err.Error(), "nvidia.com/gpu") {
		t.Fatalf("PutPod: %v, want Invalid naming nvidia.com/gpu", err)
	}
	if _, err := h.client.GetPod(t.Context()); !cellapi.IsNotFound(err) {
		t.Errorf("GetPod after the refusal: %v, want NotFound", err)
	}
	h.assertClean()
}

// A spot notice reaches kip over the real status stream, on the running pod's status.
func TestSpotNoticeOnTheWire(t *testing.T) {
	h := newHarness(t, fastBackOff)
	notice := make(chan struct{})
	imds := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Method == http.MethodPut && r.URL.Path == "/latest/api/token":
			fmt.Fprint(w, "tok")
		case r.Header.Get("X-aws-ec2-metadata-token") != "tok":
			http.Error(w, "no token", http.StatusUnauthorized)
		case r.URL.Path == "/latest/meta-data/spot/instance-action":
			select {
			case <-notice:
				fmt.Fprint(w, `{"action":"terminate","time":"2026-12-06T16:02:00Z"}`)
			default:
				http.NotFound(w, r)
			}
		default:
			http.NotFound(w, r)
		}
	}))
	defer imds.Close()
	p := newPod("spot", corev1.RestartPolicyNever, shell("app", h.img("busybox"), "sleep 600"))
	if _, err := h.client.PutPod(t.Context(), &cellapi.PodRequest{Pod: p}); err != nil {
		t.Fatal(err)
	}
	h.watchUntil(60*time.Second, func(s *cellapi.PodStatus) bool { return s.Phase == corev1.PodRunning })
	go h.agent.WatchSpot(t.Context(), agent.SpotConfig{Instance: &cellapi.InstanceBootstrap{Spot: true, MetadataURL: imds.URL}, Interval: 10 * time.Millisecond})
	close(notice)
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	ch, err := h.client.WatchPod(ctx)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for st := range ch {
		if n := st.SpotInterruption; n != nil {
			found = true
			if n.Action != "terminate" || !n.Time.Equal(time.Date(2026, 12, 6, 16, 2, 0, 0, time.UTC)) || st.Phase != corev1.PodRunning {
				t.Errorf("status %s with notice %+v", describe(st), n)
			}
			break
		}
	}
	if !found {
		t.Fatal("no status with the notice")
	}
	if st, err := h.client.GetPod(ctx); err != nil || st.SpotInterruption == nil {
		t.Errorf("GetPod: %v, notice %v", err, st)
	}
	h.deletePod(time.Second)
}
