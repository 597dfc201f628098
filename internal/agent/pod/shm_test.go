package pod

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
)

// TestPodShm (root): the pod's /dev/shm is one 64 MiB tmpfs, mode 1777, mounted once however
// often the pod is put (an agent restart adopts it), bound into every container unless one
// mounts a volume on /dev/shm, and gone after unmountUnder.
func TestPodShm(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a tmpfs")
	}
	dir := t.TempDir()
	t.Cleanup(func() { _ = unmountUnder(dir) })
	for range 2 {
		if err := mountPodShm(dir); err != nil {
			t.Fatal(err)
		}
	}
	target := filepath.Join(dir, shmDir)
	if m, err := mountsUnder(dir); err != nil || len(m) != 1 || m[0] != target {
		t.Fatalf("mounts under the pod = %v (%v), want one: %s", m, err, target)
	}
	var fs unix.Statfs_t
	if err := unix.Statfs(target, &fs); err != nil {
		t.Fatal(err)
	}
	if fs.Type != unix.TMPFS_MAGIC || int64(fs.Blocks)*fs.Bsize != 64<<20 || fs.Flags&unix.ST_NOEXEC == 0 {
		t.Errorf("filesystem type %#x of %d bytes, flags %#x; want a noexec tmpfs of 64Mi", fs.Type, int64(fs.Blocks)*fs.Bsize, fs.Flags)
	}
	if fi, err := os.Stat(target); err != nil || fi.Mode()&(os.ModePerm|os.ModeSticky) != 0o777|os.ModeSticky {
		t.Errorf("mode %v (%v), want 1777", fi.Mode(), err)
	}
	if m, ok := shmMount(dir, &corev1.Container{}); !ok || m.Source != target || m.Destination != "/dev/shm" || !m.NoExec {
		t.Errorf("shmMount = %+v, %v", m, ok)
	}
	if _, ok := shmMount(dir, &corev1.Container{VolumeMounts: []corev1.VolumeMount{{Name: "mem", MountPath: "/dev/shm/"}}}); ok {
		t.Error("shmMount binds the pod's /dev/shm over a volume mounted there")
	}
	if err := unmountUnder(dir); err != nil {
		t.Fatal(err)
	}
	if m, _ := mountsUnder(dir); len(m) != 0 {
		t.Errorf("mounts left: %v", m)
	}
}
