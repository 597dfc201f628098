package image

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
)

// MountRootFS mounts an overlayfs with img's rootfs as the read-only lower layer and
// upper/work directories under dir, and returns the mount point dir/rootfs. Writes in the
// container land in dir/upper and never touch the image. An upper layer left in dir by an
// earlier mount is discarded, so every mount starts from the image. unmount detaches the
// overlay and removes what MountRootFS created under dir; calling it again does nothing.
// Mounting needs root (CAP_SYS_ADMIN).
func (s *Store) MountRootFS(img *Image, dir string) (rootfs string, unmount func() error, err error) {
	if img == nil || img.RootFS == "" {
		return "", nil, errors.New("mounting rootfs: no image")
	}
	dir, err = filepath.Abs(dir)
	if err != nil {
		return "", nil, fmt.Errorf("mounting rootfs: resolving %q: %w", dir, err)
	}
	if strings.ContainsAny(dir, ",:") {
		return "", nil, fmt.Errorf("mounting rootfs: directory %q must not contain ',' or ':' (overlayfs options)", dir)
	}
	lower := img.RootFS
	lst, err := os.Stat(lower)
	if err != nil {
		return "", nil, fmt.Errorf("mounting rootfs: image %s is not unpacked: %w", img.Ref, err)
	}
	upper, work, merged := filepath.Join(dir, "upper"), filepath.Join(dir, "work"), filepath.Join(dir, "rootfs")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", nil, fmt.Errorf("mounting rootfs: %w", err)
	}
	if mounted, err := mountinfo.Mounted(merged); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return "", nil, fmt.Errorf("mounting rootfs: checking whether %s is a mount point: %w", merged, err)
	} else if mounted {
		return "", nil, fmt.Errorf("mounting rootfs: %s is already mounted", merged)
	}
	for _, d := range []string{upper, work} {
		if err := os.RemoveAll(d); err != nil {
			return "", nil, fmt.Errorf("mounting rootfs: clearing %s: %w", d, err)
		}
	}
	cleanup := func() error {
		return errors.Join(os.RemoveAll(upper), os.RemoveAll(work), removeIfExists(merged))
	}
	for _, d := range []string{upper, work, merged} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			cleanup()
			return "", nil, fmt.Errorf("mounting rootfs: %w", err)
		}
	}
	// The merged root directory takes its owner and mode from the upper directory.
	if st, ok := lst.Sys().(*unix.Stat_t); ok {
		if err := errors.Join(os.Lchown(upper, int(st.Uid), int(st.Gid)), os.Chmod(upper, lst.Mode().Perm())); err != nil {
			cleanup()
			return "", nil, fmt.Errorf("mounting rootfs: %w", err)
		}
	}
	data := "lowerdir=" + lower + ",upperdir=" + upper + ",workdir=" + work
	if err := unix.Mount("overlay", merged, "overlay", 0, data); err != nil {
		cleanup()
		return "", nil, fmt.Errorf("mounting overlay on %s: %w", merged, err)
	}
	unmount = sync.OnceValue(func() error {
		if err := unix.Unmount(merged, 0); err != nil && !errors.Is(err, unix.EINVAL) {
			if !errors.Is(err, unix.EBUSY) {
				return fmt.Errorf("unmounting %s: %w", merged, err)
			}
			// Still in use (a process kept a file open): detach it lazily.
			if err := unix.Unmount(merged, unix.MNT_DETACH); err != nil {
				return fmt.Errorf("detaching %s: %w", merged, err)
			}
		}
		if err := cleanup(); err != nil {
			return fmt.Errorf("removing overlay directories under %s: %w", dir, err)
		}
		return nil
	})
	return merged, unmount, nil
}

// removeIfExists removes the empty directory p (never recursively: it was a mount point).
func removeIfExists(p string) error {
	if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}
