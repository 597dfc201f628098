// Package imagebuild builds small OCI images in process, from Debian's busybox-static, for
// tests, the local demo and the end-to-end suites. No daemon and no network are needed.
//
// The image has one layer: /bin/busybox, a symlink /bin/<applet> → /bin/busybox for every
// applet the binary lists, /etc/passwd and /etc/group (root and nobody), /root, /tmp (1777)
// and empty /proc, /sys and /dev for the runtime to mount over, plus the caller's files. Every
// entry carries the same fixed modification time and entries are written in sorted order, so
// the same inputs give the same digest.
package imagebuild

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
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

// DefaultBusyboxPath is where Debian's busybox-static package installs the binary.
const DefaultBusyboxPath = "/bin/busybox"

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
	// BusyboxPath defaults to DefaultBusyboxPath.
	BusyboxPath string
}

// Busybox builds an image holding busybox and one symlink per applet.
func Busybox(opts Options) (v1.Image, error) {
	bb := opts.BusyboxPath
	if bb == "" {
		bb = DefaultBusyboxPath
	}
	bin, err := os.ReadFile(bb)
	if err != nil {
		return nil, fmt.Errorf("reading busybox binary: %w (apt-get install busybox-static)", err)
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
	for _, a := range applets {
		entries["bin/"+a] = &entry{hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: "bin/" + a, Linkname: "/bin/busybox", Mode: 0o777}}
	}
	file("etc/passwd", []byte("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"), 0o644)
	file("etc/group", []byte("root:x:0:\nnogroup:x:65534:\nnobody:x:65534:\n"), 0o644)
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
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, fmt.Errorf("making busybox layer: %w", err)
	}
	img, err := mutate.AppendLayers(mutate.MediaType(empty.Image, types.OCIManifestSchema1), layer)
	if err != nil {
		return nil, fmt.Errorf("appending busybox layer: %w", err)
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
	cf.Config = config(opts)
	cf.History = []v1.History{{Created: v1.Time{Time: Epoch}, CreatedBy: "kip imagebuild busybox"}}
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
