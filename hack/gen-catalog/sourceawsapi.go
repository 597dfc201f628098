package main

import (
	"context"
	"fmt"
	"slices"
	"strings"

	awsconfig "github.com/aws/aws-sdk-go-v2/config"

	"github.com/kip-dev/kip/internal/cloud/aws/catalogapi"
)

// newSourceAWSAPI asks AWS's own APIs (catalogapi.Refresher: EC2 DescribeInstanceTypes,
// DescribeInstanceTypeOfferings, DescribeSpotPriceHistory, DescribeRegions and the Price List
// API's GetProducts) with the SDK's default credentials. -ec2-endpoint and -pricing-endpoint
// point it elsewhere (the EC2 fake in tests); -regions limits the regions.
func newSourceAWSAPI(cloud string, f *flags) (Source, error) {
	if cloud != "aws" {
		return nil, fmt.Errorf("-source aws-api has figures for aws only, not %q (pass -clouds aws)", cloud)
	}
	cfg, err := awsconfig.LoadDefaultConfig(context.Background(), awsconfig.WithRegion(f.homeRegion))
	if err != nil {
		return nil, fmt.Errorf("loading the AWS SDK configuration: %w", err)
	}
	r := catalogapi.New(cfg, f.ec2Endpoint, f.pricingEndpoint)
	r.HomeRegion = f.homeRegion
	if f.regions == "" {
		return r, nil
	}
	return &someRegions{Source: r, regions: strings.Split(f.regions, ",")}, nil
}

// someRegions limits a Source to the regions named on the command line that it has.
type someRegions struct {
	Source
	regions []string
}

func (s *someRegions) Regions(ctx context.Context) ([]string, error) {
	all, err := s.Source.Regions(ctx)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, r := range s.regions {
		if !slices.Contains(all, r) {
			return nil, fmt.Errorf("-regions: %q is not among the account's regions %v", r, all)
		}
		out = append(out, r)
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}
