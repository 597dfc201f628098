package image

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// ErrUnsafePath is wrapped by Untar's error for an entry whose name (or hard link target)
// would land outside the destination.
var ErrUnsafePath = errors.New("tar entry escapes the root")

// ErrTooLarge is wrapped by Untar's error when the regular files of the stream add up to
// more than its limit.
var ErrTooLarge = errors.New("unpacked image exceeds the size limit")

// Untar unpacks the tar stream r into dir, which must exist. It creates directories, regular
// files, symlinks, hard links and FIFOs, and skips device nodes (the runtime mounts /dev).
// Names are resolved inside dir the way the container will see them: a symlink in the tree,
// absolute or relative, is followed as if dir were "/" (openat2 RESOLVE_IN_ROOT), so no entry
// can be written outside dir; a name or hard link target with ".." leading out of the root
// is refused with ErrUnsafePath. As root it restores ownership, then the mode (so setuid
// bits survive the chown), then extended attributes of files and directories (file
// capabilities), then modification times (directories last).
//
// maxBytes, when positive, caps the sum of the regular files' sizes: an entry that would take
// the total past it is not written, and Untar returns an error wrapping ErrTooLarge.
func Untar(ctx context.Context, r io.Reader, dir string, maxBytes int64) error {
	_, err := untar(ctx, r, dir, maxBytes)
	return err
}

// untar is Untar that also returns the sum of the regular files' sizes.
func untar(ctx context.Context, r io.Reader, dir string, maxBytes int64) (int64, error) {
	root, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("opening unpack root %s: %w", dir, err)
	}
	defer unix.Close(root)
	u := &untarrer{root: root, chown: os.Geteuid() == 0, max: maxBytes}
	tr := tar.NewReader(r)
	for {
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			// Drain past the end-of-archive marker: mutate.Extract writes the marker
			// even when it fails, and reports the failure only as the stream's error.
			if _, err := io.Copy(io.Discard, r); err != nil {
				return 0, fmt.Errorf("reading tar: %w", err)
			}
			break
		}
		if err != nil {
			return 0, fmt.Errorf("reading tar: %w", err)
		}
		if err := u.entry(hdr, tr); err != nil {
			return 0, fmt.Errorf("unpacking %q: %w", hdr.Name, err)
		}
	}
	// Directory times last, deepest first, since creating children changed them.
	for i := len(u.dirs) - 1; i >= 0; i-- {
		d := u.dirs[i]
		if err := u.setTimes(d.rel, d.atime, d.mtime); err != nil {
			return 0, fmt.Errorf("setting times of %q: %w", d.rel, err)
		}
	}
	return u.total, nil
}

type untarrer struct {
	root  int
	chown bool
	dirs  []dirTimes
	// max caps total, the bytes of regular files written so far; 0 is no cap.
	max, total int64
}

type dirTimes struct {
	rel          string
	atime, mtime time.Time
}

// cleanName turns a tar name into a path relative to the root ("." for the root itself),
// refusing names that climb out of it.
func cleanName(name string) (string, error) {
	p := path.Clean(strings.TrimLeft(name, "/"))
	if p == ".." || strings.HasPrefix(p, "../") {
		return "", fmt.Errorf("%w: %q", ErrUnsafePath, name)
	}
	return p, nil
}

