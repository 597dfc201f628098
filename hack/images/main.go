// Command images builds Kip's two container images without a container daemon, reproducibly,
// with go-containerregistry (`make images` runs it):
//
//   - kip: /usr/local/bin/kip (CGO_ENABLED=0), the host's CA bundle at
//     /etc/ssl/certs/ca-certificates.crt (the AWS SDK's TLS), /etc/passwd and /etc/group
//     (root and nonroot 65532), /tmp (1777) and /var/lib/kip (the catalog cache, owned by
//     nonroot); it runs `kip run --config /etc/kip/kip.yaml` as 65532 (deploy/ mounts the
//     ProviderConfig there).
//   - kip-cell: /usr/local/bin/kip-cell alone, the artifact a cell image's boot pulls or a
//     cell AMI's build extracts (docs/install.md).
//
// Both binaries are built with -trimpath, no VCS stamp and an empty build id, with the version
// in kipnode.Version; every layer entry is stamped imagebuild.Epoch and written in order, so
// one commit, toolchain and CA bundle give the same digests on every machine. Both images are
// tagged with the version (default: `git describe --tags --always --dirty`), written as an OCI
// layout (default bin/images) and, with --push REGISTRY, pushed to REGISTRY/kip:VERSION and
// REGISTRY/kip-cell:VERSION with the Docker keychain's credentials (~/.docker/config.json).
package main

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strings"
	"syscall"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/kip-dev/kip/internal/imagebuild"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "images:", err)
		os.Exit(1)
	}
}

// The images' repository names under a registry.
const (
	KipRepo  = "kip"
	CellRepo = "kip-cell"
)

// NonrootUID is the user kip runs as in its image (distroless's nonroot).
const NonrootUID = 65532

// caBundle is where Debian keeps the CA bundle, the host's and the image's.
const caBundle = "/etc/ssl/certs/ca-certificates.crt"

type options struct {
	version, out, push, arch, caBundle, bins string
	insecure                                 bool
}

func run(ctx context.Context, args []string, out io.Writer) error {
	var o options
	fs := flag.NewFlagSet("images", flag.ContinueOnError)
	fs.StringVar(&o.version, "version", "", "image tag and kipnode.Version (default: git describe --tags --always --dirty)")
	fs.StringVar(&o.out, "out", "bin/images", "OCI layout directory the images are written to (replaced)")
	fs.StringVar(&o.push, "push", "", "registry (host[:port][/prefix]) to push REGISTRY/kip:VERSION and REGISTRY/kip-cell:VERSION to")
	fs.BoolVar(&o.insecure, "insecure", false, "allow plain HTTP to the --push registry (kip up's and the tests' registries)")
	fs.StringVar(&o.arch, "arch", runtime.GOARCH, "GOARCH of the binaries and images")
	fs.StringVar(&o.caBundle, "ca-bundle", caBundle, "CA bundle copied into the kip image")
	fs.StringVar(&o.bins, "bins", "", "directory of already built linux kip and kip-cell (default: build them here)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if o.version == "" {
		v, err := gitVersion(ctx)
		if err != nil {
			return err
		}
		o.version = v
	}
	if !validTag(o.version) {
		return fmt.Errorf("--version %q is not a valid image tag ([A-Za-z0-9_][A-Za-z0-9_.-]{0,127})", o.version)
	}

	bins := o.bins
	if bins == "" {
		dir, err := os.MkdirTemp("", "kip-images-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		if err := buildBinaries(ctx, dir, o.arch, o.version); err != nil {
			return err
		}
		bins = dir
	}
	ca, err := os.ReadFile(o.caBundle)
	if err != nil {
		return fmt.Errorf("reading the CA bundle for the kip image: %w (install ca-certificates or pass --ca-bundle)", err)
	}
	kip, err := os.ReadFile(filepath.Join(bins, "kip"))
	if err != nil {
		return err
	}
	cell, err := os.ReadFile(filepath.Join(bins, "kip-cell"))
	if err != nil {
		return err
	}
	images := []struct {
		repo string
		img  func() (v1.Image, error)
	}{
		{KipRepo, func() (v1.Image, error) { return KipImage(kip, ca, o.version, o.arch) }},
		{CellRepo, func() (v1.Image, error) { return CellImage(cell, o.version, o.arch) }},
	}

	if err := os.RemoveAll(o.out); err != nil {
		return err
	}
	lp, err := layout.Write(o.out, empty.Index)
	if err != nil {
		return fmt.Errorf("writing OCI layout %s: %w", o.out, err)
	}
	for _, im := range images {
		img, err := im.img()
		if err != nil {
			return fmt.Errorf("building %s: %w", im.repo, err)
		}
		d, err := img.Digest()
		if err != nil {
			return err
		}
		ref := im.repo + ":" + o.version
		if err := lp.AppendImage(img, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": ref})); err != nil {
			return fmt.Errorf("writing %s to %s: %w", ref, o.out, err)
		}
		fmt.Fprintf(out, "%s %s (%s)\n", ref, d, o.out)
		if o.push == "" {
			continue
		}
		pushed, err := push(ctx, o.push, ref, img, o.insecure)
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "pushed %s@%s\n", pushed, d)
	}
	return nil
}

// push writes img to registry/ref and returns the reference it pushed.
func push(ctx context.Context, registry, ref string, img v1.Image, insecure bool) (string, error) {
	var opts []name.Option
	if insecure {
		opts = append(opts, name.Insecure)
	}
	r, err := name.ParseReference(strings.TrimSuffix(registry, "/")+"/"+ref, opts...)
	if err != nil {
		return "", fmt.Errorf("--push %q: %w", registry, err)
	}
	if err := remote.Write(r, img, remote.WithContext(ctx), remote.WithAuthFromKeychain(authn.DefaultKeychain)); err != nil {
		return "", fmt.Errorf("pushing %s: %w", r, err)
	}
	return r.String(), nil
}

