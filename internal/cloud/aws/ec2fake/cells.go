package ec2fake

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/kip-dev/kip/internal/cgroups"
	"github.com/kip-dev/kip/internal/cloud/local"
)

// Defaults of CellOptions.
const (
	DefaultCellBridge = "kipec2br0"
	DefaultCellCIDR   = "10.251.0.0/16"
	// cellKillTimeout bounds how long terminating a cell waits for its processes to die.
	cellKillTimeout = 10 * time.Second
	// reapInterval is how often a fake with cells applies due state changes (spot
	// interruptions reaching their time) without waiting for an API call.
	reapInterval = 200 * time.Millisecond
)

// privateDirs are the paths of an instance's filesystem that are its own (bind mounts of
// directories of the instance's state directory, in a private mount namespace): what a cell
// bootstrap installs and writes. /run is a private tmpfs, so no systemd is visible.
var privateDirs = []string{"/opt/kip", "/etc/kip", "/var/lib/kip-cell", "/etc/systemd/system", "/var/log"}

// CellOptions make a fake whose instances are real local cells (see NewWithCells).
type CellOptions struct {
	// Bridge is the Linux bridge the cells attach to (at most 15 characters). It is created
	// if missing and deleted by Close. Default DefaultCellBridge.
	Bridge string
	// CIDR is the bridge's IPv4 network: the bridge takes its first address (the VPC
	// router's), the fake's VPC is CIDR and its two subnets (SubnetA in zone a, SubnetB in
	// zone b) are its halves. A prefix length of 16 to 27. Default DefaultCellCIDR.
	CIDR string
	// StateDir holds one directory per instance (user data, the private directories, the
	// script's output). Default: a new temporary directory, removed by Close. It must not
	// be under /run, which instances see as an empty tmpfs.
	StateDir string
	// CgroupParent is the cgroup (relative, placed as the local backend places its cells')
	// holding one cgroup per instance. Default "kip-ec2fake-<Bridge>".
	CgroupParent string
	// Env is added to the environment of user-data scripts (PATH and HOME are set).
	Env []string
	// Logger logs cell boots and teardowns; nil means slog.Default().
	Logger *slog.Logger
}

// cellHost is what a fake with cells holds besides its EC2 state.
type cellHost struct {
	opts     CellOptions
	prefix   netip.Prefix
	bridgeIP netip.Addr
	cg       *cgroups.FS
	ownDir   bool
	log      *slog.Logger

	imds     *http.Server
	imdsAddr netip.AddrPort

	peers peering // SetPeers

	wg     sync.WaitGroup // boots and teardowns in flight
	stop   chan struct{}
	closed bool // under Server.mu
}

// cellState is one instance's cell. Its fields are guarded by Server.mu, except the names,
// which never change.
type cellState struct {
	netns, veth, dir string
	cgroups          []string
	bootDone         chan struct{} // closed when the boot attempt ends
	booted           bool
	destroying       bool
	destroyed        bool
	scriptDone       bool
	scriptExit       int
	imdsTokens       map[string]time.Time // IMDSv2 token → expiry
}

// NewWithCells returns a fake (as New) whose instances are real local cells: RunInstances
// makes a network namespace on the bridge with the instance's private address, a cgroup
// sized to its type, and runs the user data, if it is a script (#!), as cloud-init would;
// the instance metadata service answers at 169.254.169.254 inside each cell;
// TerminateInstances kills everything in the cell and removes it. It needs root. Close
// removes every cell, the bridge and what the fake made.
func NewWithCells(opts Options, c CellOptions) (*Server, error) {
	h, err := newCellHost(c)
	if err != nil {
		return nil, err
	}
	// Ids carry random high bits, so that the netns and veths of two fakes never clash.
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		h.teardown()
		return nil, fmt.Errorf("reading random bytes: %w", err)
	}
	s := newServer(opts, h, (binary.BigEndian.Uint64(b[:])&(1<<40-1))<<24)
	if err := h.startIMDS(s); err != nil {
		h.teardown()
		return nil, err
	}
	go s.reap()
	return s, nil
}

