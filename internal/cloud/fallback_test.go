package cloud_test

import (
	"context"
	"errors"
	"testing"

	"github.com/kip-dev/kip/internal/cloud"
	"github.com/kip-dev/kip/internal/cloud/fake"
)

func TestLaunchWithFallback(t *testing.T) {
	ctx := context.Background()
	spec := cloud.LaunchSpec{CellID: "c1", ClientToken: "tok-c1", Tags: map[string]string{cloud.TagCellID: "c1"}}
	tests := []struct {
		name     string
		inject   []error
		types    []string
		wantType string
		wantKind cloud.Kind
		launches int
	}{
		{"first type fits", nil, []string{"fake.small", "fake.medium"}, "fake.small", 0, 1},
		{"capacity moves on", []error{cloud.InsufficientCapacity("no fake.small")}, []string{"fake.small", "fake.medium"}, "fake.medium", 0, 2},
		{"other errors stop", []error{cloud.InvalidSpec("bad")}, []string{"fake.small", "fake.medium"}, "", cloud.KindInvalidSpec, 1},
		{"all out of capacity", []error{cloud.InsufficientCapacity("a"), cloud.InsufficientCapacity("b")}, []string{"fake.small", "fake.medium"}, "", cloud.KindInsufficientCapacity, 2},
		{"no types", nil, nil, "", cloud.KindInvalidSpec, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := fake.New()
			for _, err := range tc.inject {
				f.InjectError(fake.MethodLaunch, err)
			}
			inst, err := cloud.LaunchWithFallback(ctx, f, spec, tc.types)
			if tc.wantType != "" {
				if err != nil || inst.InstanceType != tc.wantType {
					t.Fatalf("LaunchWithFallback = %v, %v; want a %s", inst, err, tc.wantType)
				}
			} else if cloud.KindOf(err) != tc.wantKind || inst != nil {
				t.Fatalf("LaunchWithFallback = %v, %v; want a %v error", inst, err, tc.wantKind)
			}
			if n := f.CallCount(fake.MethodLaunch); n != tc.launches {
				t.Errorf("Launch called %d times, want %d", n, tc.launches)
			}
			if tc.wantKind == cloud.KindInsufficientCapacity && !errors.Is(err, tc.inject[1]) {
				t.Errorf("error %v does not wrap the last attempt's error", err)
			}
		})
	}
}
