package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/kip-dev/kip/internal/imagebuild"
)

// errNoBuilder: no offline recipe for an image of that name.
var errNoBuilder = errors.New("no offline recipe")

// builder makes each kind of image once; every tag of a kind gets the same image.
type builder struct {
	in    inputs
	base  v1.Image
	built map[string]v1.Image
}

func (b *builder) image(kind string) (v1.Image, error) {
	if img, ok := b.built[kind]; ok {
		return img, nil
	}
	var img v1.Image
	var err error
	switch kind {
	case "busybox":
		img, err = b.busybox()
	case "agnhost":
		img, err = b.agnhostImage()
	case "pause":
		img, err = b.pause()
	case "nonewprivs":
		img, err = b.nonewprivs()
	case "nginx":
		img, err = b.nginx()
	case "glibc-dns-testing":
		img, err = b.glibcDNSTesting()
	default:
		return nil, errNoBuilder
	}
	if err != nil {
		return nil, err
	}
	b.built[kind] = img
	return img, nil
}

// userland is the base every image but pause starts from: imagebuild's busybox image made
// from a dynamic busybox (hack/build-busybox.sh), plus the shared libraries it loads.
func (b *builder) userland() (v1.Image, error) {
	if b.base != nil {
		return b.base, nil
	}
	if b.in.busybox == "" {
		return nil, errors.New("-busybox is required")
	}
	libs, err := sharedLibraries(b.in.busybox, "")
	if err != nil {
		return nil, err
	}
	var files []imagebuild.File
	for _, l := range libs {
		data, err := os.ReadFile(l.from)
		if err != nil {
			return nil, fmt.Errorf("reading %s: %w", l.from, err)
		}
		files = append(files, imagebuild.File{Path: l.path, Data: data, Mode: 0o755})
	}
	img, err := imagebuild.Busybox(imagebuild.Options{BusyboxPath: b.in.busybox, Files: files})
	if err != nil {
		return nil, fmt.Errorf("building the busybox userland: %w", err)
	}
	b.base = img
	return img, nil
}

func (b *builder) busybox() (v1.Image, error) {
	return b.userland() // imagebuild's default command is sh, as upstream busybox's
}

func (b *builder) agnhostImage() (v1.Image, error) {
	base, err := b.userland()
	if err != nil {
		return nil, err
	}
	var l layer
	if err := l.file("/agnhost", b.in.agnhost, 0o755); err != nil {
		return nil, err
	}
	// Specs override the entrypoint with /agnhost-2 to see which one runs; agnhost dispatches on
	// its first argument, so the name it was started by does not matter.
	l.symlink("/agnhost-2", "agnhost")
	l.dir("/uploads", 0o755)
	for _, t := range b.in.tools {
		if err := l.binary(t.dest, filepath.Join(t.root, t.path), t.root); err != nil {
			return nil, err
		}
	}
	for _, f := range []string{"localhost.crt", "localhost.key"} {
		if err := l.file("/"+f, filepath.Join(b.in.agnhostSrc, "porter", f), 0o644); err != nil {
			return nil, err
		}
	}
	// The user and group the upstream image adds (SupplementalGroups specs use them).
	l.data("/etc/passwd", "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"+
		"user-defined-in-image:x:1000:1000::/home/user-defined-in-image:/bin/sh\n", 0o644)
	l.data("/etc/group", "root:x:0:\nnogroup:x:65534:\nnobody:x:65534:\nuser-defined-in-image:x:1000:\n"+
		"group-defined-in-image:x:50000:user-defined-in-image\n", 0o644)
	l.dir("/home/user-defined-in-image", 0o755)
	// glibc's getent (a tool above) reads /etc/hosts before DNS only when nsswitch.conf says
	// so; musl, upstream's libc, always does.
	l.data("/etc/nsswitch.conf", debianNSSwitch, 0o644)
	return withLayer(base, &l, v1.Config{
		Entrypoint:   []string{"/agnhost"},
		Cmd:          []string{"pause"},
		ExposedPorts: ports("80/tcp", "8080/tcp", "8081/tcp", "9376/tcp", "5000/tcp"),
	})
}

func (b *builder) pause() (v1.Image, error) {
	var l layer
	if err := l.file("/agnhost", b.in.agnhost, 0o755); err != nil {
		return nil, err
	}
	base := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	return withLayer(base, &l, v1.Config{Entrypoint: []string{"/agnhost", "pause"}})
}

