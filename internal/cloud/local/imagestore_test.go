package local

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/kip-dev/kip/internal/registry"
)

// TestCellsShareImageStore: two cells (real network namespaces and cgroups, agents in the
// host's mount namespace) pull one image at once through the host's image store and get one
// unpacked copy, in Config.ImageStore; each agent's own directory holds no image. Teardown
// removes the store (the leak check finds the state directory empty).
func TestCellsShareImageStore(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	reg, err := registry.Start(e.backend().BridgeIP().String() + ":0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = reg.Close() })
	if err := registry.SeedBusybox(ctx, reg.Host(), reg.Auth(), "library/shared"); err != nil {
		t.Fatal(err)
	}
	c := e.cloud()
	tag := randTag(t)
	var wg sync.WaitGroup
	results := make([]pullResult, 2)
	dirs := make([]string, 2)
	for i := range results {
		in := e.launch(c, fmt.Sprintf("share-%s-%d", tag, i), "local.nano")
		dirs[i] = filepath.Join(e.cfg.StateDir, "cells", in.ID, "agent")
		wg.Go(func() {
			if err := getJSONTimeout(in.PrivateIP, "/pull?shared=1&ref="+reg.Host()+"/library/shared&insecure="+reg.Host(), &results[i]); err != nil {
				results[i].Err = err.Error()
			}
		})
	}
	wg.Wait()
	for i, r := range results {
		if r.Err != "" {
			t.Fatalf("cell %d: pull: %s", i, r.Err)
		}
	}
	if results[0].RootFS != results[1].RootFS {
		t.Errorf("the cells unpacked into %s and %s, want one copy", results[0].RootFS, results[1].RootFS)
	}
	store := filepath.Join(e.cfg.StateDir, "images") // the default ImageStore
	if rel, err := filepath.Rel(store, results[0].RootFS); err != nil || !filepath.IsLocal(rel) {
		t.Errorf("rootfs %s is not in the image store %s", results[0].RootFS, store)
	}
	if ents, err := os.ReadDir(filepath.Join(store, "images")); err != nil || len(ents) != 1 {
		t.Errorf("the image store holds %d unpacked images (%v), want 1", len(ents), err)
	}
	for _, d := range dirs {
		if ents, _ := os.ReadDir(filepath.Join(d, "images", "images")); len(ents) != 0 {
			t.Errorf("agent directory %s holds %d images of its own", d, len(ents))
		}
	}
}
