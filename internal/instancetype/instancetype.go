// Package instancetype describes the instance types a cloud offers (capacity plus priced
// offerings per zone and market) and loads catalogs of them. Capacity is data: the catalogs are
// embedded JSON, refreshable from the clouds' APIs.
package instancetype

import "strings"

// Offering is one way to buy an instance type: a zone and a market, at a price.
type Offering struct {
	Zone string `json:"zone,omitempty"`
	// Spot is true for spot (preemptible) capacity, false for on-demand.
	Spot bool `json:"spot"`
	// Price is in USD per hour.
	Price float64 `json:"price"`
	// Available is false when the offering is known to lack capacity right now.
	Available bool `json:"available"`
}

// InstanceType is an instance type's capacity and how it can be bought.
type InstanceType struct {
	Name string `json:"name"`
	// Arch is "amd64" or "arm64".
	Arch string `json:"arch"`
	// VCPU is the number of virtual CPUs.
	VCPU float64 `json:"vcpu"`
	// MemoryMiB is the memory in MiB.
	MemoryMiB int64 `json:"memoryMiB"`
	GPU       int   `json:"gpu,omitempty"`
	// GPUVendor makes the GPUs, lower case: "nvidia", "amd". A pod's GPU resource names its
	// vendor (nvidia.com/gpu, amd.com/gpu), so only that vendor's GPUs serve it.
	GPUVendor string `json:"gpuVendor,omitempty"`
	// GPUModel names the accelerator, e.g. "nvidia-t4".
	GPUModel string `json:"gpuModel,omitempty"`
	// Burstable types earn CPU credits; BaselineVCPU is what they sustain without credits.
	Burstable    bool       `json:"burstable,omitempty"`
	BaselineVCPU float64    `json:"baselineVCPU,omitempty"`
	Offerings    []Offering `json:"offerings"`
}

// GPUMaker returns who makes t's GPUs: GPUVendor, else the vendor prefix of GPUModel
// ("nvidia-t4"), else "nvidia" for a type with GPUs and neither (catalogs written before
// GPUVendor listed only NVIDIA parts); "" for a type without GPUs.
func (t *InstanceType) GPUMaker() string {
	switch {
	case t.GPU == 0:
		return ""
	case t.GPUVendor != "":
		return t.GPUVendor
	case t.GPUModel != "":
		v, _, _ := strings.Cut(t.GPUModel, "-")
		return v
	}
	return "nvidia"
}
