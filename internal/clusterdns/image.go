package clusterdns

import (
	"github.com/kip-dev/kip/internal/imagebuild"

	"archive/tar"
	"bytes"
	"fmt"
	"os"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// epoch is every entry's modification time (and, through imagebuild, the image's creation
// time), so the same binary gives the same digest.
var epoch = imagebuild.Epoch

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
	img, err := imagebuild.OneLayer(buf.Bytes(), v1.Config{
		Entrypoint:   []string{"/coredns"},
		Cmd:          []string{"-conf", "/etc/coredns/Corefile"},
		ExposedPorts: map[string]struct{}{"53/udp": {}, "53/tcp": {}, "9153/tcp": {}},
	}, "kip clusterdns")
	if err != nil {
		return nil, fmt.Errorf("packaging CoreDNS: %w", err)
	}
	return img, nil
}
