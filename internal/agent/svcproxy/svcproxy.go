// Package svcproxy programs the cluster's ClusterIP Services into the network namespace the
// cell agent runs in (the pod's own), with nftables over netlink, the way kube-proxy's
// nftables mode does on a node: connections to a cluster IP and port are DNATed to one of the
// port's endpoints, chosen at random or by ClientIP session affinity; a port without endpoints,
// or a port the Service does not have, is rejected at once.
//
// Each family has a table of its own ("ip kip-services", "ip6 kip-services"). A full table
// replaces them in one netlink batch (one nftables transaction); a delta rebuilds only the
// Services it names, also in one batch. A batch the kernel refuses changes nothing.
//
// NodePorts is the same job on the host side (the local backend imports it): the nodePorts
// of the same service table, in the namespace of the node's address. It lives here to share
// the validation and the netlink batches; the package imports only cellapi of kip's own.
package svcproxy

import (
	"context"
	"crypto/sha256"
	"encoding/base32"
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/kip-dev/kip/internal/cellapi"
)

// TableName is the name of kip's table in both families.
const TableName = "kip-services"

// Names of the fixed objects of each table (as kube-proxy names its own).
const (
	natOutputChain    = "nat-output"
	filterOutputChain = "filter-output"
	rejectChain       = "reject-chain"
	serviceIPsMap     = "service-ips"
	noEndpointsMap    = "no-endpoint-services"
	clusterIPsSet     = "cluster-ips"
)

// endpointsMapPrefix names the maps of the ports without session affinity: endpoints-<N>
// holds the endpoints of every port that has N of them.
const endpointsMapPrefix = "endpoints-"

// Programmer programs service tables into one network namespace. Its methods are safe for
// concurrent use; they apply one at a time.
type Programmer struct {
	netnsFD int // -1: the calling thread's namespace

	mu sync.Mutex
	// programmed is what the last successful apply left in the kernel; nil before the first
	// Replace, when this Programmer does not know what the kernel has.
	programmed map[string]*service
	// maps are the endpoint counts that have an endpoints-N map (and its nat-output rule) in
	// each family's table since the last Replace; a map left empty by a delta stays.
	maps map[*family]map[int]bool
}

// Option configures a Programmer.
type Option func(*Programmer)

// InNetns makes the Programmer program the network namespace open as fd (tests use it; the
// agent programs its own namespace).
func InNetns(fd int) Option { return func(p *Programmer) { p.netnsFD = fd } }

// New returns a Programmer for the network namespace of the calling process (or InNetns's).
// It does not touch the kernel until the first Replace.
func New(opts ...Option) *Programmer {
	p := &Programmer{netnsFD: -1}
	for _, o := range opts {
		o(p)
	}
	return p
}

// Replace programs exactly svcs, replacing whatever kip-services tables there were (left by
// this Programmer, or by an agent that ran before it). svcs is validated first; an invalid
// table is refused with cellapi.KindInvalid and nothing changes. Session affinity is
// forgotten for every Service.
func (p *Programmer) Replace(ctx context.Context, svcs []cellapi.Service) error {
	want, err := compile(svcs)
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	b := p.newBatch()
	maps := map[*family]map[int]bool{}
	for _, f := range families {
		t := f.table()
		b.c.AddTable(t) // create if missing, so that the delete cannot fail
		b.c.DelTable(t)
		b.c.AddTable(t)
		b.n += 3
		b.base(f)
		maps[f] = map[int]bool{}
		for _, n := range endpointCounts(f, want, nil) {
			b.addEndpointsMap(f, n)
			maps[f][n] = true
		}
		for _, key := range sortedKeys(want) {
			b.addService(f, want[key])
		}
	}
	b.flushElements()
	if err := b.flush(); err != nil {
		return fmt.Errorf("programming %d services: %w", len(want), err)
	}
	p.programmed = want
	p.maps = maps
	return nil
}

