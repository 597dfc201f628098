package image

import (
	"context"
	"encoding/base64"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"golang.org/x/sys/unix"

	"github.com/kip-dev/kip/internal/cellapi"
	"github.com/kip-dev/kip/internal/imagebuild"
	"github.com/kip-dev/kip/internal/registry"
)

// startRegistry runs an in-process registry on loopback for the test.
func startRegistry(t testing.TB, opts ...registry.Option) *registry.Registry {
	t.Helper()
	reg, err := registry.Start("127.0.0.1:0", opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := reg.Close(); err != nil {
			t.Error(err)
		}
	})
	return reg
}

func newStore(t testing.TB, cfg Config) *Store {
	t.Helper()
	if cfg.Root == "" {
		cfg.Root = t.TempDir()
	}
	s, err := NewStore(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func busybox(t testing.TB, opts imagebuild.Options) v1.Image {
	t.Helper()
	img, err := imagebuild.Busybox(opts)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func push(t testing.TB, host, repo string, img v1.Image) string {
	t.Helper()
	d, err := registry.Push(context.Background(), host, repo, img, nil)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestPull(t *testing.T) {
	ctx := context.Background()
	reg := startRegistry(t)
	host := reg.Host()
	bbDigest := push(t, host, "library/busybox:latest", busybox(t, imagebuild.Options{}))
	nginx := busybox(t, imagebuild.Options{Cmd: []string{"httpd", "-f"}, WorkingDir: "/www",
		Files: []imagebuild.File{{Path: "/www/index.html", Data: []byte("hello\n")}}})
	nginxDigest := push(t, host, "library/nginx:1.0", nginx)
	appDigest := push(t, host, "team/app:v2", busybox(t, imagebuild.Options{Cmd: []string{"app"}}))

	store := newStore(t, Config{DefaultRegistry: host, Insecure: []string{host}})
	tests := []struct {
		ref, wantID, wantDigest string
		wantCmd                 []string
	}{
		{host + "/library/busybox:latest", host + "/library/busybox@" + bbDigest, bbDigest, []string{"sh"}},
		{host + "/library/busybox@" + bbDigest, host + "/library/busybox@" + bbDigest, bbDigest, []string{"sh"}},
		{"busybox", host + "/library/busybox@" + bbDigest, bbDigest, []string{"sh"}},
		{"nginx:1.0", host + "/library/nginx@" + nginxDigest, nginxDigest, []string{"httpd", "-f"}},
		{"library/nginx:1.0", host + "/library/nginx@" + nginxDigest, nginxDigest, []string{"httpd", "-f"}},
		{"team/app:v2", host + "/team/app@" + appDigest, appDigest, []string{"app"}},
	}
	for _, tt := range tests {
		t.Run(tt.ref, func(t *testing.T) {
			img, err := store.Pull(ctx, tt.ref, nil)
			if err != nil {
				t.Fatal(err)
			}
			if img.Ref != tt.ref || img.ImageID != tt.wantID || img.Digest != tt.wantDigest {
				t.Errorf("got ref %q id %q digest %q, want %q %q %q", img.Ref, img.ImageID, img.Digest, tt.ref, tt.wantID, tt.wantDigest)
			}
			if got := img.Config.Cmd; !slices.Equal(got, tt.wantCmd) {
				t.Errorf("Cmd = %q, want %q", got, tt.wantCmd)
			}
			if st, err := os.Stat(filepath.Join(img.RootFS, "bin/busybox")); err != nil || st.Mode().Perm() != 0o755 {
				t.Errorf("bin/busybox: %v, %v", st, err)
			}
			if l, err := os.Readlink(filepath.Join(img.RootFS, "bin/sh")); err != nil || l != "/bin/busybox" {
				t.Errorf("bin/sh links to %q (%v), want /bin/busybox", l, err)
			}
			if st, err := os.Stat(filepath.Join(img.RootFS, "tmp")); err != nil || st.Mode()&os.ModeSticky == 0 || st.Mode().Perm() != 0o777 {
				t.Errorf("tmp mode: %v, %v, want sticky 0777", st.Mode(), err)
			}
			if st, err := os.Stat(filepath.Join(img.RootFS, "etc/passwd")); err != nil || !st.ModTime().Equal(imagebuild.Epoch) {
				t.Errorf("etc/passwd mtime: %v (%v), want %v", st.ModTime(), err, imagebuild.Epoch)
			}
			if st, err := os.Stat(filepath.Join(img.RootFS, "etc")); err != nil || !st.ModTime().Equal(imagebuild.Epoch) {
				t.Errorf("etc mtime: %v (%v), want %v", st.ModTime(), err, imagebuild.Epoch)
			}
		})
	}
	// Three distinct images were pulled, each unpacked once.
	if n := store.unpacks.Load(); n != 3 {
		t.Errorf("unpacked %d times, want 3 (once per image digest)", n)
	}
	if ents, _ := os.ReadDir(store.tmp); len(ents) != 0 {
		t.Errorf("tmp holds %d leftovers", len(ents))
	}
}

func TestPullReusesUnpack(t *testing.T) {
	ctx := context.Background()
	reg := startRegistry(t)
	push(t, reg.Host(), "library/busybox:latest", busybox(t, imagebuild.Options{}))
	root := t.TempDir()
	store := newStore(t, Config{Root: root, DefaultRegistry: reg.Host(), Insecure: []string{reg.Host()}})

	// Concurrent pulls of one image share one unpack.
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Go(func() {
			_, err := store.Pull(ctx, "busybox", nil)
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	first, err := store.Pull(ctx, "busybox", nil)
	if err != nil {
		t.Fatal(err)
	}
	if n := store.unpacks.Load(); n != 1 {
		t.Errorf("unpacked %d times, want 1", n)
	}
	// A new store on the same root (an agent restart) reuses the unpack too.
	again := newStore(t, Config{Root: root, DefaultRegistry: reg.Host(), Insecure: []string{reg.Host()}})
	img, err := again.Pull(ctx, "busybox", nil)
	if err != nil {
		t.Fatal(err)
	}
	if n := again.unpacks.Load(); n != 0 {
		t.Errorf("restarted store unpacked %d times, want 0", n)
	}
	if img.RootFS != first.RootFS || !slices.Equal(img.Config.Cmd, first.Config.Cmd) {
		t.Errorf("restarted store gave %s %q, want %s %q", img.RootFS, img.Config.Cmd, first.RootFS, first.Config.Cmd)
	}
}

func TestPullSelectsPlatform(t *testing.T) {
	ctx := context.Background()
	reg := startRegistry(t)
	other := "arm64"
	if runtime.GOARCH == "arm64" {
		other = "amd64"
	}
	mine := busybox(t, imagebuild.Options{Files: []imagebuild.File{{Path: "/arch", Data: []byte(runtime.GOARCH)}}})
	theirs := busybox(t, imagebuild.Options{Files: []imagebuild.File{{Path: "/arch", Data: []byte(other)}}})
	idx := mutate.AppendManifests(empty.Index,
		mutate.IndexAddendum{Add: theirs, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: other}}},
		mutate.IndexAddendum{Add: mine, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: runtime.GOARCH}}},
	)
	ref, err := name.ParseReference(reg.Host()+"/multi/arch:latest", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.WriteIndex(ref, idx); err != nil {
		t.Fatal(err)
	}
	idxDigest, _ := idx.Digest()

	store := newStore(t, Config{Insecure: []string{reg.Host()}})
	img, err := store.Pull(ctx, reg.Host()+"/multi/arch:latest", nil)
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(filepath.Join(img.RootFS, "arch"))
	if err != nil || string(got) != runtime.GOARCH {
		t.Errorf("unpacked the %q image (%v), want %q", got, err, runtime.GOARCH)
	}
	if want := reg.Host() + "/multi/arch@" + idxDigest.String(); img.ImageID != want {
		t.Errorf("ImageID = %q, want the index digest %q", img.ImageID, want)
	}
}

// basicAuth requires user:pass once locked is set (pushes happen before).
func basicAuth(locked *atomic.Bool, user, pass string) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			u, p, ok := r.BasicAuth()
			if locked.Load() && (!ok || u != user || p != pass) {
				w.Header().Set("WWW-Authenticate", `Basic realm="kip-test"`)
				http.Error(w, `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`, http.StatusUnauthorized)
				return
			}
			next.ServeHTTP(w, r)
		})
	}
}

