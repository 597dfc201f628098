package local

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kip-dev/kip/internal/cloud"
)

// benchCells is the least number of cells a BenchmarkBoot run boots.
const benchCells = 50

// BenchmarkBoot measures cell boot: Launch until the agent's health check answers 200, over
// max(b.N, 50) cells kept alive together, and reports p50/p99 of it, p50 of Terminate, and
// Launch alone (launch-p50-ms: until the agent process runs in its cell; launch-cpu-ms: the
// CPU time this process spent per Launch, which a loaded machine does not inflate), and the
// agent's memory (proportional set size and resident set, averaged over the cells).
//
//	standin:  the test's stand-in agent (plain HTTP /healthz)
//	kip-cell: the real agent, health over mutual TLS
func BenchmarkBoot(b *testing.B) {
	b.Run("standin", func(b *testing.B) {
		e := newEnv(b)
		benchBoot(b, e, func(in *cloud.Instance) { e.waitHealthy(in.PrivateIP) }, nil)
	})
	b.Run("kip-cell", func(b *testing.B) {
		e := newEnv(b)
		e.cfg.AgentCommand = []string{kipCellBinary(b)}
		e.cfg.AgentEnv = nil
		p := newKipCellPKI(b)
		benchBoot(b, e, func(in *cloud.Instance) {
			c := p.client(b, in.CellID, in.PrivateIP)
			defer c.Close()
			waitAgentHealthy(b, c)
		}, func(cellID string) []byte { return p.bootstrap(b, cellID) })
	})
}

func benchBoot(b *testing.B, e *env, healthy func(*cloud.Instance), bootstrap func(string) []byte) {
	ctx := context.Background()
	c := e.cloud()
	n := max(b.N, benchCells)
	tag := randTag(b)
	specs := make([]cloud.LaunchSpec, n)
	for i := range specs {
		id := fmt.Sprintf("bench-%s-%d", tag, i)
		specs[i] = cloud.LaunchSpec{CellID: id, ClientToken: id, InstanceType: "local.nano", BootstrapData: []byte("{}")}
		if bootstrap != nil {
			specs[i].BootstrapData = bootstrap(id)
		}
	}
	boots := make([]time.Duration, 0, n)
	launches := make([]time.Duration, 0, n)
	var launchCPU time.Duration
	insts := make([]*cloud.Instance, 0, n)
	b.ResetTimer()
	for _, spec := range specs {
		start := time.Now()
		cpu0 := cpuTime()
		in, err := c.Launch(ctx, spec)
		if err != nil {
			b.Fatalf("Launch(%s): %v", spec.CellID, err)
		}
		launches = append(launches, time.Since(start))
		launchCPU += cpuTime() - cpu0
		healthy(in)
		boots = append(boots, time.Since(start))
		insts = append(insts, in)
	}
	b.StopTimer()

	var pss, rss float64
	for _, in := range insts {
		r, err := e.backend().store.read(in.ID)
		if err != nil {
			b.Fatal(err)
		}
		p, r2 := memoryKiB(r.meta.PID)
		pss += p
		rss += r2
	}
	terms := make([]time.Duration, 0, n)
	for _, in := range insts {
		start := time.Now()
		if err := c.Terminate(ctx, in.ID); err != nil {
			b.Fatalf("Terminate(%s): %v", in.ID, err)
		}
		terms = append(terms, time.Since(start))
	}
	b.ReportMetric(float64(n), "cells")
	b.ReportMetric(ms(percentile(boots, 50)), "boot-p50-ms")
	b.ReportMetric(ms(percentile(boots, 99)), "boot-p99-ms")
	b.ReportMetric(ms(percentile(launches, 50)), "launch-p50-ms")
	b.ReportMetric(ms(launchCPU)/float64(n), "launch-cpu-ms")
	b.ReportMetric(ms(percentile(terms, 50)), "terminate-p50-ms")
	b.ReportMetric(pss/float64(n)/1024, "agent-pss-MiB")
	b.ReportMetric(rss/float64(n)/1024, "agent-rss-MiB")
}

// cpuTime is this process's user+system CPU time (children excluded).
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// percentile returns the p-th percentile (nearest rank) of ds.
func percentile(ds []time.Duration, p int) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	i := (len(s)*p + 99) / 100
	return s[max(i-1, 0)]
}

// memoryKiB returns the Pss and Rss of pid in KiB from /proc/<pid>/smaps_rollup.
func memoryKiB(pid int) (pss, rss float64) {
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/smaps_rollup")
	if err != nil {
		return 0, 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 {
			continue
		}
		v, _ := strconv.ParseFloat(fields[1], 64)
		switch fields[0] {
		case "Pss:":
			pss = v
		case "Rss:":
			rss = v
		}
	}
	return pss, rss
}
