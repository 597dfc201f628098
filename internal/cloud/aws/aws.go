// Package aws is the EC2 cell backend: every cell is an EC2 instance launched from Kip's cell
// image into a subnet (one, or one per zone), tagged with the cluster, node, pod and cell it
// belongs to, and carrying the agent's bootstrap as user data.
//
// The SDK sits behind EC2API, which lists only the calls the backend makes (the IAM policy in
// docs/aws.md is generated from it). Cloud calls are batched and rate-limited: Describe and List
// are served from a cache refreshed by one paginated DescribeInstances per PollInterval for all
// cells of the cluster; terminations are collected for a short window and sent as one
// TerminateInstances; every call waits on a client-side token bucket sized below EC2's
// published limits and is retried with back-off when EC2 throttles anyway. EC2 errors are
// classified once, in classify, into the kinds of package cloud. Capacity errors are
// remembered per instance type, zone and market for CapacityTTL, and InstanceTypes reports
// those offerings unavailable meanwhile.
package aws

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/ratelimit"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"k8s.io/utils/clock"

	"github.com/kip-dev/kip/internal/capacity"
	"github.com/kip-dev/kip/internal/cloud"
	"github.com/kip-dev/kip/internal/cloud/aws/ec2limits"
	"github.com/kip-dev/kip/internal/cloud/aws/sdkhttp"
	"github.com/kip-dev/kip/internal/instancetype"
)

// EC2API is the part of the EC2 client the backend uses. It lists exactly the calls the backend
// makes; TestIAMPolicy checks that the published IAM policy grants exactly these.
type EC2API interface {
	RunInstances(ctx context.Context, in *ec2.RunInstancesInput, opts ...func(*ec2.Options)) (*ec2.RunInstancesOutput, error)
	DescribeInstances(ctx context.Context, in *ec2.DescribeInstancesInput, opts ...func(*ec2.Options)) (*ec2.DescribeInstancesOutput, error)
	TerminateInstances(ctx context.Context, in *ec2.TerminateInstancesInput, opts ...func(*ec2.Options)) (*ec2.TerminateInstancesOutput, error)
	DescribeImages(ctx context.Context, in *ec2.DescribeImagesInput, opts ...func(*ec2.Options)) (*ec2.DescribeImagesOutput, error)
	DescribeSubnets(ctx context.Context, in *ec2.DescribeSubnetsInput, opts ...func(*ec2.Options)) (*ec2.DescribeSubnetsOutput, error)
	DescribeVpcs(ctx context.Context, in *ec2.DescribeVpcsInput, opts ...func(*ec2.Options)) (*ec2.DescribeVpcsOutput, error)
	DescribeSecurityGroups(ctx context.Context, in *ec2.DescribeSecurityGroupsInput, opts ...func(*ec2.Options)) (*ec2.DescribeSecurityGroupsOutput, error)
	CreateSecurityGroup(ctx context.Context, in *ec2.CreateSecurityGroupInput, opts ...func(*ec2.Options)) (*ec2.CreateSecurityGroupOutput, error)
	AuthorizeSecurityGroupIngress(ctx context.Context, in *ec2.AuthorizeSecurityGroupIngressInput, opts ...func(*ec2.Options)) (*ec2.AuthorizeSecurityGroupIngressOutput, error)
	CreateTags(ctx context.Context, in *ec2.CreateTagsInput, opts ...func(*ec2.Options)) (*ec2.CreateTagsOutput, error)
}

var _ EC2API = (*ec2.Client)(nil)

// Catalog supplies the instance types the backend may launch; *instancetype.Live is one.
type Catalog interface {
	InstanceTypes() ([]instancetype.InstanceType, error)
}

// AgentPort is the TCP port the cell agent listens on; Kip's security group opens it to the VPC.
const AgentPort = 6421

