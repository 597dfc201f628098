package cloud

import (
	"context"
	"errors"
	"fmt"
)

// LaunchWithFallback launches spec as each of types in turn (the selector's order, cheapest
// first) until one launches. It moves on only on InsufficientCapacity errors; any other error
// is returned at once. Every attempt carries spec.ClientToken unchanged, so a launch repeated
// after a crash still makes at most one instance. When no type has capacity the error is an
// InsufficientCapacity error listing every attempt.
func LaunchWithFallback(ctx context.Context, c Cloud, spec LaunchSpec, types []string) (*Instance, error) {
	if len(types) == 0 {
		return nil, InvalidSpec("launching cell %s: no instance types to try", spec.CellID)
	}
	var errs []error
	for _, t := range types {
		spec.InstanceType = t
		inst, err := c.Launch(ctx, spec)
		if err == nil {
			return inst, nil
		}
		if !IsInsufficientCapacity(err) {
			return nil, err
		}
		errs = append(errs, fmt.Errorf("%s: %w", t, err))
	}
	return nil, Wrap(KindInsufficientCapacity, errors.Join(errs...), "launching cell %s: no capacity for any of %v", spec.CellID, types)
}
