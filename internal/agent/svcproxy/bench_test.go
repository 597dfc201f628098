package svcproxy_test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/kip-dev/kip/internal/agent/svcproxy"
	"github.com/kip-dev/kip/internal/cellapi"
	"github.com/kip-dev/kip/internal/testenv"
)

// bigTable is n Services of 2 ports (TCP 80 and UDP 53) with 3 endpoints each.
func bigTable(n int) []cellapi.Service {
	out := make([]cellapi.Service, n)
	for i := range out {
		ip := fmt.Sprintf("10.96.%d.%d", i/250, i%250+1)
		var eps []string
		for j := range 3 {
			eps = append(eps, fmt.Sprintf("10.%d.%d.%d", 100+j, i/250, i%250+1))
		}
		out[i] = svc("bench", fmt.Sprintf("svc-%04d", i), []string{ip},
			tcpPort("http", 80, 8080, eps...), svcPort("dns", "UDP", 53, 5353, eps...))
	}
	return out
}

// BenchmarkServicesApply programs 1000 Services × 2 ports × 3 endpoints into a throwaway
// network namespace: "full" times a whole Replace (over the previous one), "delta" an Update
// that moves one Service's endpoints. Each run takes a fixed number of samples and reports
// their p50/p99 (self-sized: run it with -benchtime 1x).
func BenchmarkServicesApply(b *testing.B) {
	testenv.RequireNetns(b)
	pod := newNS(b)
	table := bigTable(1000)
	ctx := context.Background()
	b.Run("full", func(b *testing.B) {
		p := svcproxy.New(svcproxy.InNetns(int(pod)))
		for range b.N {
			var durs []time.Duration
			for range 10 {
				start := time.Now()
				if err := p.Replace(ctx, table); err != nil {
					b.Fatal(err)
				}
				durs = append(durs, time.Since(start))
			}
			report(b, durs)
		}
	})
	b.Run("delta", func(b *testing.B) {
		p := svcproxy.New(svcproxy.InNetns(int(pod)))
		if err := p.Replace(ctx, table); err != nil {
			b.Fatal(err)
		}
		for range b.N {
			var durs []time.Duration
			for i := range 100 {
				s := table[i*7%len(table)]
				s.Ports = slices.Clone(s.Ports)
				s.Ports[0] = tcpPort("http", 80, 8080, fmt.Sprintf("10.200.0.%d", i%250+1), "10.200.1.1", "10.200.2.1")
				start := time.Now()
				if err := p.Update(ctx, []cellapi.Service{s}, nil); err != nil {
					b.Fatal(err)
				}
				durs = append(durs, time.Since(start))
			}
			report(b, durs)
		}
	})
}

func report(b *testing.B, durs []time.Duration) {
	slices.Sort(durs)
	pct := func(p float64) time.Duration { return durs[int(p*float64(len(durs)-1))] }
	b.ReportMetric(float64(pct(0.50).Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(pct(0.99).Microseconds())/1000, "p99-ms")
}
