package pod

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/utils/ptr"

	"github.com/kip-dev/kip/internal/cellapi"
)

// TestTmpfsSize: kubelet's calculateEmptyDirMemorySize with the cell's memory as the node's
// allocatable: the smallest of it, the pod's memory limit (only when every container has one)
// and the sizeLimit.
func TestTmpfsSize(t *testing.T) {
	q := resource.MustParse
	withMem := func(lims ...string) *corev1.Pod {
		p := &corev1.Pod{}
		for _, l := range lims {
			c := corev1.Container{Name: "c"}
			if l != "" {
				c.Resources.Limits = corev1.ResourceList{corev1.ResourceMemory: q(l)}
			}
			p.Spec.Containers = append(p.Spec.Containers, c)
		}
		return p
	}
	cases := []struct {
		name string
		pod  *corev1.Pod
		size string // sizeLimit, "" for none
		cell int64
		want int64
	}{
		{"the cell's memory", withMem(""), "", 256 << 20, 256 << 20},
		{"sizeLimit below the cell's", withMem(""), "1Mi", 256 << 20, 1 << 20},
		{"sizeLimit above the cell's", withMem(""), "1Gi", 256 << 20, 256 << 20},
		{"the pod's limit, summed", withMem("32Mi", "16Mi"), "", 256 << 20, 48 << 20},
		{"one container without a limit: no pod limit", withMem("32Mi", ""), "", 256 << 20, 256 << 20},
		{"sizeLimit below the pod's limit", withMem("32Mi"), "1Mi", 256 << 20, 1 << 20},
		{"nothing known", withMem(""), "", 0, 0},
		{"only a sizeLimit", withMem(""), "2Mi", 0, 2 << 20},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			v := &corev1.EmptyDirVolumeSource{Medium: corev1.StorageMediumMemory}
			if tc.size != "" {
				v.SizeLimit = ptr.To(q(tc.size))
			}
			if got := tmpfsSize(tc.pod, v, tc.cell); got != tc.want {
				t.Errorf("tmpfsSize = %d, want %d", got, tc.want)
			}
		})
	}
}

