package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/kip-dev/kip/internal/instancetype"
)

// entry2020 is one instance type in one region in the 2020 price-list files.
type entry2020 struct {
	InstanceType string  `json:"instanceType"`
	CPU          float64 `json:"cpu"`
	Memory       float64 `json:"memory"` // GiB
	GPU          int     `json:"gpu"`
	Burstable    bool    `json:"burstable"`
	Baseline     float64 `json:"baseline"`  // vCPUs sustained without credits
	Price        float64 `json:"price"`     // on-demand, USD per hour
	SpotPrice    float64 `json:"spotPrice"` // USD per hour
	Generation   string  `json:"generation"`
}

// source2020 reads <data>/<cloud>-instance-types-2020.json. Zones are not in the data, so each
// type gets one region-wide offering per market.
type source2020 struct {
	cloud, file string
	regions     map[string][]entry2020
}

func newSource2020(cloud string, f *flags) (Source, error) {
	file := filepath.Join(f.data, cloud+"-instance-types-2020.json")
	raw, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("reading 2020 data: %w", err)
	}
	s := &source2020{cloud: cloud, file: filepath.Base(file)}
	dec := json.NewDecoder(strings.NewReader(string(raw)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&s.regions); err != nil {
		return nil, fmt.Errorf("decoding %s: %w", file, err)
	}
	return s, nil
}

func (s *source2020) Describe() string {
	return s.file + ": public price lists, December 2020 (zones unknown: one region-wide offering per market)"
}

func (s *source2020) Regions(context.Context) ([]string, error) {
	out := make([]string, 0, len(s.regions))
	for r := range s.regions {
		out = append(out, r)
	}
	sort.Strings(out)
	return out, nil
}

func (s *source2020) Refresh(_ context.Context, region string) ([]instancetype.InstanceType, error) {
	entries, ok := s.regions[region]
	if !ok {
		return nil, fmt.Errorf("region %q is not in %s", region, s.file)
	}
	var out []instancetype.InstanceType
	for _, e := range entries {
		if skip2020(s.cloud, e.InstanceType) {
			continue
		}
		t := instancetype.InstanceType{
			Name:      e.InstanceType,
			Arch:      arch(s.cloud, e.InstanceType),
			VCPU:      e.CPU,
			MemoryMiB: int64(math.Round(e.Memory * 1024)),
			GPU:       e.GPU,
			Burstable: e.Burstable,
		}
		if t.Burstable {
			t.BaselineVCPU = e.Baseline
		}
		t.GPUModel = gpuModel(s.cloud, e.InstanceType)
		if s.cloud == "azure" {
			azureFacts(&t)
		}
		if t.GPU > 0 {
			t.GPUVendor = t.GPUMaker() // every GPU of the 2020 data is NVIDIA's (its model says so)
		}
		if e.Price > 0 {
			t.Offerings = append(t.Offerings, instancetype.Offering{Price: e.Price, Available: true})
		}
		if e.SpotPrice > 0 {
			t.Offerings = append(t.Offerings, instancetype.Offering{Spot: true, Price: e.SpotPrice, Available: true})
		}
		if len(t.Offerings) == 0 {
			continue
		}
		out = append(out, t)
	}
	return out, nil
}

// skip2020 drops types Kip cannot boot: AWS t1 is paravirtual-only, and cell images are HVM
// (the original Kip dropped t1 for the same reason).
func skip2020(cloud, name string) bool {
	return cloud == "aws" && family(name) == "t1"
}

func family(name string) string {
	f, _, _ := strings.Cut(name, ".")
	return f
}

// gravitonFamily matches AWS Graviton families: a1, and a "g" right after the generation digit
// (m6g, c6gd, c6gn, r6g, t4g, x2gd, ...).
var gravitonFamily = regexp.MustCompile(`^(a1|[a-z]+\d+g[a-z]*)$`)

// arch infers the architecture, which the 2020 data does not give: all amd64 except AWS
// Graviton types.
func arch(cloud, name string) string {
	if cloud == "aws" && gravitonFamily.MatchString(family(name)) {
		return instancetype.ArchARM64
	}
	return instancetype.ArchAMD64
}

// awsGPUModels are the accelerators of the AWS GPU families, from the EC2 instance type pages.
var awsGPUModels = map[string]string{
	"p2": "nvidia-k80", "p3": "nvidia-v100", "p3dn": "nvidia-v100", "p4d": "nvidia-a100",
	"g2": "nvidia-grid-k520", "g3": "nvidia-m60", "g3s": "nvidia-m60", "g4dn": "nvidia-t4",
}

func gpuModel(cloud, name string) string {
	if cloud == "aws" {
		return awsGPUModels[family(name)]
	}
	return ""
}

// azureGPU matches the Azure N-series sizes whose GPU count the 2020 data leaves at zero:
// series (NC, ND, NV), vCPUs, optional r (RDMA), optional s (premium storage), version.
var azureGPU = regexp.MustCompile(`^Standard_N([CDV])(\d+)r?(s?)(_v\d)?(_Promo)?$`)

// azureBurstableBaseline is the B-series baseline in vCPUs ("base CPU performance of VM" in
// the Azure B-series documentation), which the 2020 data does not mark as burstable.
var azureBurstableBaseline = map[string]float64{
	"Standard_B1ls": 0.05, "Standard_B1s": 0.1, "Standard_B1ms": 0.2, "Standard_B2s": 0.4,
	"Standard_B2ms": 0.6, "Standard_B4ms": 0.9, "Standard_B8ms": 1.35, "Standard_B12ms": 2.025,
	"Standard_B16ms": 2.7, "Standard_B20ms": 3.375,
}

// azureFacts fills in what the 2020 Azure data lacks: B-series credits and N-series GPUs.
func azureFacts(t *instancetype.InstanceType) {
	if b, ok := azureBurstableBaseline[t.Name]; ok {
		t.Burstable, t.BaselineVCPU = true, b
	}
	m := azureGPU.FindStringSubmatch(t.Name)
	if m == nil || t.GPU > 0 {
		return
	}
	cpus, _ := strconv.Atoi(m[2])
	series, version := m[1], m[4]
	switch {
	case series == "C" && version == "":
		t.GPU, t.GPUModel = cpus/6, "nvidia-k80"
	case series == "C" && version == "_v2":
		t.GPU, t.GPUModel = cpus/6, "nvidia-p100"
	case series == "C" && version == "_v3":
		t.GPU, t.GPUModel = cpus/6, "nvidia-v100"
	case series == "D" && version == "":
		t.GPU, t.GPUModel = cpus/6, "nvidia-p40"
	case series == "D" && version == "_v2" && cpus == 40:
		t.GPU, t.GPUModel = 8, "nvidia-v100"
	case series == "V" && version == "" || series == "V" && version == "_v2":
		t.GPU, t.GPUModel = cpus/6, "nvidia-m60"
	case series == "V" && version == "_v3":
		t.GPU, t.GPUModel = cpus/12, "nvidia-m60"
	}
}
