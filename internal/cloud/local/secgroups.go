package local

import (
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/kip-dev/kip/internal/cloud"
)

// AgentPort is the cell agent's port (cellapi.DefaultPort). Only the host reaches it: the
// firewall drops it between cells whatever the groups say.
const AgentPort = 6421

// Protocols of an IngressRule.
const (
	ProtoTCP  = "tcp"
	ProtoUDP  = "udp"
	ProtoICMP = "icmp"
	ProtoAll  = "all"
)

// SecurityGroup is a named set of ingress rules, the local stand-in for an EC2 security
// group. A cell in several groups accepts what any of them allows; egress is always allowed,
// and replies to allowed flows pass (the filter is stateful).
type SecurityGroup struct {
	Name    string
	Ingress []IngressRule
}

// IngressRule allows traffic to a group's cells.
type IngressRule struct {
	// Protocol is ProtoTCP, ProtoUDP, ProtoICMP or ProtoAll.
	Protocol string
	// FromPort..ToPort is the destination port range (TCP and UDP only); 0 and 0 mean all.
	FromPort, ToPort uint16
	// From lists sources: IPv4 CIDRs ("10.250.0.0/24", "10.250.0.7/32") or group names (the
	// cells in that group, by their bridge port, so a cell cannot pose as one by changing
	// its address).
	From []string
}

// validateGroups checks the configured groups and defaults; the first problem is returned.
func validateGroups(groups []SecurityGroup, defaults []string) error {
	names := map[string]bool{}
	for i, g := range groups {
		if g.Name == "" || strings.ContainsAny(g.Name, ", \t\n\"") {
			return fmt.Errorf("SecurityGroups[%d].Name %q must be non-empty, without commas, quotes or spaces", i, g.Name)
		}
		if names[g.Name] {
			return fmt.Errorf("SecurityGroups[%d].Name %q is given twice", i, g.Name)
		}
		names[g.Name] = true
	}
	for i, g := range groups {
		for j, r := range g.Ingress {
			p := fmt.Sprintf("SecurityGroups[%d] (%s).Ingress[%d]", i, g.Name, j)
			switch r.Protocol {
			case ProtoTCP, ProtoUDP:
				if r.FromPort > r.ToPort || (r.FromPort == 0) != (r.ToPort == 0) {
					return fmt.Errorf("%s: ports %d-%d are not a range of 1 to 65535", p, r.FromPort, r.ToPort)
				}
			case ProtoICMP, ProtoAll:
				if r.FromPort != 0 || r.ToPort != 0 {
					return fmt.Errorf("%s: protocol %s takes no ports", p, r.Protocol)
				}
			default:
				return fmt.Errorf("%s: Protocol %q must be one of tcp, udp, icmp, all", p, r.Protocol)
			}
			if len(r.From) == 0 {
				return fmt.Errorf("%s: From is empty", p)
			}
			for _, f := range r.From {
				if names[f] {
					continue
				}
				if pfx, err := netip.ParsePrefix(f); err != nil || !pfx.Addr().Is4() {
					return fmt.Errorf("%s: From %q is neither an IPv4 CIDR nor a configured group", p, f)
				}
			}
		}
	}
	for _, d := range defaults {
		if !names[d] {
			return fmt.Errorf("DefaultSecurityGroups: %q is not a configured group", d)
		}
	}
	return nil
}