// Config configures a Backend. Region, VPCID and SubnetID are discovered from the instance
// metadata service when empty (kip running on EC2).
type Config struct {
	Region string
	VPCID  string
	// SubnetID is the first subnet cells launch in (the one a spec naming no zone gets), and
	// SubnetIDs more, each in another zone of the same VPC: a capacity error in one zone
	// leaves the others to try. SubnetID is discovered when both are empty.
	SubnetID  string
	SubnetIDs []string
	// ClusterName scopes everything the backend makes (the kip.dev/cluster tag, the security
	// group name). Required.
	ClusterName string
	// SecurityGroups are attached to every cell besides Kip's own group.
	SecurityGroups []string
	// ImageID is the cell image. When empty, the newest image owned by ImageOwners and matching
	// ImageFilters (EC2 filter name → values) is used, per architecture.
	ImageID      string
	ImageOwners  []string
	ImageFilters map[string][]string
	// InstanceProfile is attached to cells whose spec names none (a name or an ARN).
	InstanceProfile string
	// PodSecurityGroups are the groups a LaunchSpec may name besides SecurityGroups, and
	// PodInstanceProfiles the profiles it may name besides InstanceProfile. Empty allows
	// none: Launch refuses a spec naming another with an InvalidSpec error about the field,
	// before calling EC2.
	PodSecurityGroups   []string
	PodInstanceProfiles []string
	// Endpoint overrides the EC2 endpoint (the EC2 fake in tests, a VPC endpoint).
	Endpoint string
	// IMDSEndpoint overrides the instance metadata endpoint (tests).
	IMDSEndpoint string
	// Credentials overrides the default credential chain.
	Credentials aws.CredentialsProvider
	// EC2 replaces the SDK client (unit tests); Endpoint and Credentials are then unused.
	EC2 EC2API
	// PollInterval is the age at which the instance cache is refreshed. Default 5s.
	PollInterval time.Duration
	// TerminateWindow is how long terminations are collected before one TerminateInstances.
	// Default 100ms.
	TerminateWindow time.Duration
	// CapacityTTL is how long a capacity error keeps an offering unavailable. Default 3m.
	CapacityTTL time.Duration
	// Limits are the client-side token buckets; nil means DefaultLimits().
	Limits *ec2limits.Limits
	// Catalog supplies instance types; nil means the embedded catalog of Region.
	Catalog Catalog
	// Clock measures cache age and capacity memory; nil means the real clock.
	Clock clock.Clock
	// Logger logs; nil means slog.Default().
	Logger *slog.Logger
	// UserData turns a launch's BootstrapData into the instance's user data for an instance
	// of architecture arch (amd64, arm64): kip renders the cell bootstrap script
	// (internal/cellboot). An error refuses the launch as an InvalidSpec. nil sends
	// BootstrapData as it is.
	UserData func(arch string, bootstrap []byte) ([]byte, error)
}

// Backend is the EC2 cloud.Cloud. Make it with New.
type Backend struct {
	cfg    Config
	ec2    EC2API
	clk    clock.Clock
	log    *slog.Logger
	limits *limiters
	// subnets are where cells launch, one per zone, SubnetID's first.
	subnets []subnet
	groupID string
	// images maps an architecture (instancetype.ArchAMD64/ARM64) to the default image;
	// imageInfo caches the root device of every image used.
	imgMu     sync.Mutex
	images    map[string]string
	imageInfo map[string]imageFacts

	cache       instanceCache
	term        *terminator
	unavailable *capacity.Memory
	throttled   atomic.Int64
}

var _ cloud.Cloud = (*Backend)(nil)