func (b *builder) nonewprivs() (v1.Image, error) {
	base, err := b.userland()
	if err != nil {
		return nil, err
	}
	var l layer
	if err := l.file("/usr/local/bin/nnp", b.in.nnp, 0o4755); err != nil { // setuid, as upstream
		return nil, err
	}
	return withLayer(base, &l, v1.Config{Cmd: []string{"nnp"}})
}

// nginxConf mirrors the upstream image's behaviour: the master runs as root, workers as user
// nginx, port 80 serves /usr/share/nginx/html, and the logs go to stdout and stderr.
const nginxConf = `user nginx;
worker_processes auto;
error_log /var/log/nginx/error.log notice;
pid /run/nginx.pid;
events { worker_connections 1024; }
http {
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    access_log /var/log/nginx/access.log;
    sendfile on;
    keepalive_timeout 65;
    server {
        listen 80;
        listen [::]:80;
        server_name localhost;
        location / {
            root /usr/share/nginx/html;
            index index.html index.htm;
        }
    }
}
`

func (b *builder) nginx() (v1.Image, error) {
	base, err := b.userland()
	if err != nil {
		return nil, err
	}
	if b.in.nginxRoot == "" {
		return nil, errors.New("-nginx-root is required")
	}
	var l layer
	if err := l.binary("/usr/sbin/nginx", filepath.Join(b.in.nginxRoot, "usr/sbin/nginx"), ""); err != nil {
		return nil, err
	}
	for _, f := range []string{"/etc/nginx/mime.types", "/usr/share/nginx/html/index.html"} {
		if err := l.file(f, filepath.Join(b.in.nginxRoot, f), 0o644); err != nil {
			return nil, err
		}
	}
	l.data("/etc/nginx/nginx.conf", nginxConf, 0o644)
	l.dir("/etc/nginx/conf.d", 0o755)
	l.dir("/var/lib/nginx", 0o755)
	l.dir("/var/cache/nginx", 0o755)
	l.dir("/run", 0o755)
	l.symlink("/var/log/nginx/access.log", "/dev/stdout")
	l.symlink("/var/log/nginx/error.log", "/dev/stderr")
	l.data("/etc/passwd", "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"+
		"nginx:x:101:101:nginx:/var/cache/nginx:/bin/false\n", 0o644)
	l.data("/etc/group", "root:x:0:\nnogroup:x:65534:\nnobody:x:65534:\nnginx:x:101:\n", 0o644)
	return withLayer(base, &l, v1.Config{
		Cmd:          []string{"nginx", "-g", "daemon off;"},
		ExposedPorts: ports("80/tcp"),
		StopSignal:   "SIGQUIT",
	})
}

// debianNSSwitch is the /etc/nsswitch.conf a Debian image has (libc-bin installs it): hosts
// from /etc/hosts, then DNS.
const debianNSSwitch = `passwd:         files
group:          files
shadow:         files
gshadow:        files

hosts:          files dns
networks:       files

protocols:      db files
services:       db files
ethers:         db files
rpc:            db files

netgroup:       nis
`

// glibcDNSTesting stands for e2e-test-images/glibc-dns-testing, Debian bookworm-slim with
// dnsutils: the DNS specs run dig and getent in it to check that a glibc program resolves
// what agnhost's musl one does. It is the busybox userland (sh, test, seq, echo, sleep,
// on the host's glibc) plus Debian's dig and glibc's own getent (libc-bin, whose NSS reads
// /etc/hosts and then DNS as Debian's nsswitch.conf says). The coredns binary the upstream
// image also carries is left out: no spec runs it from this image.
func (b *builder) glibcDNSTesting() (v1.Image, error) {
	base, err := b.userland()
	if err != nil {
		return nil, err
	}
	if len(b.in.glibcTools) == 0 {
		return nil, errors.New("-glibc-dns-tool is required (dig and getent)")
	}
	var l layer
	for _, t := range b.in.glibcTools {
		if err := l.binary(t.dest, filepath.Join(t.root, t.path), t.root); err != nil {
			return nil, err
		}
	}
	l.data("/etc/nsswitch.conf", debianNSSwitch, 0o644)
	return withLayer(base, &l, v1.Config{Cmd: []string{"sh"}})
}

func ports(ps ...string) map[string]struct{} {
	m := map[string]struct{}{}
	for _, p := range ps {
		m[p] = struct{}{}
	}
	return m
}
