package chaos

import (
	"reflect"
	"testing"
)

// TestPlans: a round's plan is a function of (seed, round) alone, its burst has 1 to 20 pods,
// every targeted fault has a pod of its own, partitions fall on the right side of the lost
// timeout, and over many rounds every fault kind and object kind is drawn.
func TestPlans(t *testing.T) {
	seen := map[string]int{}
	var deployments, jobs, shorts int
	for seed := uint64(0); seed < 20; seed++ {
		for round := range 50 {
			p := NewPlan(seed, round)
			if again := NewPlan(seed, round); !reflect.DeepEqual(p, again) {
				t.Fatalf("seed %d round %d: two plans %v and %v", seed, round, p, again)
			}
			if n := p.Pods(); n < 1 || n > 20 {
				t.Errorf("%v: %d pods", p, n)
			}
			if len(p.Targets) > p.Long {
				t.Errorf("%v: %d targets for %d long pods", p, len(p.Targets), p.Long)
			}
			names := map[string]bool{}
			for _, tg := range p.Targets {
				if names[tg.Pod] {
					t.Errorf("%v: two faults on %s", p, tg.Pod)
				}
				names[tg.Pod] = true
				switch tg.Fault {
				case FaultPartitionShort:
					if tg.For <= 0 || tg.For > lostTimeout/2 {
						t.Errorf("%v: short partition of %v against a lost timeout of %v", p, tg.For, lostTimeout)
					}
				case FaultPartitionLong:
					if tg.For < lostTimeout+5e9 {
						t.Errorf("%v: long partition of %v against a lost timeout of %v", p, tg.For, lostTimeout)
					}
				}
			}
			for _, f := range p.Faults() {
				seen[f]++
			}
			deployments += len(p.Deployments)
			jobs += len(p.Jobs)
			shorts += len(p.ShortExit)
		}
	}
	for _, f := range []string{FaultKipKill, FaultAgentKill, FaultPartitionShort, FaultPartitionLong, FaultNetnsDelete, FaultCloud} {
		if seen[f] == 0 {
			t.Errorf("fault %s never drawn in 1000 plans", f)
		}
	}
	if deployments == 0 || jobs == 0 || shorts == 0 {
		t.Errorf("1000 plans drew %d deployments, %d jobs, %d short pods", deployments, jobs, shorts)
	}
	if a, b := NewPlan(1, 0), NewPlan(2, 0); reflect.DeepEqual(a, b) {
		t.Errorf("seeds 1 and 2 give the same round 0: %v", a)
	}
}
