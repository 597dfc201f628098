package svcproxy_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/kip-dev/kip/internal/agent/svcproxy"
	"github.com/kip-dev/kip/internal/cellapi"
	"github.com/kip-dev/kip/internal/testenv"
)

// The nodePort test network, shaped like the local backend's: a "host" namespace with a
// bridge (the node address, as kip up's 10.250.0.1) and a second local address on a dummy
// link, and two "cell" namespaces plugged into the bridge, each with a default route via the
// bridge address. The rules go into the host namespace.
const (
	npBridge   = "br0"
	npBridgeIP = "10.77.0.1"
	npOtherIP  = "192.0.2.1" // another address of the host: local, but not the bridge's
	npCell1    = "10.77.0.11"
	npCell2    = "10.77.0.12"
	npCell3    = "10.77.0.13" // a client only
	npBridge6  = "fd77::1"
	npCell16   = "fd77::11"
)

type npEnv struct {
	t          *testing.T
	host       netns.NsHandle
	c1, c2, c3 netns.NsHandle
	np         *svcproxy.NodePorts
}

// newNPEnv builds the network and a NodePorts named after the bridge that answers on addrs
// (none: every local address).
func newNPEnv(t *testing.T, addrs ...string) *npEnv {
	t.Helper()
	testenv.RequireNetns(t)
	e := &npEnv{t: t, host: newNS(t), c1: newNS(t), c2: newNS(t), c3: newNS(t)}
	h, err := netlink.NewHandleAt(e.host)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	must := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	addAddr := func(h *netlink.Handle, l netlink.Link, cidr string) {
		t.Helper()
		a, err := netlink.ParseAddr(cidr)
		must("parsing "+cidr, err)
		a.Flags = syscall.IFA_F_NODAD
		must("adding "+cidr, h.AddrAdd(l, a))
	}
	up := func(h *netlink.Handle, name string) netlink.Link {
		t.Helper()
		l, err := h.LinkByName(name)
		must("finding "+name, err)
		must(name+" up", h.LinkSetUp(l))
		return l
	}
	lo := up(h, "lo")
	must("adding the bridge", h.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: npBridge}}))
	br := up(h, npBridge)
	addAddr(h, br, npBridgeIP+"/24")
	addAddr(h, br, npBridge6+"/64")
	addAddr(h, lo, npOtherIP+"/32")
	for i, c := range []struct {
		ns    netns.NsHandle
		addrs []string
	}{{e.c1, []string{npCell1 + "/24", npCell16 + "/64"}}, {e.c2, []string{npCell2 + "/24"}}, {e.c3, []string{npCell3 + "/24"}}} {
		veth := fmt.Sprintf("v%d", i+1)
		must("adding "+veth, h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: veth, MasterIndex: br.Attrs().Index},
			PeerName: "eth0", PeerNamespace: netlink.NsFd(c.ns)}))
		up(h, veth)
		hc, err := netlink.NewHandleAt(c.ns)
		must("opening the cell's netlink", err)
		up(hc, "lo")
		eth0 := up(hc, "eth0")
		for _, a := range c.addrs {
			addAddr(hc, eth0, a)
		}
		must("default route", hc.RouteAdd(&netlink.Route{LinkIndex: eth0.Attrs().Index, Gw: net.ParseIP(npBridgeIP)}))
		if len(c.addrs) > 1 {
			must("default route v6", hc.RouteAdd(&netlink.Route{LinkIndex: eth0.Attrs().Index, Gw: net.ParseIP(npBridge6)}))
		}
		hc.Close()
	}
	var as []netip.Addr
	for _, a := range addrs {
		as = append(as, netip.MustParseAddr(a))
	}
	e.np, err = svcproxy.NewNodePorts(npBridge, as, svcproxy.InNetns(int(e.host)))
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// forwarding sets IPv4 forwarding on the host's bridge (packets that arrive on the bridge
// may be forwarded), as the local backend's EnableNodePortForwarding does.
func (e *npEnv) forwarding(on bool) {
	e.t.Helper()
	v := "0"
	if on {
		v = "1"
	}
	if _, err := in(e.host, func() (struct{}, error) {
		return struct{}{}, os.WriteFile("/proc/sys/net/ipv4/conf/"+npBridge+"/forwarding", []byte(v), 0o644)
	}); err != nil {
		e.t.Fatalf("setting forwarding on %s: %v", npBridge, err)
	}
}

