// Package imdsguard keeps a cloud cell's pods from the instance metadata service
// (169.254.169.254, and fd00:ec2::254 where the instance has IPv6 metadata) while the agent
// keeps it: the agent asks it for spot interruption notices, and the instance's other
// processes (its SSM agent, say) for their credentials. Pods share the instance's network
// namespace, so a route or an address cannot tell them apart; their cgroup can. The guard
// programs one nftables table, kip-imds-guard, in the cell's network namespace: an output
// chain that rejects new traffic to the metadata addresses from sockets of the pods' cgroup
//
//   - cgroup v2 (also the cgroup2 part of a hybrid host): "socket cgroupv2 level L" equal to
//     the pods' parent cgroup (its id is its directory's inode);
//   - cgroup v1 without a cgroup2 hierarchy: "meta cgroup" equal to ClassID, the net_cls
//     class the guard sets on the pods' parent cgroup (children inherit it).
//
// The chain runs at priority -200, before any DNAT (-100) could rewrite the address, as the
// EC2 fake's metadata redirect does. The rule is rebuilt for each pod (Guard), after the
// pod's own cgroup is made, so the parent's id cannot change under it while the pod runs.
package imdsguard

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/kip-dev/kip/internal/cgroups"
)

// Table is the nftables table (family inet) the guard owns in the cell's namespace.
const Table = "kip-imds-guard"

// ChainPriority runs the guard before DNAT (NF_IP_PRI_NAT_DST, -100).
const ChainPriority = -200

// ClassID is the net_cls class (major 0x4b49 "KI", minor 1) the guard gives pods on cgroup v1.
const ClassID uint32 = 0x4b490001

// Metadata addresses: EC2's (and most clouds') IPv4 one and EC2's IPv6 one.
var (
	MetadataIPv4 = netip.MustParseAddr("169.254.169.254")
	MetadataIPv6 = netip.MustParseAddr("fd00:ec2::254")
)

// Match is how the rules tell the pods' traffic: by cgroup v2 (CgroupID at Level) when
// CgroupID is set, else by net_cls class ClassID.
type Match struct {
	CgroupID uint64
	Level    uint32
	ClassID  uint32
}

func (m Match) String() string {
	if m.CgroupID != 0 {
		return fmt.Sprintf("socket cgroupv2 level %d id %d", m.Level, m.CgroupID)
	}
	return fmt.Sprintf("meta cgroup %#x", m.ClassID)
}

// Rules returns the expressions of the guard's rules for m: one per metadata address, each
// "<family> daddr <addr> <cgroup match> counter reject".
func Rules(m Match) [][]expr.Any {
	var cg []expr.Any
	if m.CgroupID != 0 {
		cg = []expr.Any{
			&expr.Socket{Key: expr.SocketKeyCgroupv2, Level: m.Level, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint64(m.CgroupID)},
		}
	} else {
		cg = []expr.Any{
			&expr.Meta{Key: expr.MetaKeyCGROUP, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(m.ClassID)},
		}
	}
	rule := func(proto byte, offset uint32, addr netip.Addr) []expr.Any {
		e := []expr.Any{
			&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: uint32(addr.BitLen() / 8)},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: addr.AsSlice()},
		}
		e = append(e, cg...)
		return append(e, &expr.Counter{},
			&expr.Reject{Type: unix.NFT_REJECT_ICMPX_UNREACH, Code: unix.NFT_REJECT_ICMPX_ADMIN_PROHIBITED})
	}
	return [][]expr.Any{
		rule(unix.NFPROTO_IPV4, 16, MetadataIPv4), // IPv4 destination address
		rule(unix.NFPROTO_IPV6, 24, MetadataIPv6), // IPv6 destination address
	}
}

// Install replaces the guard's table in the network namespace of conn (nil: a connection in
// the calling thread's) with the rules for m, in one transaction.
func Install(conn *nftables.Conn, m Match) error {
	c, err := connOr(conn)
	if err != nil {
		return err
	}
	t := &nftables.Table{Name: Table, Family: nftables.TableFamilyINet}
	// Adding then deleting the table clears what an earlier guard left, whether or not it
	// exists, in the same transaction as the new rules.
	c.AddTable(t)
	c.DelTable(t)
	c.AddTable(t)
	prio := nftables.ChainPriority(ChainPriority)
	ch := c.AddChain(&nftables.Chain{Name: "output", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookOutput, Priority: &prio})
	for _, e := range Rules(m) {
		c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: e})
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("programming nftables table %s (%s): %w", Table, m, err)
	}
	return nil
}

