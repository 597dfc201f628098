package instancetype

import (
	"bytes"
	"errors"
	"slices"
	"strings"
	"testing"
)

func TestLoad(t *testing.T) {
	tests := []struct {
		cloud, region string
		minTypes      int
		check         string // a type that must be there
		vcpu          float64
		memMiB        int64
		onDemand      float64
		arch          string
	}{
		{"aws", "us-east-1", 250, "m5.large", 2, 8192, 0.096, ArchAMD64},
		{"aws", "eu-west-1", 200, "c5.xlarge", 4, 8192, 0.192, ArchAMD64},
		{"aws", "us-west-2", 200, "t3.nano", 2, 512, 0.0052, ArchAMD64},
		{"azure", "East US", 300, "Standard_D2s_v3", 2, 8192, 0.096, ArchAMD64},
		{"azure", "westeurope", 300, "Standard_B1s", 1, 1024, 0, ArchAMD64},
		{"local", "local", 5, "local.small", 1, 1024, 0.01, ArchAMD64},
	}
	for _, tt := range tests {
		t.Run(tt.cloud+"/"+tt.region, func(t *testing.T) {
			types, err := Load(tt.cloud, tt.region)
			if err != nil {
				t.Fatal(err)
			}
			if len(types) < tt.minTypes {
				t.Fatalf("got %d types, want at least %d", len(types), tt.minTypes)
			}
			if err := Validate(types); err != nil {
				t.Fatalf("embedded catalog invalid: %v", err)
			}
			i := slices.IndexFunc(types, func(it InstanceType) bool { return it.Name == tt.check })
			if i < 0 {
				t.Fatalf("%s missing", tt.check)
			}
			it := types[i]
			if it.VCPU != tt.vcpu || it.MemoryMiB != tt.memMiB || it.Arch != tt.arch {
				t.Errorf("%s = %v vCPU %d MiB %s, want %v %d %s", it.Name, it.VCPU, it.MemoryMiB, it.Arch, tt.vcpu, tt.memMiB, tt.arch)
			}
			od, ok := Offerings(it.Offerings).Compatible(false, nil).Cheapest()
			if !ok || (tt.onDemand != 0 && od.Price != tt.onDemand) {
				t.Errorf("%s on-demand = %v (%v), want %v", it.Name, od.Price, ok, tt.onDemand)
			}
		})
	}
}

func TestLoadFacts(t *testing.T) {
	types, err := Load("aws", "us-east-1")
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]InstanceType{}
	for _, it := range types {
		byName[it.Name] = it
	}
	if it := byName["t3.micro"]; !it.Burstable || it.BaselineVCPU != 0.2 {
		t.Errorf("t3.micro burstable=%v baseline=%v, want true 0.2", it.Burstable, it.BaselineVCPU)
	}
	if it := byName["p3.2xlarge"]; it.GPU != 1 || it.GPUModel != "nvidia-v100" {
		t.Errorf("p3.2xlarge gpu=%d %q, want 1 nvidia-v100", it.GPU, it.GPUModel)
	}
	if _, ok := byName["t1.micro"]; ok {
		t.Error("t1.micro (paravirtual only) should not be in the catalog")
	}
	if it := byName["m5.large"]; len(Offerings(it.Offerings).Compatible(true, nil)) != 1 {
		t.Errorf("m5.large offerings %+v: want one spot offering", it.Offerings)
	}
	az, err := Load("azure", "eastus")
	if err != nil {
		t.Fatal(err)
	}
	for _, it := range az {
		if it.Name == "Standard_NC6s_v3" && (it.GPU != 1 || it.GPUModel != "nvidia-v100") {
			t.Errorf("Standard_NC6s_v3 gpu=%d %q, want 1 nvidia-v100", it.GPU, it.GPUModel)
		}
		if it.Name == "Standard_B2s" && (!it.Burstable || it.BaselineVCPU != 0.4) {
			t.Errorf("Standard_B2s burstable=%v baseline=%v, want true 0.4", it.Burstable, it.BaselineVCPU)
		}
	}
}

