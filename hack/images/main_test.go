package main

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/kip-dev/kip/internal/registry"
)

// TestRunWritesLayoutAndPushes runs the command on prebuilt stand-in binaries: both images
// land in the OCI layout under their version tags and in a registry under REGISTRY/repo:tag.
func TestRunWritesLayoutAndPushes(t *testing.T) {
	dir := t.TempDir()
	bins := filepath.Join(dir, "bins")
	if err := os.MkdirAll(bins, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, b := range []string{"kip", "kip-cell", "runc"} {
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
	err = run(context.Background(), []string{"--bins", bins, "--runc", filepath.Join(bins, "runc"), "--ca-bundle", ca, "--version", "v9.8.7", "--out", out,
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