// Update adds or replaces upsert (by namespace/name) and removes deleted on top of what the
// last Replace or Update programmed; unknown deleted keys are ignored, and a Service listed
// unchanged keeps its rules and its affinity. The result is validated as a whole first; an
// invalid result is refused with cellapi.KindInvalid and nothing changes. Before any Replace
// it fails with cellapi.KindConflict: only a full table can say what the kernel should hold.
func (p *Programmer) Update(ctx context.Context, upsert []cellapi.Service, deleted []string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.programmed == nil {
		return cellapi.Errorf(cellapi.KindConflict, "no full service table programmed yet")
	}
	merged := make(map[string]cellapi.Service, len(p.programmed)+len(upsert))
	for k, s := range p.programmed {
		merged[k] = s.src
	}
	for _, k := range deleted {
		delete(merged, k)
	}
	upserted := map[string]bool{}
	for _, s := range upsert {
		if upserted[s.Key()] {
			return cellapi.Errorf(cellapi.KindInvalid, "invalid service table: service %s: listed twice", s.Key())
		}
		upserted[s.Key()] = true
		merged[s.Key()] = s
	}
	all := make([]cellapi.Service, 0, len(merged))
	for _, s := range merged {
		all = append(all, s)
	}
	want, err := compile(all)
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	// changed: keys whose rules go (old version) and come (new version).
	var changed []string
	for k := range upserted {
		if old, ok := p.programmed[k]; !ok || !reflect.DeepEqual(old.src, want[k].src) {
			changed = append(changed, k)
		}
	}
	for _, k := range deleted {
		if _, ok := p.programmed[k]; ok && !upserted[k] {
			changed = append(changed, k)
		}
	}
	if len(changed) == 0 {
		return nil
	}
	sort.Strings(changed)
	b := p.newBatch()
	// Elements first, then the chains they point to and the sets those chains use; then the
	// endpoint maps new endpoint counts need, the new chains, and last the elements.
	for _, f := range families {
		for _, k := range changed {
			if old := p.programmed[k]; old != nil {
				b.delServiceElements(f, old)
			}
		}
	}
	b.flushElements()
	maps := map[*family]map[int]bool{}
	for _, f := range families {
		for _, k := range changed {
			if old := p.programmed[k]; old != nil {
				b.delServiceObjects(f, old)
			}
		}
		maps[f] = maps2(p.maps[f])
		for _, n := range endpointCounts(f, want, changed) {
			if !maps[f][n] {
				b.addEndpointsMap(f, n)
				maps[f][n] = true
			}
		}
		for _, k := range changed {
			if s := want[k]; s != nil {
				b.addService(f, s)
			}
		}
	}
	b.flushElements()
	if err := b.flush(); err != nil {
		return fmt.Errorf("updating %d services: %w", len(changed), err)
	}
	p.programmed = want
	p.maps = maps
	return nil
}

// maps2 copies a set of endpoint counts.
func maps2(m map[int]bool) map[int]bool {
	out := make(map[int]bool, len(m))
	for k := range m {
		out[k] = true
	}
	return out
}

// Delete removes kip's tables (with every rule and affinity) from the namespace. The agent
// never calls it (the rules outlive an agent restart); tests do.
func (p *Programmer) Delete() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	b := p.newBatch()
	for _, f := range families {
		t := f.table()
		b.c.AddTable(t)
		b.c.DelTable(t)
		b.n += 2
	}
	if err := b.flush(); err != nil {
		return fmt.Errorf("deleting %s tables: %w", TableName, err)
	}
	p.programmed = nil
	p.maps = nil
	return nil
}

// Len is how many Services are programmed (0 before the first Replace).
func (p *Programmer) Len() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.programmed)
}

func sortedKeys(m map[string]*service) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// family is what differs between the ip and ip6 tables.
type family struct {
	tf       nftables.TableFamily
	nfproto  uint32
	addrType nftables.SetDatatype
	addrLen  uint32
	saddrOff uint32
	daddrOff uint32
	// portUnreach is the ICMP (or ICMPv6) code for "port unreachable".
	portUnreach uint8
}

var (
	ipv4     = &family{nftables.TableFamilyIPv4, unix.NFPROTO_IPV4, nftables.TypeIPAddr, 4, 12, 16, 3}
	ipv6     = &family{nftables.TableFamilyIPv6, unix.NFPROTO_IPV6, nftables.TypeIP6Addr, 16, 8, 24, 4}
	families = []*family{ipv4, ipv6}
)

func (f *family) table() *nftables.Table { return &nftables.Table{Name: TableName, Family: f.tf} }

func (f *family) has(ip netip.Addr) bool { return ip.Is4() == (f == ipv4) }

