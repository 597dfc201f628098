// Package config is kip's provider configuration file: a versioned document
// (apiVersion kip.dev/v1alpha1, kind ProviderConfig) decoded strictly, with defaults filled
// and every invalid field reported at once by Validate.
package config

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/kip-dev/kip/internal/selector"
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
	// Faults, a testing aid for `make chaos` (docs/chaos.md), makes some of the backend's
	// calls fail on purpose. Absent (the default): no call is faulted.
	Faults *CloudFaults `json:"faults,omitempty"`
}

// CloudFaults makes a share of the backend's per-pod calls fail, at random from Seed
// (internal/cloud/faulty): a testing aid, never for production. Rates are fractions of calls
// in [0, 1] that together add up to at most 1.
type CloudFaults struct {
	Seed uint64 `json:"seed"`
	// ThrottleRate: Launch, Describe and Terminate fail Throttled.
	ThrottleRate float64 `json:"throttleRate,omitempty"`
	// ServerErrorRate: Launch, Describe and Terminate fail with a 500.
	ServerErrorRate float64 `json:"serverErrorRate,omitempty"`
	// CapacityErrorRate: Launch fails InsufficientCapacity.
	CapacityErrorRate float64 `json:"capacityErrorRate,omitempty"`
	// LostResponseRate: Launch and Terminate are made, then fail as if the answer was lost.
	LostResponseRate float64 `json:"lostResponseRate,omitempty"`
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
	// SecurityGroups are the named groups pods may put their cells in with the annotation
	// pod.kip.dev/security-groups, enforced by nftables on the host like EC2 security groups:
	// stateful, ingress allowed if any of the cell's groups allows it, egress open.
	SecurityGroups []LocalSecurityGroup `json:"securityGroups,omitempty"`
	// DefaultSecurityGroups are the groups of cells whose pod names none. Empty (the
	// default): such cells accept traffic from every cell, as without any groups.
	DefaultSecurityGroups []string `json:"defaultSecurityGroups,omitempty"`
	// ImageStore is where the cells of this host keep unpacked images, shared by all of
	// them: each image is unpacked once per host (each pod's pull still checks the manifest
	// with its own pull secrets). `kip down` removes it.
	ImageStore LocalImageStore `json:"imageStore"`
}

// LocalImageStore configures the local backend's shared image store.
type LocalImageStore struct {
	// Dir is the store's directory; default <stateDir>/images.
	Dir string `json:"dir,omitempty"`
	// MaxSize caps the unpacked images (the sum of their files' sizes): images no cell uses
	// are removed, least recently used first, until the rest fit. "0" is no cap.
	MaxSize Quantity `json:"maxSize"`
}

// LocalSecurityGroup is a named group of the local backend.
type LocalSecurityGroup struct {
	Name    string             `json:"name"`
	Ingress []LocalIngressRule `json:"ingress,omitempty"`
}

// LocalIngressRule allows traffic into a group's cells.
type LocalIngressRule struct {
	// Protocol is TCP, UDP, ICMP or all (any case).
	Protocol string `json:"protocol"`
	// Ports is a destination port ("80") or range ("8000-8100"), TCP and UDP only; empty
	// means all ports.
	Ports string `json:"ports,omitempty"`
	// From lists IPv4 CIDRs and group names (the cells in that group).
	From []string `json:"from"`
}

// PortRange parses Ports; 0, 0 for all ports.
func (r LocalIngressRule) PortRange() (from, to uint16, err error) {
	if r.Ports == "" {
		return 0, 0, nil
	}
	lo, hi, isRange := strings.Cut(r.Ports, "-")
	if !isRange {
		hi = lo
	}
	a, err1 := strconv.ParseUint(strings.TrimSpace(lo), 10, 16)
	b, err2 := strconv.ParseUint(strings.TrimSpace(hi), 10, 16)
	if err1 != nil || err2 != nil || a == 0 || a > b {
		return 0, 0, fmt.Errorf("must be a port like 80 or a range like 8000-8100, within 1-65535")
	}
	return uint16(a), uint16(b), nil
}

