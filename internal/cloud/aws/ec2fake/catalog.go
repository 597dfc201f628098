package ec2fake

import (
	"cmp"
	"slices"
	"strconv"
	"strings"
)

type instanceTypeXML struct {
	InstanceType      string   `xml:"instanceType"`
	CurrentGeneration bool     `xml:"currentGeneration"`
	Burstable         bool     `xml:"burstablePerformanceSupported"`
	UsageClasses      []string `xml:"supportedUsageClasses>item"`
	Processor         struct {
		Architectures []string `xml:"supportedArchitectures>item"`
	} `xml:"processorInfo"`
	VCPU struct {
		DefaultVCpus int `xml:"defaultVCpus"`
	} `xml:"vCpuInfo"`
	Memory struct {
		SizeInMiB int64 `xml:"sizeInMiB"`
	} `xml:"memoryInfo"`
	GPU *gpuInfoXML `xml:"gpuInfo,omitempty"`
}

type gpuInfoXML struct {
	GPUs []struct {
		Name         string `xml:"name"`
		Manufacturer string `xml:"manufacturer"`
		Count        int    `xml:"count"`
	} `xml:"gpus>item"`
}

type describeInstanceTypesResponse struct {
	header
	Types     []instanceTypeXML `xml:"instanceTypeSet>item"`
	NextToken string            `xml:"nextToken,omitempty"`
}

type offeringXML struct {
	InstanceType string `xml:"instanceType"`
	LocationType string `xml:"locationType"`
	Location     string `xml:"location"`
}

type describeOfferingsResponse struct {
	header
	Offerings []offeringXML `xml:"instanceTypeOfferingSet>item"`
	NextToken string        `xml:"nextToken,omitempty"`
}

type spotPriceXML struct {
	InstanceType       string `xml:"instanceType"`
	ProductDescription string `xml:"productDescription"`
	SpotPrice          string `xml:"spotPrice"`
	Timestamp          string `xml:"timestamp"`
	AvailabilityZone   string `xml:"availabilityZone"`
}

type describeSpotPriceHistoryResponse struct {
	header
	Prices    []spotPriceXML `xml:"spotPriceHistorySet>item"`
	NextToken string         `xml:"nextToken,omitempty"`
}

func (s *Server) describeInstanceTypes(q query) (any, *apiError) {
	names := q.list("InstanceType")
	var unknown []string
	for _, n := range names {
		if _, ok := s.typeByName(n); !ok {
			unknown = append(unknown, n)
		}
	}
	if len(unknown) > 0 {
		return nil, errorf("InvalidInstanceType", "The following supplied instance types do not exist: [%s]", strings.Join(unknown, ", "))
	}
	var match []instanceTypeXML
	for _, t := range s.types {
		if len(names) > 0 && !slices.Contains(names, t.Name) {
			continue
		}
		ok, err := matchAll(q.filters(), nil, map[string]string{"instance-type": t.Name, "processor-info.supported-architecture": t.Arch,
			"current-generation": "true", "burstable-performance-supported": strconv.FormatBool(t.Burstable)})
		if err != nil {
			return nil, err
		}
		if !ok {
			continue
		}
		x := instanceTypeXML{InstanceType: t.Name, CurrentGeneration: true, Burstable: t.Burstable, UsageClasses: []string{"on-demand", "spot"}}
		x.Processor.Architectures = []string{t.Arch}
		x.VCPU.DefaultVCpus = t.VCPU
		x.Memory.SizeInMiB = t.MemoryMiB
		if t.GPUs > 0 {
			x.GPU = &gpuInfoXML{}
			x.GPU.GPUs = append(x.GPU.GPUs, struct {
				Name         string `xml:"name"`
				Manufacturer string `xml:"manufacturer"`
				Count        int    `xml:"count"`
			}{t.GPUName, cmp.Or(t.GPUVendor, "NVIDIA"), t.GPUs})
		}
		match = append(match, x)
	}
	pg, next, err := page(q, match, 5, 100)
	if err != nil {
		return nil, err
	}
	return &describeInstanceTypesResponse{Types: pg, NextToken: next}, nil
}

func (s *Server) describeInstanceTypeOfferings(q query) (any, *apiError) {
	lt := q.str("LocationType")
	if lt == "" {
		lt = "region"
	}
	if lt != "region" && lt != "availability-zone" {
		return nil, errorf("InvalidParameterValue", "Value (%s) for parameter LocationType is invalid.", lt)
	}
	var match []offeringXML
	for _, t := range s.types {
		locs := []string{s.opts.Region}
		if lt == "availability-zone" {
			locs = nil
			for _, z := range s.zones() {
				if t.offeredIn(z, s.zones()) {
					locs = append(locs, z)
				}
			}
		}
		for _, l := range locs {
			ok, err := matchAll(q.filters(), nil, map[string]string{"instance-type": t.Name, "location": l})
			if err != nil {
				return nil, err
			}
			if ok {
				match = append(match, offeringXML{InstanceType: t.Name, LocationType: lt, Location: l})
			}
		}
	}
	pg, next, err := page(q, match, 5, 1000)
	if err != nil {
		return nil, err
	}
	return &describeOfferingsResponse{Offerings: pg, NextToken: next}, nil
}

func (s *Server) describeSpotPriceHistory(q query) (any, *apiError) {
	names, products, zone := q.list("InstanceType"), q.list("ProductDescription"), q.str("AvailabilityZone")
	now := s.clk.Now().UTC().Format("2006-01-02T15:04:05.000Z")
	var match []spotPriceXML
	for _, t := range s.types {
		if len(names) > 0 && !slices.Contains(names, t.Name) {
			continue
		}
		for _, z := range s.zones() {
			if !t.offeredIn(z, s.zones()) || zone != "" && z != zone {
				continue
			}
			for _, pd := range []string{"Linux/UNIX", "Linux/UNIX (Amazon VPC)"} {
				if len(products) > 0 && !slices.Contains(products, pd) {
					continue
				}
				ok, err := matchAll(q.filters(), nil, map[string]string{"instance-type": t.Name, "availability-zone": z, "product-description": pd})
				if err != nil {
					return nil, err
				}
				if ok {
					match = append(match, spotPriceXML{InstanceType: t.Name, ProductDescription: pd,
						SpotPrice: strconv.FormatFloat(t.SpotPrice, 'f', 6, 64), Timestamp: now, AvailabilityZone: z})
				}
			}
		}
	}
	pg, next, err := page(q, match, 0, 1000)
	if err != nil {
		return nil, err
	}
	return &describeSpotPriceHistoryResponse{Prices: pg, NextToken: next}, nil
}

type regionXML struct {
	RegionName     string `xml:"regionName"`
	RegionEndpoint string `xml:"regionEndpoint"`
	OptInStatus    string `xml:"optInStatus"`
}

type describeRegionsResponse struct {
	header
	Regions []regionXML `xml:"regionInfo>item"`
}

// describeRegions lists the fake's own region and one other, both enabled.
func (s *Server) describeRegions(q query) (any, *apiError) {
	names := q.list("RegionName")
	resp := &describeRegionsResponse{}
	for _, r := range []string{s.opts.Region, otherRegion(s.opts.Region)} {
		if len(names) > 0 && !slices.Contains(names, r) {
			continue
		}
		resp.Regions = append(resp.Regions, regionXML{RegionName: r, RegionEndpoint: "ec2." + r + ".amazonaws.com", OptInStatus: "opt-in-not-required"})
	}
	return resp, nil
}

func otherRegion(r string) string {
	if r == "eu-west-1" {
		return "us-east-1"
	}
	return "eu-west-1"
}
