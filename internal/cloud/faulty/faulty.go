// Package faulty wraps a cloud.Cloud and makes some of its calls fail on purpose, at random
// but reproducibly (from a seed): throttling, server errors (a 5xx), insufficient capacity,
// and lost responses (the call is made and succeeds, but its answer never arrives). It is a
// testing aid for `make chaos` (docs/chaos.md), switched on only by an explicit cloud.faults
// block in kip's config; nothing enables it by default.
//
// Only the per-pod calls are faulted: Launch (all four kinds; capacity only here), Describe
// (throttling and server errors) and Terminate (throttling, server errors, lost responses).
// Name, InstanceTypes and List pass through: kip reads them once at start, where an error
// stops kip for its supervisor to restart it, which is not what these faults are about.
package faulty

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"

	"github.com/kip-dev/kip/internal/cloud"
	"github.com/kip-dev/kip/internal/instancetype"
)

// Config sets how often each fault strikes, as a fraction of the calls it applies to. The
// rates of one call are drawn from one number, so they must add up to at most 1.
type Config struct {
	// Seed makes the sequence of faults reproducible for the same sequence of calls.
	Seed uint64
	// ThrottleRate fails Launch, Describe and Terminate with a Throttled error before the
	// call reaches the backend.
	ThrottleRate float64
	// ServerErrorRate fails Launch, Describe and Terminate with an unclassified error (an
	// HTTP 500 from the cloud's API) before the call reaches the backend.
	ServerErrorRate float64
	// CapacityErrorRate fails Launch with an InsufficientCapacity error, except the retry of
	// a launch that already reached the backend: a cloud answers a repeated client token
	// with the first launch's result (EC2's idempotency), never with a capacity error.
	CapacityErrorRate float64
	// LostResponseRate makes Launch and Terminate reach the backend (the instance is
	// launched, or terminated) and then returns an unclassified error, as when the answer is
	// lost on the way back: the caller must retry idempotently.
	LostResponseRate float64
}

// Validate reports the first rate outside [0, 1], or rates that add up to more than 1.
func (c Config) Validate() error {
	sum := 0.0
	for _, r := range []struct {
		name string
		v    float64
	}{{"throttleRate", c.ThrottleRate}, {"serverErrorRate", c.ServerErrorRate}, {"capacityErrorRate", c.CapacityErrorRate}, {"lostResponseRate", c.LostResponseRate}} {
		if r.v < 0 || r.v > 1 || r.v != r.v {
			return fmt.Errorf("%s: %v is not a fraction between 0 and 1", r.name, r.v)
		}
		sum += r.v
	}
	if sum > 1 {
		return fmt.Errorf("the rates add up to %v, more than 1", sum)
	}
	return nil
}

// Kind is a fault the wrapper injected.
type Kind string

const (
	Throttle     Kind = "throttle"
	ServerError  Kind = "server-error"
	Capacity     Kind = "capacity"
	LostResponse Kind = "lost-response"
)

// Cloud is a cloud.Cloud whose calls fail as its Config says.
type Cloud struct {
	inner cloud.Cloud
	cfg   Config
	// onFault, when set, hears of each fault as it is injected (kip logs them).
	onFault func(op string, k Kind)

	mu       sync.Mutex
	rng      *rand.Rand
	injected map[Kind]int
	// made holds the client tokens of launches that reached the backend.
	made map[string]bool
}

// New wraps inner. onFault, if not nil, is called for every injected fault with the call's
// name ("Launch") and the fault.
func New(inner cloud.Cloud, cfg Config, onFault func(op string, k Kind)) (*Cloud, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("cloud faults: %w", err)
	}
	return &Cloud{inner: inner, cfg: cfg, onFault: onFault, rng: rand.New(rand.NewPCG(cfg.Seed, cfg.Seed^0x9e3779b97f4a7c15)), injected: map[Kind]int{}, made: map[string]bool{}}, nil
}

// Injected returns how many faults of each kind were injected so far.
func (c *Cloud) Injected() map[Kind]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[Kind]int, len(c.injected))
	for k, n := range c.injected {
		out[k] = n
	}
	return out
}

