package config

import (
	"fmt"
	"reflect"
	"slices"
	"testing"
)

// TestLocalSetupYAML: what LocalSetup renders loads strictly, keeps every field it sets and
// leaves the rest to the defaults.
func TestLocalSetupYAML(t *testing.T) {
	base := LocalSetup{
		Bridge: "kip0", Subnet: "10.250.7.0/24", StateDir: "/root/.kip/cells", AgentPath: "/usr/local/bin/kip-cell",
		NodeName: "kip", NodeIP: "10.250.7.1", Registry: "10.250.7.1:5000",
	}
	withCluster := base
	withCluster.ClusterName = "e2e-abc"
	withCluster.ClusterDNS = []string{"10.0.0.10"}
	withGroups := base
	withGroups.SecurityGroups = []LocalSecurityGroup{
		{Name: "web", Ingress: []LocalIngressRule{{Protocol: "TCP", Ports: "8080", From: []string{"client", "10.250.7.0/28"}}}},
		{Name: "client"},
	}
	withGroups.DefaultSecurityGroups = []string{"client"}
	for _, tc := range []struct {
		name        string
		in          LocalSetup
		wantCluster string
	}{
		{"no cluster name", base, NewDefault().Cells.ClusterName},
		{"cluster name and DNS", withCluster, "e2e-abc"},
		{"security groups", withGroups, NewDefault().Cells.ClusterName},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse([]byte(tc.in.YAML()))
			if err != nil {
				t.Fatalf("rendered config does not load: %v\n%s", err, tc.in.YAML())
			}
			if err := c.Validate(); err != nil {
				t.Errorf("rendered config is invalid: %v", err)
			}
			l := c.Cloud.Local
			if c.Cloud.Provider != ProviderLocal || l.Bridge != tc.in.Bridge || l.Subnet != tc.in.Subnet ||
				l.StateDir != tc.in.StateDir || l.AgentPath != tc.in.AgentPath {
				t.Errorf("cloud = %+v, want local %+v", c.Cloud, tc.in)
			}
			if !reflect.DeepEqual(l.SecurityGroups, tc.in.SecurityGroups) || !slices.Equal(l.DefaultSecurityGroups, tc.in.DefaultSecurityGroups) {
				t.Errorf("security groups = %+v, default %v; want %+v, %v\n%s", l.SecurityGroups, l.DefaultSecurityGroups,
					tc.in.SecurityGroups, tc.in.DefaultSecurityGroups, tc.in.YAML())
			}
			if c.Node.Name != tc.in.NodeName || c.Node.InternalIP != tc.in.NodeIP {
				t.Errorf("node name/IP = %q/%q, want %q/%q", c.Node.Name, c.Node.InternalIP, tc.in.NodeName, tc.in.NodeIP)
			}
			if fmt.Sprint(c.Node.ClusterDNS) != fmt.Sprint(tc.in.ClusterDNS) {
				t.Errorf("node.clusterDNS = %v, want %v", c.Node.ClusterDNS, tc.in.ClusterDNS)
			}
			if c.Cells.ClusterName != tc.wantCluster {
				t.Errorf("cells.clusterName = %q, want %q", c.Cells.ClusterName, tc.wantCluster)
			}
			if c.Registry.DefaultRegistry != tc.in.Registry || len(c.Registry.Insecure) != 1 || c.Registry.Insecure[0] != tc.in.Registry {
				t.Errorf("registry = %+v, want default and only insecure %q", c.Registry, tc.in.Registry)
			}
		})
	}
}
