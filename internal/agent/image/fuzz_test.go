package image

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// FuzzUntar unpacks any byte stream as an image layer under a size limit (1 byte to 1 MiB,
// so a sparse or oversized entry cannot fill the disk). Properties: no panic; nothing is
// written beside the root; the regular files under the root add up to no more than the
// limit; ErrTooLarge is returned only when the stream's regular files add up to more than
// the limit, and whenever they do (unless another error came first); ErrUnsafePath only for
// a stream with a name or hard link target that climbs out of the root.
func FuzzUntar(f *testing.F) {
	for _, entries := range [][]tarEntry{
		{{name: "etc/", typ: tar.TypeDir, mode: 0o755}, {name: "etc/hostname", body: "cell\n"}, {name: "bin/sh", body: "ELF", mode: 0o755}},
		{{name: "link", typ: tar.TypeSymlink, link: "/etc"}, {name: "link/passwd", body: "root::0:0"}},
		{{name: "up", typ: tar.TypeSymlink, link: "../.."}, {name: "up/escape", body: "x"}},
		{{name: "../escape", body: "x"}},
		{{name: "a", body: "data"}, {name: "hard", typ: tar.TypeLink, link: "a"}, {name: "bad", typ: tar.TypeLink, link: "../../a"}},
		{{name: "fifo", typ: tar.TypeFifo}, {name: "fifo", body: "replaced"}},
		{{name: "dev/null", typ: tar.TypeChar}},
		{{name: "cap", body: "x", pax: map[string]string{"SCHILY.xattr.user.k": "v"}}},
		{{name: "d/", typ: tar.TypeDir, mode: 0o555}, {name: "d/f", body: strings.Repeat("y", 2000)}},
		{{name: "a/b/c/d/e", body: "deep"}, {name: "a/b", body: "file over dir"}},
	} {
		f.Add(tarBytes(f, entries...), uint32(1000))
	}
	f.Add([]byte("not a tar"), uint32(10))
	f.Fuzz(func(t *testing.T, data []byte, limit uint32) {
		max := int64(limit%(1<<20)) + 1
		base := t.TempDir()
		dir := filepath.Join(base, "root")
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		err := Untar(context.Background(), bytes.NewReader(data), dir, max)

		if ents, _ := os.ReadDir(base); len(ents) != 1 {
			var names []string
			for _, e := range ents {
				names = append(names, e.Name())
			}
			t.Fatalf("entries written beside the root: %v (Untar: %v)", names, err)
		}
		if n := treeBytes(t, dir); n > max {
			t.Fatalf("unpacked %d bytes of files under a limit of %d (Untar: %v)", n, max, err)
		}

		total, unsafe, readErr := scanTar(data, max)
		if errors.Is(err, ErrTooLarge) && total <= max {
			t.Fatalf("ErrTooLarge, but the stream's files add up to %d of %d: %v", total, max, err)
		}
		if err == nil && total > max {
			t.Fatalf("the stream's files add up to %d, more than %d, and Untar succeeded", total, max)
		}
		if errors.Is(err, ErrUnsafePath) && !unsafe {
			t.Fatalf("ErrUnsafePath for a stream with no name climbing out: %v", err)
		}
		if err == nil && readErr != nil {
			t.Fatalf("Untar succeeded on a stream archive/tar cannot read: %v", readErr)
		}
	})
}

// treeBytes adds up the sizes of the regular files under dir, each inode once.
func treeBytes(t *testing.T, dir string) int64 {
	seen := map[uint64]bool{}
	var n int64
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return nil
		}
		st := info.Sys().(*syscall.Stat_t)
		if !seen[st.Ino] {
			seen[st.Ino] = true
			n += info.Size()
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// scanTar reads data as archive/tar does: the sum of its regular files' sizes, whether a
// name or hard link target climbs out of the root, and the error that ended the read (nil
// at the end of the archive). It stops as soon as the sum passes max: a sparse entry's
// size need not match the stream's.
func scanTar(data []byte, max int64) (total int64, unsafe bool, err error) {
	tr := tar.NewReader(bytes.NewReader(data))
	climbs := func(name string) bool {
		p := path.Clean(strings.TrimLeft(name, "/"))
		return p == ".." || strings.HasPrefix(p, "../")
	}
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return total, unsafe, nil
		}
		if err != nil {
			return total, unsafe, err
		}
		unsafe = unsafe || climbs(hdr.Name) || (hdr.Typeflag == tar.TypeLink && climbs(hdr.Linkname))
		if hdr.Typeflag != tar.TypeReg && hdr.Typeflag != tar.TypeRegA {
			continue // as Untar: Next skips the body without expanding it
		}
		if hdr.Size > max-total {
			return max + 1, unsafe, nil
		}
		total += hdr.Size
		if _, err := io.Copy(io.Discard, tr); err != nil {
			return total, unsafe, err
		}
	}
}
