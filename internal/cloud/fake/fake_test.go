package fake

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/kip-dev/kip/internal/cloud"
	"github.com/kip-dev/kip/internal/cloud/cloudtest"
)

func TestConformance(t *testing.T) {
	cloudtest.Run(t, cloudtest.Harness{
		// One store shared by every backend object, as one cloud account is.
		New:          func(*testing.T) cloud.Cloud { return shared },
		InstanceType: "fake.small",
		Tags:         map[string]string{cloud.TagCluster: "conformance"},
	})
}

var shared = New()

func TestInjectError(t *testing.T) {
	ctx := context.Background()
	boom := errors.New("boom")
	tests := []struct {
		name   string
		method string
		err    error
		call   func(f *Fake) error
	}{
		{"launch capacity", MethodLaunch, cloud.InsufficientCapacity("no fake.small"), func(f *Fake) error {
			_, err := f.Launch(ctx, cloud.LaunchSpec{CellID: "a", InstanceType: "fake.small"})
			return err
		}},
		{"describe", MethodDescribe, boom, func(f *Fake) error { _, err := f.Describe(ctx, "x"); return err }},
		{"list throttled", MethodList, cloud.Throttled("slow down"), func(f *Fake) error { _, err := f.List(ctx, nil); return err }},
		{"terminate", MethodTerminate, boom, func(f *Fake) error { return f.Terminate(ctx, "x") }},
		{"instance types", MethodInstanceTypes, boom, func(f *Fake) error { _, err := f.InstanceTypes(ctx); return err }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := New()
			f.InjectError(tc.method, tc.err)
			if err := tc.call(f); !errors.Is(err, tc.err) {
				t.Fatalf("first call: err = %v, want the injected %v", err, tc.err)
			}
			if err := tc.call(f); errors.Is(err, tc.err) {
				t.Fatalf("second call still returned the injected error")
			}
			if n := f.CallCount(tc.method); n != 2 {
				t.Errorf("CallCount(%s) = %d, want 2", tc.method, n)
			}
			if calls := f.Calls(); !errors.Is(calls[0].Err, tc.err) || calls[1].Err != nil {
				t.Errorf("call log errors = %v, %v", calls[0].Err, calls[1].Err)
			}
		})
	}
}

func TestInjectedLaunchMakesNothing(t *testing.T) {
	ctx := context.Background()
	f := New()
	f.InjectError(MethodLaunch, cloud.InsufficientCapacity("none"))
	spec := cloud.LaunchSpec{CellID: "a", ClientToken: "t", InstanceType: "fake.small"}
	if _, err := f.Launch(ctx, spec); !cloud.IsInsufficientCapacity(err) {
		t.Fatalf("Launch: %v, want InsufficientCapacity", err)
	}
	if n := len(f.Instances()); n != 0 {
		t.Fatalf("a failed launch left %d instances", n)
	}
	in, err := f.Launch(ctx, spec)
	if err != nil {
		t.Fatalf("retry Launch: %v", err)
	}
	if in.State != cloud.StateRunning {
		t.Errorf("state %q, want running", in.State)
	}
}

