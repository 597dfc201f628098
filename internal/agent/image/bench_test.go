package image

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/kip-dev/kip/internal/imagebuild"
)

// BenchmarkPullUnpack measures pulling and unpacking the busybox image into an empty store
// from an in-process registry on loopback, and reports p50/p99 in milliseconds. The "disk"
// case unpacks under the test's temporary directory, "tmpfs" under /dev/shm: creating the
// ~280 entries of the image dominates on a slow disk.
func BenchmarkPullUnpack(b *testing.B) {
	reg := startRegistry(b)
	push(b, reg.Host(), "library/busybox:latest", busybox(b, imagebuild.Options{}))
	roots := map[string]string{"disk": b.TempDir()}
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
		shm, err := os.MkdirTemp("/dev/shm", "kip-image-bench-")
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { os.RemoveAll(shm) })
		roots["tmpfs"] = shm
	}
	for _, kind := range []string{"disk", "tmpfs"} {
		base, ok := roots[kind]
		if !ok {
			continue
		}
		b.Run(kind, func(b *testing.B) {
			var durs []time.Duration
			for i := 0; b.Loop(); i++ {
				root := filepath.Join(base, fmt.Sprint(i))
				store := newStore(b, Config{Root: root, DefaultRegistry: reg.Host(), Insecure: []string{reg.Host()}})
				start := time.Now()
				if _, err := store.Pull(context.Background(), "busybox", nil); err != nil {
					b.Fatal(err)
				}
				durs = append(durs, time.Since(start))
				b.StopTimer()
				os.RemoveAll(root)
				b.StartTimer()
			}
			reportPercentiles(b, durs)
		})
	}
}

// BenchmarkPullCached measures a pull whose image is already unpacked (manifest fetch only).
func BenchmarkPullCached(b *testing.B) {
	reg := startRegistry(b)
	push(b, reg.Host(), "library/busybox:latest", busybox(b, imagebuild.Options{}))
	store := newStore(b, Config{DefaultRegistry: reg.Host(), Insecure: []string{reg.Host()}})
	if _, err := store.Pull(context.Background(), "busybox", nil); err != nil {
		b.Fatal(err)
	}
	var durs []time.Duration
	for b.Loop() {
		start := time.Now()
		if _, err := store.Pull(context.Background(), "busybox", nil); err != nil {
			b.Fatal(err)
		}
		durs = append(durs, time.Since(start))
	}
	reportPercentiles(b, durs)
}

func reportPercentiles(b *testing.B, durs []time.Duration) {
	if len(durs) == 0 {
		return
	}
	slices.Sort(durs)
	pct := func(p float64) float64 {
		return float64(durs[int(p*float64(len(durs)-1))].Microseconds()) / 1000
	}
	b.ReportMetric(pct(0.50), "p50-ms")
	b.ReportMetric(pct(0.99), "p99-ms")
}