// reg32 is the i-th 32-bit register after an address loaded into register 1.
func (f *family) reg32(i uint32) uint32 { return unix.NFT_REG32_00 + f.addrLen/4 + i }

// keyType is daddr . l4proto . dport.
func (f *family) keyType() nftables.SetDatatype {
	return nftables.MustConcatSetType(f.addrType, nftables.TypeInetProto, nftables.TypeInetService)
}

// key is the element daddr . l4proto . dport, each field padded to 4 bytes.
func key(ip netip.Addr, proto uint8, port uint16) []byte {
	k := ip.AsSlice()
	return append(k, proto, 0, 0, 0, byte(port>>8), byte(port), 0, 0)
}

// loadKey loads daddr . l4proto . th dport into register 1 onward.
func (f *family) loadKey() []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: f.daddrOff, Len: f.addrLen},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: f.reg32(0)},
		&expr.Payload{DestRegister: f.reg32(1), Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
	}
}

func (f *family) loadSaddr() expr.Any {
	return &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: f.saddrOff, Len: f.addrLen}
}

// ctNew is "ct state new".
var ctNew = []expr.Any{
	&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
	&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
		Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitNEW), Xor: make([]byte, 4)},
	&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: make([]byte, 4)},
}

func goTo(chain string) *expr.Verdict { return &expr.Verdict{Kind: expr.VerdictGoto, Chain: chain} }

func exprs(parts ...[]expr.Any) []expr.Any {
	var out []expr.Any
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

// batch is one netlink batch (one nftables transaction) being built.
type batch struct {
	c     *nftables.Conn
	n     int // messages queued, to size the socket buffers
	bytes int // bytes of element messages queued, to size the send buffer
	err   error
	// pending are element additions and deletions not yet queued as messages: flushElements
	// queues them, as few messages per set as fit.
	pending []*pendingElems
}

// pendingElems are elements to add to (or delete from) one set.
type pendingElems struct {
	set   *nftables.Set
	del   bool
	elems []nftables.SetElement
}

func (p *Programmer) newBatch() *batch {
	b := &batch{}
	opts := []nftables.ConnOption{nftables.WithSockOptions(b.sizeBuffers)}
	if p.netnsFD >= 0 {
		opts = append(opts, nftables.WithNetNSFd(p.netnsFD))
	}
	b.c, b.err = nftables.New(opts...)
	return b
}

// sizeBuffers makes room for the whole batch and one acknowledgement per message: the kernel
// commits the batch before it acknowledges, so acknowledgements lost to a full receive buffer
// would report a failure for a batch that was applied.
func (b *batch) sizeBuffers(c *netlink.Conn) error {
	size := max(1<<20, (b.n+16)*1024+b.bytes)
	raw, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := raw.Control(func(fd uintptr) {
		for _, opt := range []int{unix.SO_SNDBUFFORCE, unix.SO_RCVBUFFORCE} {
			if e := unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, opt, size); e != nil {
				serr = fmt.Errorf("setting netlink socket buffer to %d bytes: %w", size, e)
			}
		}
	}); err != nil {
		return err
	}
	return serr
}

func (b *batch) flush() error {
	if b.err != nil {
		return b.err
	}
	if err := b.c.Flush(); err != nil {
		return classify(err)
	}
	return nil
}

// classify gives kernel refusals a readable kind: a batch the kernel refused is not the
// caller's fault unless validation missed something, so it stays Internal.
func classify(err error) error {
	if errors.Is(err, unix.EPERM) {
		return fmt.Errorf("nftables: %w (the agent needs CAP_NET_ADMIN in its network namespace)", err)
	}
	return fmt.Errorf("nftables: %w", err)
}

func (b *batch) setErr(err error) {
	if err != nil && b.err == nil {
		b.err = err
	}
}

func (b *batch) addRule(t *nftables.Table, chain string, e ...expr.Any) {
	b.c.AddRule(&nftables.Rule{Table: t, Chain: &nftables.Chain{Name: chain, Table: t}, Exprs: e})
	b.n++
}

func (b *batch) addChain(c *nftables.Chain) {
	b.c.AddChain(c)
	b.n++
}

// addSet adds s (and, for an anonymous set, its elements: one more message).
func (b *batch) addSet(s *nftables.Set, elems []nftables.SetElement) {
	b.setErr(b.c.AddSet(s, elems))
	b.n++
	if len(elems) > 0 {
		b.n++
	}
}

