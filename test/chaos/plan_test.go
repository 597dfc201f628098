package chaos

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"time"
)

// Fault kinds, as the tally names them.
const (
	FaultKipKill        = "kip-kill"
	FaultAgentKill      = "agent-kill"
	FaultPartitionShort = "partition-short"
	FaultPartitionLong  = "partition-long"
	FaultNetnsDelete    = "netns-delete"
	FaultCloud          = "cloud-faults"
)

// lostTimeout is every chaos pod's pod.kip.dev/lost-timeout: short, so a lost cell fails its
// pod within seconds, and long enough that a short partition (below) never reaches it.
const lostTimeout = 8 * time.Second

// Partition lengths: a short one heals well before lostTimeout, a long one well after.
const (
	shortPartitionMin, shortPartitionMax = 1 * time.Second, 4 * time.Second
	longPartitionMin, longPartitionMax   = 14 * time.Second, 20 * time.Second
)

// Plan is one round: what it creates and which faults it injects, all drawn from (seed, round)
// alone, so `CHAOS_SEED=<seed> CHAOS_ONLY=<round>` replays the same plan.
type Plan struct {
	Round int
	// The burst: bare long-running pods (sleep), bare short pods (exit with ShortExit[i]),
	// Deployments (replicas each) and Jobs (completions each).
	Long        int
	ShortExit   []int
	Deployments []int
	Jobs        []int
	// KipKill: kip is SIGKILLed KillAfter after the burst starts and restarted DownFor later.
	KipKill            bool
	KillAfter, DownFor time.Duration
	// Targeted faults, one per bare long pod (long-0, long-1, ...), in order.
	Targets []Target
	// Cloud: kip runs this round with cloud.faults (CloudSeed, the rates below).
	Cloud     bool
	CloudSeed uint64
}

// Target is a fault aimed at one bare long-running pod once it is Running and Ready.
type Target struct {
	Pod   string
	Fault string
	// For partitions: how long the cell stays cut off.
	For time.Duration
	// After: how long after the pods are up the fault strikes.
	After time.Duration
}

// Cloud fault rates of a round with Cloud set (cloud.faults).
const (
	cloudThrottleRate     = 0.1
	cloudServerErrorRate  = 0.1
	cloudCapacityRate     = 0.1
	cloudLostResponseRate = 0.1
)

func between(r *rand.Rand, lo, hi time.Duration) time.Duration {
	return lo + time.Duration(r.Int64N(int64(hi-lo)+1)).Round(100*time.Millisecond)
}

// NewPlan draws round's plan from seed.
func NewPlan(seed uint64, round int) Plan {
	r := rand.New(rand.NewPCG(seed, uint64(round)))
	p := Plan{Round: round}
	// Faults first, so the burst can make room for their targets.
	targeted := []string{FaultAgentKill, FaultPartitionShort, FaultPartitionLong, FaultNetnsDelete}
	for _, f := range targeted {
		if r.IntN(3) == 0 { // each targeted fault in about a third of the rounds
			t := Target{Fault: f, After: between(r, 0, 3*time.Second)}
			switch f {
			case FaultPartitionShort:
				t.For = between(r, shortPartitionMin, shortPartitionMax)
			case FaultPartitionLong:
				t.For = between(r, longPartitionMin, longPartitionMax)
			}
			p.Targets = append(p.Targets, t)
		}
	}
	p.KipKill = r.IntN(2) == 0
	p.KillAfter = between(r, 0, 8*time.Second)
	p.DownFor = between(r, 0, 3*time.Second)
	p.Cloud = r.IntN(3) == 0
	p.CloudSeed = r.Uint64()

	// The burst: up to 20 pods in all.
	budget := 1 + r.IntN(20)
	p.Long = len(p.Targets)
	if p.Long < 1 {
		p.Long = 1
	}
	if extra := r.IntN(3); p.Long+extra <= budget {
		p.Long += extra
	}
	budget -= p.Long
	for budget > 0 {
		switch r.IntN(3) {
		case 0:
			p.ShortExit = append(p.ShortExit, []int{0, 0, 3}[r.IntN(3)])
			budget--
		case 1:
			n := min(1+r.IntN(3), budget)
			p.Deployments = append(p.Deployments, n)
			budget -= n
		case 2:
			n := min(1+r.IntN(3), budget)
			p.Jobs = append(p.Jobs, n)
			budget -= n
		}
	}
	for i := range p.Targets {
		p.Targets[i].Pod = fmt.Sprintf("long-%d", i)
	}
	return p
}

// Pods is how many pods the burst makes.
func (p Plan) Pods() int {
	n := p.Long + len(p.ShortExit)
	for _, d := range p.Deployments {
		n += d
	}
	for _, j := range p.Jobs {
		n += j
	}
	return n
}

// Faults lists the faults the round injects, by kind.
func (p Plan) Faults() []string {
	var fs []string
	if p.KipKill {
		fs = append(fs, FaultKipKill)
	}
	for _, t := range p.Targets {
		fs = append(fs, t.Fault)
	}
	if p.Cloud {
		fs = append(fs, FaultCloud)
	}
	return fs
}

func (p Plan) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "round %d: %d pods (long %d, short exits %v, deployments %v, jobs %v)", p.Round, p.Pods(), p.Long, p.ShortExit, p.Deployments, p.Jobs)
	if p.KipKill {
		fmt.Fprintf(&b, "; kip SIGKILLed %v into the burst, down %v", p.KillAfter, p.DownFor)
	}
	for _, t := range p.Targets {
		fmt.Fprintf(&b, "; %s on %s after %v", t.Fault, t.Pod, t.After)
		if t.For > 0 {
			fmt.Fprintf(&b, " for %v", t.For)
		}
	}
	if p.Cloud {
		fmt.Fprintf(&b, "; cloud faults (seed %d: throttle %v, 5xx %v, capacity %v, lost response %v)", p.CloudSeed,
			cloudThrottleRate, cloudServerErrorRate, cloudCapacityRate, cloudLostResponseRate)
	}
	return b.String()
}
