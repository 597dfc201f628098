package gpu

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/utils/ptr"
)

// fakeInstance is a GPU instance in a temporary directory: real character device nodes
// (with /dev/null's numbers, so a container can open them) named as the NVIDIA and AMD
// drivers name theirs, and a fake driver library and nvidia-smi.
type fakeInstance struct {
	cfg  Config
	root string
}

func newFakeInstance(t *testing.T, nodes ...string) *fakeInstance {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: making device nodes needs root")
	}
	root := t.TempDir()
	f := &fakeInstance{root: root, cfg: Config{
		DevRoot: filepath.Join(root, "dev"),
		LibDirs: []string{filepath.Join(root, "lib")},
		BinDirs: []string{filepath.Join(root, "bin")},
		CDIDirs: []string{filepath.Join(root, "cdi")},
	}}
	var null unix.Stat_t
	if err := unix.Stat("/dev/null", &null); err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		p := filepath.Join(f.cfg.DevRoot, n)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := unix.Mknod(p, unix.S_IFCHR|0o666, int(null.Rdev)); err != nil {
			t.Fatalf("mknod %s: %v", p, err)
		}
	}
	for dir, files := range map[string][]string{"lib": {"libcuda.so.1", "libnvidia-ml.so.1", "libfoo.so.1"}, "bin": {"nvidia-smi"}} {
		os.MkdirAll(filepath.Join(root, dir), 0o755)
		for _, name := range files {
			if err := os.WriteFile(filepath.Join(root, dir, name), []byte("fake "+name+"\n"), 0o755); err != nil {
				t.Fatal(err)
			}
		}
	}
	return f
}

func gpus(res corev1.ResourceName, n int64) corev1.ResourceRequirements {
	q := *resource.NewQuantity(n, resource.DecimalSI)
	return corev1.ResourceRequirements{Limits: corev1.ResourceList{res: q}, Requests: corev1.ResourceList{res: q}}
}

func gpuPod(init []corev1.Container, ctrs ...corev1.Container) *corev1.Pod {
	return &corev1.Pod{Spec: corev1.PodSpec{InitContainers: init, Containers: ctrs}}
}

func TestAllocate(t *testing.T) {
	f := newFakeInstance(t, "nvidia0", "nvidia1", "nvidia2", "nvidiactl", "nvidia-uvm", "kfd", "dri/renderD128", "dri/card0")
	sidecar := corev1.Container{Name: "side", Resources: gpus(ResourceNVIDIA, 1), RestartPolicy: ptr.To(corev1.ContainerRestartPolicyAlways)}
	for _, tc := range []struct {
		name    string
		pod     *corev1.Pod
		want    map[string][]int
		wantErr string
	}{
		{name: "no GPU asked", pod: gpuPod(nil, corev1.Container{Name: "a"})},
		{
			name: "two containers get disjoint GPUs",
			pod:  gpuPod(nil, corev1.Container{Name: "a", Resources: gpus(ResourceNVIDIA, 2)}, corev1.Container{Name: "b", Resources: gpus(ResourceNVIDIA, 1)}, corev1.Container{Name: "c"}),
			want: map[string][]int{"a": {0, 1}, "b": {2}},
		},
		{
			name:    "more than the cell has",
			pod:     gpuPod(nil, corev1.Container{Name: "a", Resources: gpus(ResourceNVIDIA, 2)}, corev1.Container{Name: "b", Resources: gpus(ResourceNVIDIA, 2)}),
			wantErr: `spec.containers[1].resources.limits[nvidia.com/gpu]: container "b" asks for 2 nvidia.com/gpu, but this cell has 3 NVIDIA GPUs`,
		},
		{
			name: "an init container reuses the app containers' GPUs, not a sidecar's",
			pod:  gpuPod([]corev1.Container{sidecar, {Name: "init", Resources: gpus(ResourceNVIDIA, 2)}}, corev1.Container{Name: "a", Resources: gpus(ResourceNVIDIA, 2)}),
			want: map[string][]int{"side": {0}, "init": {1, 2}, "a": {1, 2}},
		},
		{
			name: "AMD",
			pod:  gpuPod(nil, corev1.Container{Name: "a", Resources: gpus(ResourceAMD, 1)}),
			want: map[string][]int{"a": {0}},
		},
		{
			name:    "AMD, more than the cell has",
			pod:     gpuPod(nil, corev1.Container{Name: "a", Resources: gpus(ResourceAMD, 2)}),
			wantErr: `spec.containers[0].resources.limits[amd.com/gpu]: container "a" asks for 2 amd.com/gpu, but this cell has 1 AMD GPUs`,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Allocate(f.cfg, tc.pod)
			if tc.wantErr != "" {
				var short *ShortageError
				if !errors.As(err, &short) || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want a ShortageError with %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			idx := map[string][]int{}
			for name, a := range got {
				idx[name] = a.Indices
			}
			if len(tc.want) == 0 && len(idx) == 0 {
				return
			}
			if !reflect.DeepEqual(idx, tc.want) {
				t.Errorf("got %v, want %v", idx, tc.want)
			}
		})
	}
}

