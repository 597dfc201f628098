package main

import (
	"archive/tar"
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"sort"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/kip-dev/kip/internal/imagebuild"
)

// layer collects an image's own files (regular files, directories and symlinks) on top of its
// base. Parent directories are added as 0755; entries are written sorted, owned by root, with
// imagebuild.Epoch as their time, so equal inputs give equal digests.
type layer struct {
	entries map[string]*tar.Header
	content map[string][]byte
}

func (l *layer) add(h *tar.Header, data []byte) {
	if l.entries == nil {
		l.entries, l.content = map[string]*tar.Header{}, map[string][]byte{}
	}
	p := strings.TrimPrefix(path.Clean("/"+h.Name), "/")
	for d := path.Dir(p); d != "."; d = path.Dir(d) {
		if _, ok := l.entries[d]; !ok {
			l.entries[d] = &tar.Header{Typeflag: tar.TypeDir, Name: d + "/", Mode: 0o755}
		}
	}
	h.Name = p
	if h.Typeflag == tar.TypeDir {
		h.Name += "/"
	}
	l.entries[p], l.content[p] = h, data
}

func (l *layer) dir(p string, mode int64) {
	l.add(&tar.Header{Typeflag: tar.TypeDir, Name: p, Mode: mode}, nil)
}

func (l *layer) symlink(p, target string) {
	l.add(&tar.Header{Typeflag: tar.TypeSymlink, Name: p, Linkname: target, Mode: 0o777}, nil)
}

func (l *layer) data(p, content string, mode int64) {
	l.add(&tar.Header{Typeflag: tar.TypeReg, Name: p, Mode: mode, Size: int64(len(content))}, []byte(content))
}

// file adds the host file from (symlinks followed) at p.
func (l *layer) file(p, from string, mode int64) error {
	b, err := os.ReadFile(from)
	if err != nil {
		return fmt.Errorf("adding %s: %w", p, err)
	}
	l.add(&tar.Header{Typeflag: tar.TypeReg, Name: p, Mode: mode, Size: int64(len(b))}, b)
	return nil
}

// binary adds the dynamically linked binary from at p, with the libraries ldd resolves for
// it (see sharedLibraries for libRoot).
func (l *layer) binary(p, from, libRoot string) error {
	if from == "" {
		return fmt.Errorf("adding %s: no binary given", p)
	}
	if err := l.file(p, from, 0o755); err != nil {
		return err
	}
	libs, err := sharedLibraries(from, libRoot)
	if err != nil {
		return err
	}
	for _, lib := range libs {
		if err := l.file(lib.path, lib.from, 0o755); err != nil {
			return err
		}
	}
	return nil
}

func (l *layer) tar() ([]byte, error) {
	names := make([]string, 0, len(l.entries))
	for n := range l.entries {
		names = append(names, n)
	}
	sort.Strings(names)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, n := range names {
		h := l.entries[n]
		h.ModTime, h.Format = imagebuild.Epoch, tar.FormatPAX
		if err := tw.WriteHeader(h); err != nil {
			return nil, fmt.Errorf("writing %s: %w", n, err)
		}
		if _, err := tw.Write(l.content[n]); err != nil {
			return nil, fmt.Errorf("writing %s: %w", n, err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// withLayer appends l to base and sets the runtime config: cfg, with the base's environment
// (PATH) when cfg has none.
func withLayer(base v1.Image, l *layer, cfg v1.Config) (v1.Image, error) {
	tb, err := l.tar()
	if err != nil {
		return nil, err
	}
	tl, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(tb)), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, err
	}
	img, err := mutate.AppendLayers(base, tl)
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	if len(cfg.Env) == 0 {
		cfg.Env = cf.Config.Env
	}
	if len(cfg.Env) == 0 {
		cfg.Env = []string{imagebuild.DefaultPath}
	}
	cf.Config = cfg
	cf.OS, cf.Architecture = "linux", runtime.GOARCH
	cf.Created = v1.Time{Time: imagebuild.Epoch}
	cf.History = nil
	for range cf.RootFS.DiffIDs {
		cf.History = append(cf.History, v1.History{Created: v1.Time{Time: imagebuild.Epoch}, CreatedBy: "kip conformance-images"})
	}
	return mutate.ConfigFile(img, cf)
}

// lib is a shared library a binary loads: path is where the loader looks for it (and where it
// goes in the image), from the file to copy.
type lib struct{ path, from string }

// sharedLibraries lists what ldd resolves for bin on this (Debian) host: the dynamic loader and
// every library, symlinks followed when copying. libRoot, when set, is a directory where Debian
// packages this host lacks are extracted (dpkg-deb -x): its library directories are searched
// first, and a library found there goes to the same path in the image without the prefix.
func sharedLibraries(bin, libRoot string) ([]lib, error) {
	cmd := exec.Command("ldd", bin)
	if libRoot != "" {
		abs, err := filepath.Abs(libRoot)
		if err != nil {
			return nil, err
		}
		libRoot = abs
		var dirs []string
		for _, d := range []string{"usr/lib/x86_64-linux-gnu", "lib/x86_64-linux-gnu", "usr/lib", "lib"} {
			dirs = append(dirs, filepath.Join(libRoot, d))
		}
		cmd.Env = append(os.Environ(), "LD_LIBRARY_PATH="+strings.Join(dirs, ":"))
	}
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("ldd %s: %w", bin, err)
	}
	add := func(libs []lib, resolved string) []lib {
		p := resolved
		if libRoot != "" {
			if rel, err := filepath.Rel(libRoot, resolved); err == nil && !strings.HasPrefix(rel, "..") {
				p = "/" + rel
			}
		}
		return append(libs, lib{path: p, from: resolved})
	}
	var libs []lib
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		switch {
		case len(f) >= 3 && f[1] == "=>" && f[2] == "not":
			return nil, fmt.Errorf("ldd %s: %s not found (extract its Debian package too)", bin, f[0])
		case len(f) >= 3 && f[1] == "=>" && strings.HasPrefix(f[2], "/"):
			libs = add(libs, f[2])
		case len(f) >= 1 && strings.HasPrefix(f[0], "/"):
			libs = add(libs, f[0]) // the loader
		}
	}
	if len(libs) == 0 {
		return nil, fmt.Errorf("ldd %s: no shared libraries; want a dynamically linked binary", bin)
	}
	return libs, nil
}
