//go:build chaos

package chaos

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/kip-dev/kip/internal/cloud"
)

// cellMeta is the part of the local backend's <stateDir>/cells/<id>/meta.json the harness
// reads: what a cell holds on the host.
type cellMeta struct {
	ID       string   `json:"id"`
	Phase    string   `json:"phase"`
	Netns    string   `json:"netns"`
	HostVeth string   `json:"hostVeth"`
	Cgroups  []string `json:"cgroups"`
	PID      int      `json:"pid"`
}

// cellSeen is one cell as the tracker saw it on the host.
type cellSeen struct {
	meta   cellMeta
	podUID string
	pod    string // namespace/name
	ip     string
}

// tracker polls the local backend's state directory while a round runs and remembers every
// cell it saw (so that what a cell held can be checked gone afterwards), and every moment two
// live cells belonged to one pod.
type tracker struct {
	dir string // <stateDir>/cells

	mu    sync.Mutex
	cells map[string]*cellSeen
	// dups: pod UID → the cell IDs seen alive together.
	dups map[string][]string
	// byPod: pod UID → every cell ID it ever had.
	byPod map[string][]string
	stop  chan struct{}
	done  chan struct{}
}

func newTracker(stateDir string) *tracker {
	return &tracker{dir: filepath.Join(stateDir, "cells"), cells: map[string]*cellSeen{}, dups: map[string][]string{}, byPod: map[string][]string{}}
}

// scan reads every cell directory now.
func (t *tracker) scan() map[string]*cellSeen {
	out := map[string]*cellSeen{}
	ents, _ := os.ReadDir(t.dir)
	for _, e := range ents {
		if !e.IsDir() || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		d := filepath.Join(t.dir, e.Name())
		var c cellSeen
		b, err := os.ReadFile(filepath.Join(d, "meta.json"))
		if err != nil || json.Unmarshal(b, &c.meta) != nil {
			continue
		}
		var tags map[string]string
		if b, err := os.ReadFile(filepath.Join(d, "tags.json")); err == nil && json.Unmarshal(b, &tags) == nil {
			c.podUID = tags[cloud.TagPodUID]
			c.pod = tags[cloud.TagPodNamespace] + "/" + tags[cloud.TagPodName]
		}
		if b, err := os.ReadFile(filepath.Join(d, "ip")); err == nil {
			c.ip = strings.TrimSpace(string(b))
		}
		out[e.Name()] = &c
	}
	return out
}

func (t *tracker) poll() {
	now := t.scan()
	t.mu.Lock()
	defer t.mu.Unlock()
	live := map[string][]string{}
	for id, c := range now {
		if prev, ok := t.cells[id]; ok {
			// Keep the richest record: cgroups and veth appear after the first write.
			if len(c.meta.Cgroups) == 0 {
				c.meta.Cgroups = prev.meta.Cgroups
			}
			if c.meta.HostVeth == "" {
				c.meta.HostVeth = prev.meta.HostVeth
			}
			if c.ip == "" {
				c.ip = prev.ip
			}
		}
		t.cells[id] = c
		if c.podUID == "" {
			continue
		}
		if !slices.Contains(t.byPod[c.podUID], id) {
			t.byPod[c.podUID] = append(t.byPod[c.podUID], id)
		}
		if c.meta.Phase != "terminating" {
			live[c.podUID] = append(live[c.podUID], id)
		}
	}
	for uid, ids := range live {
		if len(ids) > 1 {
			sort.Strings(ids)
			t.dups[uid] = ids
		}
	}
}

func (t *tracker) start() {
	t.stop, t.done = make(chan struct{}), make(chan struct{})
	go func() {
		defer close(t.done)
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		for {
			t.poll()
			select {
			case <-t.stop:
				return
			case <-tick.C:
			}
		}
	}()
}

func (t *tracker) finish() {
	close(t.stop)
	<-t.done
	t.poll()
}

// duplicates describes every pod that had two live cells at once.
func (t *tracker) duplicates() []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []string
	for uid, ids := range t.dups {
		out = append(out, fmt.Sprintf("pod UID %s had cells %v alive at once", uid, ids))
	}
	sort.Strings(out)
	return out
}

// relaunched counts pods that had more than one cell over the round (one after another).
func (t *tracker) relaunched() []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []string
	for uid, ids := range t.byPod {
		if len(ids) > 1 {
			pod := t.cells[ids[0]].pod
			out = append(out, fmt.Sprintf("%s (uid %s): cells %v", pod, uid, ids))
		}
	}
	sort.Strings(out)
	return out
}