func TestAllocateOnACellWithoutGPUs(t *testing.T) {
	cfg := Config{DevRoot: t.TempDir(), CDIDirs: []string{}}
	_, err := Allocate(cfg, gpuPod(nil, corev1.Container{Name: "cuda", Resources: gpus(ResourceNVIDIA, 1)}))
	var short *ShortageError
	if !errors.As(err, &short) || short.Field != "spec.containers[0].resources.limits[nvidia.com/gpu]" ||
		!strings.Contains(err.Error(), `container "cuda" asks for 1 nvidia.com/gpu, but this cell has 0 NVIDIA GPUs`) {
		t.Fatalf("err = %v", err)
	}
}

func TestApplyNVIDIA(t *testing.T) {
	f := newFakeInstance(t, "nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia-modeset")
	as, err := Allocate(f.cfg, gpuPod(nil, corev1.Container{Name: "a", Resources: gpus(ResourceNVIDIA, 1)}, corev1.Container{Name: "b", Resources: gpus(ResourceNVIDIA, 1)}))
	if err != nil {
		t.Fatal(err)
	}
	s := &specs.Spec{Process: &specs.Process{Env: []string{"PATH=/bin", "LD_LIBRARY_PATH=/opt/lib"}}, Linux: &specs.Linux{Resources: &specs.LinuxResources{
		Devices: []specs.LinuxDeviceCgroup{{Allow: false, Access: "rwm"}},
	}}}
	if err := as["b"].Apply(s); err != nil {
		t.Fatal(err)
	}
	var paths []string
	for _, d := range s.Linux.Devices {
		paths = append(paths, d.Path)
	}
	if want := []string{"/dev/nvidia1", "/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools", "/dev/nvidia-modeset"}; !reflect.DeepEqual(paths, want) {
		t.Errorf("devices %v, want %v", paths, want)
	}
	var null unix.Stat_t
	unix.Stat("/dev/null", &null)
	if d := s.Linux.Devices[0]; d.Type != "c" || d.Major != int64(unix.Major(null.Rdev)) || d.Minor != int64(unix.Minor(null.Rdev)) {
		t.Errorf("device %+v: want the node's real numbers", d)
	}
	if len(s.Linux.Resources.Devices) != 6 || s.Linux.Resources.Devices[0].Allow || !s.Linux.Resources.Devices[1].Allow ||
		*s.Linux.Resources.Devices[1].Major != int64(unix.Major(null.Rdev)) {
		t.Errorf("device cgroup rules %+v", s.Linux.Resources.Devices)
	}
	for _, e := range []string{"NVIDIA_VISIBLE_DEVICES=1", "PATH=/bin:" + ContainerBinDir, "LD_LIBRARY_PATH=/opt/lib:" + ContainerLibDir} {
		if !slices.Contains(s.Process.Env, e) {
			t.Errorf("env %v lacks %s", s.Process.Env, e)
		}
	}
	var mounts []string
	for _, m := range s.Mounts {
		if !slices.Contains(m.Options, "ro") {
			t.Errorf("mount %+v is not read-only", m)
		}
		mounts = append(mounts, m.Destination)
	}
	slices.Sort(mounts)
	if want := []string{ContainerBinDir + "/nvidia-smi", ContainerLibDir + "/libcuda.so.1", ContainerLibDir + "/libnvidia-ml.so.1"}; !reflect.DeepEqual(mounts, want) {
		t.Errorf("mounts %v, want %v", mounts, want)
	}
}

func TestLdconfigLibs(t *testing.T) {
	out := []byte(`1234 libs found in cache ` + "`/etc/ld.so.cache'" + `
	libnvidia-ml.so.1 (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1
	libnvidia-ml.so.1 (libc6) => /usr/lib/i386-linux-gnu/libnvidia-ml.so.1
	libcuda.so.1 (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libcuda.so.1
	libcudart.so.12 (libc6,x86-64) => /usr/local/cuda/lib64/libcudart.so.12
	libc.so.6 (libc6,x86-64, OS ABI: Linux 3.2.0) => /lib/x86_64-linux-gnu/libc.so.6
`)
	want := []string{"/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1", "/usr/lib/x86_64-linux-gnu/libcuda.so.1"}
	if got := ldconfigLibs(out); !reflect.DeepEqual(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
}