var tagRE = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$`)

func validTag(s string) bool { return tagRE.MatchString(s) }

// gitVersion is `git describe --tags --always --dirty` of the working tree.
func gitVersion(ctx context.Context) (string, error) {
	b, err := exec.CommandContext(ctx, "git", "describe", "--tags", "--always", "--dirty").Output()
	if err != nil {
		return "", fmt.Errorf("reading the version from git (pass --version): %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

// buildBinaries builds linux/arch kip and kip-cell into dir, reproducibly.
func buildBinaries(ctx context.Context, dir, arch, version string) error {
	cmd := exec.CommandContext(ctx, "go", "build", "-o", dir+"/", "-trimpath", "-buildvcs=false",
		"-ldflags", "-s -w -buildid= -X github.com/kip-dev/kip/internal/kipnode.Version="+version,
		"./cmd/kip", "./cmd/kip-cell")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+arch)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("building kip and kip-cell: %w", err)
	}
	return nil
}

// labels are the OCI annotations both images carry.
func labels(version string) map[string]string {
	return map[string]string{
		"org.opencontainers.image.source":  "https://github.com/kip-dev/kip",
		"org.opencontainers.image.version": version,
	}
}

// KipImage is the kip image: the binary, the CA bundle, a nonroot user and kip's directories.
func KipImage(kip, ca []byte, version, arch string) (v1.Image, error) {
	passwd := fmt.Sprintf("root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:%d:%d:nonroot:/home/nonroot:/sbin/nologin\n", NonrootUID, NonrootUID)
	group := fmt.Sprintf("root:x:0:\nnonroot:x:%d:\n", NonrootUID)
	entries := []entry{
		{path: "etc/", mode: 0o755},
		{path: "etc/passwd", mode: 0o644, data: []byte(passwd)},
		{path: "etc/group", mode: 0o644, data: []byte(group)},
		{path: "etc/ssl/", mode: 0o755},
		{path: "etc/ssl/certs/", mode: 0o755},
		{path: "etc/ssl/certs/ca-certificates.crt", mode: 0o644, data: ca},
		{path: "home/", mode: 0o755},
		{path: "home/nonroot/", mode: 0o700, uid: NonrootUID},
		{path: "tmp/", mode: 0o1777},
		{path: "usr/", mode: 0o755},
		{path: "usr/local/", mode: 0o755},
		{path: "usr/local/bin/", mode: 0o755},
		{path: "usr/local/bin/kip", mode: 0o755, data: kip},
		{path: "var/", mode: 0o755},
		{path: "var/lib/", mode: 0o755},
		{path: "var/lib/kip/", mode: 0o755, uid: NonrootUID},
	}
	layer, err := layerTar(entries)
	if err != nil {
		return nil, err
	}
	return oneLayer(layer, v1.Config{
		Entrypoint: []string{"/usr/local/bin/kip"},
		Cmd:        []string{"run", "--config", "/etc/kip/kip.yaml"},
		Env:        []string{imagebuild.DefaultPath, "SSL_CERT_FILE=" + caBundle},
		User:       fmt.Sprintf("%d:%d", NonrootUID, NonrootUID),
		WorkingDir: "/",
		Labels:     labels(version),
	}, "kip hack/images "+version, arch)
}

// CellImage is the kip-cell artifact: the agent binary alone.
func CellImage(cell []byte, version, arch string) (v1.Image, error) {
	layer, err := layerTar([]entry{
		{path: "usr/", mode: 0o755},
		{path: "usr/local/", mode: 0o755},
		{path: "usr/local/bin/", mode: 0o755},
		{path: "usr/local/bin/kip-cell", mode: 0o755, data: cell},
	})
	if err != nil {
		return nil, err
	}
	return oneLayer(layer, v1.Config{
		Entrypoint: []string{"/usr/local/bin/kip-cell"},
		Env:        []string{imagebuild.DefaultPath},
		Labels:     labels(version),
	}, "kip-cell hack/images "+version, arch)
}

// oneLayer is imagebuild.OneLayer for GOARCH arch.
func oneLayer(layer []byte, cfg v1.Config, createdBy, arch string) (v1.Image, error) {
	img, err := imagebuild.OneLayer(layer, cfg, createdBy)
	if err != nil || arch == runtime.GOARCH {
		return img, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.Architecture = arch
	return mutate.ConfigFile(img, cf)
}

// entry is one file ("data") or directory (path ending in "/") of a layer.
type entry struct {
	path string
	mode int64
	uid  int
	data []byte
}

// layerTar writes entries sorted by path, each stamped imagebuild.Epoch.
func layerTar(entries []entry) ([]byte, error) {
	sort.Slice(entries, func(i, j int) bool { return entries[i].path < entries[j].path })
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for i, e := range entries {
		if i > 0 && entries[i-1].path == e.path {
			return nil, fmt.Errorf("layer entry %s twice", e.path)
		}
		h := &tar.Header{Name: e.path, Mode: e.mode, Uid: e.uid, Gid: e.uid, ModTime: imagebuild.Epoch, Format: tar.FormatPAX}
		if strings.HasSuffix(e.path, "/") {
			h.Typeflag = tar.TypeDir
		} else {
			h.Typeflag, h.Size = tar.TypeReg, int64(len(e.data))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if _, err := tw.Write(e.data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, errors.Join(errors.New("closing the layer"), err)
	}
	return buf.Bytes(), nil
}
