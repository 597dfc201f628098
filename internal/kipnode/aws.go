package kipnode

import (
	"context"
	"fmt"

	awsconfig "github.com/aws/aws-sdk-go-v2/config"

	"github.com/kip-dev/kip/internal/cloud/aws"
	"github.com/kip-dev/kip/internal/cloud/aws/catalogapi"
	"github.com/kip-dev/kip/internal/instancetype"
)

// awsBackend builds the EC2 backend from cloud.aws. Its instance-type catalog is live: the
// cache file when it holds this region, else the embedded copy, refreshed from the EC2 and
// Price List APIs every catalog.refreshInterval by a goroutine that stops with ctx or with the
// returned func. The region is discovered (instance metadata) before the backend is made,
// because the catalog is the region's.
func (r *runner) awsBackend(ctx context.Context) (*aws.Backend, *instancetype.Live, func(), error) {
	c := r.cfg.Cloud.AWS
	log := r.log.With("component", "aws-backend")
	cfg, err := aws.Discover(ctx, aws.Config{
		Region:              c.Region,
		VPCID:               c.VPCID,
		SubnetID:            c.SubnetID,
		SubnetIDs:           c.SubnetIDs,
		ClusterName:         r.cfg.Cells.ClusterName,
		SecurityGroups:      c.SecurityGroups,
		ImageID:             c.ImageID,
		ImageOwners:         c.ImageOwners,
		ImageFilters:        c.ImageFilters,
		InstanceProfile:     c.InstanceProfile,
		PodSecurityGroups:   c.PodSecurityGroups,
		PodInstanceProfiles: c.PodInstanceProfiles,
		Endpoint:            c.Endpoint,
		PollInterval:        c.PollInterval.Duration,
		CapacityTTL:         r.cfg.Cells.CapacityErrorMemory.Duration,
		Logger:              log,
	})
	if err != nil {
		return nil, nil, nil, fmt.Errorf("starting kip: cloud.aws: %w", err)
	}

	every := c.Catalog.RefreshInterval.Duration
	live := &instancetype.Live{Cloud: "aws", Region: cfg.Region, CacheFile: c.Catalog.CacheFile,
		Log: r.log.With("component", "aws-catalog")}
	if every > 0 {
		sdk, err := awsconfig.LoadDefaultConfig(ctx, awsconfig.WithRegion(cfg.Region))
		if err != nil {
			return nil, nil, nil, fmt.Errorf("starting kip: cloud.aws.catalog: loading the AWS SDK configuration: %w", err)
		}
		live.Refresher = catalogapi.New(sdk, c.Endpoint, c.PricingEndpoint)
	}
	if _, err := live.InstanceTypes(); err != nil {
		// A region the embedded catalog does not know: only the APIs can tell.
		if every == 0 {
			return nil, nil, nil, fmt.Errorf("starting kip: cloud.aws.catalog: region %s has no embedded or cached catalog and refreshInterval is 0s: %w", cfg.Region, err)
		}
		if rerr := live.Refresh(ctx); rerr != nil {
			return nil, nil, nil, fmt.Errorf("starting kip: cloud.aws.catalog: region %s has no embedded or cached catalog (%v), and %w", cfg.Region, err, rerr)
		}
	}
	cfg.Catalog = live

	// Cells boot from a stock image: their user data is the bootstrap script, pinning the
	// artifacts kip serves; the server starts with kip's CA (run).
	boot, err := r.prepareCellBoot()
	if err != nil {
		return nil, nil, nil, err
	}
	cfg.UserData = boot.renderer.UserData
	b, err := aws.New(ctx, cfg)
	if err != nil {
		boot.close()
		return nil, nil, nil, fmt.Errorf("starting kip: %w", err)
	}
	r.boot = boot
	log.Info("instance-type catalog", "region", cfg.Region, "origin", live.Origin(), "refreshInterval", every.String(),
		"cacheFile", c.Catalog.CacheFile)
	if every == 0 {
		return b, live, boot.close, nil
	}
	// The first refresh ends (or times out to the cache file or embedded catalog) before the
	// backend is handed out, so the first selection never uses a catalog about to be replaced.
	stop := live.Start(ctx, every, c.Catalog.FirstRefreshTimeout.Duration)
	log.Info("instance-type catalog after the first refresh", "region", cfg.Region, "origin", live.Origin())
	return b, live, func() { stop(); boot.close() }, nil
}
