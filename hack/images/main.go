// Command images builds Kip's two container images without a container daemon, reproducibly,
// with go-containerregistry (`make images` runs it):
//
//   - kip: /usr/local/bin/kip (CGO_ENABLED=0), beside it /usr/local/bin/kip-cell and
//     /usr/local/bin/runc (--runc, default the runc on PATH), which kip serves to booting AWS
//     cells (internal/kipimage), the host's CA bundle at
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
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"syscall"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/kip-dev/kip/internal/kipimage"
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

type options struct {
	version, out, push, arch, caBundle, bins, runc string
	insecure                                       bool
}

func run(ctx context.Context, args []string, out io.Writer) error {
	var o options
	fs := flag.NewFlagSet("images", flag.ContinueOnError)
	fs.StringVar(&o.version, "version", "", "image tag and kipnode.Version (default: git describe --tags --always --dirty)")
	fs.StringVar(&o.out, "out", "bin/images", "OCI layout directory the images are written to (replaced)")
	fs.StringVar(&o.push, "push", "", "registry (host[:port][/prefix]) to push REGISTRY/kip:VERSION and REGISTRY/kip-cell:VERSION to")
	fs.BoolVar(&o.insecure, "insecure", false, "allow plain HTTP to the --push registry (kip up's and the tests' registries)")
	fs.StringVar(&o.arch, "arch", runtime.GOARCH, "GOARCH of the binaries and images")
	fs.StringVar(&o.caBundle, "ca-bundle", kipimage.CABundle, "CA bundle copied into the kip image")
	fs.StringVar(&o.runc, "runc", "", "runc binary the kip image serves to booting AWS cells (default: runc on PATH; prefer the static runc."+runtime.GOARCH+" of runc's releases)")
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
	runcPath := o.runc
	if runcPath == "" {
		if runcPath, err = exec.LookPath("runc"); err != nil {
			return fmt.Errorf("finding runc for the kip image, which serves it to AWS cells: %w (install runc or pass --runc)", err)
		}
	}
	runc, err := os.ReadFile(runcPath)
	if err != nil {
		return fmt.Errorf("reading runc for the kip image: %w", err)
	}
	images := []struct {
		repo string
		img  func() (v1.Image, error)
	}{
		{kipimage.KipRepo, func() (v1.Image, error) {
			return kipimage.Kip(kipimage.KipInputs{Kip: kip, KipCell: cell, Runc: runc, CABundle: ca, Version: o.version, Arch: o.arch})
		}},
		{kipimage.CellRepo, func() (v1.Image, error) { return kipimage.Cell(cell, o.version, o.arch) }},
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
