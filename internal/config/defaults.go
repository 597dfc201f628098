package config

import (
	"net/netip"
	"path/filepath"
	"time"

	"github.com/kip-dev/kip/internal/selector"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
)

// Defaults, exported so callers and docs can name them.
const (
	DefaultNodeName      = "kip"
	DefaultKubeletPort   = 10250
	DefaultClusterDomain = "cluster.local"
	// DefaultSeccompProfileRoot is kubelet's seccomp profile root (its default --root-dir).
	DefaultSeccompProfileRoot = "/var/lib/kubelet/seccomp"
	DefaultBridge             = "kip0"
	DefaultSubnet             = "10.250.0.0/24"
	DefaultStateDir           = "/var/lib/kip"
	DefaultClusterName        = "kip"
	DefaultHealthyTimeout     = 90 * time.Second
	DefaultLostTimeout        = 30 * time.Second
	// DefaultPodPidsLimit is cells.podPidsLimit when unset: far above what a pod runs (a
	// busy JVM or a build runs a few hundred threads), far below what exhausts a host
	// (pid_max is 32768 or 4194304).
	DefaultPodPidsLimit int64 = 4096

	// DefaultImageStoreMaxSize is cloud.local.imageStore.maxSize's default.
	DefaultImageStoreMaxSize = "20Gi"
	// DefaultMaxUnpackedImageSize is registry.maxUnpackedImageSize's default.
	DefaultMaxUnpackedImageSize = "10Gi"
	DefaultStatusInterval       = 10 * time.Second
	DefaultCapacityErrorMemory  = 3 * time.Minute
	DefaultCertLifetime         = 30 * 24 * time.Hour
	DefaultLaunchConcurrency    = 10
	DefaultAWSPollInterval      = 5 * time.Second
	DefaultAWSCatalogRefresh    = 6 * time.Hour
	DefaultAWSFirstRefresh      = 30 * time.Second
	// DefaultAWSBootstrapListen is where kip serves cells' artifacts and enrollment.
	DefaultAWSBootstrapListen = ":6422"
	DefaultAWSTokenTTL        = 15 * time.Minute
	// MaxAWSSecurityGroups is how many extra groups cloud.aws.securityGroups may name: EC2
	// allows 5 per interface and Kip's own group takes one.
	MaxAWSSecurityGroups = 4
	// DefaultAWSImageOwner and DefaultAWSImageName find the cell image when none is
	// configured: the newest image of this account named kip-cell-*.
	DefaultAWSImageOwner = "self"
	DefaultAWSImageName  = "kip-cell-*"
	// TaintKey is the default taint's key; its value is "kip", its effect NoSchedule.
	TaintKey = "virtual-kubelet.io/provider"
)

// Default fills every unset field with its default. It never overwrites a set value, so it
// is safe to call more than once.
func (c *ProviderConfig) Default() {
	if c.Cloud.Provider == "" {
		c.Cloud.Provider = ProviderLocal
	}
	if c.Cloud.Provider == ProviderLocal {
		l := &c.Cloud.Local
		if l.Bridge == "" {
			l.Bridge = DefaultBridge
		}
		if l.Subnet == "" {
			l.Subnet = DefaultSubnet
		}
		if l.StateDir == "" {
			l.StateDir = DefaultStateDir
		}
		if l.ImageStore.Dir == "" {
			l.ImageStore.Dir = filepath.Join(l.StateDir, "images")
		}
		defaultQuantity(&l.ImageStore.MaxSize, DefaultImageStoreMaxSize)
	}

	if c.Cloud.Provider == ProviderAWS {
		a := &c.Cloud.AWS
		if a.ImageID == "" && len(a.ImageOwners) == 0 && len(a.ImageFilters) == 0 {
			a.ImageOwners = []string{DefaultAWSImageOwner}
			a.ImageFilters = map[string][]string{"name": {DefaultAWSImageName}}
		}
		defaultDuration(&a.PollInterval, DefaultAWSPollInterval)
		defaultDuration(&a.Catalog.RefreshInterval, DefaultAWSCatalogRefresh)
		defaultDuration(&a.Catalog.FirstRefreshTimeout, DefaultAWSFirstRefresh)
		if a.Bootstrap.ListenAddr == "" {
			a.Bootstrap.ListenAddr = DefaultAWSBootstrapListen
		}
		defaultDuration(&a.Bootstrap.TokenTTL, DefaultAWSTokenTTL)
	}

	n := &c.Node
	if n.Name == "" {
		n.Name = DefaultNodeName
	}
	if n.Taints == nil {
		n.Taints = []corev1.Taint{{Key: TaintKey, Value: "kip", Effect: corev1.TaintEffectNoSchedule}}
	}
	defaultQuantity(&n.Capacity.CPU, "20")
	defaultQuantity(&n.Capacity.Memory, "100Gi")
	defaultQuantity(&n.Capacity.Pods, "110")
	defaultQuantity(&n.Capacity.GPU, "0")
	defaultQuantity(&n.Capacity.AMDGPU, "0")
	if n.InternalIP == "" && c.Cloud.Provider == ProviderLocal {
		n.InternalIP = BridgeIP(c.Cloud.Local.Subnet)
	}
	if n.KubeletPort == 0 {
		n.KubeletPort = DefaultKubeletPort
	}
	if n.ClusterDomain == "" {
		n.ClusterDomain = DefaultClusterDomain
	}
	if n.SeccompProfileRoot == "" {
		n.SeccompProfileRoot = DefaultSeccompProfileRoot
	}

	cl := &c.Cells
	// The selector's default reserve, so that kip select (whose flags default to it) previews
	// what kip run chooses.
	if !cl.Reserve.CPU.set {
		cl.Reserve.CPU = NewQuantity(resource.NewMilliQuantity(selector.DefaultReserve.CPUMilli, resource.DecimalSI).String())
	}
	if !cl.Reserve.Memory.set {
		cl.Reserve.Memory = NewQuantity(resource.NewQuantity(selector.DefaultReserve.MemoryBytes, resource.BinarySI).String())
	}
	defaultDuration(&cl.HealthyTimeout, DefaultHealthyTimeout)
	defaultDuration(&cl.LostTimeout, DefaultLostTimeout)
	defaultDuration(&cl.StatusInterval, DefaultStatusInterval)
	defaultDuration(&cl.CapacityErrorMemory, DefaultCapacityErrorMemory)
	defaultDuration(&cl.CertLifetime, DefaultCertLifetime)
	if cl.LaunchConcurrency == 0 {
		cl.LaunchConcurrency = DefaultLaunchConcurrency
	}
	if cl.ClusterName == "" {
		cl.ClusterName = DefaultClusterName
	}
	if cl.PodPidsLimit == nil {
		n := DefaultPodPidsLimit
		cl.PodPidsLimit = &n
	}
	defaultQuantity(&c.Registry.MaxUnpackedImageSize, DefaultMaxUnpackedImageSize)
}

// BridgeIP returns the first host address of an IPv4 subnet ("10.250.0.0/24" →
// "10.250.0.1"), or "" when subnet is not a valid IPv4 CIDR.
func BridgeIP(subnet string) string {
	p, err := netip.ParsePrefix(subnet)
	if err != nil || !p.Addr().Is4() {
		return ""
	}
	return p.Masked().Addr().Next().String()
}

func defaultQuantity(q *Quantity, v string) {
	if !q.set {
		*q = NewQuantity(v)
	}
}

func defaultDuration(d *Duration, v time.Duration) {
	if !d.set {
		*d = NewDuration(v)
	}
}
