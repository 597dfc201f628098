package selector

import (
	"sort"
	"syscall"
	"testing"
	"time"

	"github.com/kip-dev/kip/internal/instancetype"
)

// cpuTime is the CPU time this process has used, all threads (GC included).
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkSelect measures selections per second over the full us-east-1 catalog with a
// prepared Index (target: at least 100,000/s), and reports per-selection p50/p99 latency.
// selections/cpu-s divides by the CPU time the process used rather than wall time, which on
// a shared machine is what the selector's cost is; selections/s is wall time.
func BenchmarkSelect(b *testing.B) {
	types, err := instancetype.Load("aws", "us-east-1")
	if err != nil {
		b.Fatal(err)
	}
	ix := NewIndex(types)
	shapes := genShapes(11, 1024)
	lat := make([]time.Duration, 0, b.N)
	b.ReportAllocs()
	b.ResetTimer()
	start, cpu0 := time.Now(), cpuTime()
	for i := 0; i < b.N; i++ {
		s := shapes[i%len(shapes)]
		t0 := time.Now()
		_, _ = ix.Select(s.pod, s.opts)
		lat = append(lat, time.Since(t0))
	}
	elapsed, cpu := time.Since(start), cpuTime()-cpu0
	b.StopTimer()
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "selections/s")
	if cpu > 0 {
		b.ReportMetric(float64(b.N)/cpu.Seconds(), "selections/cpu-s")
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds()), "p50-ns")
	b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds()), "p99-ns")
}

// BenchmarkSelectUnprepared measures Select building an Index per call, as a caller without
// one pays.
func BenchmarkSelectUnprepared(b *testing.B) {
	types, err := instancetype.Load("aws", "us-east-1")
	if err != nil {
		b.Fatal(err)
	}
	shapes := genShapes(11, 1024)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		s := shapes[i%len(shapes)]
		_, _ = Select(s.pod, types, s.opts)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "selections/s")
}

// BenchmarkNewIndex measures preparing the us-east-1 catalog.
func BenchmarkNewIndex(b *testing.B) {
	types, err := instancetype.Load("aws", "us-east-1")
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		NewIndex(types)
	}
}
