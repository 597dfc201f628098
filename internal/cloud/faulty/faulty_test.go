package faulty

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/kip-dev/kip/internal/cloud"
	"github.com/kip-dev/kip/internal/cloud/fake"
)

func launchSpec(n int) cloud.LaunchSpec {
	id := fmt.Sprintf("cell-%d", n)
	return cloud.LaunchSpec{CellID: id, ClientToken: id, InstanceType: "fake.small", Tags: map[string]string{cloud.TagCluster: "t"}}
}

func TestEachFault(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name string
		cfg  Config
		// launched: whether the instance exists after the failed Launch.
		launched bool
		check    func(error) bool
	}{
		{"throttle", Config{ThrottleRate: 1}, false, cloud.IsThrottled},
		{"server error", Config{ServerErrorRate: 1}, false, func(err error) bool {
			return cloud.KindOf(err) == cloud.KindUnknown && strings.Contains(err.Error(), "500")
		}},
		{"capacity", Config{CapacityErrorRate: 1}, false, cloud.IsInsufficientCapacity},
		{"lost response", Config{LostResponseRate: 1}, true, func(err error) bool {
			return cloud.KindOf(err) == cloud.KindUnknown && strings.Contains(err.Error(), "lost")
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			inner := fake.New()
			var heard []string
			c, err := New(inner, tt.cfg, func(op string, k Kind) { heard = append(heard, op+" "+string(k)) })
			if err != nil {
				t.Fatal(err)
			}
			_, err = c.Launch(ctx, launchSpec(1))
			if err == nil || !tt.check(err) {
				t.Fatalf("Launch: %v (kind %v)", err, cloud.KindOf(err))
			}
			if got := len(inner.Instances()); (got == 1) != tt.launched {
				t.Errorf("%d instances after the failed Launch, want launched=%v", got, tt.launched)
			}
			if len(heard) != 1 || c.Injected()[Kind(strings.Fields(heard[0])[1])] != 1 {
				t.Errorf("heard %v, injected %v", heard, c.Injected())
			}
		})
	}
}

// TestLostLaunchIsIdempotent: the retry of a Launch whose answer was lost gets the same
// instance back (the backend's client token), so no second cell is made.
func TestLostLaunchIsIdempotent(t *testing.T) {
	ctx := context.Background()
	inner := fake.New()
	lossy, err := New(inner, Config{LostResponseRate: 1}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := lossy.Launch(ctx, launchSpec(1)); err == nil {
		t.Fatal("Launch succeeded, want the lost response")
	}
	clean, _ := New(inner, Config{}, nil)
	inst, err := clean.Launch(ctx, launchSpec(1))
	if err != nil {
		t.Fatal(err)
	}
	if all := inner.Instances(); len(all) != 1 || all[0].ID != inst.ID {
		t.Errorf("instances %v, want only %s", all, inst.ID)
	}
	// Terminate's lost response terminated it all the same.
	if err := lossy.Terminate(ctx, inst.ID); err == nil {
		t.Fatal("Terminate succeeded, want the lost response")
	}
	if got, err := inner.Describe(ctx, inst.ID); err == nil && got.State != cloud.StateTerminated {
		t.Errorf("instance %s is %s after the lost Terminate", inst.ID, got.State)
	}
}

// TestNoCapacityErrorForAMadeLaunch: once a launch reached the backend, its retries (same
// client token) may be throttled or fail, but never lack capacity: a cloud answers a repeated
// token with the first launch's result, and a capacity error would make the caller launch
// another type beside the instance it already has.
func TestNoCapacityErrorForAMadeLaunch(t *testing.T) {
	ctx := context.Background()
	inner := fake.New()
	c, err := New(inner, Config{Seed: 3, CapacityErrorRate: 0.5, LostResponseRate: 0.5}, nil)
	if err != nil {
		t.Fatal(err)
	}
	made := false
	for i := range 200 {
		_, err := c.Launch(ctx, launchSpec(1))
		if cloud.IsInsufficientCapacity(err) && made {
			t.Fatalf("retry %d of a launch that was made failed with a capacity error: %v", i, err)
		}
		if !cloud.IsInsufficientCapacity(err) {
			made = true
		}
	}
	if !made || len(inner.Instances()) != 1 {
		t.Errorf("made=%v, %d instances, want one", made, len(inner.Instances()))
	}
}

// TestSeeded: the same seed gives the same faults for the same calls; the rates hold
// roughly; List and InstanceTypes are never faulted.
func TestSeeded(t *testing.T) {
	ctx := context.Background()
	cfg := Config{Seed: 42, ThrottleRate: 0.1, ServerErrorRate: 0.1, CapacityErrorRate: 0.1, LostResponseRate: 0.1}
	run := func() (string, map[Kind]int) {
		c, err := New(fake.New(), cfg, nil)
		if err != nil {
			t.Fatal(err)
		}
		var b strings.Builder
		for i := range 1000 {
			_, err := c.Launch(ctx, launchSpec(i))
			fmt.Fprintf(&b, "%v;", cloud.KindOf(err))
			if _, err := c.List(ctx, nil); err != nil {
				t.Fatalf("List faulted: %v", err)
			}
			if _, err := c.InstanceTypes(ctx); err != nil {
				t.Fatalf("InstanceTypes faulted: %v", err)
			}
		}
		return b.String(), c.Injected()
	}
	a, counts := run()
	if b, _ := run(); a != b {
		t.Error("two runs with the same seed injected different faults")
	}
	for _, k := range []Kind{Throttle, ServerError, Capacity, LostResponse} {
		// 1000 draws at 10%: 100 expected, outside 50..150 means the draw is wrong.
		if n := counts[k]; n < 50 || n > 150 {
			t.Errorf("%s injected %d times in 1000 Launches at rate 0.1", k, n)
		}
	}
}

func TestValidate(t *testing.T) {
	for _, cfg := range []Config{{ThrottleRate: -0.1}, {ServerErrorRate: 1.5}, {CapacityErrorRate: 0.6, LostResponseRate: 0.6}} {
		if _, err := New(fake.New(), cfg, nil); err == nil {
			t.Errorf("New accepted %+v", cfg)
		}
	}
	if _, err := New(fake.New(), Config{ThrottleRate: 0.5, ServerErrorRate: 0.5}, nil); err != nil {
		t.Errorf("rates adding up to 1: %v", err)
	}
}