// TestDiskUsage counts allocated blocks, a hard-linked file once.
func TestDiskUsage(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte{1}, 256<<10)
	if err := os.WriteFile(filepath.Join(dir, "sub", "f"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(filepath.Join(dir, "sub", "f"), filepath.Join(dir, "g")); err != nil {
		t.Fatal(err)
	}
	got, err := diskUsage(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got < 256<<10 || got >= 512<<10 {
		t.Errorf("diskUsage = %d, want the 256 KiB file counted once (plus directories)", got)
	}
}

// TestEmptyDirSizeLimitEvicts: a disk emptyDir under its sizeLimit is left alone; once over
// it, at the next check, the pod is evicted as kubelet evicts it: a Warning event Evicted,
// its container stopped (SIGTERM) and not restarted, then Failed with reason Evicted and
// kubelet's message.
func TestEmptyDirSizeLimitEvicts(t *testing.T) {
	p := testPod(corev1.RestartPolicyAlways, "app")
	p.Spec.Volumes = []corev1.Volume{
		{Name: "scratch", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{SizeLimit: ptr.To(resource.MustParse("64Ki"))}}},
		{Name: "free", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
	}
	r := start(t, p, &fakeImages{})
	r.nextStart(t)
	r.until(t, func(s *cellapi.PodStatus) bool { return s.ContainerStatuses[0].State.Running != nil })
	vols := filepath.Join(r.pod.cfg.Dir, volumesDir)
	// The unlimited volume may hold anything.
	if err := os.WriteFile(filepath.Join(vols, "free", "big"), bytes.Repeat([]byte{1}, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	r.waitTimer(t)
	r.clk.Step(DefaultEmptyDirInterval)
	r.waitTimer(t) // the check passed and the next one is armed
	if st := r.pod.Status(); st.Reason != "" || st.Phase != corev1.PodRunning {
		t.Fatalf("evicted under the limit: %+v", st)
	}
	if err := os.WriteFile(filepath.Join(vols, "scratch", "big"), bytes.Repeat([]byte{1}, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	r.clk.Step(DefaultEmptyDirInterval)
	st := r.until(t, func(s *cellapi.PodStatus) bool { return s.Phase == corev1.PodFailed })
	want := `Usage of EmptyDir volume "scratch" exceeds the limit "64Ki". `
	if st.Reason != ReasonEvicted || st.Message != want {
		t.Errorf("reason %q message %q, want %q %q", st.Reason, st.Message, ReasonEvicted, want)
	}
	var evicted bool
	for _, e := range st.Events {
		evicted = evicted || e.Reason == ReasonEvicted && e.Type == corev1.EventTypeWarning && e.Message == want
	}
	if !evicted {
		t.Errorf("no Evicted warning event: %+v", st.Events)
	}
	if term := st.ContainerStatuses[0].State.Terminated; term == nil || term.ExitCode != 128+int32(syscall.SIGTERM) {
		t.Errorf("container state %+v, want terminated by SIGTERM", st.ContainerStatuses[0].State)
	}
	select {
	case id := <-r.rt.started:
		t.Errorf("container %s restarted after the eviction", id)
	default:
	}
	// The pod's files stay for its logs until Stop.
	if _, err := os.Stat(filepath.Join(vols, "scratch", "big")); err != nil {
		t.Errorf("pod files gone before Stop: %v", err)
	}
}

// TestMemoryVolumeTmpfs (root): a medium Memory emptyDir is a tmpfs of its sizeLimit, mode
// 0777, that refuses a write past it (ENOSPC); putting the pod again does not mount it twice,
// and unmountUnder leaves no mount.
func TestMemoryVolumeTmpfs(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a tmpfs")
	}
	dir := t.TempDir()
	pod := &corev1.Pod{Spec: corev1.PodSpec{
		Containers: []corev1.Container{{Name: "c"}},
		Volumes: []corev1.Volume{
			{Name: "mem", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{Medium: corev1.StorageMediumMemory, SizeLimit: ptr.To(resource.MustParse("1Mi"))}}},
			{Name: "disk", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
		},
	}}
	for _, v := range pod.Spec.Volumes {
		if err := os.MkdirAll(filepath.Join(dir, volumesDir, v.Name), 0o777); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { _ = unmountUnder(dir) })
	for range 2 {
		if err := mountMemoryVolumes(dir, pod, 256<<20); err != nil {
			t.Fatal(err)
		}
	}
	vdir := filepath.Join(dir, volumesDir, "mem")
	if m, err := mountsUnder(dir); err != nil || len(m) != 1 || m[0] != vdir {
		t.Fatalf("mounts under the pod = %v (%v), want one: %s", m, err, vdir)
	}
	var fs unix.Statfs_t
	if err := unix.Statfs(vdir, &fs); err != nil {
		t.Fatal(err)
	}
	if fs.Type != unix.TMPFS_MAGIC || int64(fs.Blocks)*fs.Bsize != 1<<20 {
		t.Errorf("filesystem type %#x of %d bytes, want a tmpfs of 1Mi", fs.Type, int64(fs.Blocks)*fs.Bsize)
	}
	if fi, err := os.Stat(vdir); err != nil || fi.Mode().Perm() != 0o777 {
		t.Errorf("mode %v (%v), want 0777", fi.Mode(), err)
	}
	err := os.WriteFile(filepath.Join(vdir, "f"), bytes.Repeat([]byte{1}, 2<<20), 0o644)
	if !errors.Is(err, syscall.ENOSPC) {
		t.Errorf("writing 2 MiB: %v, want ENOSPC", err)
	}
	if err := unmountUnder(dir); err != nil {
		t.Fatal(err)
	}
	if m, _ := mountsUnder(dir); len(m) != 0 {
		t.Errorf("mounts left: %v", m)
	}
}