func TestPullAuth(t *testing.T) {
	ctx := context.Background()
	var locked atomic.Bool
	reg := startRegistry(t, registry.WithHandlerWrapper(basicAuth(&locked, "kip", "s3cret")))
	host := reg.Host()
	push(t, host, "private/app:latest", busybox(t, imagebuild.Options{}))
	locked.Store(true)

	tests := []struct {
		name   string
		auths  []cellapi.RegistryAuth
		wantOK bool
	}{
		{"anonymous", nil, false},
		{"wrong password", []cellapi.RegistryAuth{{Registry: host, Username: "kip", Password: "nope"}}, false},
		{"credentials for another registry", []cellapi.RegistryAuth{{Registry: "other.example:5000", Username: "kip", Password: "s3cret"}}, false},
		{"username and password", []cellapi.RegistryAuth{{Registry: host, Username: "kip", Password: "s3cret"}}, true},
		{"auth field in URL form", []cellapi.RegistryAuth{
			{Registry: "other.example", Username: "x", Password: "y"},
			{Registry: "http://" + host + "/v2/", Auth: base64.StdEncoding.EncodeToString([]byte("kip:s3cret"))},
		}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			store := newStore(t, Config{Insecure: []string{host}})
			img, err := store.Pull(ctx, host+"/private/app:latest", tt.auths)
			if tt.wantOK {
				if err != nil {
					t.Fatal(err)
				}
				if _, err := os.Stat(filepath.Join(img.RootFS, "bin/busybox")); err != nil {
					t.Error(err)
				}
				return
			}
			if err == nil {
				t.Fatal("pull succeeded, want it refused")
			}
			if !IsUnauthorized(err) || IsNotFound(err) || IsInvalidReference(err) {
				t.Errorf("error %v: IsUnauthorized %v IsNotFound %v, want only unauthorized", err, IsUnauthorized(err), IsNotFound(err))
			}
		})
	}
}