// addElements and delElements queue elements of a named set for flushElements.
func (b *batch) addElements(s *nftables.Set, elems []nftables.SetElement) {
	b.queue(s, false, elems)
}

func (b *batch) delElements(s *nftables.Set, elems []nftables.SetElement) {
	b.queue(s, true, elems)
}

func (b *batch) queue(s *nftables.Set, del bool, elems []nftables.SetElement) {
	if len(elems) == 0 {
		return
	}
	for _, pe := range b.pending {
		if pe.set.Table.Family == s.Table.Family && pe.set.Name == s.Name && pe.del == del {
			pe.elems = append(pe.elems, elems...)
			return
		}
	}
	b.pending = append(b.pending, &pendingElems{set: s, del: del, elems: slices.Clone(elems)})
}

// maxElemBytes bounds the encoded elements of one message: they are one netlink attribute,
// whose length is 16 bits.
const maxElemBytes = 48 << 10

// elemBytes is an upper bound of the encoded size of e.
func elemBytes(e *nftables.SetElement) int {
	n := 64 + len(e.Key) + len(e.Val)
	if e.VerdictData != nil {
		n += 32 + len(e.VerdictData.Chain)
	}
	return n
}

// flushElements queues the pending elements, set by set in the order they were first
// queued, each set's in as few messages as fit.
func (b *batch) flushElements() {
	for _, pe := range b.pending {
		elems := pe.elems
		for len(elems) > 0 {
			n, size := 0, 0
			for n < len(elems) && (n == 0 || size+elemBytes(&elems[n]) <= maxElemBytes) {
				size += elemBytes(&elems[n])
				n++
			}
			if pe.del {
				b.setErr(b.c.SetDeleteElements(pe.set, elems[:n]))
			} else {
				b.setErr(b.c.SetAddElements(pe.set, elems[:n]))
			}
			b.n++
			b.bytes += size
			elems = elems[n:]
		}
	}
	b.pending = nil
}

// The table's fixed sets, as values that name them (for elements added later).
func (f *family) serviceIPs() *nftables.Set {
	return &nftables.Set{Table: f.table(), Name: serviceIPsMap, IsMap: true, Concatenation: true,
		KeyType: f.keyType(), DataType: nftables.TypeVerdict}
}

func (f *family) noEndpoints() *nftables.Set {
	return &nftables.Set{Table: f.table(), Name: noEndpointsMap, IsMap: true, Concatenation: true,
		KeyType: f.keyType(), DataType: nftables.TypeVerdict}
}

func (f *family) clusterIPs() *nftables.Set {
	return &nftables.Set{Table: f.table(), Name: clusterIPsSet, KeyType: f.addrType}
}

// endpoints is the map endpoints-<n>: daddr . l4proto . dport . index (0..n-1) → the
// endpoint's address . port, for the ports with n endpoints and no session affinity.
func (f *family) endpoints(n int) *nftables.Set {
	return &nftables.Set{Table: f.table(), Name: fmt.Sprintf("%s%d", endpointsMapPrefix, n), IsMap: true, Concatenation: true,
		KeyType:  nftables.MustConcatSetType(f.addrType, nftables.TypeInetProto, nftables.TypeInetService, nftables.TypeMark),
		DataType: nftables.MustConcatSetType(f.addrType, nftables.TypeInetService)}
}

