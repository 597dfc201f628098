package selector

import "github.com/kip-dev/kip/internal/annotations"

// Pod annotations the selector reads; internal/annotations owns them and their rules (the
// pod.elotl.co names are the original Kip's and are still accepted; when both spellings are
// set they must agree).
const (
	// AnnotationInstanceType names an instance type, or a glob of them (path.Match syntax,
	// e.g. "c5*"), to choose from instead of the whole catalog.
	AnnotationInstanceType = annotations.InstanceType
	// AnnotationLaunchType is "spot" or "on-demand".
	AnnotationLaunchType = annotations.LaunchType

	LegacyAnnotationInstanceType = annotations.LegacyInstanceType
	LegacyAnnotationLaunchType   = annotations.LegacyLaunchType
)

// Launch types.
const (
	LaunchTypeSpot     = annotations.LaunchTypeSpot
	LaunchTypeOnDemand = annotations.LaunchTypeOnDemand
)
