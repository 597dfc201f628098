package pod

import (
	"math"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"
)

// BackOff configures restart and image-pull back-off; kubelet uses 10s doubling to 5m,
// starting over after a container has run 10m.
type BackOff struct {
	Base, Max, Reset time.Duration
}

// DefaultBackOff is kubelet's.
var DefaultBackOff = BackOff{Base: 10 * time.Second, Max: 5 * time.Minute, Reset: 10 * time.Minute}

// errImagePullShown is how long ErrImagePull shows before ImagePullBackOff.
const errImagePullShown = time.Second

// backOff is one container's restart (or image-pull) back-off: Base, doubling up to Max,
// starting over once a run has lasted Reset. The delays come from a wait.Backoff; the waiting
// is the caller's, on the pod's clock.
type backOff struct {
	first, cur wait.Backoff
	reset      time.Duration
	// armed is set once a crashed container was restarted at once; until a run of Reset or
	// longer clears it, every restart waits.
	armed bool
}

func newBackOff(c BackOff) backOff {
	// Steps never runs out: reaching the cap ends the doubling, not the back-off.
	b := wait.Backoff{Duration: min(c.Base, c.Max), Factor: 2, Cap: c.Max, Steps: math.MaxInt32}
	return backOff{first: b, cur: b, reset: c.Reset}
}

// next returns the delay before the next run, given how long the last one ran.
func (b *backOff) next(ranFor time.Duration) time.Duration {
	if ranFor >= b.reset {
		b.cur = b.first
	}
	return b.cur.Step()
}

// nextRestart returns the delay before restarting a container that exited after running
// ranFor. As kubelet, the first restart is immediate (kubelet backs off only a container that
// exits again within its back-off window), and so is the first one after a run of Reset or
// longer; later ones wait next's delays.
func (b *backOff) nextRestart(ranFor time.Duration) time.Duration {
	if ranFor >= b.reset {
		b.cur, b.armed = b.first, false
	}
	if !b.armed {
		b.armed = true
		return 0
	}
	return b.cur.Step()
}