func newCellHost(c CellOptions) (*cellHost, error) {
	if c.Bridge == "" {
		c.Bridge = DefaultCellBridge
	}
	if len(c.Bridge) > 15 {
		return nil, fmt.Errorf("ec2fake cells: Bridge %q is longer than 15 characters", c.Bridge)
	}
	if c.CIDR == "" {
		c.CIDR = DefaultCellCIDR
	}
	p, err := netip.ParsePrefix(c.CIDR)
	if err != nil || !p.Addr().Is4() {
		return nil, fmt.Errorf("ec2fake cells: CIDR %q is not an IPv4 network", c.CIDR)
	}
	p = p.Masked()
	if p.Bits() < 16 || p.Bits() > 27 {
		return nil, fmt.Errorf("ec2fake cells: CIDR %s must have a prefix length of 16 to 27", p)
	}
	if c.CgroupParent == "" {
		c.CgroupParent = "kip-ec2fake-" + c.Bridge
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	h := &cellHost{opts: c, prefix: p, bridgeIP: p.Addr().Next(), stop: make(chan struct{}), log: c.Logger.With("ec2fake", c.Bridge)}
	if c.StateDir == "" {
		d, err := os.MkdirTemp("", "ec2fake-")
		if err != nil {
			return nil, fmt.Errorf("ec2fake cells: %w", err)
		}
		h.opts.StateDir, h.ownDir = d, true
	} else {
		abs, err := filepath.Abs(c.StateDir)
		if err != nil {
			return nil, fmt.Errorf("ec2fake cells: StateDir: %w", err)
		}
		if abs == "/run" || strings.HasPrefix(abs, "/run/") || strings.HasPrefix(abs, "/var/run/") {
			return nil, fmt.Errorf("ec2fake cells: StateDir %s is under /run, which instances see as an empty tmpfs", abs)
		}
		if err := os.MkdirAll(abs, 0o700); err != nil {
			return nil, fmt.Errorf("ec2fake cells: %w", err)
		}
		h.opts.StateDir = abs
	}
	if h.cg, err = cgroups.Open("/sys/fs/cgroup", "/proc/self/cgroup"); err != nil {
		h.teardown()
		return nil, fmt.Errorf("ec2fake cells: %w", err)
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: h.bridgeIP.AsSlice(), Mask: net.CIDRMask(p.Bits(), 32)}}
	if err := local.EnsureBridge(c.Bridge, addr); err != nil {
		h.teardown()
		return nil, fmt.Errorf("ec2fake cells: %w", err)
	}
	if _, err := local.ForwardAccept(c.Bridge); err != nil {
		h.teardown()
		return nil, fmt.Errorf("ec2fake cells: %w", err)
	}
	for _, d := range privateDirs {
		// The mount points must exist on the host; an empty directory is left there.
		if err := os.MkdirAll(d, 0o755); err != nil {
			h.teardown()
			return nil, fmt.Errorf("ec2fake cells: creating mount point %s: %w", d, err)
		}
	}
	return h, nil
}

