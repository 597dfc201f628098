package config

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

func TestValidFiles(t *testing.T) {
	tests := []struct {
		file  string
		check func(t *testing.T, c *ProviderConfig)
	}{
		{"valid-minimal.yaml", func(t *testing.T, c *ProviderConfig) {
			eq(t, "cloud.provider", c.Cloud.Provider, ProviderLocal)
			eq(t, "cloud.local.bridge", c.Cloud.Local.Bridge, DefaultBridge)
			eq(t, "cloud.local.subnet", c.Cloud.Local.Subnet, DefaultSubnet)
			eq(t, "node.name", c.Node.Name, "kip")
			eq(t, "node.internalIP", c.Node.InternalIP, "10.250.0.1")
			eq(t, "node.kubeletPort", c.Node.KubeletPort, 10250)
			eq(t, "node.clusterDNS", len(c.Node.ClusterDNS), 0)
			eq(t, "node.clusterDomain", c.Node.ClusterDomain, "cluster.local")
			eq(t, "node.taints", len(c.Node.Taints), 1)
			eq(t, "node.taints[0]", c.Node.Taints[0], corev1.Taint{Key: "virtual-kubelet.io/provider", Value: "kip", Effect: corev1.TaintEffectNoSchedule})
			eq(t, "node.capacity.pods", c.Node.Capacity.Pods.String(), "110")
			eq(t, "cloud.faults", c.Cloud.Faults == nil, true) // off unless asked for
			eq(t, "cells.healthyTimeout", c.Cells.HealthyTimeout.Duration, 90*time.Second)
			eq(t, "cells.lostTimeout", c.Cells.LostTimeout.Duration, 30*time.Second)
			eq(t, "cells.capacityErrorMemory", c.Cells.CapacityErrorMemory.Duration, 3*time.Minute)
			eq(t, "cells.certLifetime", c.Cells.CertLifetime.Duration, 30*24*time.Hour)
			eq(t, "cells.launchConcurrency", c.Cells.LaunchConcurrency, 10)
			eq(t, "cells.clusterName", c.Cells.ClusterName, "kip")
			eq(t, "cells.reserve.memory", c.Cells.Reserve.Memory.String(), "128Mi") // selector.DefaultReserve, as kip select
			eq(t, "cells.reserve.cpu", c.Cells.Reserve.CPU.String(), "50m")
			eq(t, "registry.maxUnpackedImageSize", c.Registry.MaxUnpackedImageSize.String(), DefaultMaxUnpackedImageSize)
			eq(t, "cells.podPidsLimit", *c.Cells.PodPidsLimit, DefaultPodPidsLimit)
			eq(t, "cloud.local.imageStore.dir", c.Cloud.Local.ImageStore.Dir, DefaultStateDir+"/images")
			eq(t, "cloud.local.imageStore.maxSize", c.Cloud.Local.ImageStore.MaxSize.String(), DefaultImageStoreMaxSize)
		}},
		{"valid-local-full.yaml", func(t *testing.T, c *ProviderConfig) {
			eq(t, "node.internalIP", c.Node.InternalIP, "10.250.7.1")
			eq(t, "cloud.faults", fmt.Sprintf("%+v", *c.Cloud.Faults), "{Seed:11 ThrottleRate:0.1 ServerErrorRate:0 CapacityErrorRate:0 LostResponseRate:0.05}")
			eq(t, "node.taints", len(c.Node.Taints), 0)
			eq(t, "node.capacity.cpu", c.Node.Capacity.CPU.String(), "8")
			eq(t, "node.capacity.gpu", c.Node.Capacity.GPU.Value(), int64(1))
			eq(t, "node.kubeletPort", c.Node.KubeletPort, 10251)
			eq(t, "node.clusterDNS", fmt.Sprint(c.Node.ClusterDNS), "[10.0.0.10]")
			eq(t, "node.clusterDomain", c.Node.ClusterDomain, "k.example")
			eq(t, "cells.healthyTimeout", c.Cells.HealthyTimeout.Duration, 2*time.Minute)
			eq(t, "cells.lostTimeout", c.Cells.LostTimeout.Duration, 45*time.Second)
			eq(t, "cells.reserve.cpu", c.Cells.Reserve.CPU.MilliValue(), int64(50))
			eq(t, "cells.launchConcurrency", c.Cells.LaunchConcurrency, 4)
			eq(t, "cells.formerNodeNames", fmt.Sprint(c.Cells.FormerNodeNames), "[kip-old kip.example.com]")
			eq(t, "cells.podPidsLimit", *c.Cells.PodPidsLimit, int64(-1))
			eq(t, "cells.standby", fmt.Sprint(c.Cells.Standby), "[{local.small 2 false 5} {local.small 1 true 0}]")
			eq(t, "registry.insecure", len(c.Registry.Insecure), 2)
			eq(t, "registry.maxUnpackedImageSize", c.Registry.MaxUnpackedImageSize.Value(), int64(2<<30))
		}},
		{"valid-aws.yaml", func(t *testing.T, c *ProviderConfig) {
			a := c.Cloud.AWS
			eq(t, "cloud.provider", c.Cloud.Provider, ProviderAWS)
			eq(t, "cloud.aws.region", a.Region, "us-east-1")
			eq(t, "cloud.aws.subnetID", a.SubnetID, "subnet-0456789abcdef0123")
			eq(t, "cloud.aws.securityGroups", strings.Join(a.SecurityGroups, ","), "sg-0123456789abcdef0,sg-01234567")
			eq(t, "cloud.aws.imageID", a.ImageID, "")
			eq(t, "cloud.aws.imageOwners", strings.Join(a.ImageOwners, ","), "123456789012")
			eq(t, "cloud.aws.imageFilters", len(a.ImageFilters), 2)
			eq(t, "cloud.aws.imageFilters[tag:channel]", strings.Join(a.ImageFilters["tag:channel"], ","), "stable")
			eq(t, "cloud.aws.instanceProfile", a.InstanceProfile, "arn:aws:iam::123456789012:instance-profile/kip-cell")
			eq(t, "cloud.aws.subnetIDs", strings.Join(a.SubnetIDs, ","), "subnet-0456789abcdef0124")
			eq(t, "cloud.aws.bootstrap.advertiseURL", a.Bootstrap.AdvertiseURL, "https://kip.internal.example:6422")
			eq(t, "cloud.aws.bootstrap.artifactURL", a.Bootstrap.ArtifactURL, "https://kip-artifacts.s3.us-east-1.amazonaws.com/v1")
			eq(t, "cloud.aws.bootstrap.tokenTTL", a.Bootstrap.TokenTTL.Duration, 10*time.Minute)
			eq(t, "cloud.aws.bootstrap.agentPaths[arm64]", a.Bootstrap.AgentPaths["arm64"], "/opt/kip/kip-cell-arm64")
			eq(t, "cloud.aws.podSecurityGroups", strings.Join(a.PodSecurityGroups, ","), "sg-0123456789abcdef1")
			eq(t, "cloud.aws.podInstanceProfiles", strings.Join(a.PodInstanceProfiles, ","), "kip-cell-s3-reader")
			eq(t, "cloud.aws.pollInterval", a.PollInterval.Duration, 10*time.Second)
			eq(t, "cloud.aws.pricingEndpoint", a.PricingEndpoint, "https://api.pricing.us-east-1.amazonaws.com")
			eq(t, "cloud.aws.catalog.refreshInterval", a.Catalog.RefreshInterval.Duration, 0)
			eq(t, "cloud.aws.catalog.refreshInterval set", a.Catalog.RefreshInterval.IsSet(), true)
			eq(t, "cloud.aws.catalog.cacheFile", a.Catalog.CacheFile, "/var/lib/kip/aws-catalog.json")
			eq(t, "cloud.local.bridge", c.Cloud.Local.Bridge, "")
			eq(t, "node.internalIP", c.Node.InternalIP, "172.31.0.10")
			eq(t, "cells.clusterName", c.Cells.ClusterName, "prod")
		}},
		{"valid-aws-minimal.yaml", func(t *testing.T, c *ProviderConfig) {
			a := c.Cloud.AWS
			eq(t, "cloud.aws.region", a.Region, "") // discovered at start
			eq(t, "cloud.aws.subnetID", a.SubnetID, "")
			eq(t, "cloud.aws.imageOwners", strings.Join(a.ImageOwners, ","), DefaultAWSImageOwner)
			eq(t, "cloud.aws.imageFilters[name]", strings.Join(a.ImageFilters["name"], ","), DefaultAWSImageName)
			eq(t, "cloud.aws.pollInterval", a.PollInterval.Duration, DefaultAWSPollInterval)
			eq(t, "cloud.aws.catalog.refreshInterval", a.Catalog.RefreshInterval.Duration, DefaultAWSCatalogRefresh)
			eq(t, "cloud.aws.catalog.cacheFile", a.Catalog.CacheFile, "")
			eq(t, "node.internalIP", c.Node.InternalIP, "") // detected at start
			eq(t, "cells.clusterName", c.Cells.ClusterName, DefaultClusterName)
			eq(t, "cloud.aws.bootstrap.listenAddr", a.Bootstrap.ListenAddr, DefaultAWSBootstrapListen)
			eq(t, "cloud.aws.bootstrap.tokenTTL", a.Bootstrap.TokenTTL.Duration, DefaultAWSTokenTTL)
			eq(t, "cloud.aws.bootstrap.agentPaths", len(a.Bootstrap.AgentPaths), 0) // kip-cell next to kip, at start
		}},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			c, err := Load(filepath.Join("testdata", tt.file))
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			tt.check(t, c)
		})
	}
}

