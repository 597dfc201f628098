package image

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/kip-dev/kip/internal/cellapi"
	"github.com/kip-dev/kip/internal/imagebuild"
	"github.com/kip-dev/kip/internal/registry"
)

// sharedStore makes a store with a Root of its own on the shared directory shared, like
// one cell's agent on the local backend.
func sharedStore(t *testing.T, shared, host string, max int64) *Store {
	t.Helper()
	return newStore(t, Config{Root: t.TempDir(), Shared: shared, MaxSharedBytes: max, DefaultRegistry: host, Insecure: []string{host}})
}

// TestSharedStoresUnpackOnce: two stores (two cells' agents) on one shared directory, each
// pulling one image eight times at once, unpack it once between them and use one copy.
func TestSharedStoresUnpackOnce(t *testing.T) {
	reg := startRegistry(t)
	push(t, reg.Host(), "library/busybox:latest", busybox(t, imagebuild.Options{}))
	shared := t.TempDir()
	a, b := sharedStore(t, shared, reg.Host(), 0), sharedStore(t, shared, reg.Host(), 0)

	var wg sync.WaitGroup
	var mu sync.Mutex
	rootfs := map[string]bool{}
	for i := range 16 {
		s := []*Store{a, b}[i%2]
		wg.Go(func() {
			img, err := s.Pull(context.Background(), "busybox", nil)
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			rootfs[img.RootFS] = true
			mu.Unlock()
		})
	}
	wg.Wait()
	if n := a.unpacks.Load() + b.unpacks.Load(); n != 1 {
		t.Errorf("two stores unpacked the image %d times between them, want 1", n)
	}
	if len(rootfs) != 1 {
		t.Fatalf("pulls gave %d rootfs directories, want one: %v", len(rootfs), rootfs)
	}
	for p := range rootfs {
		if rel, err := filepath.Rel(shared, p); err != nil || !filepath.IsLocal(rel) {
			t.Errorf("rootfs %s is not in the shared directory %s", p, shared)
		}
		if _, err := os.Stat(filepath.Join(p, "bin/busybox")); err != nil {
			t.Error(err)
		}
	}
	// Each store knows only what it pulled itself.
	for _, s := range []*Store{a, b} {
		if _, ok := s.Lookup("busybox"); !ok {
			t.Errorf("store %s does not find the image it pulled", s.cfg.Root)
		}
	}
	if ents, _ := os.ReadDir(a.tmp); len(ents) != 0 {
		t.Errorf("tmp holds %d leftovers", len(ents))
	}
}

// TestSharedStoreRefusesWithoutCredentials: an image cached by a store that had the pull
// secret is refused to a store on the same shared directory without it (ErrImagePull in
// the pod), though every byte of it is unpacked on the host; with the credentials the
// second store uses the cached unpack.
func TestSharedStoreRefusesWithoutCredentials(t *testing.T) {
	ctx := context.Background()
	var locked atomic.Bool
	reg := startRegistry(t, registry.WithHandlerWrapper(basicAuth(&locked, "kip", "s3cret")))
	host := reg.Host()
	digest := push(t, host, "private/app:latest", busybox(t, imagebuild.Options{}))
	locked.Store(true)
	good := []cellapi.RegistryAuth{{Registry: host, Username: "kip", Password: "s3cret"}}

	shared := t.TempDir()
	a := sharedStore(t, shared, host, 0)
	if _, err := a.Pull(ctx, "private/app", good); err != nil {
		t.Fatal(err)
	}
	b := sharedStore(t, shared, host, 0)
	for _, tc := range []struct {
		name  string
		ref   string
		auths []cellapi.RegistryAuth
	}{
		{"anonymous by tag", "private/app", nil},
		{"anonymous by digest", "private/app@" + digest, nil},
		{"wrong password", "private/app", []cellapi.RegistryAuth{{Registry: host, Username: "kip", Password: "nope"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			img, err := b.Pull(ctx, tc.ref, tc.auths)
			if err == nil {
				t.Fatalf("pull without the credentials got the cached image %s", img.RootFS)
			}
			if !IsUnauthorized(err) {
				t.Errorf("error %v: want IsUnauthorized", err)
			}
			if _, ok := b.Lookup(tc.ref); ok {
				t.Error("Lookup finds an image this store was refused")
			}
		})
	}
	img, err := b.Pull(ctx, "private/app", good)
	if err != nil {
		t.Fatal(err)
	}
	if n := b.unpacks.Load(); n != 0 {
		t.Errorf("second store unpacked %d times, want 0 (the cache)", n)
	}
	if _, err := os.Stat(filepath.Join(img.RootFS, "bin/busybox")); err != nil {
		t.Error(err)
	}
}

// TestCollect: over the cap, images go least recently used first, and never one a live
// store uses; a store whose Root is gone (its cell terminated) or that closed uses none.
func TestCollect(t *testing.T) {
	ctx := context.Background()
	reg := startRegistry(t)
	host := reg.Host()
	for _, n := range []string{"a", "b", "c"} {
		push(t, host, "library/"+n+":latest", busybox(t, imagebuild.Options{Cmd: []string{"echo", n}}))
	}
	shared := t.TempDir()
	keys := map[string]string{}
	pull := func(s *Store, n string) {
		t.Helper()
		img, err := s.Pull(ctx, n, nil)
		if err != nil {
			t.Fatal(err)
		}
		keys[n] = filepath.Base(filepath.Dir(img.RootFS))
	}
	present := func(want map[string]bool) {
		t.Helper()
		for n, ok := range want {
			_, err := os.Stat(filepath.Join(shared, "images", keys[n]))
			if got := err == nil; got != ok {
				t.Errorf("image %s present = %t, want %t", n, got, ok)
			}
		}
	}

	x := sharedStore(t, shared, host, 0)
	pull(x, "a")
	pull(x, "b") // used after a
	yRoot := t.TempDir()
	y := newStore(t, Config{Root: yRoot, Shared: shared, DefaultRegistry: host, Insecure: []string{host}})
	pull(y, "c")
	size := readSize(filepath.Join(shared, "images", keys["a"]))
	if size <= 0 {
		t.Fatalf("image a records size %d", size)
	}

	// Room for two: while x and y live, all three are in use and stay.
	collector := sharedStore(t, shared, host, 2*size)
	if err := collector.Collect(); err != nil {
		t.Fatal(err)
	}
	present(map[string]bool{"a": true, "b": true, "c": true})

	// x closes: a (used least recently) goes, b fits beside c.
	if err := x.Close(); err != nil {
		t.Fatal(err)
	}
	if err := collector.Collect(); err != nil {
		t.Fatal(err)
	}
	present(map[string]bool{"a": false, "b": true, "c": true})

	// y's Root goes (its cell was terminated): with room for half an image, b and c both
	// go, for no store uses them any more.
	if err := os.RemoveAll(yRoot); err != nil {
		t.Fatal(err)
	}
	small := sharedStore(t, shared, host, size/2)
	if err := small.Collect(); err != nil {
		t.Fatal(err)
	}
	present(map[string]bool{"b": false, "c": false})
	if _, err := os.Stat(y.leaseFile); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the lease of a store whose Root is gone was kept: %v", err)
	}
	if ents, _ := os.ReadDir(filepath.Join(shared, "tmp")); len(ents) != 0 {
		t.Errorf("tmp holds %d leftovers after collecting", len(ents))
	}

	// A pull collects by itself, and keeps the image it pulled even over the cap.
	pull(small, "a")
	pull(small, "b")
	present(map[string]bool{"a": true, "b": true})
}

