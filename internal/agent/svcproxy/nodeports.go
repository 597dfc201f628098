package svcproxy

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/kip-dev/kip/internal/cellapi"
)

// NodePortsTablePrefix begins the name of every NodePorts table (families ip and ip6); the
// rest is the name given to NewNodePorts (the local backend gives its bridge's).
const NodePortsTablePrefix = "kip-nodeports-"

// Names of the objects of a NodePorts table.
const (
	npPrerouting    = "prerouting"    // nat, prerouting: jump nodeports-nat
	npOutput        = "output"        // nat, output: jump nodeports-nat
	npPostrouting   = "postrouting"   // nat, postrouting: masquerade the flows nodeports-nat DNATed
	npInput         = "filter-input"  // filter, input: jump nodeports-filter
	npFilterOutput  = "filter-output" // filter, output: jump nodeports-filter
	npNATChain      = "nodeports-nat"
	npFilterChain   = "nodeports-filter"
	npNodeAddrs     = "node-addresses"
	npNodePorts     = "node-ports"
	npNoEndpoints   = "no-endpoint-nodeports"
	npSticky        = "sticky-nodeports"
	maxTableNameLen = 255 // NFT_TABLE_MAXNAMELEN less its NUL
)

// ipsDstNAT is conntrack's IPS_DST_NAT status bit: the connection's destination was NATed.
const ipsDstNAT = 1 << 5

// ctDirOriginal is conntrack's IP_CT_DIR_ORIGINAL: the tuple as the client sent it.
const ctDirOriginal = 0

// NodePorts programs the nodePorts of a service table into the network namespace it runs
// in (the host's, for the local backend), as kube-proxy does on a node: a connection to a
// node address on a port's nodePort (TCP, UDP or SCTP) is DNATed to one of the port's
// endpoints, at random or, for a Service with sessionAffinity ClientIP, to the endpoint the
// client's address last reached within the timeout (the cells' chains and sets, see
// addAffinity), and masqueraded, so that the endpoint's replies come back through this
// namespace even when the client is on the endpoint's own network; a nodePort without
// endpoints is rejected at once. Loopback addresses are never node addresses.
//
// Its table is "kip-nodeports-<name>" in families ip and ip6; several NodePorts with other
// names coexist in one namespace. Replace rewrites both in one netlink batch (one nftables
// transaction). NodePorts does not touch sysctls: connections that must be forwarded (from
// a cell to another cell through this namespace, or from another host) need forwarding on
// the interface they arrive on, which is the caller's explicit step.
//
// Its methods are safe for concurrent use; they apply one at a time.
type NodePorts struct {
	table string
	addrs []netip.Addr // nil: every local address (fib daddr type local), loopback excepted
	p     *Programmer  // for its namespace and batches; its own tables are never touched

	mu sync.Mutex
}

// NewNodePorts returns a NodePorts for the table NodePortsTablePrefix+name. addrs are the
// node addresses nodePorts answer on; none means every local address of the namespace (its
// loopback addresses excepted). Options are New's (InNetns). It does not touch the kernel.
// A bad name or address is refused naming it.
func NewNodePorts(name string, addrs []netip.Addr, opts ...Option) (*NodePorts, error) {
	var probs []string
	table := NodePortsTablePrefix + name
	switch {
	case name == "":
		probs = append(probs, "name is empty")
	case len(table) > maxTableNameLen:
		probs = append(probs, fmt.Sprintf("name: table name %q is longer than %d bytes", table, maxTableNameLen))
	case strings.ContainsFunc(name, func(r rune) bool { return r <= ' ' || r > '~' }):
		probs = append(probs, fmt.Sprintf("name %q has spaces, control or non-ASCII characters", name))
	}
	seen := map[netip.Addr]bool{}
	for i, a := range addrs {
		switch {
		case !a.IsValid():
			probs = append(probs, fmt.Sprintf("addresses[%d] is not an address", i))
		case a.Zone() != "", a.Is4In6():
			probs = append(probs, fmt.Sprintf("addresses[%d] (%s): zoned and IPv4-mapped IPv6 addresses are not allowed", i, a))
		case a.IsUnspecified(), a.IsMulticast(), a.IsLoopback():
			probs = append(probs, fmt.Sprintf("addresses[%d] (%s) is not a unicast, non-loopback address", i, a))
		case seen[a]:
			probs = append(probs, fmt.Sprintf("addresses[%d] (%s) is listed twice", i, a))
		}
		seen[a] = true
	}
	if len(probs) > 0 {
		return nil, fmt.Errorf("invalid nodePorts configuration: %s", strings.Join(probs, "; "))
	}
	np := &NodePorts{table: table, p: New(opts...)}
	if len(addrs) > 0 {
		np.addrs = append([]netip.Addr(nil), addrs...)
		sort.Slice(np.addrs, func(i, j int) bool { return np.addrs[i].Less(np.addrs[j]) })
	}
	return np, nil
}

