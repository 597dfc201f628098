package pod

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"slices"
	"strings"
	"syscall"
	"time"

	"k8s.io/utils/ptr"

	"github.com/kip-dev/kip/internal/cellapi"
)

// The atomic writer lays a configMap, secret, downwardAPI or projected volume out as kubelet's
// (pkg/volume/util/atomic_writer.go) does, so that a reader never sees half of an update:
//
//	<volume>/..2026_01_02_15_04_05.123456789/   the files of one version (mode 0755)
//	<volume>/..data -> ..2026_01_02_15_04_05.123456789
//	<volume>/<top-level entry> -> ..data/<top-level entry>
//
// An update writes a new timestamped directory, renames a fresh ..data_tmp symlink over ..data
// (atomic), adds the user-visible links of new entries, removes those of vanished ones and then
// the old directory. Names beginning with ".." are reserved. Every path is opened through an
// os.Root of the volume, so links a container planted cannot lead the agent outside it.
const (
	dataDirName    = "..data"
	newDataDirName = "..data_tmp"
	// tsDirFormat is the prefix of a timestamped directory, as kubelet names it.
	tsDirFormat = "..2006_01_02_15_04_05."
)

// Limits kubelet's atomic writer puts on a volume path.
const (
	maxFileNameLength = 255
	maxPathLength     = 4096
)

// checkVolumePath accepts what kubelet's atomic writer accepts: a non-empty relative path of
// at most 4096 characters, no element "..", no element longer than 255, and a first element
// that does not begin with ".." (those names are the writer's own).
func checkVolumePath(p string) error {
	if err := checkRelPath(p); err != nil {
		return err
	}
	if len(p) > maxPathLength {
		return fmt.Errorf("%q is longer than %d characters", p, maxPathLength)
	}
	els := strings.Split(p, "/")
	for _, el := range els {
		if len(el) > maxFileNameLength {
			return fmt.Errorf("%q has a name longer than %d characters", p, maxFileNameLength)
		}
	}
	if strings.HasPrefix(els[0], "..") {
		return fmt.Errorf("%q must not begin with '..' (reserved for the volume's data directories)", p)
	}
	return nil
}

// writeAtomic brings the volume directory vdir to exactly files (paths already checked with
// checkVolumePath). It reports whether anything changed; with the same content and modes it
// only makes sure the user-visible links exist. vdir must exist. Writes to one volume must not
// run concurrently. With the pod's fsGroup (non-nil), the whole volume gets its ownership
// (setVolumeOwnership, read-only) after the new data directory is written and before
// ..data is swapped to it, where kubelet's atomic writer calls setPerms: no reader sees the
// new files without their group bits.
func writeAtomic(vdir string, files map[string]cellapi.File, now time.Time, fsGroup *int64) (changed bool, err error) {
	root, err := os.OpenRoot(vdir)
	if err != nil {
		return false, err
	}
	defer root.Close()
	payload := make(map[string]cellapi.File, len(files))
	for p, f := range files {
		payload[path.Clean(p)] = f
	}

	oldTs, err := root.Readlink(dataDirName)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		oldTs = ""
	case err != nil:
		return false, fmt.Errorf("reading %s: %w", dataDirName, err)
	case !isTsDirName(oldTs):
		return false, fmt.Errorf("%s points to %q, not a data directory of this volume", dataDirName, oldTs)
	}

	var remove []string
	if oldTs != "" {
		old, err := walkFiles(root, oldTs)
		if err != nil {
			return false, fmt.Errorf("reading the current data directory: %w", err)
		}
		remove = pathsToRemove(old, payload)
		same, err := samePayload(root, oldTs, payload, fsGroup != nil)
		if err != nil {
			return false, fmt.Errorf("reading the current data directory: %w", err)
		}
		if same && len(remove) == 0 {
			// Up to date; kubelet still makes sure every user-visible link is there.
			return false, createVisibleLinks(root, payload)
		}
	}

	tsDir, err := newTsDir(root, now)
	if err != nil {
		return false, err
	}
	if err := writePayload(root, tsDir, payload); err != nil {
		_ = root.RemoveAll(tsDir)
		return false, err
	}
	if fsGroup != nil {
		if err := setVolumeOwnership(root, *fsGroup, true); err != nil {
			_ = root.RemoveAll(tsDir)
			return false, fmt.Errorf("setting the fsGroup ownership: %w", err)
		}
	}
	_ = root.Remove(newDataDirName) // a leftover of an interrupted write
	if err := root.Symlink(tsDir, newDataDirName); err != nil {
		_ = root.RemoveAll(tsDir)
		return false, fmt.Errorf("linking %s: %w", newDataDirName, err)
	}
	if err := root.Rename(newDataDirName, dataDirName); err != nil {
		_ = root.Remove(newDataDirName)
		_ = root.RemoveAll(tsDir)
		return false, fmt.Errorf("swapping %s: %w", dataDirName, err)
	}
	if err := createVisibleLinks(root, payload); err != nil {
		return true, err
	}
	for _, p := range remove {
		if strings.Contains(p, "/") {
			continue // only top-level entries are links; deeper ones went with the old directory
		}
		if err := root.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return true, fmt.Errorf("removing %s: %w", p, err)
		}
	}
	if oldTs != "" {
		if err := root.RemoveAll(oldTs); err != nil {
			return true, fmt.Errorf("removing the old data directory %s: %w", oldTs, err)
		}
	}
	return true, nil
}