// AWSCloud configures the EC2 backend (internal/cloud/aws). Every cell is an EC2 instance
// tagged with cells.clusterName. Region, VPCID and SubnetID are discovered from the instance
// metadata of the machine kip runs on when empty; credentials come from the SDK's default
// chain (environment, shared files, IRSA / Pod Identity, the instance profile).
type AWSCloud struct {
	// Region is the AWS region, like us-east-1; empty means kip's own (instance metadata).
	Region string `json:"region,omitempty"`
	// VPCID is checked against the subnet's VPC when set; empty means the subnet's.
	VPCID string `json:"vpcID,omitempty"`
	// SubnetID is the first subnet (and so zone) cells launch in; empty (with no SubnetIDs)
	// means kip's own.
	SubnetID string `json:"subnetID,omitempty"`
	// SubnetIDs are more subnets of the VPC, each in another zone: pods may launch in any of
	// their zones, and a capacity error in one zone falls back to the others before other
	// instance types.
	SubnetIDs []string `json:"subnetIDs,omitempty"`
	// SecurityGroups (sg-...) are attached to every cell besides Kip's own group; at most
	// MaxAWSSecurityGroups.
	SecurityGroups []string `json:"securityGroups,omitempty"`
	// ImageID is the cell boot image (ami-...). When empty, the newest available image owned
	// by ImageOwners and matching ImageFilters (EC2 DescribeImages filter name → values) is
	// used, per architecture; with none of the three given the defaults are owners ["self"]
	// and filters {name: ["kip-cell-*"]}.
	ImageID      string              `json:"imageID,omitempty"`
	ImageOwners  []string            `json:"imageOwners,omitempty"`
	ImageFilters map[string][]string `json:"imageFilters,omitempty"`
	// InstanceProfile (a name or an ARN) is attached to cells whose pod names none.
	InstanceProfile string `json:"instanceProfile,omitempty"`
	// PodSecurityGroups (sg-...) are the groups a pod may name in its security-groups
	// annotation; PodInstanceProfiles (names or ARNs) the profiles it may name in its
	// instance-profile annotation. Empty (the default) allows none: a pod naming one is
	// refused before launch, with an Event naming the annotation. Scope the iam:PassRole of
	// kip's IAM policy to the roles of these profiles (hack/iam-policy.sh ROLE_ARN...).
	PodSecurityGroups   []string `json:"podSecurityGroups,omitempty"`
	PodInstanceProfiles []string `json:"podInstanceProfiles,omitempty"`
	// PollInterval is the age at which the one DescribeInstances sweep for all cells is
	// repeated; default 5s.
	PollInterval Duration `json:"pollInterval"`
	// Endpoint overrides the EC2 endpoint URL (a VPC endpoint; tests point it at the EC2 fake).
	Endpoint string `json:"endpoint,omitempty"`
	// PricingEndpoint overrides the Price List API endpoint URL (tests: the pricing fake).
	PricingEndpoint string `json:"pricingEndpoint,omitempty"`
	// Catalog configures the instance-type catalog refresh.
	Catalog AWSCatalog `json:"catalog"`
	// Bootstrap configures how cells boot from a stock image: kip's artifact and enrollment
	// server, and the files it serves.
	Bootstrap AWSBootstrap `json:"bootstrap"`
}

// AWSBootstrap configures the cell bootstrap: each cell's user data is a script that
// downloads the agent (kip-cell) and runc, checks the SHA-256 kip pins in it, and has the
// agent enroll with kip over HTTPS with a one-time token (docs/aws.md).
type AWSBootstrap struct {
	// ListenAddr is where kip serves the artifacts and enrollment (HTTPS, kip's CA);
	// default ":6422".
	ListenAddr string `json:"listenAddr"`
	// AdvertiseURL is that server as cells reach it (https://host:port); default
	// https://<node.internalIP>:<ListenAddr's port>.
	AdvertiseURL string `json:"advertiseURL,omitempty"`
	// ArtifactURL, when set, is where cells download the artifacts instead of kip's server:
	// <artifactURL>/kip-cell-<arch> and <artifactURL>/runc-<arch> (an S3 prefix, say). They
	// must be copies of the files of AgentPaths and RuncPaths: their hashes are pinned.
	ArtifactURL string `json:"artifactURL,omitempty"`
	// TokenTTL is how long a cell's enrollment token is good for; default 15m.
	TokenTTL Duration `json:"tokenTTL"`
	// AgentPaths maps an architecture (amd64, arm64) to the kip-cell binary cells of that
	// architecture run; default: kip's own architecture → the kip-cell next to kip.
	AgentPaths map[string]string `json:"agentPaths,omitempty"`
	// RuncPaths maps an architecture to the runc binary cells of that architecture run;
	// default: kip's own architecture → runc on kip's PATH.
	RuncPaths map[string]string `json:"runcPaths,omitempty"`
}

// AWSCatalog configures how the AWS instance-type catalog is kept fresh: the embedded copy is
// the fallback, CacheFile keeps the last good refresh across restarts, and the EC2 and Price
// List APIs are asked again every RefreshInterval.
type AWSCatalog struct {
	// RefreshInterval is the period of refreshes from the AWS APIs (the first one at start);
	// default 6h; "0s" disables refreshing (the cache file, else the embedded catalog).
	RefreshInterval Duration `json:"refreshInterval"`
	// FirstRefreshTimeout bounds the refresh at start, which kip waits for before it selects
	// any instance type; when it fails or times out kip starts with the cache file or the
	// embedded catalog. Default 30s.
	FirstRefreshTimeout Duration `json:"firstRefreshTimeout"`
	// CacheFile (an absolute path) keeps the last refresh; empty means memory only.
	CacheFile string `json:"cacheFile,omitempty"`
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
	// ClusterDNS are the cluster DNS servers (IP addresses) pods with dnsPolicy ClusterFirst
	// use, kubelet's clusterDNS; empty means such pods fall back to the cell's resolv.conf
	// with a MissingClusterDNS event, as on kubelet.
	ClusterDNS []string `json:"clusterDNS,omitempty"`
	// ClusterDomain is the cluster's DNS domain (kubelet's clusterDomain); default
	// "cluster.local".
	ClusterDomain string `json:"clusterDomain"`
	// AllowPrivileged admits privileged containers (kubelet's --allow-privileged): they get
	// every capability, no seccomp filter, no masked or read-only /proc paths, a writable
	// /sys and the cell's devices, as runc's privileged containers under containerd. Default
	// false: a pod with one fails before any cell launches, naming the field.
	AllowPrivileged bool `json:"allowPrivileged,omitempty"`
	// SeccompProfileRoot is the directory of Localhost seccomp profiles (kubelet's
	// <root-dir>/seccomp): a pod's localhostProfile is a path under it, read by kip when the
	// pod is admitted and sent to its cell; a missing one fails the pod before any cell
	// launches. Default /var/lib/kubelet/seccomp.
	SeccompProfileRoot string `json:"seccompProfileRoot"`
	TLS                TLS    `json:"tls"`
}

