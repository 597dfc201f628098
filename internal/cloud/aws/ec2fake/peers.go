package ec2fake

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Peering: on AWS, kip's pod and its cells share the VPC, so they reach each other; here the
// fake's cells sit on their own bridge and kip may run as a pod in a local cell on another
// (kip up's), and the host routes between the two only for the peers SetPeers names. The
// host forwards between interfaces only where /proc/sys/net/ipv4/conf/<if>/forwarding is 1
// (checked on the interface a packet arrives on), so peering turns it on for the fake's bridge
// and each peer's interface where it is off (kip's local backend has it on for its bridge
// already, for nodePorts), and the table
//
//	table inet ec2fake-peers-<bridge> {
//	  chain forward {                  # hook forward, priority filter, policy accept
//	    iifname <peer if> oifname <bridge> ip saddr <peer> ip daddr <vpc> accept
//	    iifname <bridge> oifname <peer if> ip saddr <vpc> ip daddr <peer> accept
//	    iifname <bridge> oifname != <bridge> drop
//	    oifname <bridge> iifname != <bridge> drop
//	    iifname <if> oifname != <if> drop   # per peer interface whose forwarding peering turned on
//	  }
//	}
//
// keeps every other route closed: nothing routed reaches the fake's cells but from a peer (a
// cell on the peer's network that is not a peer gets no packet through), the fake's cells
// reach only the peers, and a peer interface peering opened routes nothing else. Frames
// bridged within one network (iifname = oifname) are left alone. Close (or SetPeers with
// none) deletes the table and turns forwarding off again where peering turned it on.

// peering is the host state SetPeers made.
type peering struct {
	mu sync.Mutex
	// forwarded are the interfaces whose forwarding peering turned on.
	forwarded []string
	table     bool
}

// peerTable is the nftables table of the fake's peering.
func (h *cellHost) peerTable() string { return "ec2fake-peers-" + h.opts.Bridge }

// SetPeers routes the fake's VPC to peers (addresses or networks on the host's other
// interfaces, such as the pod address of a kip running in a local cell) and to nothing else,
// replacing the previous peers; none removes the peering. A peer must be reached through an
// interface of this host other than the fake's bridge (not a host address: cells reach those
// without peering). It needs root and cell mode.
func (s *Server) SetPeers(peers ...netip.Prefix) error {
	h := s.cells
	if h == nil {
		return errors.New("ec2fake: SetPeers needs cell mode (NewWithCells)")
	}
	h.peers.mu.Lock()
	defer h.peers.mu.Unlock()
	byIf := map[string][]netip.Prefix{}
	var ifs []string
	for _, p := range peers {
		if !p.Addr().Is4() {
			return fmt.Errorf("ec2fake: peer %s is not IPv4", p)
		}
		p = p.Masked()
		if p.Overlaps(h.prefix) {
			return fmt.Errorf("ec2fake: peer %s overlaps the fake's VPC %s", p, h.prefix)
		}
		routes, err := netlink.RouteGet(p.Addr().AsSlice())
		if err != nil || len(routes) == 0 {
			return fmt.Errorf("ec2fake: peer %s: no route from this host: %v", p, err)
		}
		if routes[0].Type == unix.RTN_LOCAL {
			return fmt.Errorf("ec2fake: peer %s is an address of this host, which cells reach without peering", p)
		}
		link, err := netlink.LinkByIndex(routes[0].LinkIndex)
		if err != nil {
			return fmt.Errorf("ec2fake: peer %s: its interface: %w", p, err)
		}
		name := link.Attrs().Name
		if name == h.opts.Bridge {
			return fmt.Errorf("ec2fake: peer %s is on the fake's own bridge %s", p, name)
		}
		if _, ok := byIf[name]; !ok {
			ifs = append(ifs, name)
		}
		byIf[name] = append(byIf[name], p)
	}
	if len(peers) == 0 {
		return h.unpeerLocked()
	}
	for _, ifc := range append([]string{h.opts.Bridge}, ifs...) {
		if slices.Contains(h.peers.forwarded, ifc) {
			continue
		}
		on, err := forwarding(ifc)
		if err != nil {
			return err
		}
		if on {
			continue // the host routes this interface's traffic already; peering adds nothing to close
		}
		if err := setForwarding(ifc, true); err != nil {
			return err
		}
		h.peers.forwarded = append(h.peers.forwarded, ifc)
	}
	if err := h.writePeerTable(byIf, ifs); err != nil {
		// Fail closed: no forwarding without the table that confines it.
		return errors.Join(err, h.unpeerLocked())
	}
	h.log.Info("peered the VPC", "peers", peers)
	return nil
}

