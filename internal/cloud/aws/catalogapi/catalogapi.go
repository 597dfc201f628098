// Package catalogapi refreshes the AWS instance-type catalog from AWS's own APIs: EC2
// DescribeInstanceTypes (capacity), DescribeInstanceTypeOfferings (zones),
// DescribeSpotPriceHistory (current spot prices) and the Price List API's GetProducts
// (on-demand prices). Refresher implements instancetype.Refresher.
package catalogapi

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/aws-sdk-go-v2/service/pricing"
	pricingtypes "github.com/aws/aws-sdk-go-v2/service/pricing/types"
	"k8s.io/utils/clock"

	"github.com/kip-dev/kip/internal/cloud/aws/sdkhttp"
	"github.com/kip-dev/kip/internal/instancetype"
)

// EC2API lists the EC2 calls the refresher makes.
type EC2API interface {
	DescribeInstanceTypes(ctx context.Context, in *ec2.DescribeInstanceTypesInput, opts ...func(*ec2.Options)) (*ec2.DescribeInstanceTypesOutput, error)
	DescribeInstanceTypeOfferings(ctx context.Context, in *ec2.DescribeInstanceTypeOfferingsInput, opts ...func(*ec2.Options)) (*ec2.DescribeInstanceTypeOfferingsOutput, error)
	DescribeSpotPriceHistory(ctx context.Context, in *ec2.DescribeSpotPriceHistoryInput, opts ...func(*ec2.Options)) (*ec2.DescribeSpotPriceHistoryOutput, error)
	DescribeRegions(ctx context.Context, in *ec2.DescribeRegionsInput, opts ...func(*ec2.Options)) (*ec2.DescribeRegionsOutput, error)
}

// PricingAPI lists the Price List API calls the refresher makes.
type PricingAPI interface {
	GetProducts(ctx context.Context, in *pricing.GetProductsInput, opts ...func(*pricing.Options)) (*pricing.GetProductsOutput, error)
}

var (
	_ EC2API     = (*ec2.Client)(nil)
	_ PricingAPI = (*pricing.Client)(nil)
)

// Refresher fetches a region's instance types with their zones and prices.
type Refresher struct {
	// EC2 returns the EC2 client of a region.
	EC2 func(region string) EC2API
	// Pricing is the Price List API client (its endpoints live in us-east-1, eu-central-1
	// and ap-south-1 and serve every region).
	Pricing PricingAPI
	// Baselines gives burstable types' baseline vCPUs, which the EC2 API does not publish;
	// nil means the figures of the embedded catalog. A burstable type with no known baseline
	// gets 0, so that it is never chosen for a CPU request it might not sustain.
	Baselines map[string]float64
	// Clock dates the spot price query; nil means the real clock.
	Clock clock.PassiveClock
	// HomeRegion is the region asked for the list of regions; empty means us-east-1.
	HomeRegion string
}

var _ instancetype.Refresher = (*Refresher)(nil)

// New returns a Refresher using SDK clients made from cfg. ec2Endpoint and pricingEndpoint
// override the services' endpoints when not empty (fakes in tests).
func New(cfg aws.Config, ec2Endpoint, pricingEndpoint string) *Refresher {
	cfg.HTTPClient = sdkhttp.Wrap(cfg.HTTPClient)
	pcfg := cfg.Copy()
	if pcfg.Region == "" || pricingEndpoint == "" {
		pcfg.Region = "us-east-1"
	}
	return &Refresher{
		EC2: func(region string) EC2API {
			return ec2.NewFromConfig(cfg, func(o *ec2.Options) {
				o.Region = region
				if ec2Endpoint != "" {
					o.BaseEndpoint = aws.String(ec2Endpoint)
				}
			})
		},
		Pricing: pricing.NewFromConfig(pcfg, func(o *pricing.Options) {
			if pricingEndpoint != "" {
				o.BaseEndpoint = aws.String(pricingEndpoint)
			}
		}),
	}
}

// Regions lists the regions enabled for the account, sorted, so that hack/gen-catalog can use
// the Refresher as a source.
func (r *Refresher) Regions(ctx context.Context) ([]string, error) {
	home := r.HomeRegion
	if home == "" {
		home = "us-east-1"
	}
	out, err := r.EC2(home).DescribeRegions(ctx, &ec2.DescribeRegionsInput{})
	if err != nil {
		return nil, fmt.Errorf("describing regions: %w", err)
	}
	var regions []string
	for _, rg := range out.Regions {
		regions = append(regions, aws.ToString(rg.RegionName))
	}
	sort.Strings(regions)
	return regions, nil
}

