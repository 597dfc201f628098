package svcproxy_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/kip-dev/kip/internal/agent/svcproxy"
	"github.com/kip-dev/kip/internal/cellapi"
	"github.com/kip-dev/kip/internal/testenv"
)

// The test network: a "pod" namespace (where the rules go and the clients run) joined by a
// veth pair to a "peer" namespace that owns the endpoint addresses, so DNATed traffic really
// leaves the pod's namespace. The pod's own address also serves, for hairpin.
const (
	podIP   = "10.10.0.2"
	peerIP  = "10.10.0.1"
	podIP6  = "fd00:10::2"
	peerIP6 = "fd00:10::1"
)

var epIPs = []string{"10.10.0.11", "10.10.0.12", "10.10.0.13", "10.10.0.14"}

// env is one pod namespace, its peer, and a Programmer for the pod namespace.
type env struct {
	t    *testing.T
	pod  netns.NsHandle
	peer netns.NsHandle
	p    *svcproxy.Programmer
}

func newEnv(t *testing.T) *env {
	t.Helper()
	testenv.RequireNetns(t)
	e := &env{t: t}
	e.pod = newNS(t)
	e.peer = newNS(t)
	e.setupLinks()
	e.p = svcproxy.New(svcproxy.InNetns(int(e.pod)))
	return e
}

// newNS makes an unnamed network namespace, closed (and so gone) when t ends.
func newNS(t testing.TB) netns.NsHandle {
	t.Helper()
	type res struct {
		ns  netns.NsHandle
		err error
	}
	c := make(chan res, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends in the new namespace and is discarded
		ns, err := netns.New()
		c <- res{ns, err}
	}()
	r := <-c
	if r.err != nil {
		t.Fatalf("creating a network namespace: %v", r.err)
	}
	t.Cleanup(func() { r.ns.Close() })
	return r.ns
}

func (e *env) setupLinks() {
	t := e.t
	hp, err := netlink.NewHandleAt(e.pod)
	if err != nil {
		t.Fatal(err)
	}
	defer hp.Close()
	hq, err := netlink.NewHandleAt(e.peer)
	if err != nil {
		t.Fatal(err)
	}
	defer hq.Close()
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "peer0", PeerNamespace: netlink.NsFd(e.peer)}
	if err := hp.LinkAdd(veth); err != nil {
		t.Fatalf("adding veth: %v", err)
	}
	must := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	addr := func(h *netlink.Handle, l netlink.Link, cidr string) {
		a, err := netlink.ParseAddr(cidr)
		must("parsing "+cidr, err)
		a.Flags = syscall.IFA_F_NODAD
		must("adding "+cidr, h.AddrAdd(l, a))
	}
	for _, side := range []struct {
		h     *netlink.Handle
		name  string
		addrs []string
		gw4   string
		gw6   string
	}{
		{hp, "eth0", []string{podIP + "/24", podIP6 + "/64"}, peerIP, peerIP6},
		{hq, "peer0", append([]string{peerIP + "/24", peerIP6 + "/64"}, suffix(epIPs, "/32")...), "", ""},
	} {
		l, err := side.h.LinkByName(side.name)
		must("finding "+side.name, err)
		lo, err := side.h.LinkByName("lo")
		must("finding lo", err)
		must("lo up", side.h.LinkSetUp(lo))
		for _, a := range side.addrs {
			addr(side.h, l, a)
		}
		must(side.name+" up", side.h.LinkSetUp(l))
		if side.gw4 != "" {
			must("default route", side.h.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Gw: net.ParseIP(side.gw4)}))
			must("default route v6", side.h.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Gw: net.ParseIP(side.gw6)}))
		}
	}
}

func suffix(ss []string, s string) []string {
	out := make([]string, len(ss))
	for i, x := range ss {
		out[i] = x + s
	}
	return out
}

// in runs f on a thread in ns; sockets f makes stay in ns.
func in[T any](ns netns.NsHandle, f func() (T, error)) (T, error) {
	type res struct {
		v   T
		err error
	}
	c := make(chan res, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread is discarded, not returned
		if err := netns.Set(ns); err != nil {
			var zero T
			c <- res{zero, err}
			return
		}
		v, err := f()
		c <- res{v, err}
	}()
	r := <-c
	return r.v, r.err
}