// serve starts TCP and UDP servers on addr in ns that answer "<network> <addr> from <client
// address>" until the test ends: the client address shows whether the flow was masqueraded.
func (e *npEnv) serve(ns netns.NsHandle, addr string) {
	e.t.Helper()
	ln, err := in(ns, func() (net.Listener, error) { return net.Listen("tcp", addr) })
	if err != nil {
		e.t.Fatalf("listening on tcp %s: %v", addr, err)
	}
	pc, err := in(ns, func() (net.PacketConn, error) { return net.ListenPacket("udp", addr) })
	if err != nil {
		e.t.Fatalf("listening on udp %s: %v", addr, err)
	}
	e.t.Cleanup(func() { ln.Close(); pc.Close() })
	host := func(a net.Addr) string {
		h, _, _ := net.SplitHostPort(a.String())
		return h
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_, _ = io.WriteString(c, "tcp "+addr+" from "+host(c.RemoteAddr()))
			c.Close()
		}
	}()
	go func() {
		buf := make([]byte, 64)
		for {
			_, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = pc.WriteTo([]byte("udp "+addr+" from "+host(from)), from)
		}
	}()
}

func (e *npEnv) replace(svcs ...cellapi.Service) {
	e.t.Helper()
	if err := e.np.Replace(context.Background(), svcs); err != nil {
		e.t.Fatalf("Replace: %v", err)
	}
}

// call is callIn that fails the test on an error.
func (e *npEnv) call(ns netns.NsHandle, from, network, addr string) string {
	e.t.Helper()
	got, err := callIn(ns, network, addr)
	if err != nil {
		e.t.Fatalf("%s %s from the %s: %v", network, addr, from, err)
	}
	return got
}

// spread makes n calls from ns and counts the answers.
func (e *npEnv) spread(ns netns.NsHandle, from, network, addr string, n int) map[string]int {
	e.t.Helper()
	seen := map[string]int{}
	for range n {
		seen[e.call(ns, from, network, addr)]++
	}
	return seen
}

// refused checks that a call from ns fails at once with "connection refused" (a reject or
// no listener; a drop would wait out the 2 s deadline). A datagram the host sends to itself
// and rejects in its own OUTPUT hook fails with EPERM instead.
func (e *npEnv) refused(ns netns.NsHandle, from, network, addr string) {
	e.t.Helper()
	start := time.Now()
	got, err := callIn(ns, network, addr)
	took := time.Since(start)
	if err == nil {
		e.t.Fatalf("%s %s from the %s: answered %q, want connection refused", network, addr, from, got)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) && !(network == "udp" && errors.Is(err, syscall.EPERM)) {
		e.t.Fatalf("%s %s from the %s: %v, want connection refused", network, addr, from, err)
	}
	if took > time.Second {
		e.t.Errorf("%s %s from the %s: refused after %v; a reject answers at once", network, addr, from, took)
	}
}

// nft returns `nft list table FAMILY <table>` in the host namespace ("" without nft).
func (e *npEnv) nft(family string) string {
	if _, err := exec.LookPath("nft"); err != nil {
		return ""
	}
	out, err := in(e.host, func() ([]byte, error) {
		return exec.Command("nft", "list", "table", family, e.np.Table()).CombinedOutput()
	})
	if err != nil {
		return fmt.Sprintf("nft: %v: %s", err, out)
	}
	return string(out)
}

