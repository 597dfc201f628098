package local

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// The host firewall is two nftables tables per backend bridge, both enforced outside the
// cells (root in a cell cannot change them), both written in one netlink transaction:
//
//	table bridge kip-sg-<bridge> {          # stateless, sees frames between bridge ports
//	  chain forward {                       # hook forward, priority filter, policy accept
//	    iifname "kv<id>" ether type ip ip saddr != <cell ip> drop   # per cell: no spoofing
//	    oifname "kv<id>" tcp dport 6421 drop                        # per cell: agent port
//	  }
//	}
//	table inet kip-sg-<bridge> {            # stateful: the groups
//	  chain forward {                       # hook forward, priority filter, policy accept
//	    iifname != "<bridge>" accept
//	    ct state established,related accept
//	    ip daddr <cell ip> jump cell-lc-<id>  # per cell in a group
//	  }
//	  chain cell-lc-<id> {
//	    ip saddr { <ips of source groups' cells> } tcp dport 80 accept  # per ingress rule
//	    ip saddr 10.0.0.0/8 tcp dport 80 accept                          # per CIDR source
//	    drop
//	  }
//	}
//
// The host's own traffic to and from cells crosses neither forward hook, so the host always
// reaches every cell. Connection tracking is not available to the bridge family without
// nf_conntrack_bridge (not built into this kernel), so the groups live in the inet family,
// which sees bridged IPv4 through br_netfilter (bridge-nf-call-iptables=1; Setup checks it
// when groups are configured); there the interfaces are the bridge itself, so cells are told
// apart by address, which the bridge table keeps honest.
const forwardChain = "forward"

// brNetfilterSysctl must be 1 for bridged IPv4 to pass the inet family's hooks.
const brNetfilterSysctl = "/proc/sys/net/bridge/bridge-nf-call-iptables"

// ethIPv4 is IPv4's ethertype, for meta protocol.
const (
	ethIPv4 = 0x0800
)

// applyPlan replaces both tables with p in one netlink transaction.
func applyPlan(bridge string, p fwPlan) error {
	c, err := nftables.New(nftables.WithSockOptions(largeBuffers))
	if err != nil {
		return fmt.Errorf("opening nftables: %w", err)
	}
	policy := nftables.ChainPolicyAccept
	fresh := func(fam nftables.TableFamily) (*nftables.Table, *nftables.Chain) {
		t := &nftables.Table{Family: fam, Name: p.Table}
		// add+delete+add empties an existing table and works when there is none.
		c.AddTable(t)
		c.DelTable(t)
		t = c.AddTable(t)
		return t, c.AddChain(&nftables.Chain{
			Name: forwardChain, Table: t, Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &policy,
		})
	}
	bt, bfwd := fresh(nftables.TableFamilyBridge)
	for _, cell := range p.Cells {
		ip := cell.IP.As4()
		c.AddRule(&nftables.Rule{Table: bt, Chain: bfwd, Exprs: []expr.Any{
			&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(cell.Veth)},
			&expr.Meta{Key: expr.MetaKeyPROTOCOL, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(ethIPv4)},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: ip[:]},
			&expr.Verdict{Kind: expr.VerdictDrop},
		}})
		c.AddRule(&nftables.Rule{Table: bt, Chain: bfwd, Exprs: append([]expr.Any{
			&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(cell.Veth)},
		}, append(l4(ProtoTCP, AgentPort, AgentPort), &expr.Verdict{Kind: expr.VerdictDrop})...)})
	}

	it, ifwd := fresh(nftables.TableFamilyINet)
	c.AddRule(&nftables.Rule{Table: it, Chain: ifwd, Exprs: []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: ifname(bridge)},
		&expr.Verdict{Kind: expr.VerdictAccept},
	}})
	c.AddRule(&nftables.Rule{Table: it, Chain: ifwd, Exprs: []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitESTABLISHED | expr.CtStateBitRELATED),
			Xor:  binaryutil.NativeEndian.PutUint32(0)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{0, 0, 0, 0}},
		&expr.Verdict{Kind: expr.VerdictAccept},
	}})
	for _, cell := range p.Cells {
		if cell.Open {
			continue
		}
		ch := c.AddChain(&nftables.Chain{Name: cell.Name, Table: it})
		ip := cell.IP.As4()
		c.AddRule(&nftables.Rule{Table: it, Chain: ifwd, Exprs: append(isIPv4(),
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ip[:]},
			&expr.Verdict{Kind: expr.VerdictJump, Chain: cell.Name},
		)})
		for _, a := range cell.Allow {
			match := l4(a.Protocol, a.FromPort, a.ToPort)
			if len(a.SrcIPs) > 0 {
				set := &nftables.Set{Table: it, Anonymous: true, Constant: true, KeyType: nftables.TypeIPAddr}
				elems := make([]nftables.SetElement, len(a.SrcIPs))
				for i, src := range a.SrcIPs {
					b := src.As4()
					elems[i] = nftables.SetElement{Key: b[:]}
				}
				if err := c.AddSet(set, elems); err != nil {
					return fmt.Errorf("adding the sources of %s's rule for %s: %w", cell.Name, a.Group, err)
				}
				exprs := append(isIPv4(),
					&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
					&expr.Lookup{SourceRegister: 1, SetName: set.Name, SetID: set.ID},
				)
				c.AddRule(&nftables.Rule{Table: it, Chain: ch, Exprs: append(append(exprs, match...), &expr.Verdict{Kind: expr.VerdictAccept})})
			}
			for _, pfx := range a.SrcCIDRs {
				exprs := append(isIPv4(), saddrIn(pfx)...)
				c.AddRule(&nftables.Rule{Table: it, Chain: ch, Exprs: append(append(exprs, match...), &expr.Verdict{Kind: expr.VerdictAccept})})
			}
		}
		c.AddRule(&nftables.Rule{Table: it, Chain: ch, Exprs: []expr.Any{&expr.Verdict{Kind: expr.VerdictDrop}}})
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("writing nftables tables %s: %w", p.Table, err)
	}
	return nil
}