// base adds the fixed part of f's table (just created, empty):
//
//	nat-output (nat, output, dstnat):   daddr . l4proto . dport vmap @service-ips
//	                                    (then one rule per endpoints-N map: addEndpointsMap)
//	filter-output (filter, output, 0):  ct state new daddr . l4proto . dport vmap @no-endpoint-services
//	                                    ct state new daddr @cluster-ips goto reject-chain
//	reject-chain:                       tcp: reject with tcp reset; else reject (port unreachable)
//
// filter-output runs after DNAT, so a port with endpoints no longer has a cluster IP as its
// destination there; what still has one is a port without endpoints or one the Service lacks.
func (b *batch) base(f *family) {
	t := f.table()
	accept := nftables.ChainPolicyAccept
	b.addSet(f.serviceIPs(), nil)
	b.addSet(f.noEndpoints(), nil)
	b.addSet(f.clusterIPs(), nil)
	b.addChain(&nftables.Chain{Name: rejectChain, Table: t})
	b.addRule(t, rejectChain,
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{protocols["TCP"]}},
		&expr.Reject{Type: unix.NFT_REJECT_TCP_RST})
	b.addRule(t, rejectChain, &expr.Reject{Type: unix.NFT_REJECT_ICMP_UNREACH, Code: f.portUnreach})
	b.addChain(&nftables.Chain{Name: natOutputChain, Table: t, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityNATDest, Policy: &accept})
	b.addRule(t, natOutputChain, exprs(f.loadKey(), []expr.Any{
		&expr.Lookup{SourceRegister: 1, IsDestRegSet: true, SetName: serviceIPsMap}})...)
	b.addChain(&nftables.Chain{Name: filterOutputChain, Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityFilter, Policy: &accept})
	b.addRule(t, filterOutputChain, exprs(ctNew, f.loadKey(), []expr.Any{
		&expr.Lookup{SourceRegister: 1, IsDestRegSet: true, SetName: noEndpointsMap}})...)
	b.addRule(t, filterOutputChain, exprs(ctNew, []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: f.daddrOff, Len: f.addrLen},
		&expr.Lookup{SourceRegister: 1, SetName: clusterIPsSet},
		goTo(rejectChain)})...)
}

// addEndpointsMap adds the map endpoints-<n> and its rule, appended to nat-output:
//
//	daddr . l4proto . dport . numgen random mod n  dnat to map @endpoints-<n>
//
// A connection whose daddr . l4proto . dport is not in the map (a port with another number
// of endpoints) fails the lookup and goes on to the next rule; one that is gets one of the
// port's n endpoints at random.
func (b *batch) addEndpointsMap(f *family, n int) {
	m := f.endpoints(n)
	b.addSet(m, nil)
	b.addRule(f.table(), natOutputChain, exprs(f.loadKey(), []expr.Any{
		&expr.Numgen{Register: f.reg32(2), Modulus: uint32(n), Type: unix.NFT_NG_RANDOM},
		&expr.Lookup{SourceRegister: 1, DestRegister: 1, IsDestRegSet: true, SetName: m.Name},
		&expr.NAT{Type: expr.NATTypeDestNAT, Family: f.nfproto, RegAddrMin: 1, RegProtoMin: f.reg32(0), Specified: true},
	})...)
}

// endpointCounts are the endpoint counts of the ports without affinity of svcs in family f
// (of the keys only, when keys is not nil), sorted.
func endpointCounts(f *family, svcs map[string]*service, keys []string) []int {
	seen := map[int]bool{}
	visit := func(s *service) {
		for i := range s.ports {
			p := &s.ports[i]
			if ips, eps := split(f, s, p); len(ips) > 0 && len(eps) > 0 && p.affinity == 0 {
				seen[len(eps)] = true
			}
		}
	}
	if keys == nil {
		for _, s := range svcs {
			visit(s)
		}
	}
	for _, k := range keys {
		if s := svcs[k]; s != nil {
			visit(s)
		}
	}
	out := make([]int, 0, len(seen))
	for n := range seen {
		out = append(out, n)
	}
	sort.Ints(out)
	return out
}

// affinityKind begins the names of the affinity sets.
const affinityKind = "affinity"

// names are the objects of one service port with session affinity in one family.
type names struct {
	chain string   // the service port's chain
	eps   []string // one chain per endpoint
	aff   []string // one affinity set per endpoint
}

func portNames(s *service, p *port, eps []endpoint) names {
	label := p.name
	if label == "" {
		label = fmt.Sprint(p.port)
	}
	base := fmt.Sprintf("%s/%s/%s", s.key, p.protoStr, label)
	n := names{chain: objName("service", base, fmt.Sprintf("%s/%d", base, p.port))}
	for _, ep := range eps {
		epName := base + "__" + netip.AddrPortFrom(ep.addr, ep.port).String()
		id := fmt.Sprintf("%s/%d/%s", base, p.port, netip.AddrPortFrom(ep.addr, ep.port))
		n.eps = append(n.eps, objName("endpoint", epName, id))
		n.aff = append(n.aff, objName(affinityKind, epName, id))
	}
	return n
}

