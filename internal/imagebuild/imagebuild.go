// Package imagebuild builds small OCI images in process, from Debian's dynamically linked
// busybox and the host's shared libraries, for tests, the local demo and the end-to-end
// suites. No daemon and no network are needed.
//
// The image has one layer: /bin/busybox, the dynamic loader and every shared library the
// binary needs (read from its ELF PT_INTERP and DT_NEEDED, transitively, and taken from the
// host's library directories), a symlink /bin/<applet> → /bin/busybox for every applet the
// binary lists, /etc/passwd and /etc/group (root and nobody), /etc/nsswitch.conf (files, then
// dns for hosts), /root, /tmp (1777) and empty /proc, /sys and /dev for the runtime to mount
// over, plus the caller's files. Every entry carries the same fixed modification time and
// entries are written in sorted order, so the same inputs give the same digest.
//
// Why dynamic: glibc's name service (NSS) in a static binary behaves differently from a
// distribution's; with the libc a real image ships, lookups read nsswitch.conf, /etc/hosts
// and resolv.conf as they would in any Debian container. glibc 2.34 and later carry the
// files and dns services inside libc.so.6, so nothing is dlopened for a name lookup.
package imagebuild

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// StaticBusyboxPath is where Debian's busybox-static package installs the binary (the host's
// busybox; hack/install-deps.sh installs it). It is not the default for images: see
// DefaultBusyboxPath.
const StaticBusyboxPath = "/bin/busybox"

// DefaultBusyboxPath is where hack/install-deps.sh extracts the binary of Debian's dynamic
// busybox package: $XDG_CACHE_HOME/kip/busybox/bin/busybox, or ~/.cache/kip/busybox/bin/busybox
// (os.UserCacheDir). The package conflicts with busybox-static, so it is never installed.
func DefaultBusyboxPath() string {
	dir, err := os.UserCacheDir()
	if err != nil {
		dir = "/root/.cache"
	}
	return filepath.Join(dir, "kip", "busybox", "bin", "busybox")
}

// nsswitch is the image's /etc/nsswitch.conf: the local files, then DNS for host names.
const nsswitch = "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\nnetworks: files\nprotocols: files\nservices: files\n"

// DefaultPath is the PATH every image built here starts with.
const DefaultPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// Epoch is the modification time of every entry and the image's creation time.
var Epoch = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)

// File is an extra file added to an image. Its parent directories are created (0755).
type File struct {
	// Path is absolute inside the image ("/www/index.html").
	Path string
	Data []byte
	// Mode holds the permission bits (setuid/setgid/sticky included); 0 means 0644.
	Mode int64
}

// Options customises the image config and adds files. The zero value gives an image whose
// command is "sh".
type Options struct {
	Entrypoint []string
	// Cmd defaults to ["sh"] when both Entrypoint and Cmd are empty.
	Cmd []string
	// Env is added after DefaultPath; an entry "PATH=..." replaces it.
	Env        []string
	WorkingDir string
	User       string
	// ExposedPorts lists "80/tcp" style ports for the config.
	ExposedPorts []string
	Labels       map[string]string
	// Files are added after the base files and replace any with the same path.
	Files []File
	// BusyboxPath defaults to DefaultBusyboxPath(). A static binary (StaticBusyboxPath)
	// works too: it simply needs no libraries.
	BusyboxPath string
	// LibraryDirs are searched, in order, for the libraries the binary needs; they default
	// to DefaultLibraryDirs. Each library lands in the image at the path where it was found.
	LibraryDirs []string
}