func TestPullErrors(t *testing.T) {
	ctx := context.Background()
	reg := startRegistry(t)
	host := reg.Host()
	push(t, host, "library/busybox:latest", busybox(t, imagebuild.Options{}))
	store := newStore(t, Config{DefaultRegistry: host, Insecure: []string{host}})

	tests := []struct {
		ref       string
		invalid   bool
		notFound  bool
		otherwise bool // some other error
	}{
		{ref: "", invalid: true},
		{ref: "UPPER/case", invalid: true},
		{ref: "with space", invalid: true},
		{ref: " busybox", invalid: true},
		{ref: "busybox:bad:tag", invalid: true},
		{ref: "busybox@sha256:1234", invalid: true},
		{ref: "nosuchimage", notFound: true},
		{ref: "busybox:nosuchtag", notFound: true},
		{ref: host + "/library/busybox@sha256:" + "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", notFound: true},
		// Not listed as insecure: HTTPS to a plain-HTTP registry fails.
		{ref: "127.0.0.1:1/library/busybox", otherwise: true},
	}
	for _, tt := range tests {
		t.Run(tt.ref, func(t *testing.T) {
			img, err := store.Pull(ctx, tt.ref, nil)
			if err == nil {
				t.Fatalf("pulled %+v, want an error", img)
			}
			if IsInvalidReference(err) != tt.invalid || IsNotFound(err) != tt.notFound {
				t.Errorf("error %q: IsInvalidReference %v IsNotFound %v, want %v %v", err, IsInvalidReference(err), IsNotFound(err), tt.invalid, tt.notFound)
			}
		})
	}
	if ents, _ := os.ReadDir(store.images); len(ents) != 0 {
		t.Errorf("images holds %d entries after failed pulls", len(ents))
	}
}

