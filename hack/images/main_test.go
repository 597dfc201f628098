package main

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/kip-dev/kip/internal/registry"
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
	img, err := KipImage([]byte("kip-binary"), []byte("ca"), "v1.2.3", "arm64")
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
	a := digest(KipImage([]byte("k"), []byte("ca"), "v1", "amd64"))
	if b := digest(KipImage([]byte("k"), []byte("ca"), "v1", "amd64")); a != b {
		t.Errorf("kip image digests differ: %s, %s", a, b)
	}
	if b := digest(KipImage([]byte("k"), []byte("ca"), "v2", "amd64")); a == b {
		t.Errorf("kip images of versions v1 and v2 have one digest %s", a)
	}
	c := digest(CellImage([]byte("c"), "v1", "amd64"))
	if d := digest(CellImage([]byte("c"), "v1", "amd64")); c != d {
		t.Errorf("kip-cell image digests differ: %s, %s", c, d)
	}
	if d := digest(CellImage([]byte("c2"), "v1", "amd64")); c == d {
		t.Errorf("kip-cell images of different binaries have one digest %s", c)
	}
}

// TestRunWritesLayoutAndPushes runs the command on prebuilt stand-in binaries: both images
// land in the OCI layout under their version tags and in a registry under REGISTRY/repo:tag.
func TestRunWritesLayoutAndPushes(t *testing.T) {
	dir := t.TempDir()
	bins := filepath.Join(dir, "bins")
	if err := os.MkdirAll(bins, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, b := range []string{"kip", "kip-cell"} {
		if err := os.WriteFile(filepath.Join(bins, b), []byte(b), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	ca := filepath.Join(dir, "ca.crt")
	if err := os.WriteFile(ca, []byte("ca"), 0o644); err != nil {
		t.Fatal(err)
	}
	reg, err := registry.Start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	out := filepath.Join(dir, "layout")
	var stdout bytes.Buffer
	err = run(context.Background(), []string{"--bins", bins, "--ca-bundle", ca, "--version", "v9.8.7", "--out", out,
		"--push", reg.Host() + "/team", "--insecure"}, &stdout)
	if err != nil {
		t.Fatalf("run: %v\n%s", err, stdout.String())
	}
	idx, err := layout.ImageIndexFromPath(out)
	if err != nil {
		t.Fatal(err)
	}
	m, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	var refs []string
	for _, d := range m.Manifests {
		refs = append(refs, d.Annotations["org.opencontainers.image.ref.name"])
	}
	if strings.Join(refs, ",") != "kip:v9.8.7,kip-cell:v9.8.7" {
		t.Errorf("layout refs %v, want kip:v9.8.7 and kip-cell:v9.8.7", refs)
	}
	for i, repo := range []string{"kip", "kip-cell"} {
		ref, err := name.ParseReference(reg.Host()+"/team/"+repo+":v9.8.7", name.Insecure)
		if err != nil {
			t.Fatal(err)
		}
		desc, err := remote.Head(ref)
		if err != nil {
			t.Fatalf("pulling %s: %v", ref, err)
		}
		if desc.Digest != m.Manifests[i].Digest {
			t.Errorf("%s in the registry is %s, in the layout %s", ref, desc.Digest, m.Manifests[i].Digest)
		}
	}
	for _, want := range []string{"pushed " + reg.Host() + "/team/kip:v9.8.7@sha256:", "pushed " + reg.Host() + "/team/kip-cell:v9.8.7@sha256:"} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, stdout.String())
		}
	}
}

func TestRunRejectsBadTag(t *testing.T) {
	err := run(context.Background(), []string{"--version", "v1/../x", "--bins", t.TempDir()}, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "--version") {
		t.Fatalf("err %v, want one naming --version", err)
	}
}