// New discovers the network (from IMDS where not configured), finds or creates Kip's security
// group, looks up the cell image and returns a ready Backend.
func New(ctx context.Context, cfg Config) (*Backend, error) {
	if cfg.ClusterName == "" {
		return nil, errors.New("creating EC2 backend: ClusterName must be set")
	}
	if cfg.PollInterval <= 0 {
		cfg.PollInterval = 5 * time.Second
	}
	if cfg.TerminateWindow <= 0 {
		cfg.TerminateWindow = 100 * time.Millisecond
	}
	if cfg.CapacityTTL <= 0 {
		cfg.CapacityTTL = 3 * time.Minute
	}
	if cfg.Limits == nil {
		l := DefaultLimits()
		cfg.Limits = &l
	}
	b := &Backend{cfg: cfg, clk: cfg.Clock, log: cfg.Logger, limits: newLimiters(*cfg.Limits),
		images: map[string]string{}, imageInfo: map[string]imageFacts{}}
	if b.clk == nil {
		b.clk = clock.RealClock{}
	}
	if b.log == nil {
		b.log = slog.Default()
	}
	b.unavailable = capacity.New(b.clk, cfg.CapacityTTL)
	if err := b.discover(ctx); err != nil {
		return nil, fmt.Errorf("creating EC2 backend: %w", err)
	}
	b.ec2 = cfg.EC2
	if b.ec2 == nil {
		c, err := newClient(ctx, b.cfg)
		if err != nil {
			return nil, fmt.Errorf("creating EC2 backend: %w", err)
		}
		b.ec2 = c
	}
	if b.cfg.Catalog == nil {
		types, err := instancetype.Load("aws", b.cfg.Region)
		if err != nil {
			return nil, fmt.Errorf("creating EC2 backend: loading catalog: %w", err)
		}
		b.cfg.Catalog = staticCatalog(types)
	}
	b.term = newTerminator(b)
	if err := b.setUpNetwork(ctx); err != nil {
		return nil, fmt.Errorf("creating EC2 backend: %w", err)
	}
	if err := b.setUpImages(ctx); err != nil {
		return nil, fmt.Errorf("creating EC2 backend: %w", err)
	}
	b.log.Info("EC2 backend ready", "region", b.cfg.Region, "vpc", b.cfg.VPCID, "subnets", b.subnets,
		"securityGroup", b.groupID, "images", b.images)
	return b, nil
}

// newClient makes the SDK client. The SDK's own retryer stays on (3 attempts, its back-off)
// but without its retry quota, which under a burst of throttling fails calls outright; the
// backend's own limiter and retry loop sit above it. Capacity errors are not retried by the
// SDK: the caller moves to another instance type instead.
func newClient(ctx context.Context, cfg Config) (*ec2.Client, error) {
	opts := []func(*config.LoadOptions) error{
		config.WithRegion(cfg.Region),
		config.WithRetryer(func() aws.Retryer {
			return retry.NewStandard(func(o *retry.StandardOptions) {
				o.RateLimiter = ratelimit.None
				o.Retryables = append([]retry.IsErrorRetryable{noRetryCapacity{}}, o.Retryables...)
			})
		}),
	}
	if cfg.Credentials != nil {
		opts = append(opts, config.WithCredentialsProvider(cfg.Credentials))
	}
	awsCfg, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("loading AWS configuration: %w", err)
	}
	awsCfg.HTTPClient = sdkhttp.Wrap(awsCfg.HTTPClient)
	return ec2.NewFromConfig(awsCfg, func(o *ec2.Options) {
		if cfg.Endpoint != "" {
			o.BaseEndpoint = aws.String(cfg.Endpoint)
		}
	}), nil
}

// Name returns "aws".
func (b *Backend) Name() string { return "aws" }

// Zone returns the availability zone of the first subnet, where a spec naming no zone launches.
func (b *Backend) Zone() string { return b.subnets[0].zone }

// Zones returns the zones cells launch in, one per configured subnet, the first subnet's first.
func (b *Backend) Zones() []string {
	out := make([]string, len(b.subnets))
	for i, sn := range b.subnets {
		out[i] = sn.zone
	}
	return out
}

// SecurityGroupID returns the id of Kip's own security group.
func (b *Backend) SecurityGroupID() string { return b.groupID }

type staticCatalog []instancetype.InstanceType

func (c staticCatalog) InstanceTypes() ([]instancetype.InstanceType, error) {
	return instancetype.Clone(c), nil
}

// StaticCatalog returns a Catalog that always answers types.
func StaticCatalog(types []instancetype.InstanceType) Catalog {
	return staticCatalog(instancetype.Clone(types))
}
