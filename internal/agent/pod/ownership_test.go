package pod

import (
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/utils/ptr"

	"github.com/kip-dev/kip/internal/cellapi"
)

func TestFSGroupMode(t *testing.T) {
	for _, tc := range []struct {
		in       fs.FileMode
		readOnly bool
		want     fs.FileMode
	}{
		{0o600, false, 0o660},
		{0o400, true, 0o440},
		{0o644, true, 0o644},
		{0o755, false, 0o775},
		{fs.ModeDir | 0o777, false, fs.ModeSetgid | 0o777},
		{fs.ModeDir | 0o755, true, fs.ModeSetgid | 0o755},
		{fs.ModeDir | 0o700, true, fs.ModeSetgid | 0o750},
		{fs.ModeDir | fs.ModeSticky | 0o700, false, fs.ModeSetgid | fs.ModeSticky | 0o770},
	} {
		if got := fsGroupMode(tc.in, tc.readOnly); got != tc.want {
			t.Errorf("fsGroupMode(%v, ro=%v) = %v, want %v", tc.in, tc.readOnly, got, tc.want)
		}
	}
}

// owner returns the gid and mode (permission, setgid, sticky) of p, not following a link.
func owner(t *testing.T, p string) (uint32, fs.FileMode) {
	t.Helper()
	fi, err := os.Lstat(p)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Gid, fi.Mode() & (fs.ModePerm | fs.ModeSetgid | fs.ModeSticky)
}

// TestFSGroupOwnership (root): fsGroup chowns an emptyDir recursively with group rw and
// setgid directories, and the atomic writer's volumes (first write and updates) with group r,
// links included, before ..data points at the new files; an unchanged payload is not
// rewritten.
func TestFSGroupOwnership(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to chown")
	}
	const gid = 2000
	dir := t.TempDir()
	ed := filepath.Join(dir, volumesDir, "scratch")
	if err := os.MkdirAll(filepath.Join(ed, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	os.Chmod(ed, 0o777)
	if err := os.WriteFile(filepath.Join(ed, "sub", "f"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	pod := &corev1.Pod{Spec: corev1.PodSpec{
		SecurityContext: &corev1.PodSecurityContext{FSGroup: ptr.To(int64(gid))},
		Volumes:         []corev1.Volume{{Name: "scratch", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}},
	}}
	if err := setEmptyDirOwnership(dir, pod); err != nil {
		t.Fatal(err)
	}
	for p, want := range map[string]fs.FileMode{
		ed: fs.ModeSetgid | 0o777, filepath.Join(ed, "sub"): fs.ModeSetgid | 0o775, filepath.Join(ed, "sub", "f"): 0o660,
	} {
		if g, m := owner(t, p); g != gid || m != want {
			t.Errorf("%s: gid %d mode %v, want %d %v", p, g, m, gid, want)
		}
	}

	vdir := filepath.Join(dir, volumesDir, "secret")
	os.MkdirAll(vdir, 0o755)
	files := map[string]cellapi.File{"key": {Data: []byte("s3cret"), Mode: 0o400}, "d/k2": {Data: []byte("2"), Mode: 0o600}}
	if _, err := writeAtomic(vdir, files, t0, podFSGroup(pod)); err != nil {
		t.Fatal(err)
	}
	check := func() {
		t.Helper()
		for p, want := range map[string]fs.FileMode{
			vdir: fs.ModeSetgid | 0o755, filepath.Join(vdir, "..data", "key"): 0o440,
			filepath.Join(vdir, "..data", "d"): fs.ModeSetgid | 0o755, filepath.Join(vdir, "..data", "d", "k2"): 0o640,
		} {
			real, _ := filepath.EvalSymlinks(p)
			if g, m := owner(t, real); g != gid || m != want {
				t.Errorf("%s: gid %d mode %v, want %d %v", p, g, m, gid, want)
			}
		}
		if g, _ := owner(t, filepath.Join(vdir, "key")); g != gid {
			t.Errorf("link key: gid %d, want %d", g, gid)
		}
	}
	check()
	if changed, err := writeAtomic(vdir, files, t0.Add(time.Second), podFSGroup(pod)); err != nil || changed {
		t.Fatalf("same payload again: changed %v, %v; want unchanged", changed, err)
	}
	files["key"] = cellapi.File{Data: []byte("rotated"), Mode: 0o400}
	if changed, err := writeAtomic(vdir, files, t0.Add(2*time.Second), podFSGroup(pod)); err != nil || !changed {
		t.Fatalf("update: changed %v, %v", changed, err)
	}
	check()
	if s := mustRead(t, filepath.Join(vdir, "key")); s != "rotated" {
		t.Errorf("key reads %q after the update", s)
	}
}