// Table is the name of the NodePorts' table (in both families).
func (np *NodePorts) Table() string { return np.table }

// nodePort is one nodePort to program in one family.
type nodePort struct {
	proto uint8
	port  uint16
	eps   []endpoint
	// sticky is the service port when it has ClientIP affinity and endpoints (nil otherwise);
	// names are then its affinity chains and sets.
	sticky *port
	names  names
}

// Replace programs exactly the nodePorts of svcs (ports with NodePort 0 are skipped),
// replacing whatever tables of this name there were. svcs is validated as a whole first
// (as the cells' tables are, plus each nodePort: in range 1..65535, as clusters configure
// their range, and no protocol/nodePort used twice); an invalid table is refused with
// cellapi.KindInvalid naming the Service and port, and nothing changes.
//
// Session affinity survives a replacement where it still means the same: a client that
// stuck to an endpoint of a port keeps it for the rest of its timeout (cut to the new
// timeout if that is shorter) as long as the table still has that port with ClientIP
// affinity and that endpoint, whatever else changed (kube-proxy likewise keeps an
// endpoint's affinity across syncs). A client that first connects between the read of the
// old sets and the commit of the new ones loses its affinity.
func (np *NodePorts) Replace(ctx context.Context, svcs []cellapi.Service) error {
	want, err := compileTable(svcs, true)
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	np.mu.Lock()
	defer np.mu.Unlock()
	carry, err := np.affinities()
	if err != nil {
		return fmt.Errorf("reading the session affinity of table %s: %w", np.table, err)
	}
	b := np.p.newBatch()
	n := 0
	for _, f := range families {
		t := np.familyTable(f)
		b.c.AddTable(t) // create if missing, so that the delete cannot fail
		b.c.DelTable(t)
		b.n += 2
		var addrs []netip.Addr
		for _, a := range np.addrs {
			if f.has(a) {
				addrs = append(addrs, a)
			}
		}
		if np.addrs != nil && len(addrs) == 0 {
			continue // no node address in this family
		}
		var ports []nodePort
		for _, key := range sortedKeys(want) {
			s := want[key]
			for i := range s.ports {
				p := &s.ports[i]
				if p.nodePort == 0 {
					continue
				}
				_, eps := split(f, s, p)
				npt := nodePort{proto: p.proto, port: p.nodePort, eps: eps}
				if p.affinity > 0 && len(eps) > 0 {
					npt.sticky, npt.names = p, portNames(s, p, eps)
				}
				ports = append(ports, npt)
			}
		}
		b.c.AddTable(t)
		b.n++
		b.nodePortsBase(f, t, addrs, np.addrs == nil)
		b.nodePorts(f, t, ports, carry[f])
		n = max(n, len(ports))
	}
	b.flushElements()
	if err := b.flush(); err != nil {
		return fmt.Errorf("programming %d nodePorts in table %s: %w", n, np.table, err)
	}
	return nil
}