// tables lists the host namespace's nftables tables as "family name".
func (e *npEnv) tables() []string {
	e.t.Helper()
	c, err := nftables.New(nftables.WithNetNSFd(int(e.host)))
	if err != nil {
		e.t.Fatal(err)
	}
	ts, err := c.ListTables()
	if err != nil {
		e.t.Fatal(err)
	}
	var out []string
	for _, t := range ts {
		out = append(out, fmt.Sprintf("%d %s", t.Family, t.Name))
	}
	return out
}

func withNodePort(p cellapi.ServicePort, nodePort int32) cellapi.ServicePort {
	p.NodePort = nodePort
	return p
}

// webService is TCP 80 (nodePort 30080) and UDP 53 (nodePort 30053) with the given endpoints
// (port 8080 for TCP, 5353 for UDP).
func webService(eps ...string) cellapi.Service {
	return svc("ns", "web", []string{"10.96.0.10", "fd96::10"},
		withNodePort(tcpPort("http", 80, 8080, eps...), 30080),
		withNodePort(svcPort("dns", "UDP", 53, 5353, eps...), 30053))
}

func (e *npEnv) serveCells() {
	for _, c := range []struct {
		ns  netns.NsHandle
		ips []string
	}{{e.c1, []string{npCell1, npCell16}}, {e.c2, []string{npCell2}}} {
		for _, ip := range c.ips {
			e.serve(c.ns, net.JoinHostPort(ip, "8080"))
			e.serve(c.ns, net.JoinHostPort(ip, "5353"))
		}
	}
}

// TestNodePortsReachEndpoints: the bridge address's nodePorts reach the endpoints, spread
// over both, from the host itself and from a third cell,
// TCP and UDP, IPv4 and (from the host) IPv6; every flow is masqueraded to the bridge
// address. Another local address is not a node address here.
func TestNodePortsReachEndpoints(t *testing.T) {
	e := newNPEnv(t, npBridgeIP, npBridge6)
	e.serveCells()
	e.forwarding(true)
	e.replace(webService(npCell1, npCell2, npCell16))
	t.Logf("nft list table ip %s:\n%s", e.np.Table(), e.nft("ip"))

	both := map[string]bool{
		"tcp " + npCell1 + ":8080 from " + npBridgeIP: true,
		"tcp " + npCell2 + ":8080 from " + npBridgeIP: true,
	}
	for _, c := range []struct {
		from string
		ns   netns.NsHandle
	}{{"host", e.host}, {"cell 3", e.c3}} {
		seen := e.spread(c.ns, c.from, "tcp", npBridgeIP+":30080", 40)
		for k := range seen {
			if !both[k] {
				t.Errorf("tcp %s:30080 from the %s answered %q; want one of the two endpoints, from %s", npBridgeIP, c.from, k, npBridgeIP)
			}
		}
		if len(seen) != 2 {
			t.Errorf("40 calls from the %s reached %d endpoints (%s), want 2", c.from, len(seen), keys(seen))
		}
		udp := e.spread(c.ns, c.from, "udp", npBridgeIP+":30053", 20)
		for k := range udp {
			if !strings.HasPrefix(k, "udp ") || !strings.HasSuffix(k, ":5353 from "+npBridgeIP) {
				t.Errorf("udp %s:30053 from the %s answered %q", npBridgeIP, c.from, k)
			}
		}
	}
	want6 := "tcp [" + npCell16 + "]:8080 from " + npBridge6
	if got := e.call(e.host, "host", "tcp", "["+npBridge6+"]:30080"); got != want6 {
		t.Errorf("tcp [%s]:30080 from the host = %q, want %q", npBridge6, got, want6)
	}
	// Not a node address: nothing listens on the host, so the kernel refuses.
	e.refused(e.host, "host", "tcp", npOtherIP+":30080")
	e.refused(e.host, "host", "tcp", "127.0.0.1:30080")
}