// TestInvalidFiles checks that each invalid file fails and that the error names every bad
// field.
func TestInvalidFiles(t *testing.T) {
	tests := []struct {
		file string
		want []string
	}{
		{"invalid-unknown-field.yaml", []string{`unknown field "healthyTimout"`}},
		{"invalid-version.yaml", []string{"apiVersion"}},
		{"invalid-provider.yaml", []string{"cloud.provider", `"gcp"`}},
		{"invalid-duration.yaml", []string{"cells.healthyTimeout", "ninety", "cells.lostTimeout", "must be positive"}},
		{"invalid-former-node-names.yaml", []string{`cells.formerNodeNames[0]: Invalid value: "Old_Node"`, `cells.formerNodeNames[2]: Duplicate value: "old"`, `cells.formerNodeNames[3]: Invalid value: "kip": is node.name`}},
		{"invalid-quantity.yaml", []string{"node.capacity.memory", "lots"}},
		{"invalid-image-size.yaml", []string{"registry.maxUnpackedImageSize", "must be positive"}},
		{"invalid-pids-limit.yaml", []string{"cells.podPidsLimit", "must be -1 (no limit) or at least 1"}},
		{"invalid-image-store.yaml", []string{"cloud.local.imageStore.dir", "absolute path", "cloud.local.imageStore.maxSize", "must not be negative"}},
		{"invalid-loopback-ip.yaml", []string{"node.internalIP", "loopback"}},
		{"invalid-cluster-dns.yaml", []string{`node.clusterDNS[1]: Invalid value: "10.0.0.300"`, "must be an IP address", `node.clusterDomain: Invalid value: "Cluster_Local"`}},
		{"invalid-taint-effect.yaml", []string{"node.taints[0].effect", "Sometimes"}},
		{"invalid-aws.yaml", []string{
			"cloud.aws.region", "cloud.aws.vpcID", "cloud.aws.subnetID", "cloud.aws.securityGroups: Too many",
			"cloud.aws.securityGroups[0]", "cloud.aws.imageID", "cloud.aws.instanceProfile",
			"cloud.aws.podSecurityGroups[0]", "cloud.aws.podInstanceProfiles[0]",
			"cloud.aws.subnetIDs[1]: Duplicate", "cloud.aws.subnetIDs[2]",
			"cloud.aws.pollInterval", "cloud.aws.endpoint", "cloud.aws.pricingEndpoint",
			"cloud.aws.catalog.refreshInterval", "cloud.aws.catalog.firstRefreshTimeout", "cloud.aws.catalog.cacheFile",
		}},
		{"invalid-aws-image.yaml", []string{
			"cloud.aws.imageID", "not both", "cloud.aws.imageOwners[0]", "cloud.aws.imageFilters[name]",
			"cloud.aws.imageFilters[architecture][0]", "cloud.aws.catalog.refreshInterval", "often",
		}},
		{"invalid-aws-bootstrap.yaml", []string{
			"cloud.aws.bootstrap.listenAddr", "cloud.aws.bootstrap.advertiseURL", "must be an https://host:port URL",
			"cloud.aws.bootstrap.artifactURL", "cloud.aws.bootstrap.tokenTTL", "cloud.aws.bootstrap.agentPaths[riscv64]: Unsupported value",
			"cloud.aws.bootstrap.agentPaths[amd64]: Invalid value: \"bin/kip-cell\": must be an absolute path", "cloud.aws.bootstrap.runcPaths[arm64]",
		}},
		{"invalid-wrong-type.yaml", []string{"kubeletPort"}},
		{"invalid-tls-half.yaml", []string{"node.tls"}},
		{"invalid-faults.yaml", []string{"cloud.faults.throttleRate", "cloud.faults.capacityErrorRate", "cloud.faults: Invalid value", "add up to at most 1"}},
		{"invalid-duplicate.yaml", []string{`"name"`}},
		{"invalid-standby.yaml", []string{
			"cells.standby[1].instanceType: Required value", `cells.standby[2].count: Invalid value: -1`,
			`cells.standby[3]: Duplicate value: "instanceType local.small, spot false"`,
			`cells.standby[5].max: Invalid value: 2: must be 0 (the pool keeps count) or between count (3) and 1000`,
		}},
		{"invalid-standby-field.yaml", []string{`unknown field "dedicated"`}},
		{"invalid-many.yaml", []string{
			"cloud.local.bridge", "cloud.local.subnet", "node.kubeletPort",
			"cells.launchConcurrency", "cells.clusterName", "registry.insecure[0]",
		}},
	}
	seen := map[string]bool{}
	for _, tt := range tests {
		seen[tt.file] = true
		t.Run(tt.file, func(t *testing.T) {
			_, err := Load(filepath.Join("testdata", tt.file))
			if err == nil {
				t.Fatal("Load succeeded, want an error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
	// Every invalid-*.yaml in testdata must have a row above.
	files, _ := filepath.Glob(filepath.Join("testdata", "invalid-*.yaml"))
	for _, f := range files {
		if !seen[filepath.Base(f)] {
			t.Errorf("%s has no test row", f)
		}
	}
}

func TestLoadMissingFile(t *testing.T) {
	if _, err := Load(filepath.Join(t.TempDir(), "nope.yaml")); err == nil || !strings.Contains(err.Error(), "nope.yaml") {
		t.Fatalf("Load of a missing file: %v", err)
	}
}

// TestRoundTrip writes the defaulted config back out and loads it again unchanged.
func TestRoundTrip(t *testing.T) {
	c := NewDefault()
	if err := c.Validate(); err != nil {
		t.Fatalf("defaults do not validate: %v", err)
	}
	out, err := yaml.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "c.yaml")
	if err := os.WriteFile(path, out, 0o600); err != nil {
		t.Fatal(err)
	}
	c2, err := Load(path)
	if err != nil {
		t.Fatalf("reloading %s: %v", out, err)
	}
	eq(t, "healthyTimeout", c2.Cells.HealthyTimeout.Duration, c.Cells.HealthyTimeout.Duration)
	eq(t, "memory", c2.Node.Capacity.Memory.String(), c.Node.Capacity.Memory.String())
	eq(t, "taints", len(c2.Node.Taints), 1)
}

func TestBridgeIP(t *testing.T) {
	for in, want := range map[string]string{
		"10.250.0.0/24":  "10.250.0.1",
		"10.250.7.9/24":  "10.250.7.1",
		"10.0.0.0/8":     "10.0.0.1",
		"fd00::/64":      "",
		"not-a-cidr":     "",
		"10.250.0.0/240": "",
	} {
		if got := BridgeIP(in); got != want {
			t.Errorf("BridgeIP(%q) = %q, want %q", in, got, want)
		}
	}
}

func eq[T comparable](t *testing.T, what string, got, want T) {
	t.Helper()
	if got != want {
		t.Errorf("%s = %v, want %v", what, got, want)
	}
}

// TestRoundTripAWS writes a defaulted AWS config out and loads it again unchanged, including
// a refreshInterval of 0s (refreshing off), which must not turn back into the default.
func TestRoundTripAWS(t *testing.T) {
	for _, file := range []string{"valid-aws.yaml", "valid-aws-minimal.yaml"} {
		t.Run(file, func(t *testing.T) {
			c, err := Load(filepath.Join("testdata", file))
			if err != nil {
				t.Fatal(err)
			}
			out, err := yaml.Marshal(c)
			if err != nil {
				t.Fatal(err)
			}
			c2, err := Parse(out)
			if err != nil {
				t.Fatalf("reloading %s: %v", out, err)
			}
			a, a2 := c.Cloud.AWS, c2.Cloud.AWS
			eq(t, "pollInterval", a2.PollInterval.Duration, a.PollInterval.Duration)
			eq(t, "catalog.refreshInterval", a2.Catalog.RefreshInterval.Duration, a.Catalog.RefreshInterval.Duration)
			eq(t, "imageOwners", strings.Join(a2.ImageOwners, ","), strings.Join(a.ImageOwners, ","))
			eq(t, "imageFilters", len(a2.ImageFilters), len(a.ImageFilters))
			eq(t, "subnetID", a2.SubnetID, a.SubnetID)
			eq(t, "catalog.cacheFile", a2.Catalog.CacheFile, a.Catalog.CacheFile)
		})
	}
}