// affinities reads the client addresses of the affinity sets of both families' tables, by
// family and set name, each element's Timeout being the time it has left. A missing table
// has none.
func (np *NodePorts) affinities() (map[*family]map[string][]nftables.SetElement, error) {
	var opts []nftables.ConnOption
	if np.p.netnsFD >= 0 {
		opts = append(opts, nftables.WithNetNSFd(np.p.netnsFD))
	}
	c, err := nftables.New(opts...)
	if err != nil {
		return nil, err
	}
	out := map[*family]map[string][]nftables.SetElement{}
	for _, f := range families {
		// GetSets of a missing table fails with an error that has lost its errno.
		tables, err := c.ListTablesOfFamily(f.tf)
		if err != nil {
			return nil, err
		}
		if !slices.ContainsFunc(tables, func(t *nftables.Table) bool { return t.Name == np.table }) {
			continue
		}
		sets, err := c.GetSets(np.familyTable(f))
		if err != nil {
			return nil, err
		}
		for _, s := range sets {
			if !strings.HasPrefix(s.Name, affinityKind+"-") || !s.HasTimeout {
				continue
			}
			els, err := c.GetSetElements(s)
			if err != nil {
				return nil, fmt.Errorf("set %s: %w", s.Name, err)
			}
			var keep []nftables.SetElement
			for _, e := range els {
				if e.Expires >= time.Millisecond {
					keep = append(keep, nftables.SetElement{Key: e.Key, Timeout: e.Expires})
				}
			}
			if len(keep) > 0 {
				if out[f] == nil {
					out[f] = map[string][]nftables.SetElement{}
				}
				out[f][s.Name] = keep
			}
		}
	}
	return out, nil
}

// Delete removes the tables; without them it does nothing.
func (np *NodePorts) Delete() error {
	np.mu.Lock()
	defer np.mu.Unlock()
	b := np.p.newBatch()
	for _, f := range families {
		t := np.familyTable(f)
		b.c.AddTable(t)
		b.c.DelTable(t)
		b.n += 2
	}
	if err := b.flush(); err != nil {
		return fmt.Errorf("deleting nftables tables %s: %w", np.table, err)
	}
	return nil
}

func (np *NodePorts) familyTable(f *family) *nftables.Table {
	return &nftables.Table{Name: np.table, Family: f.tf}
}

// npKeyType is l4proto . dport.
var npKeyType = nftables.MustConcatSetType(nftables.TypeInetProto, nftables.TypeInetService)

// npKey is the element l4proto . port, each field padded to 4 bytes.
func npKey(proto uint8, port uint16) []byte {
	return []byte{proto, 0, 0, 0, byte(port >> 8), byte(port), 0, 0}
}

