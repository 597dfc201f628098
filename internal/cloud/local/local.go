// Package local is the cloud backend that makes cells on this Linux machine: each cell is a
// network namespace with its own address on a bridge (the local "VPC"), a set of cgroups sized
// to its instance type, and the cell agent process started inside them. Its state lives in a
// directory, so a new Backend (kip restarted) sees and terminates the cells of an earlier one.
// Where namespaces are not allowed it refuses to start, unless asked for the process-only mode
// (agents on distinct loopback addresses, no isolation).
package local

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"k8s.io/utils/clock"

	"github.com/kip-dev/kip/internal/cgroups"
	"github.com/kip-dev/kip/internal/cloud"
	"github.com/kip-dev/kip/internal/instancetype"
)

const (
	// DefaultBridge is the bridge name when Config.Bridge is empty.
	DefaultBridge = "kipbr0"
	// DefaultSubnet is the cells' subnet when Config.Subnet is empty.
	DefaultSubnet = "10.250.0.0/16"
	// DefaultProcessOnlySubnet is the loopback subnet of process-only cells.
	DefaultProcessOnlySubnet = "127.0.1.0/24"
	// DefaultCgroupParent names the cgroup under which cells' cgroups are made.
	DefaultCgroupParent = "kip"
	// DefaultMaxBootstrapBytes bounds LaunchSpec.BootstrapData.
	DefaultMaxBootstrapBytes = 1 << 20

	defaultCgroupRoot = "/sys/fs/cgroup"
	// maxCells stays under the 1024 ports a Linux bridge can hold.
	maxCells = 1000
	// killTimeout bounds how long Terminate waits for killed processes to go away.
	killTimeout = 10 * time.Second
)

// Environment variables the backend sets for the agent, besides PATH and Config.AgentEnv.
const (
	EnvCellID     = "KIP_CELL_ID"     // LaunchSpec.CellID
	EnvInstanceID = "KIP_INSTANCE_ID" // the backend's id of the cell
	// EnvCellIP is the cell's address. In process-only mode all agents share the host's
	// network, so the agent must listen on this address, not on all of them.
	EnvCellIP = "KIP_CELL_IP"
)