// fwSocketBuffer is the send and receive buffer of the socket that writes the tables. The
// transaction is one message (a table for a host full of cells is megabytes), and the kernel
// answers each of its parts (a rule is one, echoed back whole): with the default buffers
// (wmem_default and rmem_default, about 200 KiB) the send fails with EMSGSIZE past a few
// hundred cells, and before that the replies overflow and the write fails with ENOBUFS. The
// buffers are limits, not allocations.
const fwSocketBuffer = 64 << 20

// largeBuffers raises the socket's buffers to fwSocketBuffer, past net.core.[rw]mem_max
// (SO_[RCV|SND]BUFFORCE need CAP_NET_ADMIN, which writing nftables needs anyway), else as
// far as the maxima let them.
func largeBuffers(c *netlink.Conn) error {
	raw, err := c.SyscallConn()
	if err == nil {
		var rerr, serr error
		err = raw.Control(func(fd uintptr) {
			rerr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, fwSocketBuffer)
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, fwSocketBuffer)
		})
		if err == nil && rerr == nil && serr == nil {
			return nil
		}
	}
	if err := c.SetReadBuffer(fwSocketBuffer); err != nil {
		return err
	}
	return c.SetWriteBuffer(fwSocketBuffer)
}

// deleteTable removes the table if it is there.
func deleteTable(name string) error {
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("opening nftables: %w", err)
	}
	for _, fam := range []nftables.TableFamily{nftables.TableFamilyBridge, nftables.TableFamilyINet} {
		t := &nftables.Table{Family: fam, Name: name}
		c.AddTable(t) // so that the delete never fails for a missing table
		c.DelTable(t)
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("deleting nftables table bridge %s: %w", name, err)
	}
	return nil
}

// sweepTables deletes the firewall tables of bridges that no longer exist (a backend that
// died without its teardown).
func sweepTables(bridgeExists func(string) bool) error {
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("opening nftables: %w", err)
	}
	tables, err := c.ListTables()
	if err != nil {
		return fmt.Errorf("listing nftables tables: %w", err)
	}
	var errs []error
	for _, t := range tables {
		br, ok := strings.CutPrefix(t.Name, tableName(""))
		if !ok || bridgeExists(br) || (t.Family != nftables.TableFamilyBridge && t.Family != nftables.TableFamilyINet) {
			continue
		}
		if err := deleteTable(t.Name); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// l4 matches an IPv4 or IPv6 packet of proto (and, for tcp and udp, a destination port in
// from..to; 0 and 0 mean any). ProtoAll matches every IP packet.
func l4(proto string, from, to uint16) []expr.Any {
	var num byte
	switch proto {
	case ProtoTCP:
		num = unix.IPPROTO_TCP
	case ProtoUDP:
		num = unix.IPPROTO_UDP
	case ProtoICMP:
		num = unix.IPPROTO_ICMP
	default: // all
		return nil
	}
	out := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{num}},
	}
	if from == 0 && to == 0 || proto == ProtoICMP {
		return out
	}
	out = append(out, &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2})
	if from == to {
		return append(out, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(from)})
	}
	return append(out, &expr.Range{Op: expr.CmpOpEq, Register: 1,
		FromData: binaryutil.BigEndian.PutUint16(from), ToData: binaryutil.BigEndian.PutUint16(to)})
}

// isIPv4 matches IPv4 packets in the inet family.
func isIPv4() []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.NFPROTO_IPV4}},
	}
}

// saddrIn matches an IPv4 source address in pfx.
func saddrIn(pfx netip.Prefix) []expr.Any {
	addr := pfx.Addr().As4()
	mask := make([]byte, 4)
	for i := 0; i < pfx.Bits(); i++ {
		mask[i/8] |= 0x80 >> (i % 8)
	}
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask, Xor: []byte{0, 0, 0, 0}},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: addr[:]},
	}
}

// ifname is an interface name as nft compares it: the name and its NUL.
func ifname(n string) []byte { return append([]byte(n), 0) }

// ifnameKey is an interface name as a set key: IFNAMSIZ bytes, NUL padded.
func ifnameKey(n string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, n)
	return b
}
