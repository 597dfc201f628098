package main

import (
	"bytes"
	"context"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/kip-dev/kip/internal/cloud/aws/ec2fake"
	"github.com/kip-dev/kip/internal/instancetype"
)

// TestEmbeddedCatalogIsGenerated regenerates the catalogs from the 2020 data and checks the
// embedded files are exactly what the generator makes, so nobody edits them by hand.
func TestEmbeddedCatalogIsGenerated(t *testing.T) {
	data := filepath.Join("..", "..", "..", "shared", "data")
	if _, err := os.Stat(filepath.Join(data, "aws-instance-types-2020.json")); err != nil {
		t.Skipf("2020 data not found at %s (it lives beside the repository): %v", data, err)
	}
	out := t.TempDir()
	if err := run(context.Background(), []string{"-data", data, "-out", out}); err != nil {
		t.Fatal(err)
	}
	for _, cloud := range []string{"aws", "azure"} {
		got, err := os.ReadFile(filepath.Join(out, cloud+".json.gz"))
		if err != nil {
			t.Fatal(err)
		}
		want, err := os.ReadFile(filepath.Join("..", "..", "internal", "instancetype", "catalog", cloud+".json.gz"))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s: embedded catalog differs from the generator's output; run go run ./hack/gen-catalog", cloud)
		}
	}
}

func TestArchAndGPU(t *testing.T) {
	tests := []struct {
		cloud, name, arch, gpuModel string
	}{
		{"aws", "m5.large", "amd64", ""},
		{"aws", "a1.large", "arm64", ""},
		{"aws", "m6g.xlarge", "arm64", ""},
		{"aws", "c6gn.large", "arm64", ""},
		{"aws", "t4g.nano", "arm64", ""},
		{"aws", "g4dn.xlarge", "amd64", "nvidia-t4"},
		{"aws", "p3dn.24xlarge", "amd64", "nvidia-v100"},
		{"azure", "Standard_D2s_v3", "amd64", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := arch(tt.cloud, tt.name); got != tt.arch {
				t.Errorf("arch = %s, want %s", got, tt.arch)
			}
			if got := gpuModel(tt.cloud, tt.name); got != tt.gpuModel {
				t.Errorf("gpuModel = %q, want %q", got, tt.gpuModel)
			}
		})
	}
}

func TestUnknownSource(t *testing.T) {
	if err := run(context.Background(), []string{"-source", "nope"}); err == nil {
		t.Fatal("want an error for an unknown source")
	}
}

// TestAWSAPISource regenerates the AWS catalog from the APIs, with the SDK pointed at the EC2
// and Price List fakes: every region the account lists (or those of -regions), each with the
// fake's instance types and prices.
func TestAWSAPISource(t *testing.T) {
	t.Setenv("AWS_ACCESS_KEY_ID", "AKIDKIPTEST")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "secret")
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	t.Setenv("AWS_PROFILE", "")
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(t.TempDir(), "none"))
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(t.TempDir(), "none"))
	f := ec2fake.New(ec2fake.Options{})
	ec2Srv := httptest.NewServer(f)
	t.Cleanup(ec2Srv.Close)
	priceSrv := httptest.NewServer(f.PricingHandler())
	t.Cleanup(priceSrv.Close)
	endpoints := []string{"-source", "aws-api", "-ec2-endpoint", ec2Srv.URL, "-pricing-endpoint", priceSrv.URL}

	tests := []struct {
		name        string
		args        []string
		wantRegions []string
		wantErr     string
	}{
		{"every region", nil, []string{"eu-west-1", "us-east-1"}, ""},
		{"some regions", []string{"-regions", "us-east-1"}, []string{"us-east-1"}, ""},
		{"unknown region", []string{"-regions", "us-east-1,xx-west-9"}, nil, `"xx-west-9" is not among the account's regions`},
		{"not aws", []string{"-clouds", "azure"}, nil, "aws only"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out := t.TempDir()
			err := run(context.Background(), append(append([]string{"-out", out}, endpoints...), tt.args...))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("run: %v, want an error mentioning %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("run: %v", err)
			}
			fh, err := os.Open(filepath.Join(out, "aws.json.gz"))
			if err != nil {
				t.Fatal(err)
			}
			defer fh.Close()
			file, err := instancetype.DecodeFile(fh)
			if err != nil {
				t.Fatalf("decoding the generated catalog: %v", err)
			}
			if file.Cloud != "aws" || !strings.HasPrefix(file.Source, "AWS APIs") {
				t.Errorf("cloud %q, source %q", file.Cloud, file.Source)
			}
			var regions []string
			for r := range file.Regions {
				regions = append(regions, r)
			}
			slices.Sort(regions)
			if !slices.Equal(regions, tt.wantRegions) {
				t.Errorf("regions %v, want %v", regions, tt.wantRegions)
			}
			us := map[string]instancetype.InstanceType{}
			for _, it := range file.Regions["us-east-1"] {
				us[it.Name] = it
			}
			if len(us) != len(f.InstanceTypes()) {
				t.Errorf("us-east-1 has %d types, the fake serves %d", len(us), len(f.InstanceTypes()))
			}
			m5 := us["m5.large"]
			var od float64
			for _, o := range m5.Offerings {
				if !o.Spot && o.Zone == "us-east-1a" {
					od = o.Price
				}
			}
			if m5.VCPU != 2 || m5.MemoryMiB != 8192 || od != 0.096 {
				t.Errorf("m5.large = %+v, want 2 vCPU, 8192 MiB, $0.096 on demand in us-east-1a", m5)
			}
		})
	}
}
