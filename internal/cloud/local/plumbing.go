package local

import (
	"net"

	"github.com/vishvananda/netlink"
)

// The backend's network plumbing, exported for other makers of local cells (the EC2 fake
// boots its instances as cells on a bridge of their own). Each is the function the backend
// itself uses.

// CellNet is the network of one cell: a named netns with eth0 = IP/Mask on Bridge through the
// host veth HostVeth (at most 15 characters), the default route via Gateway (nil: none).
type CellNet struct {
	Netns    string
	HostVeth string
	Bridge   string
	IP       net.IP
	Mask     net.IPMask
	Gateway  net.IP
}

func (c CellNet) internal() cellNet {
	return cellNet{netns: c.Netns, hostVeth: c.HostVeth, bridge: c.Bridge, ip: c.IP.To4(), mask: c.Mask, gateway: c.Gateway}
}

// PlumbCell creates the cell's netns (/run/netns/<Netns>) and veth pair, as the backend does
// for its cells: eth0 with a MAC derived from IP, lo up, the host end in hairpin mode on the
// bridge. On error everything it made is removed.
func PlumbCell(c CellNet) error { return plumbCell(c.internal()) }

// UnplumbCell removes the cell's veth, netns and the host's neighbour entry for its address;
// what is already gone is fine.
func UnplumbCell(c CellNet) error { return unplumbCell(c.internal()) }

// EnsureBridge creates (or adopts) the bridge name with addr on it and a MAC derived from the
// address, brings it up and shortens its ARP retransmit time.
func EnsureBridge(name string, addr *netlink.Addr) error {
	_, err := ensureBridge(name, addr)
	return err
}

// DeleteBridge removes the bridge; a missing one is fine.
func DeleteBridge(name string) error { return deleteBridge(name) }

// ForwardAccept adds a FORWARD accept rule for traffic between the bridge's ports when the
// host's FORWARD policy is DROP, and reports whether it added one.
func ForwardAccept(bridge string) (added bool, err error) { return forwardAccept(bridge) }

// RemoveForwardAccept removes the rule ForwardAccept adds, if it is there.
func RemoveForwardAccept(bridge string) error { return removeForwardAccept(bridge) }

// RemoveNetnsDirIfEmpty removes /run/netns once no namespace is left in it.
func RemoveNetnsDirIfEmpty() { removeNetnsDirIfEmpty() }
