package gpu

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/kip-dev/kip/internal/agent/runtime"
	"github.com/kip-dev/kip/internal/cgroups"
	"github.com/kip-dev/kip/internal/syncbuf"
	"github.com/kip-dev/kip/internal/testenv"
)

// runIn runs script in a real runc container whose spec a edited; it returns the output.
func runIn(t *testing.T, a *Assignment, script string) string {
	t.Helper()
	testenv.RequireRunc(t)
	rootfs := testenv.BusyboxRootFS(t)
	b := make([]byte, 3)
	rand.Read(b)
	tag := hex.EncodeToString(b)
	rt, err := runtime.NewRunc("", filepath.Join(t.TempDir(), "runc"))
	if err != nil {
		t.Fatal(err)
	}
	cg, err := cgroups.Open("/sys/fs/cgroup", "/proc/self/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	parent := "kiptest-gpu-" + tag
	t.Cleanup(func() {
		if err := cg.Remove(parent); err != nil {
			t.Errorf("removing cgroups: %v", err)
		}
	})
	spec, err := runtime.BuildSpec(runtime.ContainerConfig{
		RootFS:      rootfs,
		Process:     runtime.Process{Args: []string{"/bin/sh", "-c", script}, Env: []string{runtime.DefaultPath}, Cwd: "/"},
		Hostname:    "gpu",
		CgroupsPath: filepath.Join(parent, "0"),
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Apply(spec); err != nil {
		t.Fatal(err)
	}
	bundle := t.TempDir()
	if err := runtime.WriteBundle(bundle, spec); err != nil {
		t.Fatal(err)
	}
	var out syncbuf.Buffer
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	c, err := rt.Start(ctx, "kiptest-gpu-"+tag, bundle, runtime.IO{Stdout: &out, Stderr: &out})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-c.Done():
	case <-ctx.Done():
		t.Fatal("container did not exit")
	}
	_ = rt.Delete(context.Background(), "kiptest-gpu-"+tag)
	if code := c.ExitStatus().Code; code != 0 {
		t.Fatalf("container exited %d: %s", code, out.String())
	}
	return out.String()
}

// A real runc container of each of a 2-container pod sees its own fake GPU (a device node it
// can open: the device cgroup allows it), not the other's, the control nodes, and the fake
// driver files bound read-only.
func TestContainersSeeTheirOwnGPU(t *testing.T) {
	f := newFakeInstance(t, "nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm")
	pod := gpuPod(nil, corev1.Container{Name: "a", Resources: gpus(ResourceNVIDIA, 1)}, corev1.Container{Name: "b", Resources: gpus(ResourceNVIDIA, 1)})
	as, err := Allocate(f.cfg, pod)
	if err != nil {
		t.Fatal(err)
	}
	for name, pair := range map[string][2]int{"a": {0, 1}, "b": {1, 0}} {
		t.Run(name, func(t *testing.T) {
			mine, other := pair[0], pair[1]
			script := fmt.Sprintf(`set -e
test -c /dev/nvidia%[1]d
cat /dev/nvidia%[1]d
test ! -e /dev/nvidia%[2]d
test -c /dev/nvidiactl && test -c /dev/nvidia-uvm
cat /usr/local/nvidia/lib64/libcuda.so.1 /usr/local/nvidia/lib64/libnvidia-ml.so.1
test ! -e /usr/local/nvidia/lib64/libfoo.so.1
test -x /usr/local/nvidia/bin/nvidia-smi
echo visible=$NVIDIA_VISIBLE_DEVICES ld=$LD_LIBRARY_PATH
if echo x > /usr/local/nvidia/lib64/libcuda.so.1; then echo writable; else echo read-only; fi
`, mine, other)
			out := runIn(t, as[name], script)
			for _, want := range []string{"fake libcuda.so.1", "fake libnvidia-ml.so.1", fmt.Sprintf("visible=%d ld=%s", mine, ContainerLibDir), "read-only"} {
				if !strings.Contains(out, want) {
					t.Errorf("output lacks %q:\n%s", want, out)
				}
			}
		})
	}
}

// With a CDI spec for the GPUs on the instance, the vendor's edits are applied instead.
func TestCDISpecIsApplied(t *testing.T) {
	f := newFakeInstance(t, "nvidia0", "nvidiactl")
	spec := fmt.Sprintf(`cdiVersion: "0.5.0"
kind: nvidia.com/gpu
devices:
- name: "0"
  containerEdits:
    deviceNodes:
    - path: /dev/nvidia0
      hostPath: %[1]s/dev/nvidia0
containerEdits:
  env:
  - CDI_APPLIED=yes
  deviceNodes:
  - path: /dev/nvidiactl
    hostPath: %[1]s/dev/nvidiactl
  mounts:
  - hostPath: %[1]s/lib/libcuda.so.1
    containerPath: /usr/lib/libcuda.so.1
    options: [ro, nosuid, nodev, bind]
`, f.root)
	os.MkdirAll(f.cfg.CDIDirs[0], 0o755)
	if err := os.WriteFile(filepath.Join(f.cfg.CDIDirs[0], "nvidia.yaml"), []byte(spec), 0o644); err != nil {
		t.Fatal(err)
	}
	as, err := Allocate(f.cfg, gpuPod(nil, corev1.Container{Name: "a", Resources: gpus(ResourceNVIDIA, 1)}))
	if err != nil {
		t.Fatal(err)
	}
	if !as["a"].CDI() {
		t.Fatal("the CDI spec was not used")
	}
	out := runIn(t, as["a"], `set -e
test -c /dev/nvidia0 && test -c /dev/nvidiactl
cat /dev/nvidia0 /usr/lib/libcuda.so.1
test ! -e /usr/local/nvidia
echo cdi=$CDI_APPLIED visible=$NVIDIA_VISIBLE_DEVICES
`)
	if !strings.Contains(out, "fake libcuda.so.1") || !strings.Contains(out, "cdi=yes visible=0") {
		t.Errorf("output:\n%s", out)
	}
}
