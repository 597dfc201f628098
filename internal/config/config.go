// Package config is kip's provider configuration file: a versioned document
// (apiVersion kip.dev/v1alpha1, kind ProviderConfig) decoded strictly, with defaults filled
// and every invalid field reported at once by Validate.
package config

import (
	"fmt"
	"os"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

// APIVersion and Kind identify the file format.
const (
	APIVersion = "kip.dev/v1alpha1"
	Kind       = "ProviderConfig"
)

// Cloud providers.
const (
	ProviderLocal = "local"
	ProviderAWS   = "aws"
)

// ProviderConfig is the whole file.
type ProviderConfig struct {
	APIVersion string   `json:"apiVersion"`
	Kind       string   `json:"kind"`
	Cloud      Cloud    `json:"cloud"`
	Node       Node     `json:"node"`
	Cells      Cells    `json:"cells"`
	Registry   Registry `json:"registry"`
}

// Cloud picks and configures the cell backend.
type Cloud struct {
	// Provider is "local" (network namespaces on this machine) or "aws".
	Provider string     `json:"provider"`
	Local    LocalCloud `json:"local"`
	AWS      AWSCloud   `json:"aws"`
}

// LocalCloud configures the local backend: cells are network namespaces on a bridge.
type LocalCloud struct {
	// Bridge is the Linux bridge cells attach to (at most 15 characters).
	Bridge string `json:"bridge"`
	// Subnet is the IPv4 CIDR of the bridge; the bridge takes its first address.
	Subnet string `json:"subnet"`
	// StateDir holds the cells' files (bundles, logs, bootstrap data).
	StateDir string `json:"stateDir"`
	// AgentPath is the kip-cell binary; empty means next to the kip executable.
	AgentPath string `json:"agentPath,omitempty"`
}

// AWSCloud configures the EC2 backend.
type AWSCloud struct {
	Region         string   `json:"region"`
	VPCID          string   `json:"vpcID"`
	SubnetID       string   `json:"subnetID"`
	SecurityGroups []string `json:"securityGroups,omitempty"`
	// ImageID is the cell boot image (AMI); empty means the backend's default lookup.
	ImageID         string `json:"imageID,omitempty"`
	InstanceProfile string `json:"instanceProfile,omitempty"`
	// Endpoint overrides the EC2 endpoint URL (tests point it at the EC2 fake).
	Endpoint string `json:"endpoint,omitempty"`
}

// Node describes the virtual node kip registers.
type Node struct {
	// Name defaults to "kip".
	Name   string            `json:"name"`
	Labels map[string]string `json:"labels,omitempty"`
	// Taints default to virtual-kubelet.io/provider=kip:NoSchedule; an explicit empty list
	// means no taints.
	Taints   []corev1.Taint `json:"taints"`
	Capacity Capacity       `json:"capacity"`
	// InternalIP is the node address the apiserver and cells reach kip on; empty means the
	// local bridge address (local provider) or the detected host address.
	InternalIP string `json:"internalIP"`
	// KubeletPort serves the kubelet API; default 10250.
	KubeletPort int `json:"kubeletPort"`
	TLS         TLS `json:"tls"`
}

// Capacity is what the virtual node advertises.
type Capacity struct {
	CPU    Quantity `json:"cpu"`
	Memory Quantity `json:"memory"`
	Pods   Quantity `json:"pods"`
	GPU    Quantity `json:"nvidia.com/gpu"`
}

// TLS names the kubelet API serving certificate; empty paths mean a certificate obtained
// from the cluster (CSR) or made by kip.
type TLS struct {
	CertFile string `json:"certFile,omitempty"`
	KeyFile  string `json:"keyFile,omitempty"`
}

// Cells tunes the cell state machine.
type Cells struct {
	// DefaultInstanceType is used for pods that request nothing; empty lets the selector
	// choose the cheapest type.
	DefaultInstanceType string `json:"defaultInstanceType,omitempty"`
	// Reserve is added to every pod's requests for the cell agent itself.
	Reserve Reserve `json:"reserve"`
	// HealthyTimeout bounds the wait for a cell's agent (boot and reconnects); default 90s.
	HealthyTimeout Duration `json:"healthyTimeout"`
	// StatusInterval is the period of background consistency checks (never on the
	// critical path: status is pushed by agents); default 10s.
	StatusInterval Duration `json:"statusInterval"`
	// LaunchConcurrency bounds parallel cloud launches; default 10.
	LaunchConcurrency int `json:"launchConcurrency"`
	// ClusterName is put on every cell's tags to tell clusters apart; default "kip".
	ClusterName string `json:"clusterName"`
	// CapacityErrorMemory is how long an instance type that failed with an
	// insufficient-capacity error is tried last; default 3m.
	CapacityErrorMemory Duration `json:"capacityErrorMemory"`
}

// Reserve is resources kept for the agent on every cell.
type Reserve struct {
	CPU    Quantity `json:"cpu"`
	Memory Quantity `json:"memory"`
}

// Registry configures image pulls on cells.
type Registry struct {
	// DefaultRegistry replaces docker.io for unqualified image names.
	DefaultRegistry string `json:"defaultRegistry,omitempty"`
	// Insecure lists registries (host:port) reached over plain HTTP.
	Insecure []string `json:"insecure,omitempty"`
}

// Load reads, decodes, defaults and validates the file at path.
func Load(path string) (*ProviderConfig, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("loading config: %w", err)
	}
	c, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("loading config %s: %w", path, err)
	}
	return c, nil
}

// Parse decodes data strictly (unknown or duplicate fields are errors), fills defaults and
// validates the result.
func Parse(data []byte) (*ProviderConfig, error) {
	c := &ProviderConfig{}
	if err := yaml.UnmarshalStrict(data, c); err != nil {
		return nil, fmt.Errorf("decoding config: %w", err)
	}
	c.Default()
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return c, nil
}

// NewDefault returns a valid configuration with every default filled (local provider).
func NewDefault() *ProviderConfig {
	c := &ProviderConfig{APIVersion: APIVersion, Kind: Kind}
	c.Default()
	return c
}
