package kipimage

import (
	"archive/tar"
	"io"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/kip-dev/kip/internal/imagebuild"
)

// files reads the single layer of img into path → header.
func files(t *testing.T, img v1.Image) map[string]*tar.Header {
	t.Helper()
	layers, err := img.Layers()
	if err != nil || len(layers) != 1 {
		t.Fatalf("layers: %d, %v; want 1", len(layers), err)
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	out := map[string]*tar.Header{}
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		out[h.Name] = h
	}
}

func TestKipImage(t *testing.T) {
	img, err := Kip(KipInputs{Kip: []byte("kip-binary"), KipCell: []byte("cell"), Runc: []byte("runc!"), CABundle: []byte("ca"), Version: "v1.2.3", Arch: "arm64"})
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cf.Architecture != "arm64" || cf.OS != "linux" {
		t.Errorf("platform %s/%s, want linux/arm64", cf.OS, cf.Architecture)
	}
	if cf.Config.User != "65532:65532" || strings.Join(cf.Config.Entrypoint, " ") != "/usr/local/bin/kip" ||
		strings.Join(cf.Config.Cmd, " ") != "run --config /etc/kip/kip.yaml" {
		t.Errorf("config user %q entrypoint %q cmd %q", cf.Config.User, cf.Config.Entrypoint, cf.Config.Cmd)
	}
	if cf.Config.Labels["org.opencontainers.image.version"] != "v1.2.3" {
		t.Errorf("labels %v lack the version", cf.Config.Labels)
	}
	fs := files(t, img)
	for _, tt := range []struct {
		path string
		mode int64
		uid  int
		size int64
	}{
		{"usr/local/bin/kip", 0o755, 0, int64(len("kip-binary"))},
		{"usr/local/bin/kip-cell", 0o755, 0, int64(len("cell"))},
		{"usr/local/bin/runc", 0o755, 0, int64(len("runc!"))},
		{"etc/ssl/certs/ca-certificates.crt", 0o644, 0, 2},
		{"var/lib/kip/", 0o755, NonrootUID, 0},
		{"tmp/", 0o1777, 0, 0},
	} {
		h := fs[tt.path]
		if h == nil {
			t.Errorf("%s missing from the layer", tt.path)
			continue
		}
		if h.Mode != tt.mode || h.Uid != tt.uid || h.Size != tt.size {
			t.Errorf("%s: mode %o uid %d size %d, want %o %d %d", tt.path, h.Mode, h.Uid, h.Size, tt.mode, tt.uid, tt.size)
		}
	}
	if !strings.Contains(readFile(t, img, "etc/passwd"), "nonroot:x:65532:65532:") {
		t.Errorf("/etc/passwd has no nonroot user")
	}
}

func readFile(t *testing.T, img v1.Image, name string) string {
	t.Helper()
	layers, _ := img.Layers()
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err != nil {
			t.Fatalf("%s not in the layer: %v", name, err)
		}
		if h.Name == name {
			b, _ := io.ReadAll(tr)
			return string(b)
		}
	}
}

// TestImagesReproducible builds each image twice from the same inputs: same digest; a
// different version or binary: a different one.
func TestImagesReproducible(t *testing.T) {
	digest := func(img v1.Image, err error) string {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		d, err := img.Digest()
		if err != nil {
			t.Fatal(err)
		}
		return d.String()
	}
	a := digest(Kip(KipInputs{Kip: []byte("k"), KipCell: []byte("c"), Runc: []byte("r"), CABundle: []byte("ca"), Version: "v1"}))
	if b := digest(Kip(KipInputs{Kip: []byte("k"), KipCell: []byte("c"), Runc: []byte("r"), CABundle: []byte("ca"), Version: "v1"})); a != b {
		t.Errorf("kip image digests differ: %s, %s", a, b)
	}
	if b := digest(Kip(KipInputs{Kip: []byte("k"), KipCell: []byte("c"), Runc: []byte("r"), CABundle: []byte("ca"), Version: "v2"})); a == b {
		t.Errorf("kip images of versions v1 and v2 have one digest %s", a)
	}
	c := digest(Cell([]byte("c"), "v1", "amd64"))
	if d := digest(Cell([]byte("c"), "v1", "amd64")); c != d {
		t.Errorf("kip-cell image digests differ: %s, %s", c, d)
	}
	if d := digest(Cell([]byte("c2"), "v1", "amd64")); c == d {
		t.Errorf("kip-cell images of different binaries have one digest %s", c)
	}
}

func TestKipRefusesMissingBinaries(t *testing.T) {
	for _, tt := range []struct {
		name string
		in   KipInputs
	}{
		{"kip", KipInputs{KipCell: []byte("c"), Runc: []byte("r")}},
		{"kip-cell", KipInputs{Kip: []byte("k"), Runc: []byte("r")}},
		{"runc", KipInputs{Kip: []byte("k"), KipCell: []byte("c")}},
	} {
		if _, err := Kip(tt.in); err == nil || !strings.Contains(err.Error(), "no "+tt.name+" binary") {
			t.Errorf("without %s: err %v, want one naming it", tt.name, err)
		}
	}
}

// TestKipSharedLibraries: a dynamically linked kip gets its loader and libraries, each at the
// path the loader looks it up by (a symlink to the stored file where the host has one).
func TestKipSharedLibraries(t *testing.T) {
	bin := "/bin/ls" // dynamically linked on every distribution kip supports
	libs, err := imagebuild.SharedLibraries(bin, nil)
	if err != nil {
		t.Skipf("skipping: %s: %v", bin, err)
	}
	if len(libs) == 0 {
		t.Skipf("skipping: %s is static here", bin)
	}
	img, err := Kip(KipInputs{Kip: []byte("k"), KipCell: []byte("c"), Runc: []byte("r"), Libraries: libs})
	if err != nil {
		t.Fatal(err)
	}
	fs := files(t, img)
	for _, l := range libs {
		real := fs[strings.TrimPrefix(l.Real, "/")]
		if real == nil || real.Typeflag != tar.TypeReg || real.Size == 0 {
			t.Errorf("%s: not a regular file in the layer: %+v", l.Real, real)
		}
		if l.Path != l.Real {
			h := fs[strings.TrimPrefix(l.Path, "/")]
			if h == nil || h.Typeflag != tar.TypeSymlink || h.Linkname != l.Real {
				t.Errorf("%s: want a symlink to %s, got %+v", l.Path, l.Real, h)
			}
		}
	}
}