// draw picks the fault for one call among kinds (in this order of the unit interval), or "".
func (c *Cloud) draw(op string, kinds ...Kind) Kind {
	c.mu.Lock()
	x := c.rng.Float64()
	var hit Kind
	for _, k := range kinds {
		r := c.rate(k)
		if x < r {
			hit = k
			break
		}
		x -= r
	}
	if hit != "" {
		c.injected[hit]++
	}
	c.mu.Unlock()
	if hit != "" && c.onFault != nil {
		c.onFault(op, hit)
	}
	return hit
}

func (c *Cloud) rate(k Kind) float64 {
	switch k {
	case Throttle:
		return c.cfg.ThrottleRate
	case ServerError:
		return c.cfg.ServerErrorRate
	case Capacity:
		return c.cfg.CapacityErrorRate
	case LostResponse:
		return c.cfg.LostResponseRate
	}
	return 0
}

// before returns the error a call fails with before reaching the backend, or nil.
func before(op string, k Kind) error {
	switch k {
	case Throttle:
		return cloud.Throttled("%s: injected fault: request limit exceeded", op)
	case ServerError:
		return fmt.Errorf("%s: injected fault: 500 InternalError: the cloud's API failed", op)
	case Capacity:
		return cloud.InsufficientCapacity("%s: injected fault: insufficient capacity", op)
	}
	return nil
}

func lost(op string) error {
	return fmt.Errorf("%s: injected fault: the response was lost (the call was made)", op)
}

// Name implements cloud.Cloud.
func (c *Cloud) Name() string { return c.inner.Name() }

// InstanceTypes implements cloud.Cloud; never faulted.
func (c *Cloud) InstanceTypes(ctx context.Context) ([]instancetype.InstanceType, error) {
	return c.inner.InstanceTypes(ctx)
}

// Launch implements cloud.Cloud.
func (c *Cloud) Launch(ctx context.Context, spec cloud.LaunchSpec) (*cloud.Instance, error) {
	kinds := []Kind{Throttle, ServerError, Capacity, LostResponse}
	c.mu.Lock()
	if spec.ClientToken != "" && c.made[spec.ClientToken] {
		kinds = []Kind{Throttle, ServerError, LostResponse}
	}
	c.mu.Unlock()
	k := c.draw("Launch", kinds...)
	if err := before("Launch", k); err != nil {
		return nil, err
	}
	inst, err := c.inner.Launch(ctx, spec)
	if err == nil && spec.ClientToken != "" {
		c.mu.Lock()
		c.made[spec.ClientToken] = true
		c.mu.Unlock()
	}
	if err == nil && k == LostResponse {
		return nil, lost("Launch")
	}
	return inst, err
}

// Describe implements cloud.Cloud.
func (c *Cloud) Describe(ctx context.Context, id string) (*cloud.Instance, error) {
	if err := before("Describe", c.draw("Describe", Throttle, ServerError)); err != nil {
		return nil, err
	}
	return c.inner.Describe(ctx, id)
}

// List implements cloud.Cloud; never faulted.
func (c *Cloud) List(ctx context.Context, tags map[string]string) ([]*cloud.Instance, error) {
	return c.inner.List(ctx, tags)
}

// Terminate implements cloud.Cloud.
func (c *Cloud) Terminate(ctx context.Context, id string) error {
	k := c.draw("Terminate", Throttle, ServerError, LostResponse)
	if err := before("Terminate", k); err != nil {
		return err
	}
	err := c.inner.Terminate(ctx, id)
	if err == nil && k == LostResponse {
		return lost("Terminate")
	}
	return err
}

// SetTags implements cloud.Tagger when the wrapped cloud does; never faulted.
func (c *Cloud) SetTags(ctx context.Context, id string, tags map[string]string) error {
	t, ok := c.inner.(cloud.Tagger)
	if !ok {
		return fmt.Errorf("tagging instance %s: the %s backend cannot tag live instances", id, c.inner.Name())
	}
	return t.SetTags(ctx, id, tags)
}
