package aws_test

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/kip-dev/kip/internal/cloud"
	kipaws "github.com/kip-dev/kip/internal/cloud/aws"
	"github.com/kip-dev/kip/internal/cloud/aws/ec2fake"
)

// BenchmarkEC2CallsPerPod runs whole pod lifecycles (launch, wait for running by Describe,
// terminate) for pods arriving in waves of 100 and reports the EC2 calls each pod cost.
func BenchmarkEC2CallsPerPod(b *testing.B) {
	e := newEnv(b, ec2fake.Options{PendingDelay: 30 * time.Millisecond})
	limits := kipaws.DefaultLimits().Scaled(1, 1000) // measure calls, not EC2's 2 launches/s
	be := e.backend(b, func(c *kipaws.Config) {
		c.Limits = &limits
		c.PollInterval = 20 * time.Millisecond
		c.TerminateWindow = 20 * time.Millisecond
	})
	ctx := context.Background()
	before := e.fake.CallCounts()
	const wave = 100
	pods := 0
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		var wg sync.WaitGroup
		for j := range wave {
			wg.Add(1)
			go func() {
				defer wg.Done()
				lifecycle(b, ctx, be, fmt.Sprintf("b%d-%d", i, j))
			}()
		}
		wg.Wait()
		pods += wave
	}
	b.StopTimer()
	after := e.fake.CallCounts()
	total := 0
	var per []string
	for a, n := range after {
		if d := n - before[a]; d > 0 {
			total += d
			per = append(per, fmt.Sprintf("%s %.3f", a, float64(d)/float64(pods)))
		}
	}
	sort.Strings(per)
	b.ReportMetric(float64(total)/float64(pods), "ec2-calls/pod")
	b.Logf("%d pods: %.3f EC2 calls per pod (%v)", pods, float64(total)/float64(pods), per)
}

func lifecycle(b *testing.B, ctx context.Context, be *kipaws.Backend, cell string) {
	inst, err := be.Launch(ctx, spec(cell))
	if err != nil {
		b.Error(err)
		return
	}
	deadline := time.Now().Add(10 * time.Second)
	for inst.State != cloud.StateRunning {
		if time.Now().After(deadline) {
			b.Errorf("cell %s not running after 10s", cell)
			return
		}
		time.Sleep(5 * time.Millisecond) // the cells layer's status poll; EC2 is asked once per PollInterval
		if inst, err = be.Describe(ctx, inst.ID); err != nil {
			b.Error(err)
			return
		}
	}
	if err := be.Terminate(ctx, inst.ID); err != nil {
		b.Error(err)
	}
}