// Describe says where the figures come from, for a catalog file's source field.
func (r *Refresher) Describe() string {
	return "AWS APIs: EC2 DescribeInstanceTypes, DescribeInstanceTypeOfferings, DescribeSpotPriceHistory; Price List GetProducts"
}

// Refresh returns region's instance types that run Linux on amd64 or arm64, each with an
// on-demand and a spot offering per zone that offers it (where priced). Types AWS prices in
// neither market are left out.
func (r *Refresher) Refresh(ctx context.Context, region string) ([]instancetype.InstanceType, error) {
	c := r.EC2(region)
	types, err := describeTypes(ctx, c)
	if err != nil {
		return nil, err
	}
	zones, err := describeZones(ctx, c)
	if err != nil {
		return nil, err
	}
	clk := r.Clock
	if clk == nil {
		clk = clock.RealClock{}
	}
	spot, err := spotPrices(ctx, c, clk)
	if err != nil {
		return nil, err
	}
	onDemand, err := onDemandPrices(ctx, r.Pricing, region)
	if err != nil {
		return nil, err
	}
	baselines := r.Baselines
	if baselines == nil {
		baselines = embeddedBaselines()
	}
	out := make([]instancetype.InstanceType, 0, len(types))
	for _, it := range types {
		if it.Burstable {
			it.BaselineVCPU = min(baselines[it.Name], it.VCPU)
		}
		for _, z := range zones[it.Name] {
			if p, ok := onDemand[it.Name]; ok {
				it.Offerings = append(it.Offerings, instancetype.Offering{Zone: z, Price: p, Available: true})
			}
			if p, ok := spot[it.Name+"/"+z]; ok {
				it.Offerings = append(it.Offerings, instancetype.Offering{Zone: z, Spot: true, Price: p, Available: true})
			}
		}
		if len(it.Offerings) > 0 {
			out = append(out, it)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

func describeTypes(ctx context.Context, c EC2API) ([]instancetype.InstanceType, error) {
	var out []instancetype.InstanceType
	p := ec2.NewDescribeInstanceTypesPaginator(c, &ec2.DescribeInstanceTypesInput{MaxResults: aws.Int32(100)})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("describing instance types: %w", err)
		}
		for _, t := range page.InstanceTypes {
			it, ok := convertType(t)
			if ok {
				out = append(out, it)
			}
		}
	}
	return out, nil
}

// convertType maps an EC2 instance type; ok is false for architectures Kip does not run
// (i386-only, Mac) and for types without vCPU or memory figures.
func convertType(t ec2types.InstanceTypeInfo) (instancetype.InstanceType, bool) {
	it := instancetype.InstanceType{Name: string(t.InstanceType), Burstable: aws.ToBool(t.BurstablePerformanceSupported)}
	if t.ProcessorInfo != nil {
		for _, a := range t.ProcessorInfo.SupportedArchitectures {
			switch a {
			case ec2types.ArchitectureTypeX8664:
				it.Arch = instancetype.ArchAMD64
			case ec2types.ArchitectureTypeArm64:
				it.Arch = instancetype.ArchARM64
			}
		}
	}
	if t.VCpuInfo != nil {
		it.VCPU = float64(aws.ToInt32(t.VCpuInfo.DefaultVCpus))
	}
	if t.MemoryInfo != nil {
		it.MemoryMiB = aws.ToInt64(t.MemoryInfo.SizeInMiB)
	}
	if t.GpuInfo != nil {
		for _, g := range t.GpuInfo.Gpus {
			it.GPU += int(aws.ToInt32(g.Count))
			if it.GPUModel == "" {
				it.GPUVendor = strings.ToLower(aws.ToString(g.Manufacturer))
				it.GPUModel = strings.ToLower(aws.ToString(g.Manufacturer) + "-" + aws.ToString(g.Name))
			}
		}
	}
	return it, it.Arch != "" && it.VCPU > 0 && it.MemoryMiB > 0
}

// describeZones maps each instance type to the zones offering it.
func describeZones(ctx context.Context, c EC2API) (map[string][]string, error) {
	out := map[string][]string{}
	p := ec2.NewDescribeInstanceTypeOfferingsPaginator(c, &ec2.DescribeInstanceTypeOfferingsInput{
		LocationType: ec2types.LocationTypeAvailabilityZone, MaxResults: aws.Int32(1000)})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("describing instance type offerings: %w", err)
		}
		for _, o := range page.InstanceTypeOfferings {
			out[string(o.InstanceType)] = append(out[string(o.InstanceType)], aws.ToString(o.Location))
		}
	}
	for _, zs := range out {
		sort.Strings(zs)
	}
	return out, nil
}

