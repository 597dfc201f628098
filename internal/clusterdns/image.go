package clusterdns

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"os"
	"runtime"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// epoch is every entry's modification time and the image's creation time, so the same binary
// gives the same digest.
var epoch = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)

// Image packages a CoreDNS binary as a one-layer OCI image: /coredns (the entrypoint, run
// with -conf /etc/coredns/Corefile), /tmp and /etc for the runtime's mounts, nothing else.
func Image(binary string) (v1.Image, error) {
	bin, err := os.ReadFile(binary)
	if err != nil {
		return nil, fmt.Errorf("packaging CoreDNS: %w", err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, h := range []*tar.Header{
		{Typeflag: tar.TypeReg, Name: "coredns", Mode: 0o755, Size: int64(len(bin))},
		{Typeflag: tar.TypeDir, Name: "etc/", Mode: 0o755},
		{Typeflag: tar.TypeDir, Name: "etc/coredns/", Mode: 0o755},
		{Typeflag: tar.TypeDir, Name: "tmp/", Mode: 0o1777},
	} {
		h.ModTime, h.Format = epoch, tar.FormatPAX
		if err := tw.WriteHeader(h); err != nil {
			return nil, fmt.Errorf("packaging CoreDNS: %w", err)
		}
		if h.Typeflag == tar.TypeReg {
			if _, err := tw.Write(bin); err != nil {
				return nil, fmt.Errorf("packaging CoreDNS: %w", err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("packaging CoreDNS: %w", err)
	}
	layerTar := buf.Bytes()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, fmt.Errorf("packaging CoreDNS: %w", err)
	}
	img, err := mutate.AppendLayers(mutate.MediaType(empty.Image, types.OCIManifestSchema1), layer)
	if err != nil {
		return nil, fmt.Errorf("packaging CoreDNS: %w", err)
	}
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("packaging CoreDNS: %w", err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", runtime.GOARCH
	cf.Created = v1.Time{Time: epoch}
	cf.Config = v1.Config{
		Entrypoint:   []string{"/coredns"},
		Cmd:          []string{"-conf", "/etc/coredns/Corefile"},
		ExposedPorts: map[string]struct{}{"53/udp": {}, "53/tcp": {}, "9153/tcp": {}},
	}
	cf.History = []v1.History{{Created: v1.Time{Time: epoch}, CreatedBy: "kip clusterdns"}}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		return nil, fmt.Errorf("packaging CoreDNS: %w", err)
	}
	return img, nil
}