// teardown removes what newCellHost and startIMDS made; the cells must be gone already.
func (h *cellHost) teardown() error {
	var errs []error
	h.peers.mu.Lock()
	if err := h.unpeerLocked(); err != nil {
		errs = append(errs, err)
	}
	h.peers.mu.Unlock()
	if h.imds != nil {
		if err := h.imds.Close(); err != nil {
			errs = append(errs, fmt.Errorf("closing the metadata server: %w", err))
		}
	}
	if h.cg != nil {
		if dirs, err := h.cg.Dirs(h.opts.CgroupParent); err == nil {
			for _, d := range dirs {
				if err := os.Remove(d); err != nil && !errors.Is(err, os.ErrNotExist) {
					errs = append(errs, fmt.Errorf("removing cgroup %s: %w", d, err))
				}
			}
		}
	}
	if err := local.RemoveForwardAccept(h.opts.Bridge); err != nil {
		errs = append(errs, err)
	}
	if err := local.DeleteBridge(h.opts.Bridge); err != nil {
		errs = append(errs, err)
	}
	local.RemoveNetnsDirIfEmpty()
	if h.ownDir {
		if err := os.RemoveAll(h.opts.StateDir); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// cellSubnets are the seeded subnets' networks in cell mode: the halves of the bridge's.
func (h *cellHost) cellSubnets() (a, b netip.Prefix) {
	a = netip.PrefixFrom(h.prefix.Addr(), h.prefix.Bits()+1)
	next := a.Addr()
	for range 1 << (32 - a.Bits()) {
		next = next.Next()
	}
	return a, netip.PrefixFrom(next, a.Bits())
}

// BridgeIP returns the bridge's address in cell mode (the VPC router's: where cells reach
// the host, and where a kip under test must serve what cells fetch), or an invalid address.
func (s *Server) BridgeIP() netip.Addr {
	if s.cells == nil {
		return netip.Addr{}
	}
	return s.cells.bridgeIP
}

// VPCNetwork returns the seeded VPC's network (the bridge's in cell mode).
func (s *Server) VPCNetwork() netip.Prefix {
	if s.cells == nil {
		return netip.MustParsePrefix(VPCCIDR)
	}
	return s.cells.prefix
}

// StateDir returns the directory holding the instances' directories in cell mode, else "".
func (s *Server) StateDir() string {
	if s.cells == nil {
		return ""
	}
	return s.cells.opts.StateDir
}

// IMDSAddr returns where the metadata server listens on the bridge (each cell reaches it as
// 169.254.169.254:80), or an invalid address without cells.
func (s *Server) IMDSAddr() netip.AddrPort {
	if s.cells == nil {
		return netip.AddrPort{}
	}
	return s.cells.imdsAddr
}

// CellInfo describes an instance's cell for tests.
type CellInfo struct {
	// Netns is the name of its network namespace under /run/netns; HostVeth the host end of
	// its veth; Cgroups its cgroup in every hierarchy.
	Netns, HostVeth string
	Cgroups         []string
	// Dir is its directory; OutputPath the file that receives the user-data script's output
	// (the instance's /var/log/cloud-init-output.log).
	Dir, OutputPath string
	// Booted: the cell is made and its script started; Destroyed: it is gone.
	Booted, Destroyed bool
	// ScriptExited tells that the user-data script has exited, with ScriptExitCode.
	ScriptExited   bool
	ScriptExitCode int
}

// Cell returns the cell of instance id; false without cells or for an unknown instance.
func (s *Server) Cell(id string) (CellInfo, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	in := s.instances[id]
	if in == nil || in.cell == nil {
		return CellInfo{}, false
	}
	c := in.cell
	return CellInfo{Netns: c.netns, HostVeth: c.veth, Cgroups: append([]string(nil), c.cgroups...), Dir: c.dir,
		OutputPath: filepath.Join(c.dir, "var/log/cloud-init-output.log"), Booted: c.booted, Destroyed: c.destroyed,
		ScriptExited: c.scriptDone, ScriptExitCode: c.scriptExit}, true
}

// newCellLocked gives a new instance its cell and starts booting it.
func (s *Server) newCellLocked(in *instance) *apiError {
	h := s.cells
	id := in.id
	dirs, err := h.cg.Dirs(filepath.Join(h.opts.CgroupParent, id))
	if err != nil {
		return internalError("placing the cell's cgroup: " + err.Error())
	}
	c := &cellState{netns: "kip-" + id, veth: "ke" + id[len(id)-13:], dir: filepath.Join(h.opts.StateDir, id),
		cgroups: dirs, bootDone: make(chan struct{}), imdsTokens: map[string]time.Time{}}
	in.cell = c
	it, _ := s.typeByName(in.instanceType)
	ud, _ := base64.StdEncoding.DecodeString(in.userData)
	host := privateDNSName(in.privateIP)
	var baked string
	if img := s.images[in.imageID]; img != nil {
		baked = img.root
	}
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		err := h.boot(c, in.privateIP, host, baked, ud, it, func(code int) { s.scriptExited(c, code) })
		s.mu.Lock()
		defer s.mu.Unlock()
		close(c.bootDone)
		if err != nil {
			h.log.Error("booting a cell", "instance", id, "err", err)
			s.terminateLocked(in, s.clk.Now(), reasonLaunchError)
			return
		}
		c.booted = true
	}()
	return nil
}

func (s *Server) scriptExited(c *cellState, code int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c.scriptDone, c.scriptExit = true, code
}

// boot makes the cell: its directories (seeded from the image's baked root, if any), cgroup,
// network and metadata route, then starts the user-data script. On error what it made stays
// for destroy to remove.
func (h *cellHost) boot(c *cellState, ip, hostname, baked string, userData []byte, it InstanceType, exited func(int)) error {
	for _, d := range privateDirs {
		dst := filepath.Join(c.dir, d)
		if err := os.MkdirAll(dst, 0o755); err != nil {
			return err
		}
		if baked == "" {
			continue
		}
		if _, err := os.Stat(filepath.Join(baked, d)); err != nil {
			continue
		}
		// cp -a keeps modes, owners and links, as the image's snapshot does.
		if out, err := exec.Command("cp", "-a", "--", filepath.Join(baked, d)+"/.", dst).CombinedOutput(); err != nil {
			return fmt.Errorf("copying the image's baked %s: %v: %s", d, err, out)
		}
	}
	if err := os.WriteFile(filepath.Join(c.dir, "user-data"), userData, 0o600); err != nil {
		return err
	}
	dirs := c.cgroups
	if err := h.cg.CreateCell(dirs, cgroups.Limits{CPUs: float64(it.VCPU), MemoryBytes: it.MemoryMiB << 20}); err != nil {
		return err
	}
	addr := netip.MustParseAddr(ip)
	if err := local.PlumbCell(local.CellNet{Netns: c.netns, HostVeth: c.veth, Bridge: h.opts.Bridge,
		IP: addr.AsSlice(), Mask: net.CIDRMask(h.prefix.Bits(), 32), Gateway: h.bridgeIP.AsSlice()}); err != nil {
		return err
	}
	if err := imdsRoute(c.netns, h.imdsAddr); err != nil {
		return err
	}
	if len(userData) < 2 || string(userData[:2]) != "#!" {
		return nil // data for the instance's own use, served by IMDS
	}
	script := filepath.Join(c.dir, "part-001")
	if err := os.WriteFile(script, userData, 0o700); err != nil {
		return err
	}
	return startScript(scriptSpec{
		path: script, netns: c.netns, hostname: hostname, cgroups: h.cg.AgentDirs(dirs),
		binds: c.dir, output: filepath.Join(c.dir, "var/log/cloud-init-output.log"), env: h.opts.Env,
	}, exited)
}

// terminateLocked moves in to shutting-down at at, for reason, and starts removing its cell.
func (s *Server) terminateLocked(in *instance, at time.Time, reason string) {
	if !in.terminateAt.IsZero() {
		return
	}
	in.terminateAt, in.stateReason = at, reason
	c := in.cell
	if c == nil || c.destroying {
		return
	}
	c.destroying = true
	h := s.cells
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		<-c.bootDone
		err := h.destroy(c)
		s.mu.Lock()
		defer s.mu.Unlock()
		if err != nil {
			// It stays shutting-down, its address held, as an instance EC2 fails to stop.
			h.log.Error("removing a cell", "instance", in.id, "err", err)
			return
		}
		c.destroyed = true
	}()
}

