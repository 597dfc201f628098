package local

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// netnsDir is where named network namespaces live (as with `ip netns`).
const netnsDir = "/run/netns"

// macFor derives a cell's MAC from its IPv4 address. A random MAC would leave the host's
// neighbour entry for a reused address pointing at a dead MAC, costing seconds per boot.
func macFor(ip net.IP) net.HardwareAddr {
	v4 := ip.To4()
	return net.HardwareAddr{0x02, 0x00, v4[0], v4[1], v4[2], v4[3]}
}

// ensureBridge creates the bridge if needed, gives it a fixed MAC, puts addr on it, brings it
// up and shortens the ARP retransmit time (the first ARP after a veth comes up is sometimes
// lost; at the default 1 s retransmit that costs a second).
//
// The fixed MAC (derived from addr, as cells' are from theirs) matters: a bridge whose MAC
// was never set takes the lowest MAC of its ports, and the host ends of the veths have random
// ones, so the bridge's MAC changed whenever a cell came or went. Cells kept sending to the
// old MAC from their neighbour cache (reachable for up to 45 s, then 5 s of delay and 3 s of
// unicast probes before they ask again), and the bridge flooded those frames instead of
// taking them: the cells' SYNs to the registry or kip on the bridge address were lost, and
// connects took 1, 3, 7 or 15 s of retransmits.
func ensureBridge(name string, addr *netlink.Addr) (netlink.Link, error) {
	br, err := netlink.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if !errors.As(err, &nf) {
			return nil, fmt.Errorf("looking up bridge %s: %w", name, err)
		}
		if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}); err != nil && !errors.Is(err, unix.EEXIST) {
			return nil, fmt.Errorf("creating bridge %s: %w", name, err)
		}
		if br, err = netlink.LinkByName(name); err != nil {
			return nil, fmt.Errorf("looking up bridge %s: %w", name, err)
		}
	}
	if br.Type() != "bridge" {
		return nil, fmt.Errorf("link %s exists and is a %s, not a bridge", name, br.Type())
	}
	if mac := macFor(addr.IP); !bytes.Equal(br.Attrs().HardwareAddr, mac) {
		if err := netlink.LinkSetHardwareAddr(br, mac); err != nil {
			return nil, fmt.Errorf("setting the MAC of bridge %s to %s: %w", name, mac, err)
		}
	}
	if err := netlink.AddrReplace(br, addr); err != nil {
		return nil, fmt.Errorf("adding %s to bridge %s: %w", addr.IPNet, name, err)
	}
	retrans := filepath.Join("/proc/sys/net/ipv4/neigh", name, "retrans_time_ms")
	if err := os.WriteFile(retrans, []byte("100"), 0o644); err != nil {
		return nil, fmt.Errorf("setting %s: %w", retrans, err)
	}
	if err := netlink.LinkSetUp(br); err != nil {
		return nil, fmt.Errorf("bringing bridge %s up: %w", name, err)
	}
	return br, nil
}

// deleteBridge removes the bridge; a missing one is fine.
func deleteBridge(name string) error {
	br, err := netlink.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		return fmt.Errorf("looking up bridge %s: %w", name, err)
	}
	if err := netlink.LinkDel(br); err != nil {
		return fmt.Errorf("deleting bridge %s: %w", name, err)
	}
	return nil
}

// forwardAccept makes sure bridged traffic between cells passes the host's FORWARD chain.
// With br_netfilter loaded, frames crossing the bridge traverse iptables FORWARD, so a host
// policy of DROP (Docker sets one) would cut cells off from each other. It adds an ACCEPT
// rule for the bridge only when the policy is DROP, and reports whether it did.
func forwardAccept(bridge string) (added bool, err error) {
	ipt, err := exec.LookPath("iptables")
	if err != nil {
		return false, nil // no iptables, no FORWARD chain to worry about
	}
	out, err := exec.Command(ipt, "-w", "-S", "FORWARD").CombinedOutput()
	if err != nil {
		return false, fmt.Errorf("reading the FORWARD policy (iptables -S FORWARD): %v: %s", err, bytes.TrimSpace(out))
	}
	if !strings.Contains(string(out), "-P FORWARD DROP") {
		return false, nil
	}
	rule := []string{"FORWARD", "-i", bridge, "-o", bridge, "-j", "ACCEPT"}
	if exec.Command(ipt, append([]string{"-w", "-C"}, rule...)...).Run() == nil {
		return false, nil
	}
	if out, err := exec.Command(ipt, append([]string{"-w", "-I"}, rule...)...).CombinedOutput(); err != nil {
		return false, fmt.Errorf("adding a FORWARD accept rule for %s: %v: %s", bridge, err, bytes.TrimSpace(out))
	}
	return true, nil
}

