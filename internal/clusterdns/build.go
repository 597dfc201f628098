package clusterdns

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
)

// SourceEnv names the directory of the CoreDNS module (hack/tools/coredns) when kip runs
// outside its source tree; BinaryEnv names a CoreDNS binary built beforehand, used as is.
const (
	SourceEnv = "KIP_COREDNS_SRC"
	BinaryEnv = "KIP_COREDNS_BIN"
)

// sourceRel is the module's place in kip's source tree.
const sourceRel = "hack/tools/coredns"

// sourceFiles decide the build: a change to any of them (or to the Go version) rebuilds.
var sourceFiles = []string{"go.mod", "go.sum", "main.go"}

// BuildOptions say where the CoreDNS module is and where built binaries are kept.
type BuildOptions struct {
	// SourceDir holds the module (go.mod, go.sum, main.go); empty means $KIP_COREDNS_SRC, else
	// hack/tools/coredns in the first directory above the working directory or the running
	// executable that has one.
	SourceDir string
	// CacheDir keeps binaries by the hash of their inputs; empty means <user cache>/kip/coredns
	// (~/.cache/kip/coredns).
	CacheDir string
	// Log receives a line when a build starts; nil is quiet.
	Log func(format string, args ...any)
}

// Binary returns the path of a CoreDNS binary built from the module with CGO_ENABLED=0: the
// cached one when go.mod, go.sum, main.go and the Go toolchain are unchanged, else a fresh
// build (minutes on a cold Go cache). $KIP_COREDNS_BIN, when set, is returned as is.
func Binary(ctx context.Context, o BuildOptions) (string, error) {
	if p := os.Getenv(BinaryEnv); p != "" && o.SourceDir == "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("$%s: %w", BinaryEnv, err)
		}
		return p, nil
	}
	src, err := sourceDir(o.SourceDir)
	if err != nil {
		return "", err
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		return "", fmt.Errorf("building CoreDNS: the go command is needed: %w", err)
	}
	goVersion, err := exec.CommandContext(ctx, goBin, "env", "GOVERSION").Output()
	if err != nil {
		return "", fmt.Errorf("building CoreDNS: go env GOVERSION: %w", err)
	}
	key, err := inputsHash(src, strings.TrimSpace(string(goVersion)))
	if err != nil {
		return "", err
	}
	cache := o.CacheDir
	if cache == "" {
		uc, err := os.UserCacheDir()
		if err != nil {
			return "", fmt.Errorf("building CoreDNS: no cache directory: %w", err)
		}
		cache = filepath.Join(uc, "kip", "coredns")
	}
	out := filepath.Join(cache, key, "coredns")
	if _, err := os.Stat(out); err == nil {
		return out, nil
	}
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return "", fmt.Errorf("building CoreDNS: %w", err)
	}
	if o.Log != nil {
		o.Log("building CoreDNS from %s into %s (once; minutes on a cold Go build cache)", src, filepath.Dir(out))
	}
	tmp := out + ".tmp"
	cmd := exec.CommandContext(ctx, goBin, "build", "-trimpath", "-ldflags=-s -w", "-o", tmp, ".")
	cmd.Dir = src
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=-mod=readonly", "GOOS=linux", "GOARCH="+runtime.GOARCH)
	if msg, err := cmd.CombinedOutput(); err != nil {
		_ = os.Remove(tmp)
		return "", fmt.Errorf("building CoreDNS in %s: %w\n%s", src, err, msg)
	}
	if err := os.Rename(tmp, out); err != nil {
		return "", fmt.Errorf("building CoreDNS: %w", err)
	}
	return out, nil
}

// sourceDir finds the CoreDNS module.
func sourceDir(dir string) (string, error) {
	if dir == "" {
		dir = os.Getenv(SourceEnv)
	}
	if dir != "" {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err != nil {
			return "", fmt.Errorf("CoreDNS module %s: %w", dir, err)
		}
		return filepath.Abs(dir)
	}
	var starts []string
	if wd, err := os.Getwd(); err == nil {
		starts = append(starts, wd)
	}
	if exe, err := os.Executable(); err == nil {
		starts = append(starts, filepath.Dir(exe))
	}
	for _, s := range starts {
		for d := s; ; d = filepath.Dir(d) {
			cand := filepath.Join(d, sourceRel)
			if _, err := os.Stat(filepath.Join(cand, "go.mod")); err == nil {
				return cand, nil
			}
			if filepath.Dir(d) == d {
				break
			}
		}
	}
	return "", fmt.Errorf("cannot find the CoreDNS module (%s in kip's source tree above %s): set $%s to it, or $%s to a CoreDNS binary",
		sourceRel, strings.Join(starts, " or "), SourceEnv, BinaryEnv)
}

// inputsHash hashes the module's files and the Go version into a cache key.
func inputsHash(src, goVersion string) (string, error) {
	h := sha256.New()
	fmt.Fprintf(h, "%s %s\n", goVersion, runtime.GOARCH)
	for _, f := range sourceFiles {
		b, err := os.ReadFile(filepath.Join(src, f))
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return "", fmt.Errorf("reading CoreDNS module: %w", err)
		}
		fmt.Fprintf(h, "%s %d\n", f, len(b))
		h.Write(b)
	}
	return hex.EncodeToString(h.Sum(nil))[:16], nil
}
