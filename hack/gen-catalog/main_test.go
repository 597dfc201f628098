package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
)

// TestEmbeddedCatalogIsGenerated regenerates the catalogs from the 2020 data and checks the
// embedded files are exactly what the generator makes, so nobody edits them by hand.
func TestEmbeddedCatalogIsGenerated(t *testing.T) {
	data := filepath.Join("..", "..", "..", "shared", "data")
	if _, err := os.Stat(filepath.Join(data, "aws-instance-types-2020.json")); err != nil {
		t.Skipf("2020 data not found at %s (it lives beside the repository): %v", data, err)
	}
	out := t.TempDir()
	if err := run(context.Background(), []string{"-data", data, "-out", out}); err != nil {
		t.Fatal(err)
	}
	for _, cloud := range []string{"aws", "azure"} {
		got, err := os.ReadFile(filepath.Join(out, cloud+".json.gz"))
		if err != nil {
			t.Fatal(err)
		}
		want, err := os.ReadFile(filepath.Join("..", "..", "internal", "instancetype", "catalog", cloud+".json.gz"))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s: embedded catalog differs from the generator's output; run go run ./hack/gen-catalog", cloud)
		}
	}
}

func TestArchAndGPU(t *testing.T) {
	tests := []struct {
		cloud, name, arch, gpuModel string
	}{
		{"aws", "m5.large", "amd64", ""},
		{"aws", "a1.large", "arm64", ""},
		{"aws", "m6g.xlarge", "arm64", ""},
		{"aws", "c6gn.large", "arm64", ""},
		{"aws", "t4g.nano", "arm64", ""},
		{"aws", "g4dn.xlarge", "amd64", "nvidia-t4"},
		{"aws", "p3dn.24xlarge", "amd64", "nvidia-v100"},
		{"azure", "Standard_D2s_v3", "amd64", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := arch(tt.cloud, tt.name); got != tt.arch {
				t.Errorf("arch = %s, want %s", got, tt.arch)
			}
			if got := gpuModel(tt.cloud, tt.name); got != tt.gpuModel {
				t.Errorf("gpuModel = %q, want %q", got, tt.gpuModel)
			}
		})
	}
}

func TestUnknownSource(t *testing.T) {
	if err := run(context.Background(), []string{"-source", "nope"}); err == nil {
		t.Fatal("want an error for an unknown source")
	}
}