// spotPrices returns the current Linux spot price per "type/zone". Asked with StartTime now,
// DescribeSpotPriceHistory returns the price in effect for every type and zone.
func spotPrices(ctx context.Context, c EC2API, clk clock.PassiveClock) (map[string]float64, error) {
	out := map[string]float64{}
	newest := map[string]int64{}
	p := ec2.NewDescribeSpotPriceHistoryPaginator(c, &ec2.DescribeSpotPriceHistoryInput{
		ProductDescriptions: []string{"Linux/UNIX"}, StartTime: aws.Time(clk.Now()), MaxResults: aws.Int32(1000)})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("describing spot prices: %w", err)
		}
		for _, sp := range page.SpotPriceHistory {
			price, err := strconv.ParseFloat(aws.ToString(sp.SpotPrice), 64)
			if err != nil {
				return nil, fmt.Errorf("describing spot prices: %s in %s: price %q: %w", sp.InstanceType, aws.ToString(sp.AvailabilityZone), aws.ToString(sp.SpotPrice), err)
			}
			key := string(sp.InstanceType) + "/" + aws.ToString(sp.AvailabilityZone)
			ts := aws.ToTime(sp.Timestamp).UnixNano()
			if old, ok := newest[key]; !ok || ts >= old {
				out[key], newest[key] = price, ts
			}
		}
	}
	return out, nil
}

// product is the part of a Price List product document the refresher reads.
type product struct {
	Product struct {
		Attributes map[string]string `json:"attributes"`
	} `json:"product"`
	Terms struct {
		OnDemand map[string]struct {
			PriceDimensions map[string]struct {
				Unit         string            `json:"unit"`
				PricePerUnit map[string]string `json:"pricePerUnit"`
			} `json:"priceDimensions"`
		} `json:"OnDemand"`
	} `json:"terms"`
}

// linuxShared are the Price List attributes of a plain Linux, shared-tenancy, used-capacity
// instance hour: the price Kip pays for a cell.
var linuxShared = map[string]string{
	"operatingSystem": "Linux", "tenancy": "Shared", "preInstalledSw": "NA", "capacitystatus": "Used",
}

// onDemandPrices returns the on-demand USD hourly price per instance type in region.
func onDemandPrices(ctx context.Context, c PricingAPI, region string) (map[string]float64, error) {
	in := &pricing.GetProductsInput{ServiceCode: aws.String("AmazonEC2"), FormatVersion: aws.String("aws_v1"), MaxResults: aws.Int32(100),
		Filters: []pricingtypes.Filter{{Type: pricingtypes.FilterTypeTermMatch, Field: aws.String("regionCode"), Value: aws.String(region)}}}
	keys := make([]string, 0, len(linuxShared))
	for k := range linuxShared {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		in.Filters = append(in.Filters, pricingtypes.Filter{Type: pricingtypes.FilterTypeTermMatch, Field: aws.String(k), Value: aws.String(linuxShared[k])})
	}
	out := map[string]float64{}
	p := pricing.NewGetProductsPaginator(c, in)
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("getting EC2 prices for %s: %w", region, err)
		}
		for _, doc := range page.PriceList {
			var pr product
			if err := json.Unmarshal([]byte(doc), &pr); err != nil {
				return nil, fmt.Errorf("getting EC2 prices for %s: decoding a product: %w", region, err)
			}
			attrs := pr.Product.Attributes
			match := attrs["instanceType"] != ""
			for k, v := range linuxShared {
				match = match && attrs[k] == v
			}
			if !match {
				continue
			}
			for _, term := range pr.Terms.OnDemand {
				for _, dim := range term.PriceDimensions {
					usd, ok := dim.PricePerUnit["USD"]
					if !ok || dim.Unit != "Hrs" {
						continue
					}
					price, err := strconv.ParseFloat(usd, 64)
					if err != nil {
						return nil, fmt.Errorf("getting EC2 prices for %s: %s: price %q: %w", region, attrs["instanceType"], usd, err)
					}
					out[attrs["instanceType"]] = price
				}
			}
		}
	}
	return out, nil
}

// embeddedBaselines returns the burstable baselines of the embedded AWS catalog, any region.
func embeddedBaselines() map[string]float64 {
	out := map[string]float64{}
	regions, err := instancetype.Regions("aws")
	if err != nil {
		return out
	}
	for _, r := range regions {
		types, err := instancetype.Load("aws", r)
		if err != nil {
			continue
		}
		for _, t := range types {
			if t.Burstable {
				out[t.Name] = t.BaselineVCPU
			}
		}
	}
	return out
}
