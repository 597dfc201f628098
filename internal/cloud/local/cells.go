package local

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kip-dev/kip/internal/cgroups"
	"github.com/kip-dev/kip/internal/cloud"
	"github.com/kip-dev/kip/internal/instancetype"
)

// hostnameRE is what a cell id must look like to become the agent's hostname.
var hostnameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$`)

// validate checks spec against what this backend can ever launch.
func (b *Backend) validate(spec cloud.LaunchSpec) (instancetype.InstanceType, error) {
	if spec.CellID == "" {
		return instancetype.InstanceType{}, cloud.InvalidSpec("launch spec: field CellID is empty")
	}
	if len(spec.CellID) > 253 || strings.ContainsAny(spec.CellID, "/\x00\n") {
		return instancetype.InstanceType{}, cloud.InvalidSpec("launch spec: field CellID %q is not a valid cell id", spec.CellID)
	}
	i := slices.IndexFunc(b.catalog, func(it instancetype.InstanceType) bool { return it.Name == spec.InstanceType })
	if i < 0 {
		return instancetype.InstanceType{}, cloud.InvalidSpec("launch spec: field InstanceType: unknown instance type %q", spec.InstanceType)
	}
	it := b.catalog[i]
	if spec.Zone != "" && !slices.ContainsFunc(it.Offerings, func(o instancetype.Offering) bool { return o.Zone == spec.Zone }) {
		return it, cloud.InvalidSpec("launch spec: field Zone: instance type %s has no offering in zone %q", it.Name, spec.Zone)
	}
	if spec.Spot && !slices.ContainsFunc(it.Offerings, func(o instancetype.Offering) bool { return o.Spot }) {
		return it, cloud.InvalidSpec("launch spec: field Spot: instance type %s has no spot offering here", it.Name)
	}
	if len(spec.BootstrapData) > b.cfg.MaxBootstrapBytes {
		return it, cloud.InvalidSpec("launch spec: field BootstrapData is %d bytes, more than the %d allowed", len(spec.BootstrapData), b.cfg.MaxBootstrapBytes)
	}
	if spec.VolumeSizeGiB < 0 {
		return it, cloud.InvalidSpec("launch spec: field VolumeSizeGiB is negative (%d)", spec.VolumeSizeGiB)
	}
	if _, err := b.cellGroups(spec); err != nil {
		return it, err
	}
	return it, nil
}

// Launch implements cloud.Cloud. It returns once the agent process has started in the cell
// (StateRunning); whether the agent answers is for the caller to check. SecurityGroups name
// configured groups (Config.SecurityGroups; an unknown one is an InvalidSpec error and
// nothing launches); Image, InstanceProfile, VolumeSizeGiB and PrivateIPOnly have no local
// meaning and are ignored.
func (b *Backend) Launch(ctx context.Context, spec cloud.LaunchSpec) (*cloud.Instance, error) {
	it, err := b.validate(spec)
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("launching cell %s: %w", spec.CellID, err)
	}
	t0 := time.Now()
	id, existing, unlockLaunch, err := b.reserve(spec)
	if errors.Is(err, errStaleLaunch) {
		// A launch with this token died half-way (kip was killed): resume it in the same
		// cell (same id, address and token). What the dead launcher made of it is undone
		// and the boot is done again.
		b.log.Info("resuming a launch whose launcher died", "instance", id, "cell", spec.CellID)
		if uerr := b.undoBoot(id); uerr != nil {
			unlockLaunch()
			return nil, fmt.Errorf("launching cell %s: undoing the half-made boot of %s: %w", spec.CellID, id, uerr)
		}
		err = nil
	}
	if err != nil {
		return nil, fmt.Errorf("launching cell %s: %w", spec.CellID, err) // keeps its kind
	}
	if existing {
		return b.Describe(ctx, id)
	}
	defer unlockLaunch()
	t1 := time.Now()
	inst, err := b.boot(id, spec, it)
	if err != nil {
		if derr := b.destroy(id); derr != nil {
			b.log.Error("cleaning up a failed launch", "instance", id, "err", derr)
		}
		return nil, fmt.Errorf("launching cell %s: %w", spec.CellID, err)
	}
	b.log.Debug("launched cell", "instance", id, "cell", spec.CellID, "ip", inst.PrivateIP, "type", it.Name,
		"reserve", t1.Sub(t0), "boot", time.Since(t1))
	return inst, nil
}

// errStaleLaunch says that the cell of a client token is still launching but nobody held
// its launch lock: the launcher died. reserve returns it with the cell's id and its launch
// lock, now held by the caller.
var errStaleLaunch = errors.New("stale launch")

// reserve, under the store lock, either finds the cell an earlier launch with the same
// client token made, or records a new cell (phase launching) with a fresh address and
// returns it with its launch lock held. A cell of the token whose launcher died is returned
// with errStaleLaunch.
func (b *Backend) reserve(spec cloud.LaunchSpec) (id string, existing bool, unlockLaunch func(), err error) {
	unlock, err := b.store.lock()
	if err != nil {
		return "", false, nil, err
	}
	defer unlock()
	if err := b.store.sweepStaging(); err != nil {
		return "", false, nil, err
	}
	var tokenHash string
	if spec.ClientToken != "" {
		tokenHash = hashToken(spec.ClientToken)
		prev, err := b.store.tokenCell(tokenHash)
		if err != nil {
			return "", false, nil, err
		}
		if prev != "" && validID(prev) {
			if r, err := b.store.read(prev); err == nil {
				if r.meta.Phase != phaseLaunching {
					return prev, true, nil, nil
				}
				held, err := b.store.launchLock(prev, false)
				if err != nil {
					return prev, true, nil, nil // its launcher is at work
				}
				return prev, false, held, errStaleLaunch
			}
		}
	}
	ids, err := b.store.ids()
	if err != nil {
		return "", false, nil, err
	}
	if len(ids) >= maxCells {
		return "", false, nil, cloud.InsufficientCapacity("the local backend holds %d cells, its limit", len(ids))
	}
	used, err := b.store.usedIPs()
	if err != nil {
		return "", false, nil, err
	}
	ip, err := allocIP(b.subnet, b.bridgeIP, used)
	if err != nil {
		return "", false, nil, cloud.Wrap(cloud.KindInsufficientCapacity, err, "allocating an address")
	}
	for {
		if id, err = newID(); err != nil {
			return "", false, nil, err
		}
		if _, err := os.Stat(b.store.cellDir(id)); errors.Is(err, fs.ErrNotExist) {
			break
		}
	}
	// Write the cell's files into a staging directory, then rename it into place: one
	// rename instead of one per file, and no reader ever sees half a cell.
	staging := filepath.Join(b.store.cellsDir(), stagingPrefix+id)
	meta := cellMeta{
		ID: id, CellID: spec.CellID, InstanceType: spec.InstanceType, TokenHash: tokenHash,
		LaunchTime: b.cfg.Clock.Now().UTC(), Phase: phaseLaunching, ProcessOnly: b.cfg.ProcessOnly,
	}
	if !b.cfg.ProcessOnly {
		meta.Netns = "kip-" + id
		meta.HostVeth = "kv" + id[3:]
		meta.Bridge = b.cfg.Bridge
		if meta.SecurityGroups, err = b.cellGroups(spec); err != nil {
			return "", false, nil, err
		}
		if meta.Cgroups, err = b.cg.Dirs(filepath.Join(b.cfg.CgroupParent, id)); err != nil {
			return "", false, nil, err
		}
	}
	tags := maps.Clone(spec.Tags)
	if tags == nil {
		tags = map[string]string{}
	}
	metaJSON, err := json.Marshal(meta)
	if err != nil {
		return "", false, nil, fmt.Errorf("encoding cell %s: %w", spec.CellID, err)
	}
	tagsJSON, err := json.Marshal(tags)
	if err != nil {
		return "", false, nil, fmt.Errorf("encoding tags of cell %s: %w", spec.CellID, err)
	}
	fail := func(err error) (string, bool, func(), error) {
		if unlockLaunch != nil {
			unlockLaunch()
		}
		os.RemoveAll(staging)
		return "", false, nil, fmt.Errorf("recording cell %s: %w", spec.CellID, err)
	}
	if err := os.Mkdir(staging, 0o700); err != nil {
		return fail(err)
	}
	if err := os.Mkdir(filepath.Join(staging, "agent"), 0o700); err != nil {
		return fail(err)
	}
	for name, data := range map[string][]byte{
		"meta.json": metaJSON,
		"tags.json": tagsJSON,
		"ip":        []byte(ip.String() + "\n"),
	} {
		if err := os.WriteFile(filepath.Join(staging, name), data, 0o600); err != nil {
			return fail(err)
		}
	}
	// The launch lock is taken before the cell appears and follows the directory's rename.
	if unlockLaunch, err = flock(filepath.Join(staging, "launch.lock"), false); err != nil {
		return fail(err)
	}
	if err := os.Rename(staging, b.store.cellDir(id)); err != nil {
		return fail(err)
	}
	if tokenHash != "" {
		// Only reserve reads tokens, under the store lock, so a plain write will do.
		if err := os.WriteFile(b.store.tokenPath(tokenHash), []byte(id+"\n"), 0o600); err != nil {
			unlockLaunch()
			os.RemoveAll(b.store.cellDir(id))
			return "", false, nil, fmt.Errorf("recording client token of cell %s: %w", spec.CellID, err)
		}
	}
	return id, false, unlockLaunch, nil
}

// boot makes the cell's cgroups and network and starts its agent.
func (b *Backend) boot(id string, spec cloud.LaunchSpec, it instancetype.InstanceType) (*cloud.Instance, error) {
	r, err := b.store.read(id)
	if err != nil {
		return nil, err
	}
	ip := net.ParseIP(r.ip).To4()
	dir := b.store.cellDir(id)
	agentDir := filepath.Join(dir, "agent")
	t0 := time.Now()
	if !r.meta.ProcessOnly {
		if err := b.cg.CreateCell(r.meta.Cgroups, cgroups.Limits{CPUs: it.VCPU, MemoryBytes: it.MemoryMiB << 20}); err != nil {
			return nil, err
		}
	}
	t1 := time.Now()
	if !r.meta.ProcessOnly {
		if err := plumbCell(b.cellNet(r)); err != nil {
			return nil, err
		}
		// The cell's filters (and its place in other cells' sources) exist before its agent
		// and its pod start.
		if err := b.SyncFirewall(); err != nil {
			return nil, err
		}
	}
	t2 := time.Now()
	hostname := spec.CellID
	if !hostnameRE.MatchString(hostname) {
		hostname = id
	}
	path := os.Getenv("PATH")
	if path == "" {
		path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	}
	env := append([]string{
		"PATH=" + path,
		EnvCellID + "=" + spec.CellID,
		EnvInstanceID + "=" + id,
		EnvCellIP + "=" + ip.String(),
	}, b.cfg.AgentEnv...)
	bootstrap, err := writeBootstrap(dir, spec.BootstrapData, !r.meta.ProcessOnly)
	if err != nil {
		return nil, err
	}
	argv := append(slices.Clone(b.cfg.AgentCommand), "--bootstrap", bootstrap, "--state-dir", agentDir,
		"--image-store", b.cfg.ImageStore)
	if b.cfg.ImageStoreMaxBytes > 0 {
		argv = append(argv, "--image-store-max-bytes", strconv.FormatInt(b.cfg.ImageStoreMaxBytes, 10))
	}
	if b.cfg.StartSlots > 0 {
		argv = append(argv, "--start-slots", strconv.Itoa(b.cfg.StartSlots))
	}
	var agentCgroups []string
	if !r.meta.ProcessOnly {
		agentCgroups = b.cg.AgentDirs(r.meta.Cgroups)
	}
	pid, start, serving, err := startAgent(agentSpec{
		argv: argv, env: env, logPath: filepath.Join(dir, "agent.log"),
		netns: r.meta.Netns, hostname: hostname, cgroups: agentCgroups,
		unified: b.cg != nil && b.cg.Mode() == cgroups.Unified,
	})
	if err != nil {
		return nil, err
	}
	t3 := time.Now()
	defer func() {
		b.log.Debug("booted cell", "instance", id, "cgroups", t1.Sub(t0), "network", t2.Sub(t1), "agent", t3.Sub(t2), "record", time.Since(t3))
	}()
	r.meta.PID, r.meta.PIDStart, r.meta.Phase = pid, start, phaseRunning
	if err := b.updateMeta(id, func(m *cellMeta) bool {
		if m.Phase != phaseLaunching {
			return false // terminated meanwhile
		}
		m.PID, m.PIDStart, m.Phase = pid, start, phaseRunning
		return true
	}); err != nil {
		_ = killAgent(pid, start, killTimeout)
		return nil, err
	}
	b.servingMu.Lock()
	b.serving[id] = serving
	b.servingMu.Unlock()
	return b.instance(r), nil
}

// AgentServing returns a channel closed once the agent of cell id serves (or has exited), so
// that its caller connects at once rather than polling; nil when this backend did not start
// that agent (a cell launched before a restart of kip): then the caller polls.
func (b *Backend) AgentServing(id string) <-chan struct{} {
	b.servingMu.Lock()
	defer b.servingMu.Unlock()
	return b.serving[id]
}

// updateMeta rewrites a cell's meta.json under the store lock if change returns true; it
// fails when the cell is gone or change refuses.
func (b *Backend) updateMeta(id string, change func(*cellMeta) bool) error {
	unlock, err := b.store.lock()
	if err != nil {
		return err
	}
	defer unlock()
	r, err := b.store.read(id)
	if err != nil {
		return err
	}
	if !change(&r.meta) {
		return fmt.Errorf("cell %s changed phase to %s meanwhile", id, r.meta.Phase)
	}
	return writeJSON(filepath.Join(b.store.cellDir(id), "meta.json"), r.meta)
}

func (b *Backend) cellNet(r *cellRecord) cellNet {
	ones, _ := b.subnet.Mask.Size()
	return cellNet{
		netns: r.meta.Netns, hostVeth: r.meta.HostVeth, bridge: r.meta.Bridge,
		ip: net.ParseIP(r.ip).To4(), mask: net.CIDRMask(ones, 32), gateway: b.bridgeIP,
	}
}

// instance turns a record into the contract's Instance.
//
// A cell whose agent has died is still reported running: its namespace, address and cgroups
// are still held, as a cloud VM whose agent crashed is still running; kip's health checks see
// the agent gone and terminate the cell. Reporting it terminated would hide it from List and
// so from garbage collection. A cell whose namespace is gone (the host rebooted, or someone
// deleted it) is reported terminating: it runs nothing any more, but its directory (agent
// key, secret files, images), address and token are still held, so List still shows it and
// garbage collection (or the pod's own state machine) terminates it; Terminate removes what
// is left.
func (b *Backend) instance(r *cellRecord) *cloud.Instance {
	in := &cloud.Instance{
		ID: r.meta.ID, CellID: r.meta.CellID, InstanceType: r.meta.InstanceType,
		Zone: Zone, PrivateIP: r.ip, Tags: maps.Clone(r.tags), LaunchTime: r.meta.LaunchTime,
	}
	if in.Tags == nil {
		in.Tags = map[string]string{}
	}
	switch r.meta.Phase {
	case phaseLaunching:
		in.State = cloud.StatePending
	case phaseTerminating:
		in.State = cloud.StateTerminating
	default:
		in.State = cloud.StateRunning
		if r.meta.Netns != "" {
			if _, err := os.Stat(filepath.Join(netnsDir, r.meta.Netns)); errors.Is(err, fs.ErrNotExist) {
				in.State = cloud.StateTerminating
			}
		}
	}
	return in
}

// Describe implements cloud.Cloud.
func (b *Backend) Describe(ctx context.Context, id string) (*cloud.Instance, error) {
	if !validID(id) {
		return nil, cloud.NotFound("describing instance %q: no such local cell", id)
	}
	r, err := b.store.read(id)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, cloud.NotFound("describing instance %s: no such local cell", id)
	}
	if err != nil {
		return nil, fmt.Errorf("describing instance %s: %w", id, err)
	}
	return b.instance(r), nil
}

// List implements cloud.Cloud.
func (b *Backend) List(ctx context.Context, tags map[string]string) ([]*cloud.Instance, error) {
	ids, err := b.store.ids()
	if err != nil {
		return nil, fmt.Errorf("listing cells: %w", err)
	}
	sort.Strings(ids)
	var out []*cloud.Instance
	for _, id := range ids {
		r, err := b.store.read(id)
		if errors.Is(err, fs.ErrNotExist) {
			continue // being made or removed right now
		}
		if err != nil {
			return nil, fmt.Errorf("listing cells: %w", err)
		}
		in := b.instance(r)
		if in.State == cloud.StateTerminated || !matches(in.Tags, tags) {
			continue
		}
		out = append(out, in)
	}
	return out, nil
}

// SetTags implements cloud.Tagger: the cell's tags.json is rewritten whole (atomically)
// under the store lock. A cell that is gone or terminating gives NotFound.
func (b *Backend) SetTags(ctx context.Context, id string, tags map[string]string) error {
	if !validID(id) {
		return cloud.NotFound("tagging instance %q: no such local cell", id)
	}
	unlock, err := b.store.lock()
	if err != nil {
		return fmt.Errorf("tagging instance %s: %w", id, err)
	}
	defer unlock()
	r, err := b.store.read(id)
	if errors.Is(err, fs.ErrNotExist) || (err == nil && r.meta.Phase == phaseTerminating) {
		return cloud.NotFound("tagging instance %s: no such local cell", id)
	}
	if err != nil {
		return fmt.Errorf("tagging instance %s: %w", id, err)
	}
	merged := maps.Clone(r.tags)
	if merged == nil {
		merged = map[string]string{}
	}
	maps.Copy(merged, tags)
	if err := writeJSON(filepath.Join(b.store.cellDir(id), "tags.json"), merged); err != nil {
		return fmt.Errorf("tagging instance %s: %w", id, err)
	}
	return nil
}

func matches(have, want map[string]string) bool {
	for k, v := range want {
		if got, ok := have[k]; !ok || got != v {
			return false
		}
	}
	return true
}

// Terminate implements cloud.Cloud: it kills the agent and everything in the cell's cgroups,
// unmounts what is mounted under the cell's directory, removes the cgroups, the namespace,
// the veth and the host's neighbour entry, frees the address and removes the directory. It
// returns NotFound once the cell is gone.
func (b *Backend) Terminate(ctx context.Context, id string) error {
	if !validID(id) {
		return cloud.NotFound("terminating instance %q: no such local cell", id)
	}
	if err := b.updateMeta(id, func(m *cellMeta) bool { m.Phase = phaseTerminating; return true }); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return cloud.NotFound("terminating instance %s: no such local cell", id)
		}
		return fmt.Errorf("terminating instance %s: %w", id, err)
	}
	if err := b.destroyLocked(id); err != nil {
		return fmt.Errorf("terminating instance %s: %w", id, err)
	}
	b.log.Debug("terminated cell", "instance", id)
	return nil
}

// destroyLocked waits for the cell's launch to finish (its boot succeeds, or fails and is
// undone) and then destroys it.
func (b *Backend) destroyLocked(id string) error {
	unlock, err := b.store.launchLock(id, true)
	if errors.Is(err, fs.ErrNotExist) {
		return nil // removed meanwhile
	}
	if err != nil {
		return err
	}
	defer unlock()
	return b.destroy(id)
}

// destroy releases everything of a cell; each step tolerates what is already gone.
func (b *Backend) destroy(id string) error {
	r, err := b.store.read(id)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if err := b.release(r); err != nil {
		return err
	}
	b.servingMu.Lock()
	delete(b.serving, id)
	b.servingMu.Unlock()
	if err := b.forget(id, r); err != nil {
		return err
	}
	if !r.meta.ProcessOnly {
		return b.SyncFirewall()
	}
	return nil
}

// forget removes a released cell's client token and directory, under the store lock.
func (b *Backend) forget(id string, r *cellRecord) error {
	unlock, err := b.store.lock()
	if err != nil {
		return err
	}
	defer unlock()
	if r.meta.TokenHash != "" {
		if owner, _ := b.store.tokenCell(r.meta.TokenHash); owner == id {
			if err := os.Remove(b.store.tokenPath(r.meta.TokenHash)); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("removing client token: %w", err)
			}
		}
	}
	if err := os.RemoveAll(b.store.cellDir(id)); err != nil {
		return fmt.Errorf("removing cell directory: %w", err)
	}
	return nil
}

// release kills the cell's processes and removes its cgroups, mounts and network, keeping its
// record (directory, address, token). Each step tolerates what is already gone.
func (b *Backend) release(r *cellRecord) error {
	if err := killAgent(r.meta.PID, r.meta.PIDStart, killTimeout); err != nil {
		return err
	}
	// Every process of the cell, a recorded agent or not (one a dead launcher started), is
	// in its cgroups (startAgent never lets an agent run outside them).
	if err := cgroups.RemoveCell(r.meta.Cgroups, killTimeout); err != nil {
		return err
	}
	if b.cg != nil {
		// runc in hybrid mode put the pod's cgroup2 dirs outside the cell: the backend removes
		// them itself, so a cell ended without its agent's help leaves nothing behind.
		if err := b.cg.RemoveStrayPod(r.tags[cloud.TagPodUID], killTimeout); err != nil {
			return err
		}
	}
	if err := unmountUnder(b.store.cellDir(r.meta.ID)); err != nil {
		return err
	}
	if !r.meta.ProcessOnly {
		if err := unplumbCell(b.cellNet(r)); err != nil {
			return err
		}
	}
	return nil
}

// undoBoot undoes what a launcher that died made of a cell still launching (the caller holds
// its launch lock), so that boot can start over in it: its processes, cgroups, mounts,
// network and the agent's state go; its record, address and token stay.
func (b *Backend) undoBoot(id string) error {
	r, err := b.store.read(id)
	if err != nil {
		return err
	}
	if err := b.release(r); err != nil {
		return err
	}
	agentDir := filepath.Join(b.store.cellDir(id), "agent")
	if err := os.RemoveAll(agentDir); err != nil {
		return fmt.Errorf("emptying the agent's state directory: %w", err)
	}
	if err := os.Mkdir(agentDir, 0o700); err != nil {
		return fmt.Errorf("emptying the agent's state directory: %w", err)
	}
	return nil
}

// secretsDir is the tmpfs in a cell's directory holding its bootstrap file.
const secretsDir = "secrets"

// writeBootstrap writes a cell's bootstrap data (the agent's TLS key among it) where its
// agent reads it and returns the path. With tmpfs (every cell but a process-only one, which
// may lack the privilege to mount) the file is on a tmpfs of its own, <dir>/secrets (mode
// 0700, nosuid, nodev, noexec, sized to the data), so the key never reaches the host's disk
// and is gone once the cell is terminated (which detaches every mount under its directory)
// or the host reboots; a process-only cell gets <dir>/bootstrap (0600 in a 0700 directory).
func writeBootstrap(dir string, data []byte, tmpfs bool) (string, error) {
	path := filepath.Join(dir, "bootstrap")
	if tmpfs {
		sdir := filepath.Join(dir, secretsDir)
		if err := os.Mkdir(sdir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
			return "", fmt.Errorf("creating the cell's secrets directory: %w", err)
		}
		mounted, err := mountsUnder("/proc/self/mountinfo", sdir)
		if err != nil {
			return "", err
		}
		if len(mounted) == 0 {
			size := (len(data)/4096 + 2) * 4096
			opts := fmt.Sprintf("mode=0700,size=%d", size)
			if err := unix.Mount("tmpfs", sdir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, opts); err != nil {
				return "", fmt.Errorf("mounting a tmpfs on %s: %w", sdir, err)
			}
		}
		path = filepath.Join(sdir, "bootstrap")
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		return "", fmt.Errorf("writing the bootstrap file: %w", err)
	}
	return path, nil
}

// unmountUnder detaches every mount at or below dir, deepest first (the agent mounts image
// overlays and volumes under its state directory).
func unmountUnder(dir string) error {
	mounts, err := mountsUnder("/proc/self/mountinfo", dir)
	if err != nil {
		return err
	}
	for _, m := range mounts {
		if err := unix.Unmount(m, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("unmounting %s: %w", m, err)
		}
	}
	return nil
}

// mountsUnder returns the mount points at or below dir listed in a mountinfo file, deepest
// first.
func mountsUnder(mountinfo, dir string) ([]string, error) {
	f, err := os.Open(mountinfo)
	if err != nil {
		return nil, fmt.Errorf("reading mounts: %w", err)
	}
	defer f.Close()
	dir = filepath.Clean(dir)
	var out []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescapeMountPath(fields[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			out = append(out, mp)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading mounts: %w", err)
	}
	sort.Slice(out, func(i, j int) bool { return len(out[i]) > len(out[j]) })
	return out, nil
}

// unescapeMountPath undoes mountinfo's octal escapes (\040 for a space, ...).
func unescapeMountPath(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var sb strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				sb.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		sb.WriteByte(s[i])
	}
	return sb.String()
}

// Partition cuts a cell off the network (its host-side veth goes down), as a test of what
// kip does when a cell stops answering. Heal undoes it.
func (b *Backend) Partition(ctx context.Context, id string) error { return b.setLink(id, false) }

// Heal reconnects a cell that Partition cut off.
func (b *Backend) Heal(ctx context.Context, id string) error { return b.setLink(id, true) }

func (b *Backend) setLink(id string, up bool) error {
	if !validID(id) {
		return cloud.NotFound("instance %q: no such local cell", id)
	}
	r, err := b.store.read(id)
	if errors.Is(err, fs.ErrNotExist) {
		return cloud.NotFound("instance %s: no such local cell", id)
	}
	if err != nil {
		return err
	}
	if r.meta.ProcessOnly {
		return fmt.Errorf("instance %s: process-only cells share the host's network and cannot be partitioned", id)
	}
	return setLink(r.meta.HostVeth, up)
}