func (u *untarrer) entry(hdr *tar.Header, r io.Reader) error {
	rel, err := cleanName(hdr.Name)
	if err != nil {
		return err
	}
	mode := uint32(hdr.Mode & 0o7777)
	switch hdr.Typeflag {
	case tar.TypeDir:
		return u.dir(rel, hdr, mode)
	case tar.TypeReg, tar.TypeRegA:
		if u.max > 0 && hdr.Size > u.max-u.total {
			return fmt.Errorf("%w: more than %d bytes of files", ErrTooLarge, u.max)
		}
		u.total += hdr.Size
		return u.withParent(rel, func(pfd int, base string) error { return u.file(pfd, base, hdr, mode, r) })
	case tar.TypeSymlink:
		return u.withParent(rel, func(pfd int, base string) error {
			if err := replace(pfd, base); err != nil {
				return err
			}
			if err := unix.Symlinkat(hdr.Linkname, pfd, base); err != nil {
				return fmt.Errorf("creating symlink: %w", err)
			}
			return u.meta(pfd, base, hdr, 0, false)
		})
	case tar.TypeLink:
		target, err := cleanName(hdr.Linkname)
		if err != nil {
			return fmt.Errorf("hard link target: %w", err)
		}
		tfd, tbase, err := u.parent(target, false)
		if err != nil {
			return fmt.Errorf("resolving hard link target %q: %w", hdr.Linkname, err)
		}
		defer unix.Close(tfd)
		return u.withParent(rel, func(pfd int, base string) error {
			if err := replace(pfd, base); err != nil {
				return err
			}
			if err := unix.Linkat(tfd, tbase, pfd, base, 0); err != nil {
				return fmt.Errorf("creating hard link to %q: %w", hdr.Linkname, err)
			}
			return nil
		})
	case tar.TypeFifo:
		return u.withParent(rel, func(pfd int, base string) error {
			if err := replace(pfd, base); err != nil {
				return err
			}
			if err := unix.Mknodat(pfd, base, unix.S_IFIFO|0o600, 0); err != nil {
				return fmt.Errorf("creating fifo: %w", err)
			}
			return u.meta(pfd, base, hdr, mode, true)
		})
	default:
		// Device nodes (the runtime provides /dev), PAX global headers and other
		// types are not unpacked.
		return nil
	}
}

func (u *untarrer) dir(rel string, hdr *tar.Header, mode uint32) error {
	if rel == "." {
		if err := u.fdMeta(u.root, hdr, mode); err != nil {
			return err
		}
		u.dirs = append(u.dirs, dirTimes{rel: rel, atime: atime(hdr), mtime: hdr.ModTime})
		return nil
	}
	err := u.withParent(rel, func(pfd int, base string) error {
		var st unix.Stat_t
		err := unix.Fstatat(pfd, base, &st, unix.AT_SYMLINK_NOFOLLOW)
		switch {
		case err == nil && st.Mode&unix.S_IFMT == unix.S_IFDIR:
		case err == nil || errors.Is(err, unix.ENOENT):
			if err := replace(pfd, base); err != nil {
				return err
			}
			if err := unix.Mkdirat(pfd, base, 0o700); err != nil {
				return fmt.Errorf("creating directory: %w", err)
			}
		default:
			return fmt.Errorf("inspecting existing entry: %w", err)
		}
		fd, err := unix.Openat(pfd, base, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("opening directory: %w", err)
		}
		defer unix.Close(fd)
		return u.fdMeta(fd, hdr, mode)
	})
	if err != nil {
		return err
	}
	u.dirs = append(u.dirs, dirTimes{rel: rel, atime: atime(hdr), mtime: hdr.ModTime})
	return nil
}

func (u *untarrer) file(pfd int, base string, hdr *tar.Header, mode uint32, r io.Reader) error {
	if err := replace(pfd, base); err != nil {
		return err
	}
	fd, err := unix.Openat(pfd, base, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("creating file: %w", err)
	}
	f := os.NewFile(uintptr(fd), base)
	if _, err := io.Copy(f, r); err != nil {
		f.Close()
		return fmt.Errorf("writing file: %w", err)
	}
	if err := u.fdMeta(int(f.Fd()), hdr, mode); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("closing file: %w", err)
	}
	return u.setTimesAt(pfd, base, atime(hdr), hdr.ModTime)
}

// fdMeta sets owner then mode on an open file or directory.
func (u *untarrer) fdMeta(fd int, hdr *tar.Header, mode uint32) error {
	if u.chown {
		if err := unix.Fchown(fd, hdr.Uid, hdr.Gid); err != nil {
			return fmt.Errorf("setting owner %d:%d: %w", hdr.Uid, hdr.Gid, err)
		}
	}
	if err := unix.Fchmod(fd, mode); err != nil {
		return fmt.Errorf("setting mode %o: %w", mode, err)
	}
	// Extended attributes last: chown clears security.capability.
	for k, v := range hdr.PAXRecords {
		name, ok := strings.CutPrefix(k, paxXattr)
		if !ok {
			continue
		}
		if err := unix.Fsetxattr(fd, name, []byte(v), 0); err != nil {
			if errors.Is(err, unix.ENOTSUP) || errors.Is(err, unix.EPERM) {
				continue // the filesystem or an unprivileged unpack cannot keep it
			}
			return fmt.Errorf("setting extended attribute %s: %w", name, err)
		}
	}
	return nil
}

