package image

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/kip-dev/kip/internal/imagebuild"
	"github.com/kip-dev/kip/internal/testenv"
)

func TestMountRootFS(t *testing.T) {
	testenv.RequireNetns(t) // root, for the overlay mount
	reg := startRegistry(t)
	push(t, reg.Host(), "library/busybox:latest", busybox(t, imagebuild.Options{}))
	store := newStore(t, Config{DefaultRegistry: reg.Host(), Insecure: []string{reg.Host()}})
	img, err := store.Pull(context.Background(), "busybox", nil)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "ctr")
	rootfs, unmount, err := store.MountRootFS(img, dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unmount() })

	// The unpacked image runs: the shell and its applets resolve through the symlinks.
	cmd := exec.Command("/bin/sh", "-c", "echo ran > /tmp/ran && id -u && ls /bin/sh")
	cmd.SysProcAttr = &syscall.SysProcAttr{Chroot: rootfs}
	cmd.Dir = "/"
	cmd.Env = []string{"PATH=/bin"}
	out, err := cmd.CombinedOutput()
	if err != nil || string(out) != "0\n/bin/sh\n" {
		t.Fatalf("running the image's shell: %v, output %q", err, out)
	}
	if _, err := os.Stat(filepath.Join(img.RootFS, "tmp/ran")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the container's write reached the image: %v", err)
	}

	// Writes, changes and deletions stay in the upper layer.
	if err := os.WriteFile(filepath.Join(rootfs, "tmp/new"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(rootfs, "etc/passwd"), []byte("changed\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(rootfs, "bin/sh")); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(img.RootFS, "tmp/new")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("new file reached the image: %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(img.RootFS, "etc/passwd")); string(b) == "changed\n" {
		t.Error("etc/passwd of the image changed")
	}
	if _, err := os.Lstat(filepath.Join(img.RootFS, "bin/sh")); err != nil {
		t.Errorf("bin/sh of the image removed: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "upper/tmp/new")); err != nil {
		t.Errorf("write did not land in the upper layer: %v", err)
	}

	// A second container on the same image sees the pristine image.
	rootfs2, unmount2, err := store.MountRootFS(img, filepath.Join(t.TempDir(), "ctr2"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(filepath.Join(rootfs2, "bin/sh")); err != nil {
		t.Errorf("second container misses bin/sh: %v", err)
	}
	if err := unmount2(); err != nil {
		t.Fatal(err)
	}

	// Mounting over a mounted rootfs is refused.
	if _, _, err := store.MountRootFS(img, dir); err == nil {
		t.Error("mounted twice on the same directory")
	}
	if err := unmount(); err != nil {
		t.Fatal(err)
	}
	if err := unmount(); err != nil {
		t.Errorf("second unmount: %v", err)
	}
	if ents, err := os.ReadDir(dir); err != nil || len(ents) != 0 {
		t.Errorf("after unmount %s holds %d entries (%v)", dir, len(ents), err)
	}
}

func TestMountRootFSErrors(t *testing.T) {
	store := newStore(t, Config{})
	tests := []struct {
		name string
		img  *Image
		dir  string
	}{
		{"nil image", nil, t.TempDir()},
		{"not unpacked", &Image{Ref: "x", RootFS: filepath.Join(t.TempDir(), "missing")}, t.TempDir()},
		{"comma in dir", &Image{Ref: "x", RootFS: t.TempDir()}, filepath.Join(t.TempDir(), "a,b")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, _, err := store.MountRootFS(tt.img, tt.dir); err == nil {
				t.Error("mounted, want an error")
			}
		})
	}
}