func TestResetAndSetState(t *testing.T) {
	ctx := context.Background()
	f := New()
	in, err := f.Launch(ctx, cloud.LaunchSpec{CellID: "a", ClientToken: "t", InstanceType: "fake.small", Tags: map[string]string{"k": "v"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.SetState(in.ID, cloud.StateTerminated); err != nil {
		t.Fatal(err)
	}
	if l, _ := f.List(ctx, map[string]string{"k": "v"}); len(l) != 0 {
		t.Errorf("List returned a terminated instance: %v", l)
	}
	again, err := f.Launch(ctx, cloud.LaunchSpec{CellID: "a", ClientToken: "t", InstanceType: "fake.small", Tags: map[string]string{"k": "v"}})
	if err != nil || again.ID != in.ID || again.State != cloud.StateTerminated {
		t.Errorf("Launch with a spent token = %+v, %v; want the terminated instance %s", again, err, in.ID)
	}
	if err := f.SetState("nope", cloud.StateRunning); !cloud.IsNotFound(err) {
		t.Errorf("SetState(unknown) = %v, want NotFound", err)
	}
	f.Reset()
	if len(f.Instances()) != 0 || len(f.Calls()) != 0 {
		t.Errorf("Reset left %d instances and %d calls", len(f.Instances()), len(f.Calls()))
	}
	if _, err := f.Describe(ctx, in.ID); !cloud.IsNotFound(err) {
		t.Errorf("Describe after Reset = %v, want NotFound", err)
	}
}

func TestBadSpec(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name string
		spec cloud.LaunchSpec
	}{
		{"no cell id", cloud.LaunchSpec{InstanceType: "fake.small"}},
		{"unknown type", cloud.LaunchSpec{CellID: "a", InstanceType: "m5.large"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := New()
			if _, err := f.Launch(ctx, tc.spec); !cloud.IsInvalidSpec(err) {
				t.Errorf("Launch(%+v) = %v, want InvalidSpec", tc.spec, err)
			}
		})
	}
}

// TestReusedTokenChecksArguments: like EC2, a client token reused with other arguments is
// refused with IdempotentParameterMismatch instead of silently returning the first instance;
// the same arguments, or other bootstrap data only (the contract: a restarted kip reissues the
// cell's certificate), get the first instance back.
func TestReusedTokenChecksArguments(t *testing.T) {
	ctx := context.Background()
	f := New()
	spec := cloud.LaunchSpec{CellID: "a", ClientToken: "t", InstanceType: "fake.small", BootstrapData: []byte("cert-1")}
	first, err := f.Launch(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	again, err := f.Launch(ctx, spec)
	if err != nil || again.ID != first.ID {
		t.Fatalf("same arguments: %+v, %v; want instance %s", again, err, first.ID)
	}
	reissued := spec
	reissued.BootstrapData = []byte("cert-2")
	if again, err := f.Launch(ctx, reissued); err != nil || again.ID != first.ID {
		t.Fatalf("other bootstrap data: %+v, %v; want instance %s", again, err, first.ID)
	}
	for name, change := range map[string]func(*cloud.LaunchSpec){
		"instance type": func(s *cloud.LaunchSpec) { s.InstanceType = "fake.medium" },
		"spot":          func(s *cloud.LaunchSpec) { s.Spot = true },
		"tags":          func(s *cloud.LaunchSpec) { s.Tags = map[string]string{"k": "v"} },
		"zone":          func(s *cloud.LaunchSpec) { s.Zone = "fake-1b" },
	} {
		t.Run(name, func(t *testing.T) {
			other := spec
			change(&other)
			_, err := f.Launch(ctx, other)
			if !cloud.IsInvalidSpec(err) || !strings.Contains(err.Error(), "IdempotentParameterMismatch") {
				t.Errorf("Launch = %v, want InvalidSpec IdempotentParameterMismatch", err)
			}
		})
	}
	if n := len(f.Instances()); n != 1 {
		t.Errorf("%d instances, want 1", n)
	}
}

// TestWithoutCallLog: the fake keeps no calls, and still injects errors and keeps tokens.
func TestWithoutCallLog(t *testing.T) {
	ctx := context.Background()
	f := New(WithoutCallLog())
	spec := cloud.LaunchSpec{CellID: "c1", InstanceType: "fake.small", ClientToken: "t1", BootstrapData: []byte("secret")}
	in, err := f.Launch(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	spec.BootstrapData = []byte("other")
	again, err := f.Launch(ctx, spec)
	if err != nil || again.ID != in.ID {
		t.Fatalf("relaunch with the same token: %v, %v; want instance %s", again, err, in.ID)
	}
	boom := errors.New("boom")
	f.InjectError(MethodTerminate, boom)
	if err := f.Terminate(ctx, in.ID); !errors.Is(err, boom) {
		t.Errorf("Terminate: %v, want the injected error", err)
	}
	if n := len(f.Calls()); n != 0 || f.CallCount(MethodLaunch) != 0 {
		t.Errorf("the call log holds %d calls, want none", n)
	}
}