// objName is "<kind>-<hash of id>-<readable>", cut to fit nftables' name limit; the hash
// keeps cut names unique.
func objName(kind, readable, id string) string {
	sum := sha256.Sum256([]byte(kind + "\x00" + id))
	h := strings.ToLower(base32.StdEncoding.EncodeToString(sum[:5]))
	n := kind + "-" + h + "-" + readable
	if len(n) > 200 {
		n = n[:200]
	}
	return n
}

// split returns the cluster IPs and endpoints of p in family f.
func split(f *family, s *service, p *port) (ips []netip.Addr, eps []endpoint) {
	for _, ip := range s.ips {
		if f.has(ip) {
			ips = append(ips, ip)
		}
	}
	for _, ep := range p.eps {
		if f.has(ep.addr) {
			eps = append(eps, ep)
		}
	}
	return ips, eps
}

// endpointElems are the elements of endpoints-<len(eps)> for the port p of cluster IP ip:
// ip . proto . port . i → eps[i] (numgen writes i in host byte order).
func endpointElems(ip netip.Addr, p *port, eps []endpoint) []nftables.SetElement {
	els := make([]nftables.SetElement, len(eps))
	for i, ep := range eps {
		k := append(key(ip, p.proto, p.port), binaryutil.NativeEndian.PutUint32(uint32(i))...)
		v := append(ep.addr.AsSlice(), byte(ep.port>>8), byte(ep.port), 0, 0)
		els[i] = nftables.SetElement{Key: k, Val: v}
	}
	return els
}

// addService adds s's objects in family f (elements are queued for flushElements):
//
//	cluster-ips: ip
//	no-endpoint-services: ip . proto . port : goto reject-chain        (ports without endpoints)
//	endpoints-N: ip . proto . port . i : endpoint i's addr . port      (N endpoints, no affinity)
//	service-ips: ip . proto . port : goto service-…                    (with affinity)
//	service-… : [saddr @affinity-…i goto endpoint-…i]… ; numgen random mod N vmap {i: goto endpoint-…i}
//	endpoint-…i: update @affinity-…i { saddr } ; l4proto P dnat to ip:port
func (b *batch) addService(f *family, s *service) {
	t := f.table()
	var cips []nftables.SetElement
	for _, ip := range s.ips {
		if f.has(ip) {
			cips = append(cips, nftables.SetElement{Key: ip.AsSlice()})
		}
	}
	if len(cips) == 0 {
		return
	}
	b.addElements(f.clusterIPs(), cips)
	for i := range s.ports {
		p := &s.ports[i]
		ips, eps := split(f, s, p)
		if len(eps) == 0 {
			var els []nftables.SetElement
			for _, ip := range ips {
				els = append(els, nftables.SetElement{Key: key(ip, p.proto, p.port), VerdictData: goTo(rejectChain)})
			}
			b.addElements(f.noEndpoints(), els)
			continue
		}
		if p.affinity == 0 {
			for _, ip := range ips {
				b.addElements(f.endpoints(len(eps)), endpointElems(ip, p, eps))
			}
			continue
		}
		n := portNames(s, p, eps)
		b.addAffinity(f, t, n, p, eps, nil)
		var els []nftables.SetElement
		for _, ip := range ips {
			els = append(els, nftables.SetElement{Key: key(ip, p.proto, p.port), VerdictData: goTo(n.chain)})
		}
		b.addElements(f.serviceIPs(), els)
	}
}