// Uninstall removes the guard's table; without one it does nothing.
func Uninstall(conn *nftables.Conn) error {
	c, err := connOr(conn)
	if err != nil {
		return err
	}
	t := &nftables.Table{Name: Table, Family: nftables.TableFamilyINet}
	c.AddTable(t)
	c.DelTable(t)
	if err := c.Flush(); err != nil {
		return fmt.Errorf("removing nftables table %s: %w", Table, err)
	}
	return nil
}

func connOr(c *nftables.Conn) (*nftables.Conn, error) {
	if c != nil {
		return c, nil
	}
	c, err := nftables.New()
	if err != nil {
		return nil, fmt.Errorf("opening nftables: %w", err)
	}
	return c, nil
}

// Guard keeps the pods of one agent from the metadata service (agent.MetadataGuard).
type Guard struct {
	cg     *cgroups.FS
	parent string // the pods' cgroup parent, relative (kip-cell --cgroup-parent)
	conn   *nftables.Conn
}

// New returns a guard for pods under the relative cgroup parent; conn is the nftables
// connection to program (nil: the calling thread's network namespace, the cell's).
func New(cg *cgroups.FS, parent string, conn *nftables.Conn) *Guard {
	return &Guard{cg: cg, parent: parent, conn: conn}
}

// Guard blocks the pod's processes (those of its cgroup, which it makes now) from the
// metadata service; the agent calls it before any of them starts. It fails when the host has
// neither a cgroup2 hierarchy nor a net_cls one: the pod must not start unguarded.
func (g *Guard) Guard(podUID string) error {
	m, err := g.match(podUID)
	if err != nil {
		return fmt.Errorf("keeping pod %s from the instance metadata service: %w", podUID, err)
	}
	if err := Install(g.conn, m); err != nil {
		return fmt.Errorf("keeping pod %s from the instance metadata service: %w", podUID, err)
	}
	return nil
}

// Release removes the rules and what Guard made for the pod outside the agent's own
// cgroups (its cgroup2 part at a hybrid host's root), once the pod's processes are gone.
func (g *Guard) Release(podUID string) error {
	err := Uninstall(g.conn)
	if g.cg.Mode() == cgroups.Hybrid {
		if dir, _, ok, _ := g.cg.V2Dir(cgroups.PodPath(g.parent, podUID)); ok {
			err = errors.Join(err, cgroups.RemoveTree(dir, 10*time.Second))
			_ = os.Remove(filepath.Dir(dir)) // the parent other cells' pods share, once unused
		}
	}
	return err
}

// match makes the pod's cgroup and returns how the rules recognise its processes.
func (g *Guard) match(podUID string) (Match, error) {
	pod := cgroups.PodPath(g.parent, podUID)
	dir, level, ok, err := g.cg.V2Dir(pod)
	if err != nil {
		return Match{}, err
	}
	if ok {
		// The pod's cgroup first: its parent cannot be removed (and made again under
		// another id) while it has a child. A parent removed between the two mkdirs (the
		// last pod of another cell on a hybrid host going) is made again.
		var err error
		for range 5 {
			if err = os.MkdirAll(dir, 0o755); err == nil || !errors.Is(err, syscall.ENOENT) {
				break
			}
		}
		if err != nil {
			return Match{}, fmt.Errorf("creating cgroup %s: %w", dir, err)
		}
		var st unix.Stat_t
		if err := unix.Stat(filepath.Dir(dir), &st); err != nil {
			return Match{}, fmt.Errorf("reading the id of cgroup %s: %w", filepath.Dir(dir), err)
		}
		return Match{CgroupID: st.Ino, Level: uint32(level - 1)}, nil
	}
	if ok, err := g.cg.SetNetClassID(g.parent, ClassID); err != nil {
		return Match{}, err
	} else if !ok {
		return Match{}, errors.New("this host has neither a cgroup2 hierarchy nor a cgroup v1 net_cls one to tell pods' traffic by")
	}
	if _, err := g.cg.SetNetClassID(pod, ClassID); err != nil {
		return Match{}, err
	}
	return Match{ClassID: ClassID}, nil
}