// paxXattr prefixes the PAX records that carry extended attributes.
const paxXattr = "SCHILY.xattr."

// meta sets owner (without following a symlink), optionally the mode, and the times of
// pfd/base.
func (u *untarrer) meta(pfd int, base string, hdr *tar.Header, mode uint32, chmod bool) error {
	if u.chown {
		if err := unix.Fchownat(pfd, base, hdr.Uid, hdr.Gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return fmt.Errorf("setting owner %d:%d: %w", hdr.Uid, hdr.Gid, err)
		}
	}
	if chmod {
		if err := unix.Fchmodat(pfd, base, mode, 0); err != nil {
			return fmt.Errorf("setting mode %o: %w", mode, err)
		}
	}
	return u.setTimesAt(pfd, base, atime(hdr), hdr.ModTime)
}

func (u *untarrer) setTimes(rel string, at, mt time.Time) error {
	if rel == "." {
		return u.setTimesAt(u.root, ".", at, mt)
	}
	pfd, base, err := u.parent(rel, false)
	if err != nil {
		return err
	}
	defer unix.Close(pfd)
	return u.setTimesAt(pfd, base, at, mt)
}

func (u *untarrer) setTimesAt(pfd int, base string, at, mt time.Time) error {
	ts := []unix.Timespec{unix.NsecToTimespec(at.UnixNano()), unix.NsecToTimespec(mt.UnixNano())}
	if err := unix.UtimesNanoAt(pfd, base, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("setting times: %w", err)
	}
	return nil
}

func atime(hdr *tar.Header) time.Time {
	if hdr.AccessTime.IsZero() {
		return hdr.ModTime
	}
	return hdr.AccessTime
}

// withParent runs fn with an fd of rel's parent directory (created if missing) and rel's
// last element.
func (u *untarrer) withParent(rel string, fn func(pfd int, base string) error) error {
	pfd, base, err := u.parent(rel, true)
	if err != nil {
		return err
	}
	defer unix.Close(pfd)
	return fn(pfd, base)
}

// parent opens rel's parent directory, resolved inside the root, creating missing
// directories (0755) when create is set.
func (u *untarrer) parent(rel string, create bool) (int, string, error) {
	dir, base := path.Split(rel)
	dir = strings.TrimSuffix(dir, "/")
	if dir == "" {
		dir = "."
	}
	fd, err := u.openDir(dir)
	if err == nil || !create || !errors.Is(err, unix.ENOENT) {
		if err != nil {
			return -1, "", fmt.Errorf("opening parent directory %q: %w", dir, err)
		}
		return fd, base, nil
	}
	parts := strings.Split(dir, "/")
	for i := range parts {
		prefix := strings.Join(parts[:i+1], "/")
		fd, err := u.openDir(prefix)
		if err == nil {
			unix.Close(fd)
			continue
		}
		if !errors.Is(err, unix.ENOENT) {
			return -1, "", fmt.Errorf("opening directory %q: %w", prefix, err)
		}
		up := "."
		if i > 0 {
			up = strings.Join(parts[:i], "/")
		}
		ufd, err := u.openDir(up)
		if err != nil {
			return -1, "", fmt.Errorf("opening directory %q: %w", up, err)
		}
		err = unix.Mkdirat(ufd, parts[i], 0o755)
		unix.Close(ufd)
		if err != nil && !errors.Is(err, unix.EEXIST) {
			return -1, "", fmt.Errorf("creating directory %q: %w", prefix, err)
		}
	}
	fd, err = u.openDir(dir)
	if err != nil {
		return -1, "", fmt.Errorf("opening parent directory %q: %w", dir, err)
	}
	return fd, base, nil
}

// openDir opens the directory rel, resolving every symlink on the way inside the root.
func (u *untarrer) openDir(rel string) (int, error) {
	return unix.Openat2(u.root, rel, &unix.OpenHow{
		Flags:   unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS,
	})
}

// replace removes whatever pfd/base is, so a new entry can take its place. A non-empty
// directory is not removed.
func replace(pfd int, base string) error {
	err := unix.Unlinkat(pfd, base, 0)
	if errors.Is(err, unix.EISDIR) {
		err = unix.Unlinkat(pfd, base, unix.AT_REMOVEDIR)
	}
	if err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("replacing existing entry: %w", err)
	}
	return nil
}
