package imagebuild

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/validate"
)

func build(t *testing.T, opts Options) v1.Image {
	t.Helper()
	img, err := Busybox(opts)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// contents lists the image's flattened files.
func contents(t *testing.T, img v1.Image) map[string]*tar.Header {
	t.Helper()
	rc := mutate.Extract(img)
	defer rc.Close()
	tr := tar.NewReader(rc)
	out := map[string]*tar.Header{}
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			b, _ := io.ReadAll(tr)
			h.PAXRecords = map[string]string{"body": string(b)}
		}
		out[strings.TrimSuffix(h.Name, "/")] = h
	}
}

func TestBusybox(t *testing.T) {
	img := build(t, Options{
		Entrypoint: []string{"/bin/sh", "-c"}, Cmd: []string{"echo hi"}, Env: []string{"A=1", "PATH=/bin"},
		WorkingDir: "/work", User: "65534", ExposedPorts: []string{"80/tcp"},
		Files: []File{{Path: "/opt/app/run.sh", Data: []byte("#!/bin/sh\n"), Mode: 0o4755}, {Path: "/etc/passwd", Data: []byte("root:x:0:0::/:/bin/sh\n")}},
	})
	// Validate the image as a registry or runtime reads it back: from its serialized form
	// (the in-memory mutate result carries empty annotation maps validate trips on).
	var buf bytes.Buffer
	if err := tarball.Write(name.MustParseReference("kip.test/busybox:latest"), img, &buf); err != nil {
		t.Fatal(err)
	}
	back, err := tarball.Image(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(buf.Bytes())), nil }, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := validate.Image(back); err != nil {
		t.Fatalf("invalid image: %v", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cf.OS != "linux" || cf.Architecture != runtime.GOARCH {
		t.Errorf("platform %s/%s, want linux/%s", cf.OS, cf.Architecture, runtime.GOARCH)
	}
	c := cf.Config
	if !slices.Equal(c.Entrypoint, []string{"/bin/sh", "-c"}) || !slices.Equal(c.Cmd, []string{"echo hi"}) ||
		!slices.Equal(c.Env, []string{"PATH=/bin", "A=1"}) || c.WorkingDir != "/work" || c.User != "65534" {
		t.Errorf("config %+v", c)
	}
	if _, ok := c.ExposedPorts["80/tcp"]; !ok {
		t.Errorf("exposed ports %v", c.ExposedPorts)
	}

	files := contents(t, img)
	out, err := exec.Command(DefaultBusyboxPath(), "--list").Output()
	if err != nil {
		t.Fatal(err)
	}
	applets := strings.Fields(string(out))
	if len(applets) < 100 {
		t.Fatalf("busybox lists %d applets", len(applets))
	}
	for _, a := range applets {
		if a == "busybox" {
			continue
		}
		if h := files["bin/"+a]; h == nil || h.Typeflag != tar.TypeSymlink || h.Linkname != "/bin/busybox" {
			t.Errorf("bin/%s: %+v, want a symlink to /bin/busybox", a, h)
		}
	}
	tests := []struct {
		path string
		typ  byte
		mode int64
		body string
	}{
		{"bin/busybox", tar.TypeReg, 0o755, ""},
		{"tmp", tar.TypeDir, 0o1777, ""},
		{"proc", tar.TypeDir, 0o755, ""},
		{"sys", tar.TypeDir, 0o755, ""},
		{"dev", tar.TypeDir, 0o755, ""},
		{"root", tar.TypeDir, 0o700, ""},
		{"etc/group", tar.TypeReg, 0o644, "root:x:0:\nnogroup:x:65534:\nnobody:x:65534:\n"},
		{"etc/passwd", tar.TypeReg, 0o644, "root:x:0:0::/:/bin/sh\n"}, // replaced by Options.Files
		{"opt", tar.TypeDir, 0o755, ""},
		{"opt/app", tar.TypeDir, 0o755, ""},
		{"opt/app/run.sh", tar.TypeReg, 0o4755, "#!/bin/sh\n"},
	}
	for _, tt := range tests {
		h := files[tt.path]
		if h == nil {
			t.Errorf("%s missing", tt.path)
			continue
		}
		if h.Typeflag != tt.typ || h.Mode != tt.mode || !h.ModTime.Equal(Epoch) || h.Uid != 0 {
			t.Errorf("%s: type %c mode %o mtime %v uid %d, want %c %o %v 0", tt.path, h.Typeflag, h.Mode, h.ModTime, h.Uid, tt.typ, tt.mode, Epoch)
		}
		if tt.body != "" && h.PAXRecords["body"] != tt.body {
			t.Errorf("%s = %q, want %q", tt.path, h.PAXRecords["body"], tt.body)
		}
	}
}

func TestBusyboxDefaults(t *testing.T) {
	cf, err := build(t, Options{}).ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(cf.Config.Cmd, []string{"sh"}) || !slices.Equal(cf.Config.Env, []string{DefaultPath}) {
		t.Errorf("default config %+v", cf.Config)
	}
	contents := contents(t, build(t, Options{}))
	if h := contents["etc/passwd"]; h == nil || !strings.Contains(h.PAXRecords["body"], "nobody:x:65534:65534:") {
		t.Errorf("etc/passwd %v", h)
	}
}

func TestBusyboxDeterministic(t *testing.T) {
	digest := func(opts Options) string {
		d, err := build(t, opts).Digest()
		if err != nil {
			t.Fatal(err)
		}
		return d.String()
	}
	a, b := digest(Options{Cmd: []string{"x"}}), digest(Options{Cmd: []string{"x"}})
	if a != b {
		t.Errorf("same options gave digests %s and %s", a, b)
	}
	if c := digest(Options{Cmd: []string{"y"}}); c == a {
		t.Error("different commands gave the same digest")
	}
	if c := digest(Options{Files: []File{{Path: "/f", Data: []byte("1")}}}); c == a {
		t.Error("an extra file did not change the digest")
	}
}

func TestBusyboxErrors(t *testing.T) {
	tests := []struct {
		name string
		opts Options
	}{
		{"relative escaping file", Options{Files: []File{{Path: "../etc/x"}}}},
		{"unclean file path", Options{Files: []File{{Path: "/a/../b"}}}},
		{"root as file", Options{Files: []File{{Path: "/"}}}},
		{"missing busybox", Options{BusyboxPath: "/nonexistent/busybox"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := Busybox(tt.opts); err == nil {
				t.Error("built, want an error")
			}
		})
	}
}

// TestBusyboxSharedLibraries checks the image carries the loader and every library the
// dynamic busybox names, stored once at the host's real path with the loader's lookup paths
// as symlinks; a static binary gets none.
func TestBusyboxSharedLibraries(t *testing.T) {
	files := contents(t, build(t, Options{}))
	libs, err := sharedObjects(DefaultBusyboxPath(), DefaultLibraryDirs())
	if err != nil {
		t.Fatal(err)
	}
	var sawLoader, sawLibc bool
	for _, l := range libs {
		sawLoader = sawLoader || strings.Contains(l.Path, "ld-linux")
		sawLibc = sawLibc || strings.HasSuffix(l.Path, "/libc.so.6")
		real := strings.TrimPrefix(l.Real, "/")
		if h := files[real]; h == nil || h.Typeflag != tar.TypeReg || h.Mode != 0o755 {
			t.Errorf("%s: %+v, want a regular file", real, h)
		}
		if p := strings.TrimPrefix(l.Path, "/"); p != real {
			if h := files[p]; h == nil || h.Typeflag != tar.TypeSymlink || h.Linkname != l.Real {
				t.Errorf("%s: %+v, want a symlink to %s", p, h, l.Real)
			}
		}
	}
	if !sawLoader || !sawLibc {
		t.Errorf("shared objects %+v lack the loader or libc", libs)
	}
	if h := files["etc/nsswitch.conf"]; h == nil || !strings.Contains(h.PAXRecords["body"], "hosts: files dns\n") {
		t.Errorf("etc/nsswitch.conf: %+v", h)
	}
	if _, err := os.Stat(StaticBusyboxPath); err != nil {
		t.Skipf("skipping the static case: %v (apt-get install busybox-static)", err)
	}
	static := contents(t, build(t, Options{BusyboxPath: StaticBusyboxPath}))
	for p := range static {
		if strings.HasPrefix(p, "lib") || strings.HasPrefix(p, "usr/lib") {
			t.Errorf("static image holds %s", p)
		}
	}
}

// TestBusyboxMissingSaysHowToGetIt: without the extracted package the error tells the user
// to run hack/install-deps.sh.
func TestBusyboxMissingSaysHowToGetIt(t *testing.T) {
	t.Setenv("XDG_CACHE_HOME", t.TempDir())
	_, err := Busybox(Options{})
	if err == nil || !strings.Contains(err.Error(), "hack/install-deps.sh") {
		t.Fatalf("error %v, want one naming hack/install-deps.sh", err)
	}
}

// TestBusyboxWgetInChroot unpacks the image and runs its wget under chroot against a server
// on the host's loopback, by address and by a name from the image's /etc/hosts: the binary,
// its loader and libc, and glibc's files lookup all come from the image alone.
func TestBusyboxWgetInChroot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipping: chroot needs root")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "hello from the host\n") })}
	go srv.Serve(ln)
	defer srv.Close()
	port := ln.Addr().(*net.TCPAddr).Port

	root := t.TempDir()
	img := build(t, Options{Files: []File{{Path: "/etc/hosts", Data: []byte("127.0.0.1 web.example\n")}}})
	rc := mutate.Extract(img)
	defer rc.Close()
	untar := exec.Command("tar", "-x", "-C", root)
	untar.Stdin = rc
	if out, err := untar.CombinedOutput(); err != nil {
		t.Fatalf("unpacking: %v: %s", err, out)
	}
	for _, host := range []string{"127.0.0.1", "web.example"} {
		url := fmt.Sprintf("http://%s:%d/", host, port)
		out, err := exec.Command("chroot", root, "/bin/wget", "-q", "-O-", url).CombinedOutput()
		if err != nil || string(out) != "hello from the host\n" {
			t.Errorf("chroot wget %s: %v: %q", url, err, out)
		}
	}
}
