package catalogapi_test

import (
	"context"
	"fmt"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"

	"github.com/kip-dev/kip/internal/cloud/aws/catalogapi"
	"github.com/kip-dev/kip/internal/cloud/aws/ec2fake"
	"github.com/kip-dev/kip/internal/instancetype"
)

func setup(t *testing.T) (*catalogapi.Refresher, *ec2fake.Server) {
	t.Helper()
	f := ec2fake.New(ec2fake.Options{})
	ec2Srv := httptest.NewServer(f)
	t.Cleanup(ec2Srv.Close)
	priceSrv := httptest.NewServer(f.PricingHandler())
	t.Cleanup(priceSrv.Close)
	cfg := aws.Config{Region: "us-east-1", Credentials: credentials.NewStaticCredentialsProvider("AKIDKIPTEST", "secret", ""), RetryMaxAttempts: 1}
	return catalogapi.New(cfg, ec2Srv.URL, priceSrv.URL), f
}

func TestRefresh(t *testing.T) {
	r, f := setup(t)
	types, err := r.Refresh(context.Background(), "us-east-1")
	if err != nil {
		t.Fatalf("Refresh: %v", err)
	}
	if err := instancetype.Validate(types); err != nil {
		t.Errorf("refreshed catalog does not validate: %v", err)
	}
	byName := map[string]instancetype.InstanceType{}
	for _, it := range types {
		byName[it.Name] = it
	}
	if len(types) != len(f.InstanceTypes()) {
		t.Errorf("Refresh returned %d types, the fake serves %d", len(types), len(f.InstanceTypes()))
	}
	offer := func(it instancetype.InstanceType) string {
		var parts []string
		for _, o := range it.Offerings {
			m := "od"
			if o.Spot {
				m = "spot"
			}
			parts = append(parts, o.Zone+" "+m+" "+strconv.FormatFloat(o.Price, 'f', -1, 64))
		}
		return strings.Join(parts, ", ")
	}
	tests := []struct {
		name      string
		arch      string
		vcpu      float64
		mem       int64
		gpu       int
		gpuModel  string
		burstable bool
		baseline  float64
		offerings string
	}{
		{"t3.nano", "amd64", 2, 512, 0, "", true, 0.1, "us-east-1a od 0.0052, us-east-1a spot 0.0016, us-east-1b od 0.0052, us-east-1b spot 0.0016"},
		{"m6g.large", "arm64", 2, 8192, 0, "", false, 0, "us-east-1a od 0.077, us-east-1a spot 0.0298, us-east-1b od 0.077, us-east-1b spot 0.0298"},
		{"g4dn.xlarge", "amd64", 4, 16384, 1, "nvidia-t4", false, 0, "us-east-1a od 0.526, us-east-1a spot 0.1578"},
		{"g4ad.xlarge", "amd64", 4, 16384, 1, "amd-radeon pro v520", false, 0, "us-east-1a od 0.379, us-east-1a spot 0.1137, us-east-1b od 0.379, us-east-1b spot 0.1137"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			it, ok := byName[tc.name]
			if !ok {
				t.Fatalf("%s missing", tc.name)
			}
			if it.Arch != tc.arch || it.VCPU != tc.vcpu || it.MemoryMiB != tc.mem || it.GPU != tc.gpu || it.GPUModel != tc.gpuModel ||
				it.Burstable != tc.burstable || it.BaselineVCPU != tc.baseline {
				t.Errorf("%s = %+v", tc.name, it)
			}
			if wantVendor, _, _ := strings.Cut(tc.gpuModel, "-"); it.GPUVendor != wantVendor {
				t.Errorf("%s GPU vendor %q, want %q", tc.name, it.GPUVendor, wantVendor)
			}
			if got := offer(it); got != tc.offerings {
				t.Errorf("%s offerings = %s, want %s", tc.name, got, tc.offerings)
			}
		})
	}
	for _, a := range []string{"DescribeInstanceTypes", "DescribeInstanceTypeOfferings", "DescribeSpotPriceHistory", "GetProducts"} {
		if f.Calls(a) != 1 {
			t.Errorf("%s called %d times, want once", a, f.Calls(a))
		}
	}
}

func TestRefreshFailureKeepsLiveCatalog(t *testing.T) {
	r, f := setup(t)
	live := &instancetype.Live{Cloud: "aws", Region: "us-east-1", Refresher: r}
	before, err := live.InstanceTypes()
	if err != nil {
		t.Fatal(err)
	}
	f.InjectError("DescribeSpotPriceHistory", "UnauthorizedOperation", "You are not authorized to perform this operation.", 1)
	if err := live.Refresh(context.Background()); err == nil || !strings.Contains(err.Error(), "UnauthorizedOperation") {
		t.Fatalf("Refresh with spot prices refused: %v, want the EC2 error", err)
	}
	if live.Origin() != "embedded" {
		t.Errorf("after a failed refresh the catalog comes from %q, want embedded", live.Origin())
	}
	if err := live.Refresh(context.Background()); err != nil {
		t.Fatalf("Refresh: %v", err)
	}
	after, _ := live.InstanceTypes()
	if live.Origin() != "refreshed" || len(after) != len(f.InstanceTypes()) || len(before) == len(after) {
		t.Errorf("after a refresh: origin %q, %d types (embedded had %d)", live.Origin(), len(after), len(before))
	}
}

func TestRefreshPaginates(t *testing.T) {
	r, f := setup(t)
	var many []ec2fake.InstanceType
	for i := range 250 {
		many = append(many, ec2fake.InstanceType{Name: "z" + strconv.Itoa(i) + ".large", Arch: "x86_64", VCPU: 2, MemoryMiB: 4096,
			OnDemandPrice: 0.1 + float64(i)/1000, SpotPrice: 0.03})
	}
	f.SetInstanceTypes(many)
	types, err := r.Refresh(context.Background(), "us-east-1")
	if err != nil {
		t.Fatal(err)
	}
	if len(types) != 250 {
		t.Errorf("Refresh returned %d types, want 250", len(types))
	}
	for _, it := range types {
		var i int
		if _, err := fmt.Sscanf(it.Name, "z%d.large", &i); err != nil || it.Offerings[0].Price != 0.1+float64(i)/1000 {
			t.Errorf("%s: on-demand %v, want %v", it.Name, it.Offerings[0].Price, 0.1+float64(i)/1000)
			break
		}
	}
	if f.Calls("DescribeInstanceTypes") != 3 || f.Calls("GetProducts") != 3 {
		t.Errorf("calls %v: want 3 pages of DescribeInstanceTypes and of GetProducts", f.CallCounts())
	}
}

func TestRegions(t *testing.T) {
	r, _ := setup(t)
	regions, err := r.Regions(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(regions, ",") != "eu-west-1,us-east-1" {
		t.Errorf("Regions = %v, want [eu-west-1 us-east-1]", regions)
	}
}