// npLoadKey loads meta l4proto . th dport into registers 1 (32-bit 0) and 32-bit 1.
var npLoadKey = []expr.Any{
	&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
	&expr.Payload{DestRegister: unix.NFT_REG32_01, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
}

func npNodePortsSet(t *nftables.Table) *nftables.Set {
	return &nftables.Set{Table: t, Name: npNodePorts, Concatenation: true, KeyType: npKeyType}
}

func npNoEndpointsMap(t *nftables.Table) *nftables.Set {
	return &nftables.Set{Table: t, Name: npNoEndpoints, IsMap: true, Concatenation: true,
		KeyType: npKeyType, DataType: nftables.TypeVerdict}
}

func npStickyMap(t *nftables.Table) *nftables.Set {
	return &nftables.Set{Table: t, Name: npSticky, IsMap: true, Concatenation: true,
		KeyType: npKeyType, DataType: nftables.TypeVerdict}
}

func npEndpointsMap(f *family, t *nftables.Table, n int) *nftables.Set {
	return &nftables.Set{Table: t, Name: fmt.Sprintf("%s%d", endpointsMapPrefix, n), IsMap: true, Concatenation: true,
		KeyType:  nftables.MustConcatSetType(nftables.TypeInetProto, nftables.TypeInetService, nftables.TypeMark),
		DataType: nftables.MustConcatSetType(f.addrType, nftables.TypeInetService)}
}

// nodePortsBase adds the fixed part of the table t (just created, empty) in family f:
//
//	set node-addresses { addrs }                    (only with addrs)
//	set node-ports { l4proto . port }               (filled by nodePorts)
//	map no-endpoint-nodeports { l4proto . port : goto reject-chain }
//	map sticky-nodeports { l4proto . port : goto service-… }   (filled by nodePorts)
//	chain nodeports-nat {
//	  daddr != @node-addresses return               (with addrs; else:)
//	  fib daddr type != local return ; daddr <loopback> return
//	  l4proto . dport vmap @sticky-nodeports    (the nodePorts with ClientIP affinity)
//	  (then one dnat rule per endpoints-N map: nodePorts)
//	}
//	chain nodeports-filter { (the same returns) ; ct state new l4proto . dport vmap @no-endpoint-nodeports }
//	chain prerouting, output     (nat, dstnat):  jump nodeports-nat
//	chain filter-input, filter-output (filter):  jump nodeports-filter
//	chain postrouting (nat, srcnat):
//	  ct status dnat  ct protocol . ct original proto-dst @node-ports  masquerade
//	chain reject-chain { tcp: reject with tcp reset; reject }
//
// The masquerade is what lets a cell call a nodePort whose endpoint is another cell on the
// same bridge: without it the endpoint would answer the cell directly, from an address the
// cell never called.
func (b *batch) nodePortsBase(f *family, t *nftables.Table, addrs []netip.Addr, fib bool) {
	accept := nftables.ChainPolicyAccept
	addrSet := &nftables.Set{Table: t, Name: npNodeAddrs, KeyType: f.addrType}
	if !fib {
		els := make([]nftables.SetElement, len(addrs))
		for i, a := range addrs {
			els[i] = nftables.SetElement{Key: a.AsSlice()}
		}
		b.addSet(addrSet, nil)
		b.addElements(addrSet, els)
	}
	b.addSet(npNodePortsSet(t), nil)
	b.addSet(npNoEndpointsMap(t), nil)
	b.addSet(npStickyMap(t), nil)

	b.addChain(&nftables.Chain{Name: rejectChain, Table: t})
	b.addRule(t, rejectChain,
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{protocols["TCP"]}},
		&expr.Reject{Type: unix.NFT_REJECT_TCP_RST})
	b.addRule(t, rejectChain, &expr.Reject{Type: unix.NFT_REJECT_ICMP_UNREACH, Code: f.portUnreach})

	// notNode: the rules that return when the destination is not a node address.
	var notNode [][]expr.Any
	daddr := &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: f.daddrOff, Len: f.addrLen}
	ret := &expr.Verdict{Kind: expr.VerdictReturn}
	if fib {
		notNode = append(notNode, []expr.Any{
			&expr.Fib{Register: 1, FlagDADDR: true, ResultADDRTYPE: true},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(unix.RTN_LOCAL)},
			ret})
		lo := netip.MustParsePrefix("127.0.0.0/8")
		if f == ipv6 {
			lo = netip.MustParsePrefix("::1/128")
		}
		notNode = append(notNode, []expr.Any{daddr,
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: f.addrLen, Mask: prefixMask(lo), Xor: make([]byte, f.addrLen)},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: lo.Addr().AsSlice()},
			ret})
	} else {
		notNode = append(notNode, []expr.Any{daddr,
			&expr.Lookup{SourceRegister: 1, SetName: npNodeAddrs, Invert: true},
			ret})
	}
	b.addChain(&nftables.Chain{Name: npNATChain, Table: t})
	b.addChain(&nftables.Chain{Name: npFilterChain, Table: t})
	for _, r := range notNode {
		b.addRule(t, npNATChain, r...)
		b.addRule(t, npFilterChain, r...)
	}
	b.addRule(t, npFilterChain, exprs(ctNew, npLoadKey, []expr.Any{
		&expr.Lookup{SourceRegister: 1, IsDestRegSet: true, SetName: npNoEndpoints}})...)
	b.addRule(t, npNATChain, exprs(npLoadKey, []expr.Any{
		&expr.Lookup{SourceRegister: 1, IsDestRegSet: true, SetName: npSticky}})...)

	for _, c := range []struct {
		name, to string
		typ      nftables.ChainType
		hook     *nftables.ChainHook
		prio     *nftables.ChainPriority
	}{
		{npPrerouting, npNATChain, nftables.ChainTypeNAT, nftables.ChainHookPrerouting, nftables.ChainPriorityNATDest},
		{npOutput, npNATChain, nftables.ChainTypeNAT, nftables.ChainHookOutput, nftables.ChainPriorityNATDest},
		{npInput, npFilterChain, nftables.ChainTypeFilter, nftables.ChainHookInput, nftables.ChainPriorityFilter},
		{npFilterOutput, npFilterChain, nftables.ChainTypeFilter, nftables.ChainHookOutput, nftables.ChainPriorityFilter},
	} {
		b.addChain(&nftables.Chain{Name: c.name, Table: t, Type: c.typ, Hooknum: c.hook, Priority: c.prio, Policy: &accept})
		b.addRule(t, c.name, &expr.Verdict{Kind: expr.VerdictJump, Chain: c.to})
	}

	b.addChain(&nftables.Chain{Name: npPostrouting, Table: t, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource, Policy: &accept})
	masq := []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeySTATUS},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(ipsDstNAT), Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: make([]byte, 4)},
	}
	// Matching the original destination address too (ct original ip daddr @node-addresses)
	// would be tighter, but nft 1.0 cannot print that rule beside the concatenation.
	masq = append(masq,
		&expr.Ct{Register: 1, Key: expr.CtKeyPROTOCOL},
		&expr.Ct{Register: unix.NFT_REG32_01, Key: expr.CtKeyPROTODST, Direction: ctDirOriginal},
		&expr.Lookup{SourceRegister: 1, SetName: npNodePorts},
		&expr.Masq{})
	b.addRule(t, npPostrouting, masq...)
}