// TestNodePortsCellNeedsForwarding: a cell's connection to the bridge address's nodePort,
// DNATed to another cell, must be forwarded by the host back out of the bridge: without
// forwarding on the bridge it fails, with it (and only on the bridge) it works.
func TestNodePortsCellNeedsForwarding(t *testing.T) {
	e := newNPEnv(t, npBridgeIP)
	e.serveCells()
	e.forwarding(false)
	e.replace(webService(npCell1))
	if got, err := callIn(e.c2, "tcp", npBridgeIP+":30080"); err == nil {
		t.Fatalf("without forwarding, tcp %s:30080 from cell 2 answered %q", npBridgeIP, got)
	} else {
		t.Logf("without forwarding on %s: %v", npBridge, err)
	}
	// The host's own connections are not forwarded and work either way.
	if got := e.call(e.host, "host", "tcp", npBridgeIP+":30080"); got != "tcp "+npCell1+":8080 from "+npBridgeIP {
		t.Errorf("without forwarding, from the host: %q", got)
	}
	e.forwarding(true)
	if got := e.call(e.c2, "cell 2", "tcp", npBridgeIP+":30080"); got != "tcp "+npCell1+":8080 from "+npBridgeIP {
		t.Errorf("with forwarding, from cell 2: %q", got)
	}
}

// TestNodePortsNoEndpointsRejects: a nodePort without endpoints is refused at once, TCP and
// UDP, from the host and from a cell.
func TestNodePortsNoEndpointsRejects(t *testing.T) {
	e := newNPEnv(t, npBridgeIP)
	e.forwarding(true)
	e.replace(webService())
	// A listener on the host on the nodePort itself: without the reject it would answer.
	e.serve(e.host, ":30080")
	e.serve(e.host, ":30053")
	for _, network := range []string{"tcp", "udp"} {
		port := map[string]string{"tcp": "30080", "udp": "30053"}[network]
		e.refused(e.host, "host", network, npBridgeIP+":"+port)
		e.refused(e.c2, "cell 2", network, npBridgeIP+":"+port)
	}
	// Another address than the node's is none of the table's business.
	if got := e.call(e.host, "host", "tcp", npOtherIP+":30080"); !strings.HasPrefix(got, "tcp :30080 from") {
		t.Errorf("tcp %s:30080 from the host = %q, want the host's own listener", npOtherIP, got)
	}
}

// TestNodePortsReplaceAndDelete: a full replacement moves a nodePort to other endpoints and
// drops one that is gone; an invalid table changes nothing; two tables (two bridges' kips)
// coexist, and Delete removes only its own.
func TestNodePortsReplaceAndDelete(t *testing.T) {
	e := newNPEnv(t, npBridgeIP)
	e.serveCells()
	e.forwarding(true)
	e.replace(webService(npCell1))
	want1 := "tcp " + npCell1 + ":8080 from " + npBridgeIP
	if got := e.call(e.c2, "cell 2", "tcp", npBridgeIP+":30080"); got != want1 {
		t.Fatalf("before replacing: %q, want %q", got, want1)
	}

	other, err := svcproxy.NewNodePorts("other0", []netip.Addr{netip.MustParseAddr(npBridgeIP)}, svcproxy.InNetns(int(e.host)))
	if err != nil {
		t.Fatal(err)
	}
	if err := other.Replace(context.Background(), []cellapi.Service{
		svc("ns", "db", []string{"10.96.0.20"}, withNodePort(tcpPort("", 5432, 8080, npCell1), 30432)),
	}); err != nil {
		t.Fatalf("Replace of a second table: %v", err)
	}

	moved := webService(npCell2)
	moved.Ports = moved.Ports[:1]
	moved.Ports[0].NodePort = 30081
	e.replace(moved)
	want2 := "tcp " + npCell2 + ":8080 from " + npBridgeIP
	if got := e.call(e.host, "host", "tcp", npBridgeIP+":30081"); got != want2 {
		t.Errorf("after replacing, tcp :30081 = %q, want %q", got, want2)
	}
	e.refused(e.host, "host", "tcp", npBridgeIP+":30080")
	if got, err := callIn(e.host, "udp", npBridgeIP+":30053"); err == nil {
		t.Errorf("after replacing, udp :30053 (gone) answered %q", got)
	}

	bad := webService(npCell1)
	bad.Ports[0].NodePort = 70000
	if err := e.np.Replace(context.Background(), []cellapi.Service{bad}); !cellapi.IsInvalid(err) {
		t.Fatalf("Replace with nodePort 70000 = %v, want Invalid", err)
	}
	if got := e.call(e.host, "host", "tcp", npBridgeIP+":30081"); got != want2 {
		t.Errorf("after an invalid table, tcp :30081 = %q, want %q", got, want2)
	}

	if err := e.np.Delete(); err != nil {
		t.Fatal(err)
	}
	for _, tb := range e.tables() {
		if strings.HasSuffix(tb, " "+e.np.Table()) {
			t.Errorf("after Delete, table %q is still there", tb)
		}
	}
	e.refused(e.host, "host", "tcp", npBridgeIP+":30081")
	if got := e.call(e.c2, "cell 2", "tcp", npBridgeIP+":30432"); got != want1 {
		t.Errorf("the other table's nodePort after Delete = %q, want %q", got, want1)
	}
	if err := e.np.Delete(); err != nil {
		t.Errorf("a second Delete: %v", err)
	}
	if err := other.Delete(); err != nil {
		t.Fatal(err)
	}
	if ts := e.tables(); len(ts) != 0 {
		t.Errorf("tables left: %v", ts)
	}
}