// removeForwardAccept removes the rule forwardAccept added.
func removeForwardAccept(bridge string) error {
	ipt, err := exec.LookPath("iptables")
	if err != nil {
		return nil
	}
	rule := []string{"FORWARD", "-i", bridge, "-o", bridge, "-j", "ACCEPT"}
	if exec.Command(ipt, append([]string{"-w", "-C"}, rule...)...).Run() != nil {
		return nil
	}
	if out, err := exec.Command(ipt, append([]string{"-w", "-D"}, rule...)...).CombinedOutput(); err != nil {
		return fmt.Errorf("removing the FORWARD accept rule for %s: %v: %s", bridge, err, bytes.TrimSpace(out))
	}
	return nil
}

// cellNet is what plumbCell needs to wire a cell.
type cellNet struct {
	netns    string // name under /run/netns
	hostVeth string
	bridge   string
	ip       net.IP
	mask     net.IPMask
	// gateway is the bridge address, the cell's default route (nil: none).
	gateway net.IP
}

// plumbCell creates the cell's named netns and a veth pair: the host end on the bridge (in
// hairpin mode), the other end "eth0" inside with the cell's address and MAC. lo is up, and the default route
// goes through the gateway (the bridge address), as a pod's does through its node: Service
// cluster IPs (which the agent's rules rewrite after routing) and addresses beyond the subnet
// need a route. On error everything it made is removed.
func plumbCell(c cellNet) (err error) {
	br, err := netlink.LinkByName(c.bridge)
	if err != nil {
		return fmt.Errorf("looking up bridge %s (did Setup run?): %w", c.bridge, err)
	}
	ns, err := newNamedNetns(c.netns)
	if err != nil {
		return err
	}
	defer ns.Close()
	defer func() {
		if err != nil {
			_ = unplumbCell(c)
		}
	}()
	veth := &netlink.Veth{
		LinkAttrs:        netlink.LinkAttrs{Name: c.hostVeth, MasterIndex: br.Attrs().Index},
		PeerName:         "eth0",
		PeerNamespace:    netlink.NsFd(int(ns)),
		PeerHardwareAddr: macFor(c.ip),
	}
	if err := netlink.LinkAdd(veth); err != nil {
		return fmt.Errorf("creating veth %s: %w", c.hostVeth, err)
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return fmt.Errorf("opening netlink in netns %s: %w", c.netns, err)
	}
	defer h.Close()
	eth0, err := h.LinkByName("eth0")
	if err != nil {
		return fmt.Errorf("finding eth0 in netns %s: %w", c.netns, err)
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: c.ip, Mask: c.mask}}
	if err := h.AddrAdd(eth0, addr); err != nil {
		return fmt.Errorf("adding %s to eth0 in netns %s: %w", addr.IPNet, c.netns, err)
	}
	if err := h.LinkSetUp(eth0); err != nil {
		return fmt.Errorf("bringing eth0 up in netns %s: %w", c.netns, err)
	}
	lo, err := h.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("finding lo in netns %s: %w", c.netns, err)
	}
	if err := h.LinkSetUp(lo); err != nil {
		return fmt.Errorf("bringing lo up in netns %s: %w", c.netns, err)
	}
	if c.gateway != nil {
		route := &netlink.Route{LinkIndex: eth0.Attrs().Index, Gw: c.gateway}
		if err := h.RouteAdd(route); err != nil {
			return fmt.Errorf("adding the default route via %s in netns %s: %w", c.gateway, c.netns, err)
		}
	}
	hostSide, err := netlink.LinkByName(c.hostVeth)
	if err != nil {
		return fmt.Errorf("looking up veth %s: %w", c.hostVeth, err)
	}
	// Hairpin mode: a frame may leave by the port it came in on. A cell calling a nodePort
	// whose endpoint is itself needs it: the host DNATs the connection back to the cell, and
	// with br_netfilter (which the security groups need) the bridge then sends it back out
	// of the cell's own port, which a bridge port refuses to do otherwise (kubelet's
	// hairpin-veth mode does the same for pods).
	if err := netlink.LinkSetHairpin(hostSide, true); err != nil {
		return fmt.Errorf("setting hairpin mode on veth %s: %w", c.hostVeth, err)
	}
	if err := netlink.LinkSetUp(hostSide); err != nil {
		return fmt.Errorf("bringing veth %s up: %w", c.hostVeth, err)
	}
	return nil
}