// Capacity is what the virtual node advertises.
type Capacity struct {
	CPU    Quantity `json:"cpu"`
	Memory Quantity `json:"memory"`
	Pods   Quantity `json:"pods"`
	GPU    Quantity `json:"nvidia.com/gpu"`
	// AMDGPU is the amd.com/gpu the node advertises, for pods asking for AMD GPUs.
	AMDGPU Quantity `json:"amd.com/gpu"`
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
	// SpotFallbackToOnDemand lets a pod asking for spot (pod.kip.dev/launch-type: spot) run
	// on-demand when no spot offering fits or every spot launch lacked capacity. Default
	// false: such a pod waits for spot capacity.
	SpotFallbackToOnDemand bool `json:"spotFallbackToOnDemand,omitempty"`
	// HealthyTimeout bounds the wait for a new cell's agent to answer; default 90s.
	HealthyTimeout Duration `json:"healthyTimeout"`
	// LostTimeout is how long a running cell's agent may stay silent (no status, no
	// heartbeat) before its pod is failed with CellLost and the cell terminated; the pod turns
	// NotReady within seconds of the silence, and Ready again if the agent comes back in
	// time. A pod's pod.kip.dev/lost-timeout annotation overrides it. Default 30s.
	LostTimeout Duration `json:"lostTimeout"`
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
	// FormerNodeNames are names the virtual node had before (node.name changed): the
	// cluster's cells tagged with one of them have no pod any more and are terminated by
	// garbage collection. Empty by default: cells of other node names are left alone, since
	// another kip of the same cluster may run them.
	FormerNodeNames []string `json:"formerNodeNames,omitempty"`
	// PodPidsLimit is the most processes and threads a pod may run at once (kubelet's
	// podPidsLimit), set on the pod's cgroup in its cell: a fork beyond it fails, so a fork
	// bomb stays inside its pod. -1 sets no limit. Default 4096.
	PodPidsLimit *int64 `json:"podPidsLimit,omitempty"`
	// CertLifetime is how long the certificates kip issues from its CA last: each cell
	// agent's serving certificate and kip's client certificate to agents. kip renews both
	// once two thirds of it have passed (agents in place, their key never leaving the cell);
	// default 720h (30 days).
	CertLifetime Duration `json:"certLifetime"`
	// Standby are pools of warm cells kept booted with their agent ready and no pod: a pod
	// whose chosen instance type and market have one binds to it instead of launching
	// (docs/standby.md). Empty by default. Each (instanceType, spot) appears once; an
	// instanceType the backend's catalog lacks stops kip at start.
	Standby []StandbyCells `json:"standby,omitempty"`
}

// StandbyCells is one pool of warm cells (cells.standby[i]).
type StandbyCells struct {
	// InstanceType is the pool's instance type, from the backend's catalog.
	InstanceType string `json:"instanceType"`
	// Count is how many warm cells the pool keeps; 0 keeps none.
	Count int `json:"count"`
	// Spot keeps spot cells (for pods choosing spot) instead of on-demand ones.
	Spot bool `json:"spot,omitempty"`
	// Max, when above Count, makes the pool follow demand: it keeps as many cells as pods
	// asked for one of its kind in the last minute, at least Count and at most Max, and
	// shrinks back a minute after the asking stops. 0 keeps Count.
	Max int `json:"max,omitempty"`
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
	// MaxUnpackedImageSize caps the size of an image's files once unpacked on a cell; a
	// larger image fails its containers with ErrImagePull naming the limit. Default 10Gi.
	MaxUnpackedImageSize Quantity `json:"maxUnpackedImageSize"`
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

// SelectorOptions are the instance-type selector's options this config gives: the cell
// reserve, the default type and the spot fallback. kip run selects with them, and kip select
// --config previews with the same, so both add one reserve and choose the same type.
func (c *ProviderConfig) SelectorOptions() selector.Options {
	return selector.Options{
		Reserve: &selector.Reserve{
			CPUMilli:    c.Cells.Reserve.CPU.MilliValue(),
			MemoryBytes: c.Cells.Reserve.Memory.Value(),
		},
		DefaultType:  c.Cells.DefaultInstanceType,
		SpotFallback: c.Cells.SpotFallbackToOnDemand,
	}
}