func TestPullInsecureOnlyWhenListed(t *testing.T) {
	reg := startRegistry(t)
	push(t, reg.Host(), "library/busybox:latest", busybox(t, imagebuild.Options{}))
	store := newStore(t, Config{DefaultRegistry: reg.Host()})
	_, err := store.Pull(context.Background(), "busybox", nil)
	if err == nil {
		t.Fatal("pulled over plain HTTP from a registry not listed as insecure")
	}
	if !strings.Contains(err.Error(), "not listed as insecure") {
		t.Errorf("error %q does not say the registry is not insecure", err)
	}
}

func TestNewStoreErrors(t *testing.T) {
	for _, cfg := range []Config{{}, {Root: "/tmp/a,b"}} {
		if _, err := NewStore(cfg); err == nil {
			t.Errorf("NewStore(%+v) succeeded, want an error", cfg)
		}
	}
}

func TestPullFailedUnpackLeavesNothing(t *testing.T) {
	reg := startRegistry(t)
	// A layer with a name climbing out of the root fails the unpack midway.
	bad, err := mutate.AppendLayers(busybox(t, imagebuild.Options{}), tarLayer(t,
		tarEntry{name: "ok/file", body: "fine"},
		tarEntry{name: "../escape", body: "evil"},
	))
	if err != nil {
		t.Fatal(err)
	}
	push(t, reg.Host(), "bad/image:latest", bad)
	store := newStore(t, Config{Insecure: []string{reg.Host()}})
	if _, err := store.Pull(context.Background(), reg.Host()+"/bad/image", nil); err == nil {
		t.Fatal("pulled an image with an escaping path")
	}
	for _, d := range []string{store.images, store.tmp} {
		if ents, _ := os.ReadDir(d); len(ents) != 0 {
			t.Errorf("%s holds %d leftovers", d, len(ents))
		}
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(store.cfg.Root), "escape")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("escape file exists next to the store: %v", err)
	}
}

func TestRepoName(t *testing.T) {
	tests := []struct{ ref, want string }{
		{"nginx", "docker.io/library/nginx"},
		{"docker.io/me/app:1", "docker.io/me/app"},
		{"10.250.0.1:5000/library/busybox", "10.250.0.1:5000/library/busybox"},
	}
	for _, tt := range tests {
		r, err := name.ParseReference(tt.ref)
		if err != nil {
			t.Fatal(err)
		}
		if got := repoName(r); got != tt.want {
			t.Errorf("repoName(%s) = %s, want %s", tt.ref, got, tt.want)
		}
	}
}

func TestParseReferenceDockerHub(t *testing.T) {
	// Without a default registry, names follow docker.io's rules.
	store := newStore(t, Config{})
	tests := []struct{ ref, want string }{
		{"nginx", "index.docker.io/library/nginx:latest"},
		{"me/app", "index.docker.io/me/app:latest"},
		{"localhost/app", "localhost/app:latest"},
		{"quay.io/x/y:1", "quay.io/x/y:1"},
	}
	for _, tt := range tests {
		r, err := store.parseReference(tt.ref)
		if err != nil {
			t.Fatal(err)
		}
		if r.Name() != tt.want {
			t.Errorf("parseReference(%s) = %s, want %s", tt.ref, r.Name(), tt.want)
		}
	}
}