// ParsePeer parses a peer: an IPv4 network ("10.250.0.0/24") or address ("10.250.0.5", a /32).
func ParsePeer(s string) (netip.Prefix, error) {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is neither an address nor a network", s)
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// writePeerTable replaces the peering table with rules for byIf (peers by interface).
func (h *cellHost) writePeerTable(byIf map[string][]netip.Prefix, ifs []string) error {
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("ec2fake: opening nftables: %w", err)
	}
	t := &nftables.Table{Family: nftables.TableFamilyINet, Name: h.peerTable()}
	c.AddTable(t) // add, delete, add: empties an existing table and works when there is none
	c.DelTable(t)
	t = c.AddTable(t)
	policy := nftables.ChainPolicyAccept
	ch := c.AddChain(&nftables.Chain{Name: "forward", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &policy})
	br := h.opts.Bridge
	for _, ifc := range ifs {
		for _, p := range byIf[ifc] {
			c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: slices.Concat(
				ifaces(ifc, br), ipv4(), inPrefix(12, p), inPrefix(16, h.prefix), []expr.Any{&expr.Verdict{Kind: expr.VerdictAccept}})})
			c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: slices.Concat(
				ifaces(br, ifc), ipv4(), inPrefix(12, h.prefix), inPrefix(16, p), []expr.Any{&expr.Verdict{Kind: expr.VerdictAccept}})})
		}
	}
	dropRouted := func(by expr.MetaKey, ifc string) {
		other := expr.MetaKeyOIFNAME
		if by == expr.MetaKeyOIFNAME {
			other = expr.MetaKeyIIFNAME
		}
		c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: []expr.Any{
			&expr.Meta{Key: by, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(ifc)},
			&expr.Meta{Key: other, Register: 1},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: ifname(ifc)},
			&expr.Verdict{Kind: expr.VerdictDrop},
		}})
	}
	dropRouted(expr.MetaKeyIIFNAME, br)
	dropRouted(expr.MetaKeyOIFNAME, br)
	for _, ifc := range h.peers.forwarded {
		if ifc != br {
			dropRouted(expr.MetaKeyIIFNAME, ifc)
		}
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("ec2fake: writing nftables table inet %s: %w", h.peerTable(), err)
	}
	h.peers.table = true
	return nil
}

// unpeerLocked deletes the peering table and turns forwarding off where peering turned it on.
func (h *cellHost) unpeerLocked() error {
	var errs []error
	if h.peers.table {
		c, err := nftables.New()
		if err == nil {
			t := &nftables.Table{Family: nftables.TableFamilyINet, Name: h.peerTable()}
			c.AddTable(t)
			c.DelTable(t)
			err = c.Flush()
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("ec2fake: deleting nftables table inet %s: %w", h.peerTable(), err))
		} else {
			h.peers.table = false
		}
	}
	var left []string
	for _, ifc := range h.peers.forwarded {
		err := setForwarding(ifc, false)
		if err != nil && !errors.Is(err, os.ErrNotExist) { // an interface already gone forwards nothing
			errs = append(errs, err)
			left = append(left, ifc)
		}
	}
	h.peers.forwarded = left
	return errors.Join(errs...)
}

// forwardingPath is the sysctl that lets the host route IPv4 packets arriving on ifc.
func forwardingPath(ifc string) string {
	return filepath.Join("/proc/sys/net/ipv4/conf", ifc, "forwarding")
}

func forwarding(ifc string) (bool, error) {
	b, err := os.ReadFile(forwardingPath(ifc))
	if err != nil {
		return false, fmt.Errorf("ec2fake: reading IPv4 forwarding of %s: %w", ifc, err)
	}
	return strings.TrimSpace(string(b)) != "0", nil
}

func setForwarding(ifc string, on bool) error {
	v := "0"
	if on {
		v = "1"
	}
	if err := os.WriteFile(forwardingPath(ifc), []byte(v), 0o644); err != nil {
		return fmt.Errorf("ec2fake: setting IPv4 forwarding of %s to %s: %w", ifc, v, err)
	}
	return nil
}

// ifaces matches packets arriving on in and leaving through out.
func ifaces(in, out string) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(in)},
		&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(out)},
	}
}

// ipv4 matches IPv4 packets in the inet family.
func ipv4() []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.NFPROTO_IPV4}},
	}
}

// inPrefix matches an IPv4 header address (offset 12: source, 16: destination) in p.
func inPrefix(offset uint32, p netip.Prefix) []expr.Any {
	addr := p.Masked().Addr().As4()
	mask := make([]byte, 4)
	for i := 0; i < p.Bits(); i++ {
		mask[i/8] |= 0x80 >> (i % 8)
	}
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: 4},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask, Xor: []byte{0, 0, 0, 0}},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: addr[:]},
	}
}

// ifname is an interface name as nftables compares it: the name and its NUL.
func ifname(n string) []byte { return append([]byte(n), 0) }