// serve starts a TCP and a UDP server on addr in ns that answer every connection or
// datagram with their own address, until the test ends.
func (e *env) serve(ns netns.NsHandle, addr string) {
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
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_, _ = io.WriteString(c, "tcp "+addr)
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
			_, _ = pc.WriteTo([]byte("udp "+addr), from)
		}
	}()
}

// servePeer serves on each endpoint address of the peer at port.
func (e *env) servePeer(port int, ips ...string) {
	for _, ip := range ips {
		e.serve(e.peer, net.JoinHostPort(ip, fmt.Sprint(port)))
	}
}

// call connects from the pod namespace to addr over network ("tcp" or "udp") and returns
// the answering server's "<network> <address>".
func (e *env) call(network, addr string) (string, error) {
	return e.callFrom(e.pod, network, addr)
}

// callFrom is call from the namespace ns.
func (e *env) callFrom(ns netns.NsHandle, network, addr string) (string, error) {
	return in(ns, func() (string, error) {
		c, err := net.DialTimeout(network, addr, 2*time.Second)
		if err != nil {
			return "", err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(2 * time.Second))
		if network == "udp" {
			if _, err := c.Write([]byte("hi")); err != nil {
				return "", err
			}
		}
		buf := make([]byte, 64)
		n, err := c.Read(buf)
		if err != nil && !(errors.Is(err, io.EOF) && n > 0) {
			return "", err
		}
		return string(buf[:n]), nil
	})
}

// mustCall is call that fails the test on an error.
func (e *env) mustCall(network, addr string) string {
	e.t.Helper()
	got, err := e.call(network, addr)
	if err != nil {
		e.t.Fatalf("%s %s from the pod: %v", network, addr, err)
	}
	return got
}

// spread makes n calls and counts the answers by server.
func (e *env) spread(network, addr string, n int) map[string]int {
	e.t.Helper()
	seen := map[string]int{}
	for range n {
		seen[e.mustCall(network, addr)]++
	}
	return seen
}

func (e *env) replace(svcs ...cellapi.Service) {
	e.t.Helper()
	if err := e.p.Replace(context.Background(), svcs); err != nil {
		e.t.Fatalf("Replace: %v", err)
	}
}

// nft returns `nft list table FAMILY kip-services` in the pod namespace ("" without nft).
func (e *env) nft(family string) string {
	if _, err := exec.LookPath("nft"); err != nil {
		return ""
	}
	out, err := in(e.pod, func() ([]byte, error) {
		return exec.Command("nft", "list", "table", family, svcproxy.TableName).CombinedOutput()
	})
	if err != nil {
		return fmt.Sprintf("nft: %v: %s", err, out)
	}
	return string(out)
}

func svc(ns, name string, ips []string, ports ...cellapi.ServicePort) cellapi.Service {
	return cellapi.Service{Namespace: ns, Name: name, ClusterIPs: ips, Ports: ports}
}

func tcpPort(name string, port int32, target int32, ips ...string) cellapi.ServicePort {
	return svcPort(name, "TCP", port, target, ips...)
}

func svcPort(name, proto string, port, target int32, ips ...string) cellapi.ServicePort {
	p := cellapi.ServicePort{Name: name, Protocol: corev1.Protocol(proto), Port: port}
	for _, ip := range ips {
		p.Endpoints = append(p.Endpoints, cellapi.Endpoint{IP: ip, Port: target})
	}
	return p
}

// refused checks that a call fails at once: a reject, not a drop (a dropped SYN or datagram
// would wait out the 2 s deadline). TCP sees the reset as "connection refused". A datagram
// the pod sends is rejected in its own OUTPUT hook, which Linux reports to the sender as
// EPERM from the send itself (the ICMP port unreachable then also arrives, as ECONNREFUSED).
func (e *env) refused(network, addr string) {
	e.t.Helper()
	start := time.Now()
	got, err := e.call(network, addr)
	took := time.Since(start)
	if err == nil {
		e.t.Fatalf("%s %s: answered by %q, want connection refused", network, addr, got)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) && !(network == "udp" && errors.Is(err, syscall.EPERM)) {
		e.t.Fatalf("%s %s: %v, want connection refused", network, addr, err)
	}
	if took > time.Second {
		e.t.Errorf("%s %s: refused after %v; a reject answers at once (a timeout means it was dropped)", network, addr, took)
	}
}

func keys(m map[string]int) string {
	var ks []string
	for k, n := range m {
		ks = append(ks, fmt.Sprintf("%s×%d", k, n))
	}
	return strings.Join(ks, ", ")
}
