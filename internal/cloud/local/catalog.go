package local

import (
	"fmt"

	"github.com/kip-dev/kip/internal/instancetype"
)

// Zone is the only zone of the local backend.
const Zone = "local"

// DefaultCatalog returns the built-in local instance types (nano to xlarge, one on-demand
// offering each in Zone at a nominal price), from instancetype's embedded local catalog.
func DefaultCatalog() ([]instancetype.InstanceType, error) {
	types, err := instancetype.Load("local", "local")
	if err != nil {
		return nil, fmt.Errorf("loading the local instance type catalog: %w", err)
	}
	return types, nil
}