// Config configures a local backend.
type Config struct {
	// StateDir holds the per-cell directories (tags, bootstrap file, address, agent log and
	// the agent's own state). Required. It must survive restarts of kip.
	StateDir string
	// Bridge is the bridge name (at most 15 characters). Default DefaultBridge.
	Bridge string
	// Subnet is the cells' IPv4 subnet in CIDR form; the bridge takes its first host address.
	// Default DefaultSubnet (DefaultProcessOnlySubnet in process-only mode).
	Subnet string
	// AgentCommand is the agent binary and its extra arguments; the backend appends
	// "--bootstrap <file> --state-dir <dir> --image-store <ImageStore>" and, with a cap,
	// "--image-store-max-bytes <ImageStoreMaxBytes>". Required.
	AgentCommand []string
	// ImageStore is the directory of unpacked images every cell's agent shares (agents run
	// in the host's mount namespace, so all of them see it): each image is unpacked once
	// per host, and each pull still fetches the manifest with the pod's own credentials.
	// Teardown removes it. Default StateDir/images.
	ImageStore string
	// ImageStoreMaxBytes caps ImageStore: after a pull, the agent removes images no running
	// cell uses, least recently used first, until the rest fit. 0 is no cap.
	ImageStoreMaxBytes int64
	// StartSlots bounds how many containers the host's agents start at once (kip-cell
	// --start-slots): 0 means twice the host's CPU count, a negative number no bound.
	StartSlots int
	// AgentEnv is added to the agent's environment.
	AgentEnv []string
	// Catalog replaces DefaultCatalog.
	Catalog []instancetype.InstanceType
	// CgroupRoot is where the cgroup hierarchies are mounted. Default /sys/fs/cgroup.
	CgroupRoot string
	// CgroupParent is the cgroup, under this process's own in each hierarchy (on a cgroup
	// v2-only host under its parent, as runc places a relative path), that holds the cells'
	// cgroups. Default DefaultCgroupParent.
	CgroupParent string
	// ProcessOnly runs cells as plain agent processes bound to distinct loopback addresses:
	// no network namespace, no cgroup limits, no partitions. For machines that allow no
	// namespaces; nothing is isolated.
	ProcessOnly bool
	// SecurityGroups are the groups LaunchSpec.SecurityGroups may name, enforced by an
	// nftables table on the host (see FirewallTable). Not in process-only mode.
	SecurityGroups []SecurityGroup
	// DefaultSecurityGroups are the groups of a cell whose spec names none. Empty (the
	// default) leaves such cells open to every cell, as with no groups configured at all;
	// only the agent port is closed between cells either way.
	DefaultSecurityGroups []string
	// MaxBootstrapBytes bounds LaunchSpec.BootstrapData. Default DefaultMaxBootstrapBytes.
	MaxBootstrapBytes int
	// Clock stamps launch times. Default the real clock.
	Clock clock.Clock
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

// Backend is the local cloud backend. It is safe for concurrent use, and several Backends
// (in one process or several) may share a StateDir.
type Backend struct {
	cfg      Config
	subnet   *net.IPNet
	bridgeIP net.IP
	catalog  []instancetype.InstanceType
	store    *store
	cg       *cgroups.FS // nil in process-only mode
	log      *slog.Logger
	fw       fwSync

	// serving holds, by cell id, the channel each agent this backend started closes once
	// it serves (AgentServing).
	servingMu sync.Mutex
	serving   map[string]<-chan struct{}
}

var _ cloud.Cloud = (*Backend)(nil)

// probe is Probe; tests replace it to see how New behaves on a machine without namespaces.
var probe = Probe

// New validates cfg, fills in defaults and checks that this machine allows what the
// configured mode needs. It changes nothing on the host but the state directory.
func New(cfg Config) (*Backend, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	_, subnet, _ := net.ParseCIDR(cfg.Subnet) // validated by defaults
	b := &Backend{
		cfg:      cfg,
		subnet:   subnet,
		bridgeIP: firstHost(subnet),
		catalog:  slices.Clone(cfg.Catalog),
		store:    &store{dir: cfg.StateDir},
		log:      cfg.Logger.With("cloud", "local"),
		serving:  map[string]<-chan struct{}{},
	}
	if !cfg.ProcessOnly {
		caps := probe(cfg.CgroupRoot)
		if err := caps.Isolated(); err != nil {
			return nil, fmt.Errorf("local backend: cells need root, network namespaces and cgroups, which this machine does not allow (%v); set ProcessOnly for the process-only mode, which runs agents on loopback addresses without any isolation", err)
		}
		cg, err := cgroups.Open(cfg.CgroupRoot, "/proc/self/cgroup")
		if err != nil {
			return nil, fmt.Errorf("local backend: %w", err)
		}
		b.cg = cg
	}
	if err := b.store.init(); err != nil {
		return nil, fmt.Errorf("local backend: %w", err)
	}
	// A kip killed while recording a cell leaves its staging directory: remove it now.
	unlock, err := b.store.lock()
	if err != nil {
		return nil, fmt.Errorf("local backend: %w", err)
	}
	err = b.store.sweepStaging()
	unlock()
	if err != nil {
		return nil, fmt.Errorf("local backend: %w", err)
	}
	return b, nil
}

// defaults fills in defaults and reports the first invalid field.
func (c *Config) defaults() error {
	if c.StateDir == "" {
		return errors.New("local backend config: StateDir is required")
	}
	if !filepath.IsAbs(c.StateDir) {
		abs, err := filepath.Abs(c.StateDir)
		if err != nil {
			return fmt.Errorf("local backend config: StateDir %q: %w", c.StateDir, err)
		}
		c.StateDir = abs
	}
	if len(c.AgentCommand) == 0 || c.AgentCommand[0] == "" {
		return errors.New("local backend config: AgentCommand is required (the kip-cell binary and its extra arguments)")
	}
	if c.ImageStore == "" {
		c.ImageStore = filepath.Join(c.StateDir, "images")
	}
	if c.StartSlots == 0 {
		c.StartSlots = 2 * runtime.NumCPU()
	}
	if !filepath.IsAbs(c.ImageStore) || strings.ContainsAny(c.ImageStore, ",:") {
		return fmt.Errorf("local backend config: ImageStore %q must be an absolute path without ',' or ':' (overlayfs options)", c.ImageStore)
	}
	if c.ImageStoreMaxBytes < 0 {
		return fmt.Errorf("local backend config: ImageStoreMaxBytes %d is negative", c.ImageStoreMaxBytes)
	}
	if c.Bridge == "" {
		c.Bridge = DefaultBridge
	}
	if len(c.Bridge) > 15 {
		return fmt.Errorf("local backend config: Bridge %q is longer than 15 characters", c.Bridge)
	}
	if c.Subnet == "" {
		c.Subnet = DefaultSubnet
		if c.ProcessOnly {
			c.Subnet = DefaultProcessOnlySubnet
		}
	}
	ip, subnet, err := net.ParseCIDR(c.Subnet)
	if err != nil {
		return fmt.Errorf("local backend config: Subnet %q: %w", c.Subnet, err)
	}
	if ip.To4() == nil {
		return fmt.Errorf("local backend config: Subnet %q is not IPv4", c.Subnet)
	}
	if ones, bits := subnet.Mask.Size(); bits-ones < 2 {
		return fmt.Errorf("local backend config: Subnet %q has no room for cells", c.Subnet)
	}
	if c.ProcessOnly && !subnet.IP.IsLoopback() {
		return fmt.Errorf("local backend config: Subnet %q must be inside 127.0.0.0/8 in process-only mode", c.Subnet)
	}
	if c.CgroupRoot == "" {
		c.CgroupRoot = defaultCgroupRoot
	}
	if c.CgroupParent == "" {
		c.CgroupParent = DefaultCgroupParent
	}
	if filepath.IsAbs(c.CgroupParent) || filepath.Clean(c.CgroupParent) != c.CgroupParent ||
		c.CgroupParent == "." || c.CgroupParent == ".." || strings.HasPrefix(c.CgroupParent, "../") {
		return fmt.Errorf("local backend config: CgroupParent %q must be a clean relative path", c.CgroupParent)
	}
	if c.Catalog == nil {
		cat, err := DefaultCatalog()
		if err != nil {
			return fmt.Errorf("local backend config: Catalog: %w", err)
		}
		c.Catalog = cat
	}
	if len(c.Catalog) == 0 {
		return errors.New("local backend config: Catalog is empty")
	}
	if err := validateGroups(c.SecurityGroups, c.DefaultSecurityGroups); err != nil {
		return fmt.Errorf("local backend config: %w", err)
	}
	if c.ProcessOnly && len(c.SecurityGroups) > 0 {
		return errors.New("local backend config: SecurityGroups need network namespaces; process-only cells share the host's network")
	}
	if c.MaxBootstrapBytes == 0 {
		c.MaxBootstrapBytes = DefaultMaxBootstrapBytes
	}
	if c.Clock == nil {
		c.Clock = clock.RealClock{}
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return nil
}

func firstHost(n *net.IPNet) net.IP {
	ip := slices.Clone(n.IP.To4())
	ip[3]++
	return ip
}

// Name implements cloud.Cloud.
func (b *Backend) Name() string { return "local" }

// BridgeIP is the host's address on the cells' network: kip's virtual node, the registry and
// the kubelet API listen there so that cells can reach them. In process-only mode it is the
// first address of the loopback subnet.
func (b *Backend) BridgeIP() net.IP { return slices.Clone(b.bridgeIP) }

// Subnet returns the cells' subnet.
func (b *Backend) Subnet() *net.IPNet {
	return &net.IPNet{IP: slices.Clone(b.subnet.IP), Mask: slices.Clone(b.subnet.Mask)}
}

// InstanceTypes implements cloud.Cloud.
func (b *Backend) InstanceTypes(ctx context.Context) ([]instancetype.InstanceType, error) {
	out := slices.Clone(b.catalog)
	for i := range out {
		out[i].Offerings = slices.Clone(out[i].Offerings)
	}
	return out, nil
}

// Setup creates the bridge with the host's address on it, or adopts an existing one. With
// br_netfilter and a host FORWARD policy of DROP it adds an accept rule for the bridge.
// It is idempotent. In process-only mode there is nothing to set up.
func (b *Backend) Setup(ctx context.Context) error {
	if b.cfg.ProcessOnly {
		return nil
	}
	ones, _ := b.subnet.Mask.Size()
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: b.bridgeIP, Mask: net.CIDRMask(ones, 32)}}
	if _, err := ensureBridge(b.cfg.Bridge, addr); err != nil {
		return fmt.Errorf("setting up local backend: %w", err)
	}
	if _, err := forwardAccept(b.cfg.Bridge); err != nil {
		return fmt.Errorf("setting up local backend: %w", err)
	}
	if len(b.cfg.SecurityGroups) > 0 {
		if v, err := os.ReadFile(brNetfilterSysctl); err != nil || strings.TrimSpace(string(v)) != "1" {
			return fmt.Errorf("setting up local backend: security groups need bridged IPv4 to pass the host's IP hooks (%s = 1, module br_netfilter): %s is %q (%v)",
				brNetfilterSysctl, brNetfilterSysctl, strings.TrimSpace(string(v)), err)
		}
	}
	if err := sweepTables(bridgeExists); err != nil {
		b.log.Warn("sweeping firewall tables of vanished bridges", "err", err)
	}
	if err := sweepNodePorts(bridgeExists); err != nil {
		b.log.Warn("sweeping nodePort tables of vanished bridges", "err", err)
	}
	if err := b.SyncFirewall(); err != nil {
		return fmt.Errorf("setting up local backend: %w", err)
	}
	return nil
}