// Busybox builds an image holding busybox and one symlink per applet.
func Busybox(opts Options) (v1.Image, error) {
	bb := opts.BusyboxPath
	if bb == "" {
		bb = DefaultBusyboxPath()
	}
	bin, err := os.ReadFile(bb)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) && opts.BusyboxPath == "" {
			return nil, fmt.Errorf("reading busybox binary: %w (run hack/install-deps.sh: it extracts Debian's dynamic busybox package there)", err)
		}
		return nil, fmt.Errorf("reading busybox binary: %w", err)
	}
	dirs := opts.LibraryDirs
	if len(dirs) == 0 {
		dirs = DefaultLibraryDirs()
	}
	libs, err := sharedObjects(bb, dirs)
	if err != nil {
		return nil, fmt.Errorf("finding the shared libraries of %s: %w", bb, err)
	}
	out, err := exec.Command(bb, "--list").Output()
	if err != nil {
		return nil, fmt.Errorf("listing busybox applets with %s --list: %w", bb, err)
	}
	var applets []string
	for _, a := range strings.Fields(string(out)) {
		if a != "busybox" && !strings.Contains(a, "/") {
			applets = append(applets, a)
		}
	}

	entries := map[string]*entry{}
	dir := func(p string, mode int64) {
		entries[p] = &entry{hdr: tar.Header{Typeflag: tar.TypeDir, Name: p + "/", Mode: mode}}
	}
	file := func(p string, data []byte, mode int64) {
		entries[p] = &entry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: p, Mode: mode, Size: int64(len(data))}, data: data}
	}
	for _, d := range []string{"bin", "etc", "root", "proc", "sys", "dev", "home", "usr", "usr/bin", "var"} {
		dir(d, 0o755)
	}
	dir("root", 0o700)
	dir("tmp", 0o1777)
	dir("var/tmp", 0o1777)
	file("bin/busybox", bin, 0o755)
	// Each library is stored once at its host path after symlinks, and every path the loader
	// looks it up by is a symlink to it, as on the host.
	parents := func(p string) {
		for d := path.Dir(p); d != "."; d = path.Dir(d) {
			if _, ok := entries[d]; !ok {
				dir(d, 0o755)
			}
		}
	}
	for _, l := range libs {
		real := strings.TrimPrefix(l.Real, "/")
		if _, ok := entries[real]; !ok {
			data, err := os.ReadFile(l.Real)
			if err != nil {
				return nil, fmt.Errorf("reading shared library %s: %w", l.Real, err)
			}
			parents(real)
			file(real, data, 0o755)
		}
		if p := strings.TrimPrefix(l.Path, "/"); p != real {
			parents(p)
			entries[p] = &entry{hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: p, Linkname: l.Real, Mode: 0o777}}
		}
	}
	for _, a := range applets {
		entries["bin/"+a] = &entry{hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: "bin/" + a, Linkname: "/bin/busybox", Mode: 0o777}}
	}
	file("etc/passwd", []byte("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"), 0o644)
	file("etc/group", []byte("root:x:0:\nnogroup:x:65534:\nnobody:x:65534:\n"), 0o644)
	file("etc/nsswitch.conf", []byte(nsswitch), 0o644)
	for _, f := range opts.Files {
		p := strings.TrimPrefix(path.Clean("/"+f.Path), "/")
		if p == "" || p != strings.TrimPrefix(f.Path, "/") {
			return nil, fmt.Errorf("adding file: path %q must be a clean absolute path", f.Path)
		}
		for d := path.Dir(p); d != "."; d = path.Dir(d) {
			if _, ok := entries[d]; !ok {
				dir(d, 0o755)
			}
		}
		mode := f.Mode
		if mode == 0 {
			mode = 0o644
		}
		file(p, f.Data, mode&0o7777)
	}

	layerTar, err := writeTar(entries)
	if err != nil {
		return nil, err
	}
	return OneLayer(layerTar, config(opts), "kip imagebuild busybox")
}

// OneLayer makes a linux/GOARCH OCI image of one uncompressed tar layer with the given
// runtime config, created at Epoch by createdBy: the same inputs give the same digest.
func OneLayer(layerTar []byte, cfg v1.Config, createdBy string) (v1.Image, error) {
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, fmt.Errorf("making the image layer: %w", err)
	}
	img, err := mutate.AppendLayers(mutate.MediaType(empty.Image, types.OCIManifestSchema1), layer)
	if err != nil {
		return nil, fmt.Errorf("appending the image layer: %w", err)
	}
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("reading image config: %w", err)
	}
	cf = cf.DeepCopy()
	cf.OS = "linux"
	cf.Architecture = runtime.GOARCH
	cf.Created = v1.Time{Time: Epoch}
	cf.Config = cfg
	cf.History = []v1.History{{Created: v1.Time{Time: Epoch}, CreatedBy: createdBy}}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return nil, fmt.Errorf("setting image config: %w", err)
	}
	return img, nil
}

// config makes the runtime config from opts.
func config(opts Options) v1.Config {
	env := []string{DefaultPath}
	for _, e := range opts.Env {
		if strings.HasPrefix(e, "PATH=") {
			env[0] = e
			continue
		}
		env = append(env, e)
	}
	c := v1.Config{
		Entrypoint: opts.Entrypoint,
		Cmd:        opts.Cmd,
		Env:        env,
		WorkingDir: opts.WorkingDir,
		User:       opts.User,
		Labels:     opts.Labels,
	}
	if len(c.Entrypoint) == 0 && len(c.Cmd) == 0 {
		c.Cmd = []string{"sh"}
	}
	if len(opts.ExposedPorts) > 0 {
		c.ExposedPorts = map[string]struct{}{}
		for _, p := range opts.ExposedPorts {
			c.ExposedPorts[p] = struct{}{}
		}
	}
	return c
}

type entry struct {
	hdr  tar.Header
	data []byte
}

// writeTar writes entries sorted by path, owned by root, with the fixed mtime.
func writeTar(entries map[string]*entry) ([]byte, error) {
	names := make([]string, 0, len(entries))
	for n := range entries {
		names = append(names, n)
	}
	sort.Strings(names)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, n := range names {
		e := entries[n]
		e.hdr.ModTime = Epoch
		e.hdr.Format = tar.FormatPAX
		if err := tw.WriteHeader(&e.hdr); err != nil {
			return nil, fmt.Errorf("writing tar header %s: %w", n, err)
		}
		if _, err := tw.Write(e.data); err != nil {
			return nil, fmt.Errorf("writing tar entry %s: %w", n, err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("closing tar: %w", err)
	}
	return buf.Bytes(), nil
}