// addAffinity adds to t the chains and sets that send the new connections of the port p to
// its endpoints eps with ClientIP session affinity, named by n:
//
//	affinity-…i: dynamic set of client addresses, timeout p.affinity  (one per endpoint)
//	service-… : [saddr @affinity-…i goto endpoint-…i]… ; numgen random mod N vmap {i: goto endpoint-…i}
//	endpoint-…i: update @affinity-…i { saddr } ; l4proto P dnat to ip:port
//
// The caller points its own map at n.chain. carry, by affinity set name, are client
// addresses to put back in the new sets (each element's Timeout is what it has left).
func (b *batch) addAffinity(f *family, t *nftables.Table, n names, p *port, eps []endpoint, carry map[string][]nftables.SetElement) {
	affSets := make([]*nftables.Set, len(n.aff))
	for j, name := range n.aff {
		affSets[j] = &nftables.Set{Table: t, Name: name, KeyType: f.addrType, Dynamic: true,
			HasTimeout: true, Timeout: p.affinity, Size: 65535}
		b.addSet(affSets[j], nil)
		var els []nftables.SetElement
		for _, e := range carry[name] {
			els = append(els, nftables.SetElement{Key: e.Key, Timeout: min(e.Timeout, p.affinity)})
		}
		b.addElements(affSets[j], els)
	}
	for j, ep := range eps {
		b.addChain(&nftables.Chain{Name: n.eps[j], Table: t})
		b.addRule(t, n.eps[j],
			f.loadSaddr(),
			&expr.Dynset{SrcRegKey: 1, SetName: affSets[j].Name,
				SetID: affSets[j].ID, Operation: unix.NFT_DYNSET_OP_UPDATE, Timeout: p.affinity},
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{p.proto}},
			&expr.Immediate{Register: 1, Data: ep.addr.AsSlice()},
			&expr.Immediate{Register: 2, Data: binaryutil.BigEndian.PutUint16(ep.port)},
			&expr.NAT{Type: expr.NATTypeDestNAT, Family: f.nfproto, RegAddrMin: 1, RegProtoMin: 2, Specified: true})
	}
	b.addChain(&nftables.Chain{Name: n.chain, Table: t})
	for j := range affSets {
		b.addRule(t, n.chain, f.loadSaddr(),
			&expr.Lookup{SourceRegister: 1, SetName: affSets[j].Name, SetID: affSets[j].ID},
			goTo(n.eps[j]))
	}
	if len(eps) == 1 {
		b.addRule(t, n.chain, goTo(n.eps[0]))
		return
	}
	m := &nftables.Set{Table: t, Anonymous: true, Constant: true, IsMap: true,
		KeyType: nftables.TypeInteger, DataType: nftables.TypeVerdict, KeyByteOrder: binaryutil.NativeEndian}
	els := make([]nftables.SetElement, len(eps))
	for j := range eps {
		els[j] = nftables.SetElement{Key: binaryutil.NativeEndian.PutUint32(uint32(j)), VerdictData: goTo(n.eps[j])}
	}
	b.addSet(m, els)
	b.addRule(t, n.chain,
		&expr.Numgen{Register: 1, Modulus: uint32(len(eps)), Type: unix.NFT_NG_RANDOM},
		&expr.Lookup{SourceRegister: 1, IsDestRegSet: true, SetName: m.Name, SetID: m.ID})
}

// delServiceElements queues the deletion of s's elements in family f: they go before the
// chains they point to (delServiceObjects).
func (b *batch) delServiceElements(f *family, s *service) {
	var cips []nftables.SetElement
	for _, ip := range s.ips {
		if f.has(ip) {
			cips = append(cips, nftables.SetElement{Key: ip.AsSlice()})
		}
	}
	if len(cips) == 0 {
		return
	}
	b.delElements(f.clusterIPs(), cips)
	for i := range s.ports {
		p := &s.ports[i]
		ips, eps := split(f, s, p)
		var els []nftables.SetElement
		for _, ip := range ips {
			els = append(els, nftables.SetElement{Key: key(ip, p.proto, p.port)})
		}
		switch {
		case len(eps) == 0:
			b.delElements(f.noEndpoints(), els)
		case p.affinity == 0:
			for _, ip := range ips {
				del := endpointElems(ip, p, eps)
				for j := range del {
					del[j].Val = nil
				}
				b.delElements(f.endpoints(len(eps)), del)
			}
		default:
			b.delElements(f.serviceIPs(), els)
		}
	}
}

// delServiceObjects removes the chains and sets of s's ports with affinity in family f: the
// service chain (its rules and their anonymous map go with it), the endpoint chains it
// pointed to, then the affinity sets.
func (b *batch) delServiceObjects(f *family, s *service) {
	t := f.table()
	if !slices.ContainsFunc(s.ips, f.has) {
		return
	}
	for i := range s.ports {
		p := &s.ports[i]
		_, eps := split(f, s, p)
		if len(eps) == 0 || p.affinity == 0 {
			continue
		}
		n := portNames(s, p, eps)
		b.c.DelChain(&nftables.Chain{Name: n.chain, Table: t})
		b.n++
		for _, name := range n.eps {
			b.c.DelChain(&nftables.Chain{Name: name, Table: t})
			b.n++
		}
		for _, name := range n.aff {
			b.c.DelSet(&nftables.Set{Table: t, Name: name})
			b.n++
		}
	}
}