// TestNewStoreRemovesStaleUnpacks: an unpack left in tmp by a crashed agent (its image lock
// free) goes when a store opens; one whose lock another store holds (it is unpacking) and
// what a crashed collection left are handled as such.
func TestNewStoreRemovesStaleUnpacks(t *testing.T) {
	root := t.TempDir()
	newStore(t, Config{Root: root})
	stale, busy, gc := filepath.Join(root, "tmp", "sha256-aa-1"), filepath.Join(root, "tmp", "sha256-bb-2"), filepath.Join(root, "tmp", "gc-sha256-cc-3")
	for _, d := range []string{stale, busy, gc} {
		if err := os.MkdirAll(filepath.Join(d, "rootfs"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	unlock, ok, err := tryLock(filepath.Join(root, "locks", "sha256-bb"), unix.LOCK_EX)
	if err != nil || !ok {
		t.Fatalf("locking sha256-bb: %v, %t", err, ok)
	}
	defer unlock()
	newStore(t, Config{Root: root})
	for _, d := range []string{stale, gc} {
		if _, err := os.Stat(d); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("leftover %s kept: %v", filepath.Base(d), err)
		}
	}
	if _, err := os.Stat(busy); err != nil {
		t.Errorf("an unpack in progress (its lock held) was removed: %v", err)
	}
}

// TestLookup: after a pull the store knows the reference without asking the registry (what
// imagePullPolicy IfNotPresent and Never use), even from a new store on the same root; an
// image never pulled, or whose unpack is gone, is not found.
func TestLookup(t *testing.T) {
	ctx := context.Background()
	reg := startRegistry(t)
	host := reg.Host()
	digest := push(t, host, "library/busybox:latest", busybox(t, imagebuild.Options{}))
	cfg := Config{DefaultRegistry: host, Insecure: []string{host}}
	store := newStore(t, cfg)
	if _, ok := store.Lookup("busybox"); ok {
		t.Fatal("found an image never pulled")
	}
	pulled, err := store.Pull(ctx, "busybox", nil)
	if err != nil {
		t.Fatal(err)
	}
	again, err := NewStore(store.cfg) // a restarted agent's store on the same root
	if err != nil {
		t.Fatal(err)
	}
	got, ok := again.Lookup("busybox")
	if !ok || got.Digest != digest || got.ImageID != pulled.ImageID || got.RootFS != pulled.RootFS || !slices.Equal(got.Config.Cmd, []string{"sh"}) {
		t.Fatalf("Lookup = %+v, %t; want the pulled image %+v", got, ok, pulled)
	}
	if _, ok := again.Lookup("busybox:other"); ok {
		t.Error("found a reference never pulled")
	}
	if err := os.RemoveAll(filepath.Dir(pulled.RootFS)); err != nil {
		t.Fatal(err)
	}
	if _, ok := again.Lookup("busybox"); ok {
		t.Error("found an image whose unpack is gone")
	}
}

func TestPullTooLargeFailsNamingTheLimit(t *testing.T) {
	reg := startRegistry(t)
	big, err := mutate.AppendLayers(busybox(t, imagebuild.Options{}), tarLayer(t,
		tarEntry{name: "big", body: strings.Repeat("x", 4<<20)},
	))
	if err != nil {
		t.Fatal(err)
	}
	push(t, reg.Host(), "big/image:latest", big)
	push(t, reg.Host(), "small/image:latest", busybox(t, imagebuild.Options{}))
	store := newStore(t, Config{Insecure: []string{reg.Host()}, MaxUnpackedBytes: 3 << 20})
	if _, err := store.Pull(context.Background(), reg.Host()+"/small/image", nil); err != nil {
		t.Fatalf("Pull of busybox alone under a 3Mi limit: %v", err)
	}
	_, err = store.Pull(context.Background(), reg.Host()+"/big/image", nil)
	if !errors.Is(err, ErrTooLarge) {
		t.Fatalf("Pull = %v, want ErrTooLarge", err)
	}
	for _, want := range []string{"3Mi", "registry.maxUnpackedImageSize"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	if ents, _ := os.ReadDir(store.tmp); len(ents) != 0 {
		t.Errorf("%s holds %d leftovers", store.tmp, len(ents))
	}
	if ents, _ := os.ReadDir(store.images); len(ents) != 1 {
		t.Errorf("%s holds %d unpacked images, want busybox's alone", store.images, len(ents))
	}
	// The same image fits a store with a larger limit.
	roomy := newStore(t, Config{Insecure: []string{reg.Host()}, MaxUnpackedBytes: 64 << 20})
	if _, err := roomy.Pull(context.Background(), reg.Host()+"/big/image", nil); err != nil {
		t.Fatalf("Pull under a 64Mi limit: %v", err)
	}
}