// TestNodePortsEveryLocalAddress: without addresses, every local address of the host
// answers (the bridge's and another), but not loopback.
func TestNodePortsEveryLocalAddress(t *testing.T) {
	e := newNPEnv(t)
	e.serveCells()
	e.forwarding(true)
	e.replace(webService(npCell1))
	t.Logf("nft list table ip %s:\n%s", e.np.Table(), e.nft("ip"))
	want := "tcp " + npCell1 + ":8080 from " + npBridgeIP
	for _, c := range []struct {
		from string
		ns   netns.NsHandle
		addr string
	}{
		{"host", e.host, npBridgeIP},
		{"host", e.host, npOtherIP},
		{"cell 2", e.c2, npBridgeIP},
		{"cell 2", e.c2, npOtherIP},
	} {
		if got := e.call(c.ns, c.from, "tcp", c.addr+":30080"); got != want {
			t.Errorf("tcp %s:30080 from the %s = %q, want %q", c.addr, c.from, got, want)
		}
	}
	e.refused(e.host, "host", "tcp", "127.0.0.1:30080")
}

// TestNodePortsHairpin: a cell that calls a nodePort whose endpoint is itself. The host
// DNATs it back to the cell; with br_netfilter the frame is then bridged straight back out
// of the port it came in on, which a bridge port does only in hairpin mode.
func TestNodePortsHairpin(t *testing.T) {
	e := newNPEnv(t, npBridgeIP)
	e.serveCells()
	e.forwarding(true)
	e.replace(webService(npCell1))
	want := "tcp " + npCell1 + ":8080 from " + npBridgeIP
	got, err := callIn(e.c1, "tcp", npBridgeIP+":30080")
	t.Logf("without hairpin mode on v1: %q, %v", got, err)
	h, err := netlink.NewHandleAt(e.host)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	v1, err := h.LinkByName("v1")
	if err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetHairpin(v1, true); err != nil {
		t.Fatalf("hairpin mode on v1: %v", err)
	}
	if got := e.call(e.c1, "cell 1", "tcp", npBridgeIP+":30080"); got != want {
		t.Errorf("with hairpin mode, from cell 1 = %q, want %q", got, want)
	}
}