// newNamedNetns creates /run/netns/<name> on a locked thread and returns a handle to it,
// leaving the calling thread in its own namespace.
func newNamedNetns(name string) (netns.NsHandle, error) {
	if err := ensureNetnsDir(); err != nil {
		return netns.None(), err
	}
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return netns.None(), fmt.Errorf("reading this thread's netns: %w", err)
	}
	defer orig.Close()
	ns, nerr := netns.NewNamed(name)
	if errors.Is(nerr, fs.ErrNotExist) {
		// Another process removed an empty /run/netns between NewNamed's mkdir and its
		// create (see removeNetnsDirIfEmpty); NewNamed left this thread in the new
		// namespace only on success, so simply try once more.
		ns, nerr = netns.NewNamed(name)
	}
	if err := netns.Set(orig); err != nil {
		// This thread is stuck in another namespace: keep it locked so that the runtime
		// throws it away when the goroutine ends, instead of reusing it.
		if nerr == nil {
			ns.Close()
		}
		return netns.None(), fmt.Errorf("returning to the host netns: %w", err)
	}
	runtime.UnlockOSThread()
	if nerr != nil {
		// NewNamed may have left an empty file behind.
		_ = os.Remove(filepath.Join(netnsDir, name))
		return netns.None(), fmt.Errorf("creating netns %s: %w", name, nerr)
	}
	return ns, nil
}

// unplumbCell removes the cell's veth, netns and the host's neighbour entry for its address.
// Everything already gone is fine.
func unplumbCell(c cellNet) error {
	var errs []error
	if l, err := netlink.LinkByName(c.hostVeth); err == nil {
		if err := netlink.LinkDel(l); err != nil {
			errs = append(errs, fmt.Errorf("deleting veth %s: %w", c.hostVeth, err))
		}
	}
	if c.netns != "" {
		if err := deleteNamedNetns(c.netns); err != nil {
			errs = append(errs, err)
		}
	}
	if br, err := netlink.LinkByName(c.bridge); err == nil && c.ip != nil {
		err := netlink.NeighDel(&netlink.Neigh{LinkIndex: br.Attrs().Index, IP: c.ip, Family: netlink.FAMILY_V4})
		if err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("deleting the neighbour entry of %s: %w", c.ip, err))
		}
	}
	return errors.Join(errs...)
}

// ensureNetnsDir makes /run/netns a mount point of its own with shared propagation, as
// iproute2 does. Otherwise the first `ip netns add` run by anyone on the host bind-mounts the
// directory over itself and hides the namespaces mounted there before, which can then no longer
// be unmounted or removed by path (cells leak).
func ensureNetnsDir() error {
	if err := os.MkdirAll(netnsDir, 0o755); err != nil {
		return fmt.Errorf("creating %s: %w", netnsDir, err)
	}
	err := unix.Mount("", netnsDir, "none", unix.MS_SHARED|unix.MS_REC, "")
	if err == nil {
		return nil
	}
	if !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("making %s shared: %w", netnsDir, err)
	}
	// EINVAL: not a mount point yet. Bind it onto itself, then make it shared.
	if err := unix.Mount(netnsDir, netnsDir, "none", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("bind-mounting %s onto itself: %w", netnsDir, err)
	}
	if err := unix.Mount("", netnsDir, "none", unix.MS_SHARED|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("making %s shared: %w", netnsDir, err)
	}
	return nil
}

// deleteNamedNetns unmounts and removes /run/netns/<name>.
func deleteNamedNetns(name string) error {
	p := filepath.Join(netnsDir, name)
	if _, err := os.Stat(p); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err := unix.Unmount(p, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmounting netns %s: %w", name, err)
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("removing netns %s: %w", name, err)
	}
	return nil
}

// removeNetnsDirIfEmpty removes /run/netns once no namespace is left in it. A plain (not
// lazy) unmount fails while another process's namespace is mounted there, so this never
// disturbs anyone else.
func removeNetnsDirIfEmpty() {
	ents, err := os.ReadDir(netnsDir)
	if err != nil || len(ents) > 0 {
		return
	}
	_ = unix.Unmount(netnsDir, 0)
	_ = os.Remove(netnsDir)
}

// setLink brings the host end of a cell's veth up or down.
func setLink(name string, up bool) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return fmt.Errorf("looking up veth %s: %w", name, err)
	}
	if up {
		err = netlink.LinkSetUp(l)
	} else {
		err = netlink.LinkSetDown(l)
	}
	if err != nil {
		return fmt.Errorf("setting veth %s up=%v: %w", name, up, err)
	}
	return nil
}

// bridgeExists reports whether a link named name exists.
func bridgeExists(name string) bool {
	_, err := netlink.LinkByName(name)
	return err == nil
}
