package testenv

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// FilesOnDiskHolding lists the regular files under root whose bytes contain secret, on
// root's own filesystem only: whatever is mounted below root (a tmpfs, an overlay root) is
// not walked. It is how tests check that secrets never reach the disk a state directory is on.
func FilesOnDiskHolding(t testing.TB, root string, secret []byte) []string {
	t.Helper()
	var rootSt unix.Stat_t
	if err := unix.Stat(root, &rootSt); err != nil {
		t.Fatal(err)
	}
	var found []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) || errors.Is(err, fs.ErrPermission) {
				return nil // gone while walking
			}
			return err
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return nil
		}
		if st.Dev != rootSt.Dev {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if !d.Type().IsRegular() {
			return nil
		}
		if b, err := os.ReadFile(p); err == nil && bytes.Contains(b, secret) {
			found = append(found, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return found
}
