package image

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"golang.org/x/sys/unix"
)

type tarEntry struct {
	pax              map[string]string
	name, body, link string
	typ              byte
	mode             int64
	uid, gid         int
	mtime            time.Time
}

func tarBytes(t testing.TB, entries ...tarEntry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Linkname: e.link, Typeflag: e.typ, Mode: e.mode, Uid: e.uid, Gid: e.gid, ModTime: e.mtime, Format: tar.FormatPAX, PAXRecords: e.pax}
		if h.Typeflag == 0 {
			h.Typeflag = tar.TypeReg
		}
		if h.Mode == 0 {
			h.Mode = 0o644
		}
		if h.ModTime.IsZero() {
			h.ModTime = time.Unix(1e9, 0)
		}
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(e.body))
		}
		if h.Typeflag == tar.TypeChar {
			h.Devmajor, h.Devminor = 1, 3
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(e.body)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func tarLayer(t testing.TB, entries ...tarEntry) v1.Layer {
	t.Helper()
	b := tarBytes(t, entries...)
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func TestUntar(t *testing.T) {
	root := os.Geteuid() == 0
	mtime := time.Date(2021, 3, 4, 5, 6, 7, 0, time.UTC)
	type check func(t *testing.T, dir, outside string)
	fileIs := func(rel, want string) check {
		return func(t *testing.T, dir, _ string) {
			got, err := os.ReadFile(filepath.Join(dir, rel))
			if err != nil || string(got) != want {
				t.Errorf("%s = %q (%v), want %q", rel, got, err, want)
			}
		}
	}
	absent := func(rel string) check {
		return func(t *testing.T, dir, _ string) {
			if _, err := os.Lstat(filepath.Join(dir, rel)); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("%s exists (%v), want it absent", rel, err)
			}
		}
	}
	outsideEmpty := func(t *testing.T, _, base string) {
		// base holds only the root directory.
		if ents, _ := os.ReadDir(base); len(ents) != 1 {
			t.Errorf("%d entries written beside the root", len(ents)-1)
		}
	}
	tests := []struct {
		name    string
		entries []tarEntry
		wantErr error // nil: success
		checks  []check
	}{
		{
			name: "files, dirs, symlinks, hard links",
			entries: []tarEntry{
				{name: "./", typ: tar.TypeDir, mode: 0o755},
				{name: "etc/", typ: tar.TypeDir, mode: 0o755, mtime: mtime},
				{name: "etc/hostname", body: "cell\n", mtime: mtime},
				{name: "bin/busybox", body: "ELF", mode: 0o755},
				{name: "bin/sh", typ: tar.TypeSymlink, link: "/bin/busybox"},
				{name: "bin/ls", typ: tar.TypeSymlink, link: "busybox"},
				{name: "bin/hard", typ: tar.TypeLink, link: "bin/busybox"},
				{name: "deep/missing/parents/file", body: "x"},
			},
			checks: []check{
				fileIs("etc/hostname", "cell\n"), fileIs("bin/hard", "ELF"), fileIs("deep/missing/parents/file", "x"),
				func(t *testing.T, dir, _ string) {
					if l, _ := os.Readlink(filepath.Join(dir, "bin/sh")); l != "/bin/busybox" {
						t.Errorf("bin/sh -> %q", l)
					}
					if l, _ := os.Readlink(filepath.Join(dir, "bin/ls")); l != "busybox" {
						t.Errorf("bin/ls -> %q", l)
					}
					a, _ := os.Stat(filepath.Join(dir, "bin/busybox"))
					b, _ := os.Stat(filepath.Join(dir, "bin/hard"))
					if !os.SameFile(a, b) {
						t.Error("bin/hard is not a hard link of bin/busybox")
					}
					if a.Mode().Perm() != 0o755 {
						t.Errorf("bin/busybox mode %v", a.Mode())
					}
					for _, p := range []string{"etc", "etc/hostname"} {
						if st, err := os.Lstat(filepath.Join(dir, p)); err != nil || !st.ModTime().Equal(mtime) {
							t.Errorf("%s mtime %v (%v), want %v", p, st.ModTime(), err, mtime)
						}
					}
				},
			},
		},
		{
			name:    "dot-dot name",
			entries: []tarEntry{{name: "../evil", body: "x"}},
			wantErr: ErrUnsafePath, checks: []check{outsideEmpty},
		},
		{
			name:    "dot-dot inside name",
			entries: []tarEntry{{name: "a/../../evil", body: "x"}},
			wantErr: ErrUnsafePath, checks: []check{outsideEmpty},
		},
		{
			name:    "hard link out of the root",
			entries: []tarEntry{{name: "passwd", typ: tar.TypeLink, link: "../../etc/passwd"}},
			wantErr: ErrUnsafePath, checks: []check{outsideEmpty},
		},
		{
			name: "absolute symlink stays inside the root",
			entries: []tarEntry{
				{name: "escape", typ: tar.TypeSymlink, link: "/"},
				{name: "escape/etc/owned", body: "inside"},
			},
			checks: []check{outsideEmpty, fileIs("etc/owned", "inside")},
		},
		{
			name: "relative symlink climbing out stays inside the root",
			entries: []tarEntry{
				{name: "up", typ: tar.TypeSymlink, link: "../../../.."},
				{name: "up/written", body: "inside"},
			},
			checks: []check{outsideEmpty, fileIs("written", "inside")},
		},
		{
			name: "directory entry over a symlink replaces the symlink",
			entries: []tarEntry{
				{name: "d", typ: tar.TypeSymlink, link: "/"},
				{name: "d/", typ: tar.TypeDir, mode: 0o700},
				{name: "d/f", body: "in d"},
			},
			checks: []check{outsideEmpty, fileIs("d/f", "in d"), absent("f")},
		},
		{
			name: "device nodes skipped, fifo made",
			entries: []tarEntry{
				{name: "dev/null", typ: tar.TypeChar, mode: 0o666},
				{name: "run/pipe", typ: tar.TypeFifo, mode: 0o600},
			},
			checks: []check{absent("dev/null"), func(t *testing.T, dir, _ string) {
				if st, err := os.Lstat(filepath.Join(dir, "run/pipe")); err != nil || st.Mode()&os.ModeNamedPipe == 0 {
					t.Errorf("run/pipe: %v %v", st, err)
				}
			}},
		},
		{
			name:    "extended attributes",
			entries: []tarEntry{{name: "f", body: "x", pax: map[string]string{"SCHILY.xattr.user.kip": "v1"}}},
			checks: []check{func(t *testing.T, dir, _ string) {
				buf := make([]byte, 16)
				n, err := unix.Getxattr(filepath.Join(dir, "f"), "user.kip", buf)
				if err != nil || string(buf[:n]) != "v1" {
					t.Errorf("user.kip = %q (%v), want v1", buf[:max(n, 0)], err)
				}
			}},
		},
		{
			name:    "later entry replaces earlier",
			entries: []tarEntry{{name: "f", body: "old"}, {name: "f", body: "new"}},
			checks:  []check{fileIs("f", "new")},
		},
	}
	if root {
		tests = append(tests, struct {
			name    string
			entries []tarEntry
			wantErr error
			checks  []check
		}{
			name: "owner then setuid mode",
			entries: []tarEntry{
				{name: "bin/su", body: "ELF", mode: 0o4755, uid: 1000, gid: 1001},
				{name: "link", typ: tar.TypeSymlink, link: "bin/su", uid: 1002, gid: 1003},
			},
			checks: []check{func(t *testing.T, dir, _ string) {
				st, err := os.Lstat(filepath.Join(dir, "bin/su"))
				if err != nil {
					t.Fatal(err)
				}
				sys := st.Sys().(*syscall.Stat_t)
				if st.Mode()&os.ModeSetuid == 0 || sys.Uid != 1000 || sys.Gid != 1001 {
					t.Errorf("bin/su mode %v owner %d:%d, want setuid 1000:1001", st.Mode(), sys.Uid, sys.Gid)
				}
				lst, _ := os.Lstat(filepath.Join(dir, "link"))
				if lsys := lst.Sys().(*syscall.Stat_t); lsys.Uid != 1002 || lsys.Gid != 1003 {
					t.Errorf("symlink owner %d:%d, want 1002:1003", lsys.Uid, lsys.Gid)
				}
			}},
		})
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			base := t.TempDir()
			dir := filepath.Join(base, "root")
			if err := os.Mkdir(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			err := Untar(context.Background(), bytes.NewReader(tarBytes(t, tt.entries...)), dir, 0)
			switch {
			case tt.wantErr == nil && err != nil:
				t.Fatal(err)
			case tt.wantErr != nil && !errors.Is(err, tt.wantErr):
				t.Fatalf("error %v, want %v", err, tt.wantErr)
			}
			for _, c := range tt.checks {
				c(t, dir, base)
			}
		})
	}
}

