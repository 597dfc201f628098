package framework

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"

	"github.com/kip-dev/kip/internal/imagebuild"
	"github.com/kip-dev/kip/internal/kipimage"
	"github.com/kip-dev/kip/internal/registry"
)

// KipcheckPackage is the probe the suites run inside pods (see its package comment).
const KipcheckPackage = "github.com/kip-dev/kip/test/e2e/images/kipcheck"

var kipcheck struct {
	once sync.Once
	ref  string
	err  error
}

// KipcheckImage builds kipcheck (a static Go binary, /usr/local/bin/kipcheck, on the busybox
// base) and pushes it to this environment's registry once; it returns the image reference.
func (e *Env) KipcheckImage(ctx context.Context) (string, error) {
	kipcheck.once.Do(func() {
		kipcheck.ref, kipcheck.err = e.pushGoImage(ctx, KipcheckPackage, "kip-e2e/kipcheck:latest")
	})
	return kipcheck.ref, kipcheck.err
}

// KipImage builds the kip image (internal/kipimage, as `make images` does) from the binaries
// under test ($KIP_BIN's kip and kip-cell, the host's runc and CA bundle, and the loader and
// libraries of a dynamically linked kip) and pushes it to this environment's registry as
// kip-e2e/kip:<tag>; it returns the image reference.
func (e *Env) KipImage(ctx context.Context, tag string) (string, error) {
	runc, err := exec.LookPath("runc")
	if err != nil {
		return "", fmt.Errorf("the kip image serves runc to cells: %w", err)
	}
	kipBin := filepath.Join(e.BinDir, "kip")
	libs, err := imagebuild.SharedLibraries(kipBin, nil)
	if err != nil {
		return "", fmt.Errorf("finding the shared libraries of %s: %w", kipBin, err)
	}
	in := kipimage.KipInputs{Libraries: libs, Version: tag}
	for _, f := range []struct {
		path string
		to   *[]byte
	}{{kipBin, &in.Kip}, {filepath.Join(e.BinDir, "kip-cell"), &in.KipCell}, {runc, &in.Runc}, {kipimage.CABundle, &in.CABundle}} {
		if *f.to, err = os.ReadFile(f.path); err != nil {
			return "", fmt.Errorf("building the kip image: %w", err)
		}
	}
	img, err := kipimage.Kip(in)
	if err != nil {
		return "", err
	}
	repo := "kip-e2e/kip:" + tag
	if _, err := registry.Push(ctx, e.Registry.Host(), repo, img, e.Registry.Auth()); err != nil {
		return "", err
	}
	return e.Registry.Host() + "/" + repo, nil
}

func (e *Env) pushGoImage(ctx context.Context, pkg, repo string) (string, error) {
	out := filepath.Join(e.Dir, "images", filepath.Base(pkg))
	build := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags=-s -w", "-o", out, pkg)
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := build.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building %s: %v: %s", pkg, err, b)
	}
	bin, err := os.ReadFile(out)
	if err != nil {
		return "", err
	}
	img, err := imagebuild.Busybox(imagebuild.Options{
		Files: []imagebuild.File{{Path: "/usr/local/bin/" + filepath.Base(pkg), Data: bin, Mode: 0o755}},
	})
	if err != nil {
		return "", fmt.Errorf("building the image of %s: %w", pkg, err)
	}
	if _, err := registry.Push(ctx, e.Registry.Host(), repo, img, e.Registry.Auth()); err != nil {
		return "", err
	}
	return e.Registry.Host() + "/" + repo, nil
}