// isTsDirName reports whether name is one of the writer's timestamped directories.
func isTsDirName(name string) bool {
	return strings.HasPrefix(name, "..") && !strings.Contains(name, "/") &&
		name != dataDirName && name != newDataDirName && len(name) > len(tsDirFormat)
}

// newTsDir creates a fresh timestamped directory with mode 0755 and returns its name.
func newTsDir(root *os.Root, now time.Time) (string, error) {
	base := now.UTC().Format(tsDirFormat)
	for i := 0; ; i++ {
		name := fmt.Sprintf("%s%09d", base, now.Nanosecond()+i)
		err := root.Mkdir(name, 0o755)
		if errors.Is(err, fs.ErrExist) && i < 1000 {
			continue
		}
		if err != nil {
			return "", fmt.Errorf("creating a data directory: %w", err)
		}
		// Group and others must be able to walk it whatever the umask.
		if err := root.Chmod(name, 0o755); err != nil {
			return "", fmt.Errorf("creating a data directory: %w", err)
		}
		return name, nil
	}
}

// fileMode is the permission bits of f, 0644 when it sets none.
func fileMode(f cellapi.File) fs.FileMode {
	mode := fs.FileMode(f.Mode) & fs.ModePerm
	if mode == 0 {
		mode = 0o644
	}
	return mode
}

func writePayload(root *os.Root, tsDir string, payload map[string]cellapi.File) error {
	for p, f := range payload {
		full := path.Join(tsDir, p)
		if d := path.Dir(full); d != tsDir {
			if err := root.MkdirAll(d, 0o755); err != nil {
				return fmt.Errorf("writing %s: %w", p, err)
			}
		}
		mode := fileMode(f)
		if err := root.WriteFile(full, f.Data, mode); err != nil {
			return fmt.Errorf("writing %s: %w", p, err)
		}
		// WriteFile's mode is masked by the umask; the file must have exactly mode.
		if err := root.Chmod(full, mode); err != nil {
			return fmt.Errorf("writing %s: %w", p, err)
		}
		if f.Owner != nil {
			if err := root.Lchown(full, int(*f.Owner), -1); err != nil {
				return fmt.Errorf("writing %s: %w", p, err)
			}
		}
	}
	return nil
}

// walkFiles lists every path (files and directories) under dir, relative to it.
func walkFiles(root *os.Root, dir string) ([]string, error) {
	var out []string
	err := fs.WalkDir(root.FS(), dir, func(p string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p != dir {
			out = append(out, strings.TrimPrefix(p, dir+"/"))
		}
		return nil
	})
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	return out, err
}

// pathsToRemove are the old paths that are neither in payload nor a parent directory of one.
func pathsToRemove(old []string, payload map[string]cellapi.File) []string {
	keep := map[string]bool{}
	for p := range payload {
		for q := p; q != "." && q != "/"; q = path.Dir(q) {
			keep[q] = true
		}
	}
	var out []string
	for _, p := range old {
		if !keep[p] {
			out = append(out, p)
		}
	}
	slices.Sort(out)
	return out
}

// samePayload reports whether the data directory already holds payload's content, modes
// (with the group read bits fsGroup adds, when set) and owners.
func samePayload(root *os.Root, tsDir string, payload map[string]cellapi.File, fsGroup bool) (bool, error) {
	for p, f := range payload {
		full := path.Join(tsDir, p)
		st, err := root.Lstat(full)
		if errors.Is(err, fs.ErrNotExist) {
			return false, nil
		}
		if err != nil {
			return false, err
		}
		want := fileMode(f)
		if fsGroup {
			want = fsGroupMode(want, true)
		}
		if !st.Mode().IsRegular() || st.Mode().Perm() != want {
			return false, nil
		}
		if sys, ok := st.Sys().(*syscall.Stat_t); ok && int64(sys.Uid) != ptr.Deref(f.Owner, int64(os.Geteuid())) {
			return false, nil
		}
		b, err := root.ReadFile(full)
		if err != nil {
			return false, err
		}
		if !bytes.Equal(b, f.Data) {
			return false, nil
		}
	}
	return true, nil
}

// createVisibleLinks makes <entry> -> ..data/<entry> for every top-level entry of payload.
func createVisibleLinks(root *os.Root, payload map[string]cellapi.File) error {
	done := map[string]bool{}
	for p := range payload {
		top, _, _ := strings.Cut(p, "/")
		if done[top] {
			continue
		}
		done[top] = true
		if _, err := root.Readlink(top); err == nil {
			continue
		}
		if err := root.Symlink(path.Join(dataDirName, top), top); err != nil {
			return fmt.Errorf("linking %s: %w", top, err)
		}
	}
	return nil
}