// nodePorts adds the nodePorts' elements: a port with ClientIP affinity gets the cells'
// affinity chains and sets (addAffinity, with carry's client addresses for its sets) and
// an element of sticky-nodeports; the others, per endpoint count N in use, the map
// endpoints-N (l4proto . port . index → endpoint address . port) with its rule in
// nodeports-nat:
//
//	meta l4proto . th dport . numgen random mod N  dnat to map @endpoints-N
//
// A port with another count misses the lookup and goes on to the next rule.
func (b *batch) nodePorts(f *family, t *nftables.Table, ports []nodePort, carry map[string][]nftables.SetElement) {
	var all, noEps, sticky []nftables.SetElement
	byCount := map[int][]nftables.SetElement{}
	for _, p := range ports {
		k := npKey(p.proto, p.port)
		all = append(all, nftables.SetElement{Key: k})
		if len(p.eps) == 0 {
			noEps = append(noEps, nftables.SetElement{Key: k, VerdictData: goTo(rejectChain)})
			continue
		}
		if p.sticky != nil {
			b.addAffinity(f, t, p.names, p.sticky, p.eps, carry)
			sticky = append(sticky, nftables.SetElement{Key: k, VerdictData: goTo(p.names.chain)})
			continue
		}
		for i, ep := range p.eps {
			byCount[len(p.eps)] = append(byCount[len(p.eps)], nftables.SetElement{
				Key: append(npKey(p.proto, p.port), binaryutil.NativeEndian.PutUint32(uint32(i))...),
				Val: append(ep.addr.AsSlice(), byte(ep.port>>8), byte(ep.port), 0, 0)})
		}
	}
	b.addElements(npNodePortsSet(t), all)
	b.addElements(npNoEndpointsMap(t), noEps)
	b.addElements(npStickyMap(t), sticky)
	counts := make([]int, 0, len(byCount))
	for n := range byCount {
		counts = append(counts, n)
	}
	sort.Ints(counts)
	for _, n := range counts {
		m := npEndpointsMap(f, t, n)
		b.addSet(m, nil)
		b.addElements(m, byCount[n])
		b.addRule(t, npNATChain, exprs(npLoadKey, []expr.Any{
			&expr.Numgen{Register: unix.NFT_REG32_02, Modulus: uint32(n), Type: unix.NFT_NG_RANDOM},
			&expr.Lookup{SourceRegister: 1, DestRegister: 1, IsDestRegSet: true, SetName: m.Name},
			&expr.NAT{Type: expr.NATTypeDestNAT, Family: f.nfproto, RegAddrMin: 1, RegProtoMin: f.reg32(0), Specified: true},
		})...)
	}
}

// prefixMask is p's netmask as bytes.
func prefixMask(p netip.Prefix) []byte {
	m := make([]byte, p.Addr().BitLen()/8)
	for i := 0; i < p.Bits(); i++ {
		m[i/8] |= 0x80 >> (i % 8)
	}
	return m
}
