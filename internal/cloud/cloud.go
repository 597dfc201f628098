// Package cloud defines the contract every cell backend implements: launch a cell (a cloud
// instance, or a network namespace on the local backend) for a spec, describe it, list cells by
// tags and terminate them. Backends live in subpackages (local, aws, fake) and never import the
// packages that use them; cloudtest holds the conformance suite all of them must pass.
package cloud

import (
	"context"
	"time"

	"github.com/kip-dev/kip/internal/instancetype"
)

// Well-known tag keys Kip puts on every cell. They are the truth kip rebuilds its state from.
const (
	TagCluster      = "kip.dev/cluster"
	TagNode         = "kip.dev/node"
	TagCellID       = "kip.dev/cell"
	TagPodNamespace = "kip.dev/pod-namespace"
	TagPodName      = "kip.dev/pod-name"
	TagPodUID       = "kip.dev/pod-uid"
	// TagStandby ("true") marks a cell launched as a warm standby cell, with no pod. The pod
	// tags written on it by Tagger.SetTags bind it to its pod (docs/standby.md).
	TagStandby = "kip.dev/standby"
)

// LaunchSpec describes the cell to start.
type LaunchSpec struct {
	// CellID names the cell; it is unique per cluster and stable for the life of the pod.
	CellID string
	// ClientToken makes Launch idempotent: a second Launch with the same token returns the
	// instance the first one made (even across process restarts) instead of making another.
	// As on EC2, the second Launch must ask for the same launch: a spec that differs in any
	// field but BootstrapData is refused with an InvalidSpec error (IdempotentParameterMismatch).
	// BootstrapData may differ (a restarted kip issues the cell a new certificate); the
	// earlier instance, booted with the earlier data, is returned.
	ClientToken string
	// InstanceType is the name of an instance type from InstanceTypes.
	InstanceType string
	// Spot asks for spot (preemptible) capacity.
	Spot bool
	// UnlimitedCredits runs a burstable type in unlimited mode (it may exceed its baseline,
	// paying for surplus credits); false runs it in standard mode. Backends set the mode
	// explicitly rather than take an account default; types without credits ignore it.
	UnlimitedCredits bool
	// Zone pins the availability zone; empty lets the backend choose.
	Zone string
	// Image is the boot image (an AMI id on AWS). Empty means the backend's default.
	Image string
	// Tags are kept with the instance and returned by Describe and List.
	Tags map[string]string
	// BootstrapData is handed to the cell agent at boot (user data on AWS, a file locally).
	// Backends treat it as opaque bytes and refuse it with an InvalidSpec error when too large.
	BootstrapData []byte
	// SecurityGroups are extra backend security groups to attach besides Kip's own.
	SecurityGroups []string
	// InstanceProfile is the IAM instance profile (AWS) to attach, if any.
	InstanceProfile string
	// VolumeSizeGiB is the root volume size; 0 means the backend's default.
	VolumeSizeGiB int
	// PrivateIPOnly asks for no public address.
	PrivateIPOnly bool
}

// State is the lifecycle state of an instance as the backend reports it.
type State string

const (
	StatePending     State = "pending"
	StateRunning     State = "running"
	StateTerminating State = "terminating"
	StateTerminated  State = "terminated"
)

// Instance is a cell as the backend knows it.
type Instance struct {
	// ID is the backend's identifier (an EC2 instance id, the local cell's name).
	ID           string
	CellID       string
	InstanceType string
	Spot         bool
	Zone         string
	State        State
	// PrivateIP is the address kip and other cells reach the cell on.
	PrivateIP  string
	PublicIP   string
	Tags       map[string]string
	LaunchTime time.Time
}

// Cloud is a cell backend. All methods are safe for concurrent use.
type Cloud interface {
	// Name names the backend ("local", "aws", "fake").
	Name() string

	// InstanceTypes returns the catalog of instance types this backend can launch, with
	// their priced offerings.
	InstanceTypes(ctx context.Context) ([]instancetype.InstanceType, error)

	// Launch starts a cell. It is idempotent on spec.ClientToken. It returns an
	// InvalidSpec error for a spec it can never satisfy, an InsufficientCapacity error when
	// the type has no capacity now (the caller may try another type), and the instance,
	// possibly still pending, otherwise.
	Launch(ctx context.Context, spec LaunchSpec) (*Instance, error)

	// Describe returns one instance. It returns a NotFound error once the instance is gone
	// (a terminated instance may still be described for a while, with StateTerminated).
	Describe(ctx context.Context, id string) (*Instance, error)

	// List returns the live (not terminated) instances carrying all the given tags.
	List(ctx context.Context, tags map[string]string) ([]*Instance, error)

	// Terminate stops an instance and releases everything it holds. It may be called many
	// times; it returns a NotFound error once the instance is gone.
	Terminate(ctx context.Context, id string) error
}

// Tagger is implemented by backends that can add tags to a live instance. Warm standby cells
// need it: the pod tags written on one at bind time are the durable record of which pod it
// belongs to.
type Tagger interface {
	// SetTags adds tags to instance id, replacing the values of keys it already has, all at
	// once: a reader sees every new tag or none. It returns a NotFound error once the
	// instance is gone.
	SetTags(ctx context.Context, id string, tags map[string]string) error
}