// Teardown terminates every cell in the state directory, then removes the bridge, the
// FORWARD rule Setup may have added (by this or another Backend), the cgroup parents that no
// other backend still uses, and the backend's files.
func (b *Backend) Teardown(ctx context.Context) error {
	ids, err := b.store.ids()
	if err != nil {
		return fmt.Errorf("tearing down local backend: %w", err)
	}
	var errs []error
	parents := map[string]bool{}
	if b.cg != nil {
		dirs, err := b.cg.Dirs(b.cfg.CgroupParent)
		if err != nil {
			errs = append(errs, fmt.Errorf("tearing down local backend: %w", err))
		}
		for _, d := range dirs {
			parents[d] = true
		}
	}
	for _, id := range ids {
		if r, err := b.store.read(id); err == nil {
			for _, d := range r.meta.Cgroups {
				parents[filepath.Dir(d)] = true
			}
		}
		if err := b.Terminate(ctx, id); err != nil && !cloud.IsNotFound(err) {
			errs = append(errs, err)
		}
	}
	for _, d := range slices.Sorted(maps.Keys(parents)) {
		// Another backend may share the parent (same CgroupParent, other StateDir): a parent
		// that still holds cells is theirs to remove.
		err := os.Remove(d)
		if err != nil && !errors.Is(err, os.ErrNotExist) && !errors.Is(err, unix.EBUSY) && !errors.Is(err, unix.ENOTEMPTY) {
			errs = append(errs, fmt.Errorf("removing cgroup parent %s: %w", d, err))
		}
	}
	if !b.cfg.ProcessOnly {
		// The rule names this bridge only, and the bridge goes: remove it whoever added it
		// (Setup may have run in another process, as with kip up / kip down).
		if err := removeForwardAccept(b.cfg.Bridge); err != nil {
			errs = append(errs, err)
		}
		if err := deleteTable(tableName(b.cfg.Bridge)); err != nil {
			errs = append(errs, err)
		}
		if err := deleteNodePorts(b.cfg.Bridge); err != nil {
			errs = append(errs, err)
		}
		if err := deleteBridge(b.cfg.Bridge); err != nil {
			errs = append(errs, err)
		}
		removeNetnsDirIfEmpty()
	}
	// Staging directories of launches that crashed while recording a cell hold only files.
	if stale, err := filepath.Glob(filepath.Join(b.store.cellsDir(), stagingPrefix+"*")); err == nil {
		for _, d := range stale {
			if err := os.RemoveAll(d); err != nil {
				errs = append(errs, fmt.Errorf("removing %s: %w", d, err))
			}
		}
	}
	for _, p := range []string{b.store.cellsDir(), filepath.Join(b.store.dir, "tokens"), filepath.Join(b.store.dir, "lock")} {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("removing %s: %w", p, err))
		}
	}
	// The image store goes with the cells, unless one of them could not be terminated: its
	// containers may still run on images there.
	if len(errs) == 0 {
		if err := os.RemoveAll(b.cfg.ImageStore); err != nil {
			errs = append(errs, fmt.Errorf("removing the image store: %w", err))
		}
	}
	_ = os.Remove(b.store.dir) // only if empty: the caller may keep other files there
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("tearing down local backend: %w", err)
	}
	return nil
}

func newID() (string, error) {
	b := make([]byte, 5)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("reading random bytes: %w", err)
	}
	return "lc-" + hex.EncodeToString(b), nil
}

// validID reports whether id has the shape of a local cell id, so that it is safe as a
// path element.
func validID(id string) bool {
	if len(id) != 13 || id[:3] != "lc-" {
		return false
	}
	_, err := hex.DecodeString(id[3:])
	return err == nil
}