// leftovers lists what any cell the tracker saw still holds on the host, once every pod of
// the round is gone: its state directory (and so its address), network namespace, host veth,
// permanent neighbour entry, cgroups and the cgroups named after its pod, plus every process
// still running the agent binary and every port still on the bridge.
func (t *tracker) leftovers(agentBin, bridge string) []string {
	var out []string
	t.mu.Lock()
	cells := make(map[string]*cellSeen, len(t.cells))
	for id, c := range t.cells {
		cells[id] = c
	}
	t.mu.Unlock()
	uids := map[string]bool{}
	for id, c := range cells {
		if _, err := os.Stat(filepath.Join(t.dir, id)); err == nil {
			out = append(out, fmt.Sprintf("cell %s (%s): state directory", id, c.pod))
		}
		if c.meta.Netns != "" {
			if _, err := os.Stat(filepath.Join("/run/netns", c.meta.Netns)); err == nil {
				out = append(out, fmt.Sprintf("cell %s (%s): netns %s", id, c.pod, c.meta.Netns))
			}
		}
		if c.meta.HostVeth != "" {
			if _, err := netlink.LinkByName(c.meta.HostVeth); err == nil {
				out = append(out, fmt.Sprintf("cell %s (%s): veth %s", id, c.pod, c.meta.HostVeth))
			}
		}
		for _, cg := range c.meta.Cgroups {
			if _, err := os.Stat(cg); err == nil {
				out = append(out, fmt.Sprintf("cell %s (%s): cgroup %s", id, c.pod, cg))
			}
		}
		if c.podUID != "" {
			uids[c.podUID] = true
		}
	}
	out = append(out, podCgroups(uids)...)
	out = append(out, neighbours(bridge, cells)...)
	for _, pid := range agentProcs(agentBin) {
		out = append(out, fmt.Sprintf("agent process %d (%s)", pid, agentBin))
	}
	if br, err := netlink.LinkByName(bridge); err == nil {
		links, _ := netlink.LinkList()
		for _, l := range links {
			if l.Attrs().MasterIndex == br.Attrs().Index {
				out = append(out, fmt.Sprintf("bridge port %s", l.Attrs().Name))
			}
		}
	}
	sort.Strings(out)
	return out
}

// podCgroups finds cgroup directories named after the given pod UIDs (runc's pod cgroups),
// a few levels down each hierarchy.
func podCgroups(uids map[string]bool) []string {
	if len(uids) == 0 {
		return nil
	}
	var out []string
	root := "/sys/fs/cgroup"
	_ = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return nil
		}
		if strings.Count(strings.TrimPrefix(p, root), "/") > 5 {
			return fs.SkipDir
		}
		if uids[d.Name()] {
			out = append(out, "pod cgroup "+p)
			return fs.SkipDir
		}
		return nil
	})
	return out
}

// neighbours lists permanent neighbour entries on the bridge for the cells' addresses.
func neighbours(bridge string, cells map[string]*cellSeen) []string {
	br, err := netlink.LinkByName(bridge)
	if err != nil {
		return nil
	}
	ips := map[string]string{}
	for id, c := range cells {
		if c.ip != "" {
			ips[c.ip] = id
		}
	}
	ns, err := netlink.NeighList(br.Attrs().Index, netlink.FAMILY_V4)
	if err != nil {
		return []string{fmt.Sprintf("listing neighbours of %s: %v", bridge, err)}
	}
	var out []string
	for _, n := range ns {
		if id, ok := ips[n.IP.String()]; ok && n.State&netlink.NUD_PERMANENT != 0 {
			out = append(out, fmt.Sprintf("cell %s: permanent neighbour entry %s", id, n.IP))
		}
	}
	return out
}

// agentProcs returns the pids of processes running bin (the environment's kip-cell).
func agentProcs(bin string) []int {
	ents, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		exe, err := os.Readlink(filepath.Join("/proc", e.Name(), "exe"))
		if err != nil {
			continue
		}
		if strings.TrimSuffix(exe, " (deleted)") == bin {
			out = append(out, pid)
		}
	}
	return out
}

// deleteNetns removes a named network namespace as `ip netns delete` does: the bind mount
// and its file. Processes inside keep the namespace itself alive.
func deleteNetns(name string) error {
	p := filepath.Join("/run/netns", name)
	if err := unmount(p); err != nil {
		return fmt.Errorf("unmounting %s: %w", p, err)
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

func unmount(p string) error {
	err := unix.Unmount(p, unix.MNT_DETACH)
	if err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return err
	}
	return nil
}