// cellGroups returns the groups a cell launched with spec belongs to: the spec's, else the
// defaults. It refuses a group that is not configured, naming the field.
func (b *Backend) cellGroups(spec cloud.LaunchSpec) ([]string, error) {
	if len(spec.SecurityGroups) == 0 {
		return slices.Clone(b.cfg.DefaultSecurityGroups), nil
	}
	var unknown []string
	for _, g := range spec.SecurityGroups {
		if !slices.ContainsFunc(b.cfg.SecurityGroups, func(sg SecurityGroup) bool { return sg.Name == g }) {
			unknown = append(unknown, fmt.Sprintf("%q", g))
		}
	}
	if len(unknown) > 0 {
		known := make([]string, len(b.cfg.SecurityGroups))
		for i, g := range b.cfg.SecurityGroups {
			known[i] = g.Name
		}
		return nil, cloud.InvalidSpecField("SecurityGroups", "launch spec: field SecurityGroups: security group %s is not configured (configured: %s)",
			strings.Join(unknown, ", "), orNone(strings.Join(known, ", ")))
	}
	return slices.Clone(spec.SecurityGroups), nil
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

// fwCell is what the firewall needs to know of one cell.
type fwCell struct {
	ID, Veth string
	IP       netip.Addr
	Groups   []string
}

// fwPlan is the host firewall for one bridge: a chain per cell, reached by the cell's bridge
// port (its host veth) as the output interface.
type fwPlan struct {
	Table string
	Cells []fwChain
}

// fwChain filters the traffic of other cells to one cell.
type fwChain struct {
	Name, Veth string
	IP         netip.Addr
	// Open cells (in no group) accept everything but the agent port.
	Open  bool
	Allow []fwAllow
}

// fwAllow is one ingress rule resolved: sources are bridge ports of cells and CIDRs.
type fwAllow struct {
	Group            string
	Protocol         string
	FromPort, ToPort uint16
	// SrcIPs are the addresses of the source groups' cells (the bridge table makes sure a
	// cell sends only from its own address).
	SrcIPs   []netip.Addr
	SrcCIDRs []netip.Prefix
}

// tableName is the nftables table of the backend on bridge.
func tableName(bridge string) string { return "kip-sg-" + bridge }

// plan resolves groups against the cells. Cells without groups are open; a source group
// with no cells (and no CIDR beside it) allows nothing.
func plan(bridge string, groups []SecurityGroup, cells []fwCell) fwPlan {
	byName := map[string]SecurityGroup{}
	for _, g := range groups {
		byName[g.Name] = g
	}
	members := map[string][]netip.Addr{}
	for _, c := range cells {
		for _, g := range c.Groups {
			members[g] = append(members[g], c.IP)
		}
	}
	p := fwPlan{Table: tableName(bridge)}
	sorted := slices.Clone(cells)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Veth < sorted[j].Veth })
	for _, c := range sorted {
		ch := fwChain{Name: "cell-" + c.ID, Veth: c.Veth, IP: c.IP, Open: len(c.Groups) == 0}
		for _, gname := range c.Groups {
			for _, r := range byName[gname].Ingress {
				a := fwAllow{Group: gname, Protocol: r.Protocol, FromPort: r.FromPort, ToPort: r.ToPort}
				for _, f := range r.From {
					if _, ok := byName[f]; ok {
						a.SrcIPs = append(a.SrcIPs, members[f]...)
					} else if pfx, err := netip.ParsePrefix(f); err == nil {
						a.SrcCIDRs = append(a.SrcCIDRs, pfx.Masked())
					}
				}
				slices.SortFunc(a.SrcIPs, netip.Addr.Compare)
				a.SrcIPs = slices.Compact(a.SrcIPs)
				if len(a.SrcIPs) > 0 || len(a.SrcCIDRs) > 0 {
					ch.Allow = append(ch.Allow, a)
				}
			}
		}
		p.Cells = append(p.Cells, ch)
	}
	return p
}

// firewallCells lists the cells of the state directory the firewall covers (every cell with
// a bridge port, launching ones included). Call with the store lock held.
func (b *Backend) firewallCells() ([]fwCell, error) {
	ids, err := b.store.ids()
	if err != nil {
		return nil, err
	}
	var out []fwCell
	for _, id := range ids {
		r, err := b.store.read(id)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		if r.meta.HostVeth == "" || r.meta.Bridge != b.cfg.Bridge {
			continue
		}
		ip, err := netip.ParseAddr(r.ip)
		if err != nil {
			continue // no address recorded yet
		}
		out = append(out, fwCell{ID: id, Veth: r.meta.HostVeth, IP: ip, Groups: r.meta.SecurityGroups})
	}
	return out, nil
}

// syncFirewall replaces the bridge's nftables table with one made from the state directory,
// in one transaction. Call with the store lock held.
func (b *Backend) syncFirewall() error {
	if b.cfg.ProcessOnly {
		return nil
	}
	cells, err := b.firewallCells()
	if err != nil {
		return fmt.Errorf("syncing the security group firewall: %w", err)
	}
	if err := applyPlan(b.cfg.Bridge, plan(b.cfg.Bridge, b.cfg.SecurityGroups, cells)); err != nil {
		return fmt.Errorf("syncing the security group firewall: %w", err)
	}
	return nil
}

// SyncFirewall rebuilds the security group firewall from the cells in the state directory.
// Launch and Terminate keep it current; Setup calls it, and tests may.
//
// Calls that arrive while a rebuild runs share the next one: a burst of launches rebuilds
// the table a few times rather than once per cell (each rebuild reads every cell and
// rewrites every rule). A call returns once a rebuild that started after it has finished,
// with that rebuild's error.
func (b *Backend) SyncFirewall() error {
	f := &b.fw
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.cond == nil {
		f.cond = sync.NewCond(&f.mu)
	}
	f.wanted++
	mine := f.wanted
	for f.done < mine {
		if f.running {
			f.cond.Wait()
			continue
		}
		f.running = true
		upTo := f.wanted
		f.mu.Unlock()
		err := b.lockedSyncFirewall()
		f.mu.Lock()
		f.running, f.done, f.err = false, upTo, err
		f.cond.Broadcast()
	}
	return f.err
}

// fwSync coalesces SyncFirewall calls: wanted counts the calls, done is the count the last
// finished rebuild covered, err that rebuild's error.
type fwSync struct {
	mu      sync.Mutex
	cond    *sync.Cond
	running bool
	wanted  uint64
	done    uint64
	err     error
}

// lockedSyncFirewall rebuilds the firewall under the store lock.
func (b *Backend) lockedSyncFirewall() error {
	unlock, err := b.store.lock()
	if err != nil {
		return err
	}
	defer unlock()
	return b.syncFirewall()
}

// FirewallTable names the backend's two nftables tables: family bridge (agent port,
// addresses) and family inet (the groups).
func (b *Backend) FirewallTable() string { return tableName(b.cfg.Bridge) }