// TestCollectWaitsForPulls: while a store holds the shared lock (it is unpacking), Collect
// removes nothing.
func TestCollectWaitsForPulls(t *testing.T) {
	reg := startRegistry(t)
	push(t, reg.Host(), "library/busybox:latest", busybox(t, imagebuild.Options{}))
	shared := t.TempDir()
	s := sharedStore(t, shared, reg.Host(), 0)
	img, err := s.Pull(context.Background(), "busybox", nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	unlock, ok, err := tryLock(filepath.Join(shared, "lock"), unix.LOCK_SH)
	if err != nil || !ok {
		t.Fatalf("taking the shared lock: %v, %t", err, ok)
	}
	c := sharedStore(t, shared, reg.Host(), 1)
	if err := c.Collect(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(img.RootFS); err != nil {
		t.Errorf("collected while a pull held the lock: %v", err)
	}
	unlock()
	if err := c.Collect(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(img.RootFS); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("unused image over the cap kept: %v", err)
	}
}

// TestLockFileCanceled: waiting for a held lock ends with the context, and the lock taken
// late by the abandoned wait is let go.
func TestLockFileCanceled(t *testing.T) {
	p := filepath.Join(t.TempDir(), "l")
	unlock, err := lockFile(context.Background(), p, unix.LOCK_EX)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := lockFile(ctx, p, unix.LOCK_EX); !errors.Is(err, context.Canceled) {
		t.Fatalf("lockFile on a held lock with a canceled context = %v, want context.Canceled", err)
	}
	unlock()
	again, err := lockFile(context.Background(), p, unix.LOCK_EX)
	if err != nil {
		t.Fatal(err)
	}
	again()
}

// TestCollectDropsDeadLeases: without a cap nothing is removed, but the lease of a store
// whose Root is gone (a terminated cell) is dropped, so leases do not pile up.
func TestCollectDropsDeadLeases(t *testing.T) {
	reg := startRegistry(t)
	push(t, reg.Host(), "library/busybox:latest", busybox(t, imagebuild.Options{}))
	shared := t.TempDir()
	goneRoot, liveRoot := t.TempDir(), t.TempDir()
	gone := newStore(t, Config{Root: goneRoot, Shared: shared, DefaultRegistry: reg.Host(), Insecure: []string{reg.Host()}})
	live := newStore(t, Config{Root: liveRoot, Shared: shared, DefaultRegistry: reg.Host(), Insecure: []string{reg.Host()}})
	img, err := gone.Pull(context.Background(), "busybox", nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := live.Pull(context.Background(), "busybox", nil); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(goneRoot); err != nil {
		t.Fatal(err)
	}
	if err := live.Collect(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(gone.leaseFile); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("dead lease kept: %v", err)
	}
	if _, err := os.Stat(live.leaseFile); err != nil {
		t.Errorf("live lease dropped: %v", err)
	}
	if _, err := os.Stat(img.RootFS); err != nil {
		t.Errorf("image removed without a cap: %v", err)
	}
}