// destroy kills everything in the cell's cgroup and removes the cgroup, the network and the
// directory; what is already gone is fine.
func (h *cellHost) destroy(c *cellState) error {
	var errs []error
	if len(c.cgroups) > 0 {
		strays := strayPods(c.cgroups)
		if err := cgroups.RemoveCell(c.cgroups, cellKillTimeout); err != nil {
			errs = append(errs, err)
		}
		for _, uid := range strays {
			if err := h.cg.RemoveStrayPod(uid, cellKillTimeout); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if err := local.UnplumbCell(local.CellNet{Netns: c.netns, HostVeth: c.veth, Bridge: h.opts.Bridge}); err != nil {
		errs = append(errs, err)
	}
	if len(errs) == 0 {
		if err := os.RemoveAll(c.dir); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// strayPods returns the UIDs of pods whose cgroup2 part runc put outside the cell: in the
// hybrid layout runc 1.1 places it at the hierarchy's root (cgroups.StrayPodDirs). They are
// the pods whose cgroups runc nested in the cell's own v1 hierarchies (<cell>/.../kip/<uid>,
// there even once every container of the pod has exited), and those seen in the cgroup of
// the cell's processes. The local backend finds them by its pod-UID tag; the fake has no tags
// of kip's to go by.
func strayPods(dirs []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, d := range dirs {
		_ = filepath.WalkDir(d, func(p string, e fs.DirEntry, err error) error {
			if err != nil || !e.IsDir() {
				return nil
			}
			if strings.Count(strings.TrimPrefix(p, d), "/") > 3 {
				return fs.SkipDir
			}
			if e.Name() != cgroups.PodsParent || p == d {
				return nil
			}
			pods, _ := os.ReadDir(p)
			for _, pd := range pods {
				if uid := pd.Name(); pd.IsDir() && !seen[uid] {
					seen[uid] = true
					out = append(out, uid)
				}
			}
			return fs.SkipDir
		})
		pids, _ := cgroups.PIDs(d)
		for _, pid := range pids {
			b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
			if err != nil {
				continue
			}
			for _, line := range strings.Split(string(b), "\n") {
				rest, ok := strings.CutPrefix(line, "0::/"+cgroups.PodsParent+"/")
				if uid, _, _ := strings.Cut(rest, "/"); ok && uid != "" && !seen[uid] {
					seen[uid] = true
					out = append(out, uid)
				}
			}
		}
	}
	return out
}

// reap applies due state changes every reapInterval until Close.
func (s *Server) reap() {
	t := time.NewTicker(reapInterval)
	defer t.Stop()
	for {
		select {
		case <-s.cells.stop:
			return
		case <-t.C:
			s.mu.Lock()
			s.sweepLocked(s.clk.Now())
			s.mu.Unlock()
		}
	}
}

// destroyAllLocked terminates every instance that has a cell.
func (s *Server) destroyAllLocked() {
	now := s.clk.Now()
	for _, in := range s.instances {
		if in.cell != nil {
			s.terminateLocked(in, now, reasonUserShutdown)
		}
	}
}

// Close removes every cell (killing all their processes), the metadata server, the peering
// (SetPeers), the bridge, the cgroup parent and, if the fake made it, the state directory. Without cells it does
// nothing. RunInstances fails afterwards.
func (s *Server) Close() error {
	h := s.cells
	if h == nil {
		return nil
	}
	s.mu.Lock()
	if h.closed {
		s.mu.Unlock()
		return nil
	}
	h.closed = true
	close(h.stop)
	s.destroyAllLocked()
	s.mu.Unlock()
	h.wg.Wait()
	var errs []error
	s.mu.Lock()
	for _, in := range s.instances {
		if in.cell != nil && !in.cell.destroyed {
			errs = append(errs, fmt.Errorf("instance %s: its cell could not be removed", in.id))
		}
	}
	s.mu.Unlock()
	if err := h.teardown(); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("closing the EC2 fake: %w", err)
	}
	return nil
}

func privateDNSName(ip string) string {
	if ip == "" {
		return ""
	}
	return "ip-" + strings.ReplaceAll(ip, ".", "-") + ".ec2.internal"
}