func TestUntarCanceled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := Untar(ctx, bytes.NewReader(tarBytes(t, tarEntry{name: "f", body: "x"})), t.TempDir(), 0)
	if !errors.Is(err, context.Canceled) {
		t.Errorf("error %v, want context.Canceled", err)
	}
}

func TestUntarSizeLimit(t *testing.T) {
	entries := []tarEntry{
		{name: "a", body: "12345"},
		{name: "d/", typ: tar.TypeDir, mode: 0o755},
		{name: "d/b", body: "67890"},
	}
	for _, tt := range []struct {
		name    string
		max     int64
		tooBig  bool
		written []string
	}{
		{"no limit", 0, false, []string{"a", "d/b"}},
		{"exactly the limit", 10, false, []string{"a", "d/b"}},
		{"one byte short", 9, true, []string{"a"}},
		{"smaller than the first file", 4, true, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			err := Untar(context.Background(), bytes.NewReader(tarBytes(t, entries...)), dir, tt.max)
			if got := errors.Is(err, ErrTooLarge); got != tt.tooBig {
				t.Fatalf("Untar(max %d) = %v, want ErrTooLarge %v", tt.max, err, tt.tooBig)
			}
			for _, name := range []string{"a", "d/b"} {
				_, serr := os.Stat(filepath.Join(dir, name))
				want := false
				for _, w := range tt.written {
					want = want || w == name
				}
				if (serr == nil) != want {
					t.Errorf("%s written: %v, want %v", name, serr == nil, want)
				}
			}
		})
	}
}
