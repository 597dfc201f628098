// Command gen-catalog regenerates the instance-type catalogs embedded in
// internal/instancetype/catalog from a source of figures.
//
// Sources:
//
//	-source 2020      the December 2020 price-list figures in ../shared/data (default)
//	-source aws-api   AWS's own APIs through internal/cloud/aws/catalogapi (EC2 and the Price
//	                  List API, with the SDK's default credentials; aws only)
//
// Another source plugs in by adding an entry to sources below: anything that lists regions
// and implements instancetype.Refresher for one region will do.
//
// Usage (from the repository root):
//
//	go run ./hack/gen-catalog [-source 2020] [-data ../shared/data] [-out internal/instancetype/catalog] [-clouds aws,azure]
//	go run ./hack/gen-catalog -source aws-api [-regions us-east-1,eu-west-1] [-ec2-endpoint URL] [-pricing-endpoint URL]
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/kip-dev/kip/internal/instancetype"
)

// Source is where figures come from: the regions a cloud has, and each region's types.
type Source interface {
	instancetype.Refresher
	// Regions lists the cloud's regions, spelled as Refresh takes them.
	Regions(ctx context.Context) ([]string, error)
	// Describe says where the figures come from; it is stored in the catalog file.
	Describe() string
}

// sources makes a Source for a cloud from the command's flags.
var sources = map[string]func(cloud string, f *flags) (Source, error){
	"2020":    newSource2020,
	"aws-api": newSourceAWSAPI,
}

// defaultClouds are the clouds a source regenerates when -clouds is not given.
var defaultClouds = map[string]string{"2020": "aws,azure", "aws-api": "aws"}

type flags struct {
	source, data, out, clouds string
	// aws-api only.
	regions, homeRegion, ec2Endpoint, pricingEndpoint string
}

func main() {
	if err := run(context.Background(), os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "gen-catalog:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	var f flags
	fs := flag.NewFlagSet("gen-catalog", flag.ContinueOnError)
	fs.StringVar(&f.source, "source", "2020", "where figures come from: 2020 or aws-api")
	fs.StringVar(&f.data, "data", "../shared/data", "directory of the 2020 data files")
	fs.StringVar(&f.out, "out", "internal/instancetype/catalog", "directory to write <cloud>.json.gz into")
	fs.StringVar(&f.clouds, "clouds", "", "comma-separated clouds to regenerate (default: aws,azure for 2020, aws for aws-api)")
	fs.StringVar(&f.regions, "regions", "", "aws-api: comma-separated regions (default: every region of the account)")
	fs.StringVar(&f.homeRegion, "home-region", "us-east-1", "aws-api: the region asked for the list of regions")
	fs.StringVar(&f.ec2Endpoint, "ec2-endpoint", "", "aws-api: EC2 endpoint URL (default: AWS's)")
	fs.StringVar(&f.pricingEndpoint, "pricing-endpoint", "", "aws-api: Price List API endpoint URL (default: AWS's)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	newSource, ok := sources[f.source]
	if !ok {
		return fmt.Errorf("-source: unknown source %q (2020, aws-api)", f.source)
	}
	if f.clouds == "" {
		f.clouds = defaultClouds[f.source]
	}
	for _, cloud := range strings.Split(f.clouds, ",") {
		src, err := newSource(cloud, &f)
		if err != nil {
			return fmt.Errorf("opening %s source for %s: %w", f.source, cloud, err)
		}
		if err := generate(ctx, cloud, src, f.out); err != nil {
			return err
		}
	}
	return nil
}

// generate fetches every region of cloud from src and writes <out>/<cloud>.json.gz.
func generate(ctx context.Context, cloud string, src Source, out string) error {
	regions, err := src.Regions(ctx)
	if err != nil {
		return fmt.Errorf("listing %s regions: %w", cloud, err)
	}
	file := &instancetype.File{Cloud: cloud, Source: src.Describe(), Regions: map[string][]instancetype.InstanceType{}}
	n := 0
	for _, r := range regions {
		types, err := src.Refresh(ctx, r)
		if err != nil {
			return fmt.Errorf("fetching %s %s: %w", cloud, r, err)
		}
		file.Regions[instancetype.CanonicalRegion(cloud, r)] = types
		n += len(types)
	}
	if err := file.Validate(); err != nil {
		return fmt.Errorf("validating %s catalog: %w", cloud, err)
	}
	name := filepath.Join(out, cloud+".json.gz")
	fh, err := os.Create(name)
	if err != nil {
		return fmt.Errorf("writing %s catalog: %w", cloud, err)
	}
	if err := file.Encode(fh, true); err != nil {
		fh.Close()
		return err
	}
	if err := fh.Close(); err != nil {
		return fmt.Errorf("writing %s catalog: %w", cloud, err)
	}
	fmt.Printf("%s: %d regions, %d instance types -> %s\n", cloud, len(regions), n, name)
	return nil
}