func TestLoadErrors(t *testing.T) {
	tests := []struct {
		cloud, region string
		want          error
	}{
		{"gcp", "us-central1", ErrUnknownCloud},
		{"", "x", ErrUnknownCloud},
		{"../catalog/aws", "us-east-1", ErrUnknownCloud},
		{"aws", "mars-north-1", ErrUnknownRegion},
		{"aws", "", ErrUnknownRegion},
	}
	for _, tt := range tests {
		t.Run(tt.cloud+"/"+tt.region, func(t *testing.T) {
			_, err := Load(tt.cloud, tt.region)
			if !errors.Is(err, tt.want) {
				t.Fatalf("Load error = %v, want %v", err, tt.want)
			}
			if !strings.Contains(err.Error(), tt.cloud) {
				t.Errorf("error %q does not name %q", err, tt.cloud)
			}
		})
	}
}

func TestLoadReturnsCopies(t *testing.T) {
	a, err := Load("aws", "us-east-1")
	if err != nil {
		t.Fatal(err)
	}
	name, price := a[0].Name, a[0].Offerings[0].Price
	a[0].Offerings[0].Price = 999
	a[0].Offerings[0].Available = false
	b, _ := Load("aws", "us-east-1")
	if b[0].Name != name || b[0].Offerings[0].Price != price || !b[0].Offerings[0].Available {
		t.Fatalf("Load shared state with an earlier caller: %+v", b[0])
	}
}

func TestRegionsAndClouds(t *testing.T) {
	if got := Clouds(); !slices.Equal(got, []string{"aws", "azure", "local"}) {
		t.Errorf("Clouds() = %v", got)
	}
	for cloud, want := range map[string]int{"aws": 20, "azure": 29, "local": 1} {
		rs, err := Regions(cloud)
		if err != nil || len(rs) != want || !slices.IsSorted(rs) {
			t.Errorf("Regions(%s) = %v, %v; want %d sorted", cloud, rs, err, want)
		}
	}
	if _, err := Regions("nope"); !errors.Is(err, ErrUnknownCloud) {
		t.Errorf("Regions(nope) error = %v", err)
	}
}

func TestDecodeFileRejects(t *testing.T) {
	tests := map[string]struct{ in, want string }{
		"unknown field": {`{"cloud":"x","regions":{"r":[]},"extra":1}`, "unknown field"},
		"empty region":  {`{"cloud":"x","regions":{"r":[]}}`, "regions[r]: catalog is empty"},
		"not json":      {`nope`, "decoding catalog"},
		"bad type":      {`{"cloud":"x","regions":{"r":[{"name":"a","arch":"s390x","vcpu":1,"memoryMiB":1,"offerings":[{"price":1}]}]}}`, "arch"},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := DecodeFile(strings.NewReader(tt.in))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("DecodeFile error = %v, want it to mention %q", err, tt.want)
			}
		})
	}
}

func TestEncodeRoundTrip(t *testing.T) {
	types, _ := Load("local", "local")
	for _, compress := range []bool{false, true} {
		f := &File{Cloud: "local", Source: "test", Regions: map[string][]InstanceType{"local": types}}
		var buf bytes.Buffer
		if err := f.Encode(&buf, compress); err != nil {
			t.Fatal(err)
		}
		got, err := DecodeFile(&buf)
		if err != nil {
			t.Fatalf("compress=%v: %v", compress, err)
		}
		if len(got.Regions["local"]) != len(types) || got.Regions["local"][0].Name != types[0].Name {
			t.Errorf("compress=%v: round trip changed the types", compress)
		}
	}
}

// TestEmbeddedGPUVendors: every embedded type with GPUs says who makes them, so that a GPU
// resource (nvidia.com/gpu, amd.com/gpu) reaches only its maker's types.
func TestEmbeddedGPUVendors(t *testing.T) {
	for _, cloud := range []string{"aws", "azure"} {
		types, err := Load(cloud, map[string]string{"aws": "us-east-1", "azure": "eastus"}[cloud])
		if err != nil {
			t.Fatal(err)
		}
		gpus := 0
		for _, it := range types {
			if it.GPU > 0 {
				gpus++
				if it.GPUVendor != "nvidia" {
					t.Errorf("%s %s: %d GPUs (%s) by %q, want nvidia", cloud, it.Name, it.GPU, it.GPUModel, it.GPUVendor)
				}
			}
		}
		if gpus == 0 {
			t.Errorf("%s: no GPU types", cloud)
		}
	}
}