// TestNodePortsSessionAffinity: a nodePort of a Service with ClientIP affinity sends every
// call of a client to one endpoint, from a cell and from the host, TCP and UDP; the
// affinity survives replacements of the table that keep the port and its endpoint, and a
// nodePort without affinity on the same endpoints still spreads.
func TestNodePortsSessionAffinity(t *testing.T) {
	e := newNPEnv(t, npBridgeIP)
	e.serveCells()
	e.forwarding(true)
	sticky := webService(npCell1, npCell2)
	sticky.AffinitySeconds = 600
	spread := svc("ns", "spread", []string{"10.96.0.11"}, withNodePort(tcpPort("", 80, 8080, npCell1, npCell2), 30090))
	e.replace(sticky, spread)
	t.Logf("nft list table ip %s:\n%s", e.np.Table(), e.nft("ip"))
	for _, c := range []struct {
		from string
		ns   netns.NsHandle
	}{{"cell 3", e.c3}, {"host", e.host}} {
		for _, call := range []struct{ network, port string }{{"tcp", "30080"}, {"udp", "30053"}} {
			if seen := e.spread(c.ns, c.from, call.network, npBridgeIP+":"+call.port, 20); len(seen) != 1 {
				t.Errorf("%s :%s with affinity from the %s: 20 calls reached %s; want one endpoint", call.network, call.port, c.from, keys(seen))
			}
		}
	}
	if seen := e.spread(e.c3, "cell 3", "tcp", npBridgeIP+":30090", 30); len(seen) != 2 {
		t.Errorf("tcp :30090 without affinity from cell 3: 30 calls reached %s; want both endpoints", keys(seen))
	}

	// Each replacement changes another Service; were the affinity lost, each next call would
	// pick an endpoint at random (12 agreeing by chance: 1 in 2048).
	first := e.call(e.c3, "cell 3", "tcp", npBridgeIP+":30080")
	for i := range 12 {
		spread.Ports[0].NodePort = int32(30100 + i)
		e.replace(sticky, spread)
		if got := e.call(e.c3, "cell 3", "tcp", npBridgeIP+":30080"); got != first {
			t.Fatalf("after replacement %d, tcp :30080 from cell 3 = %q, want %q as before", i+1, got, first)
		}
	}
	// An endpoint added keeps the clients of the others on theirs.
	more := webService(npCell1, npCell2, npCell16)
	more.AffinitySeconds = 600
	e.replace(more, spread)
	if got := e.call(e.c3, "cell 3", "tcp", npBridgeIP+":30080"); got != first {
		t.Errorf("after an endpoint was added, tcp :30080 from cell 3 = %q, want %q as before", got, first)
	}
	// Affinity turned off spreads again.
	e.replace(webService(npCell1, npCell2), spread)
	if seen := e.spread(e.c3, "cell 3", "tcp", npBridgeIP+":30080", 30); len(seen) != 2 {
		t.Errorf("with affinity turned off: 30 calls reached %s; want both endpoints", keys(seen))
	}
}

// TestNodePortsAffinityTimeout: a client's affinity to a nodePort's endpoint ends when it
// has not connected for timeoutSeconds; its next call is spread again.
func TestNodePortsAffinityTimeout(t *testing.T) {
	e := newNPEnv(t, npBridgeIP)
	e.serveCells()
	e.forwarding(true)
	s := webService(npCell1, npCell2)
	s.AffinitySeconds = 1
	e.replace(s)
	// Back to back, the calls stick.
	if seen := e.spread(e.c3, "cell 3", "tcp", npBridgeIP+":30080", 20); len(seen) != 1 {
		t.Errorf("calls back to back reached %s; want one endpoint", keys(seen))
	}
	// Each call after the timeout picks anew: 12 picks all alike by chance is 1 in 2048.
	seen := map[string]int{}
	for range 12 {
		time.Sleep(1100 * time.Millisecond)
		seen[e.call(e.c3, "cell 3", "tcp", npBridgeIP+":30080")]++
	}
	if len(seen) != 2 {
		t.Errorf("calls more than the 1 s timeout apart reached %s; want both endpoints", keys(seen))
	}
}
