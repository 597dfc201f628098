package svcproxy_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/google/nftables"

	"github.com/kip-dev/kip/internal/agent/svcproxy"
	"github.com/kip-dev/kip/internal/cellapi"
)

// TestClusterIPReachesEndpoints: each port of a multi-port Service (named TCP and UDP ports
// with their own target ports) reaches only its own endpoints and spreads over all of them.
func TestClusterIPReachesEndpoints(t *testing.T) {
	e := newEnv(t)
	e.servePeer(8080, epIPs[:3]...)
	e.servePeer(5353, epIPs[2:]...)
	e.replace(svc("default", "web", []string{"10.96.0.10"},
		tcpPort("http", 80, 8080, epIPs[:3]...),
		svcPort("dns", "UDP", 53, 5353, epIPs[2:]...),
		svcPort("dns-tcp", "TCP", 53, 5353, epIPs[3]),
	))
	t.Logf("nft list table ip %s:\n%s", svcproxy.TableName, e.nft("ip"))

	for _, c := range []struct {
		network, addr string
		want          []string
	}{
		{"tcp", "10.96.0.10:80", []string{"tcp 10.10.0.11:8080", "tcp 10.10.0.12:8080", "tcp 10.10.0.13:8080"}},
		{"udp", "10.96.0.10:53", []string{"udp 10.10.0.13:5353", "udp 10.10.0.14:5353"}},
		{"tcp", "10.96.0.10:53", []string{"tcp 10.10.0.14:5353"}},
	} {
		seen := e.spread(c.network, c.addr, 40)
		for ans := range seen {
			if !contains(c.want, ans) {
				t.Errorf("%s %s answered by %q, want only %v", c.network, c.addr, ans, c.want)
			}
		}
		// 40 random picks among n endpoints all missing one: n·((n-1)/n)^40 < 1e-4 for n ≤ 3.
		if len(seen) != len(c.want) {
			t.Errorf("%s %s: 40 calls reached %s; want all of %v", c.network, c.addr, keys(seen), c.want)
		}
	}
}

// TestSessionAffinitySticks: with ClientIP affinity every call from the pod goes to the same
// endpoint; another Service without affinity on the same endpoints still spreads.
func TestSessionAffinitySticks(t *testing.T) {
	e := newEnv(t)
	e.servePeer(8080, epIPs[:3]...)
	sticky := svc("default", "sticky", []string{"10.96.0.20"}, tcpPort("", 80, 8080, epIPs[:3]...))
	sticky.AffinitySeconds = 600
	e.replace(sticky, svc("default", "loose", []string{"10.96.0.21"}, tcpPort("", 80, 8080, epIPs[:3]...)))
	t.Logf("nft list table ip %s:\n%s", svcproxy.TableName, e.nft("ip"))
	if seen := e.spread("tcp", "10.96.0.20:80", 30); len(seen) != 1 {
		t.Errorf("with affinity, 30 calls reached %s; want one endpoint", keys(seen))
	}
	if seen := e.spread("tcp", "10.96.0.21:80", 30); len(seen) < 2 {
		t.Errorf("without affinity, 30 calls reached only %s", keys(seen))
	}
}

// TestNoEndpointsRejects: a port without endpoints, and a port the Service does not have,
// refuse at once (TCP RST, ICMP port unreachable for UDP) rather than time out.
func TestNoEndpointsRejects(t *testing.T) {
	e := newEnv(t)
	e.servePeer(8080, epIPs[0])
	e.replace(svc("default", "empty", []string{"10.96.0.30"},
		tcpPort("http", 80, 8080), svcPort("dns", "UDP", 53, 53), tcpPort("ok", 81, 8080, epIPs[0])))
	e.refused("tcp", "10.96.0.30:80")
	e.refused("udp", "10.96.0.30:53")
	e.refused("tcp", "10.96.0.30:9999") // not a port of the Service
	if got := e.mustCall("tcp", "10.96.0.30:81"); got != "tcp 10.10.0.11:8080" {
		t.Errorf("port with an endpoint answered %q", got)
	}
}

// TestHairpin: the pod reaches itself through its own Service.
func TestHairpin(t *testing.T) {
	e := newEnv(t)
	e.serve(e.pod, podIP+":8080")
	e.replace(svc("default", "self", []string{"10.96.0.40"}, tcpPort("", 80, 8080, podIP), svcPort("", "UDP", 80, 8080, podIP)))
	if got := e.mustCall("tcp", "10.96.0.40:80"); got != "tcp "+podIP+":8080" {
		t.Errorf("hairpin tcp answered %q", got)
	}
	if got := e.mustCall("udp", "10.96.0.40:80"); got != "udp "+podIP+":8080" {
		t.Errorf("hairpin udp answered %q", got)
	}
}

// TestIPv6ClusterIP: a dual-stack Service programs both tables, each with its own family's
// endpoints.
func TestIPv6ClusterIP(t *testing.T) {
	e := newEnv(t)
	e.serve(e.peer, "[fd00:10::1]:8080")
	e.servePeer(8080, epIPs[0])
	e.replace(svc("default", "dual", []string{"10.96.0.50", "fd00:96::50"}, tcpPort("", 80, 8080, epIPs[0], peerIP6)))
	if got := e.mustCall("tcp", "[fd00:96::50]:80"); got != "tcp [fd00:10::1]:8080" {
		t.Errorf("IPv6 cluster IP answered %q", got)
	}
	if got := e.mustCall("tcp", "10.96.0.50:80"); got != "tcp 10.10.0.11:8080" {
		t.Errorf("IPv4 cluster IP answered %q", got)
	}
	t.Logf("nft list table ip6 %s:\n%s", svcproxy.TableName, e.nft("ip6"))
}

// TestUpdate: a delta moves traffic to new endpoints, adds a Service, and deletes one (its
// chains go and its cluster IP is no longer translated); others keep working.
func TestUpdate(t *testing.T) {
	e := newEnv(t)
	e.servePeer(8080, epIPs...)
	ctx := context.Background()
	a := svc("default", "a", []string{"10.96.0.60"}, tcpPort("", 80, 8080, epIPs[0]))
	b := svc("default", "b", []string{"10.96.0.61"}, tcpPort("", 80, 8080, epIPs[1]))
	e.replace(a, b)
	if got := e.mustCall("tcp", "10.96.0.60:80"); got != "tcp 10.10.0.11:8080" {
		t.Fatalf("before the delta: %q", got)
	}
	a.Ports[0] = tcpPort("", 80, 8080, epIPs[2], epIPs[3])
	c := svc("other", "c", []string{"10.96.0.62"}, tcpPort("", 80, 8080, epIPs[0]))
	if err := e.p.Update(ctx, []cellapi.Service{a, c}, []string{"default/b"}); err != nil {
		t.Fatalf("Update: %v", err)
	}
	seen := e.spread("tcp", "10.96.0.60:80", 30)
	if len(seen) != 2 || seen["tcp 10.10.0.13:8080"] == 0 || seen["tcp 10.10.0.14:8080"] == 0 {
		t.Errorf("after moving a's endpoints, calls reached %s", keys(seen))
	}
	if got := e.mustCall("tcp", "10.96.0.62:80"); got != "tcp 10.10.0.11:8080" {
		t.Errorf("added service answered %q", got)
	}
	if got, err := e.call("tcp", "10.96.0.61:80"); err == nil {
		t.Errorf("deleted service b still answered %q", got)
	}
	if n := e.chainsNaming("default/b/"); n != 0 {
		t.Errorf("%d chains of deleted service default/b are left", n)
	}
	if n := e.p.Len(); n != 2 {
		t.Errorf("Len = %d, want 2", n)
	}
	// An endpoint list emptied by a delta rejects; refilled, it answers again.
	a.Ports[0] = tcpPort("", 80, 8080)
	if err := e.p.Update(ctx, []cellapi.Service{a}, nil); err != nil {
		t.Fatal(err)
	}
	e.refused("tcp", "10.96.0.60:80")
	a.Ports[0] = tcpPort("", 80, 8080, epIPs[1])
	if err := e.p.Update(ctx, []cellapi.Service{a}, nil); err != nil {
		t.Fatal(err)
	}
	if got := e.mustCall("tcp", "10.96.0.60:80"); got != "tcp 10.10.0.12:8080" {
		t.Errorf("refilled service answered %q", got)
	}
}

// TestInvalidTableKeepsRules: an invalid full table or delta is refused naming the Service
// and port, and the rules already programmed keep working.
func TestInvalidTableKeepsRules(t *testing.T) {
	e := newEnv(t)
	e.servePeer(8080, epIPs[0])
	good := svc("default", "good", []string{"10.96.0.70"}, tcpPort("http", 80, 8080, epIPs[0]))
	e.replace(good)
	before := e.nft("ip")
	if strings.HasPrefix(before, "nft: ") {
		t.Fatalf("listing the rules: %s", before) // the comparison below would be meaningless
	}
	bad := svc("default", "bad", []string{"10.96.0.71"}, svcPort("weird", "ICMP", 80, 8080, epIPs[0]))
	err := e.p.Replace(context.Background(), []cellapi.Service{bad})
	if !cellapi.IsInvalid(err) || !strings.Contains(err.Error(), "default/bad") || !strings.Contains(err.Error(), `"weird"`) {
		t.Errorf("Replace with an ICMP port = %v, want Invalid naming default/bad and port \"weird\"", err)
	}
	err = e.p.Update(context.Background(), []cellapi.Service{svc("default", "clash", []string{"10.96.0.70"}, tcpPort("", 80, 8080))}, nil)
	if !cellapi.IsInvalid(err) || !strings.Contains(err.Error(), "default/clash") {
		t.Errorf("Update reusing good's cluster IP = %v, want Invalid naming default/clash", err)
	}
	if got := e.mustCall("tcp", "10.96.0.70:80"); got != "tcp 10.10.0.11:8080" {
		t.Errorf("after refused tables: %q", got)
	}
	if after := e.nft("ip"); after != before {
		t.Errorf("a refused table changed the rules:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}

// TestReplaceAfterRestart: a new Programmer (an agent restart) refuses deltas until it gets a
// full table, which replaces the rules the old one left.
func TestReplaceAfterRestart(t *testing.T) {
	e := newEnv(t)
	e.servePeer(8080, epIPs[:2]...)
	e.replace(svc("default", "old", []string{"10.96.0.80"}, tcpPort("", 80, 8080, epIPs[0])))
	e.p = svcproxy.New(svcproxy.InNetns(int(e.pod)))
	err := e.p.Update(context.Background(), []cellapi.Service{svc("default", "x", []string{"10.96.0.82"}, tcpPort("", 80, 8080))}, nil)
	if !cellapi.IsConflict(err) {
		t.Errorf("delta before any full table = %v, want Conflict", err)
	}
	if got := e.mustCall("tcp", "10.96.0.80:80"); got != "tcp 10.10.0.11:8080" {
		t.Errorf("the old rules did not outlive the programmer: %q", got)
	}
	e.replace(svc("default", "new", []string{"10.96.0.81"}, tcpPort("", 80, 8080, epIPs[1])))
	if got := e.mustCall("tcp", "10.96.0.81:80"); got != "tcp 10.10.0.12:8080" {
		t.Errorf("new service answered %q", got)
	}
	if got, err := e.call("tcp", "10.96.0.80:80"); err == nil {
		t.Errorf("service of the old table still answered %q", got)
	}
	if n := e.chainsNaming("default/old/"); n != 0 {
		t.Errorf("%d chains of the old table are left", n)
	}
	if err := e.p.Delete(); err != nil {
		t.Fatal(err)
	}
	if n := e.chainsNaming(""); n != 0 {
		t.Errorf("Delete left %d chains", n)
	}
}

// chainsNaming counts the chains of kip's tables in the pod namespace whose name contains s.
func (e *env) chainsNaming(s string) int {
	e.t.Helper()
	c, err := nftables.New(nftables.WithNetNSFd(int(e.pod)))
	if err != nil {
		e.t.Fatal(err)
	}
	chains, err := c.ListChains()
	if err != nil {
		e.t.Fatal(err)
	}
	n := 0
	for _, ch := range chains {
		if ch.Table.Name == svcproxy.TableName && strings.Contains(ch.Name, s) {
			n++
		}
	}
	return n
}

func contains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

// TestLargeTable: a table whose map elements take many netlink messages (600 Services, most
// with 3 endpoints: endpoints-3 alone holds more elements than one message can carry; a few
// with 1, 2 or 4) is programmed whole: Services of each endpoint count, first and last,
// answer from their own endpoints only.
func TestLargeTable(t *testing.T) {
	e := newEnv(t)
	e.servePeer(8080, epIPs...)
	count := func(i int) int {
		if i%50 < 3 {
			return []int{1, 2, 4}[i%50]
		}
		return 3
	}
	var svcs []cellapi.Service
	for i := range 600 {
		ip := fmt.Sprintf("10.96.%d.%d", 10+i/250, i%250+1)
		svcs = append(svcs, svc("big", fmt.Sprintf("s%03d", i), []string{ip}, tcpPort("", 80, 8080, epIPs[:count(i)]...)))
	}
	e.replace(svcs...)
	for _, i := range []int{0, 1, 2, 3, 550, 551, 552, 599} {
		n := count(i)
		// Endpoints are picked at random: 32 calls all landing on one of 2 endpoints has a
		// chance of 2⁻³¹ (12 calls, as before, failed one CI run in about a thousand).
		seen := e.spread("tcp", svcs[i].ClusterIPs[0]+":80", 32)
		for k := range seen {
			if !contains(suffix(epIPs[:n], ":8080"), strings.TrimPrefix(k, "tcp ")) {
				t.Errorf("service %d (%d endpoints) reached %s", i, n, k)
			}
		}
		if n > 1 && len(seen) < 2 {
			t.Errorf("service %d (%d endpoints): calls reached only %s", i, n, keys(seen))
		}
	}
}

// TestUpdateAffinity: a delta that turns ClientIP affinity on makes calls stick, and one that
// turns it off again spreads them; the affinity chains go with it.
func TestUpdateAffinity(t *testing.T) {
	e := newEnv(t)
	e.servePeer(8080, epIPs[:3]...)
	ctx := context.Background()
	s := svc("default", "flip", []string{"10.96.0.90"}, tcpPort("", 80, 8080, epIPs[:3]...))
	e.replace(s)
	if seen := e.spread("tcp", "10.96.0.90:80", 30); len(seen) < 2 {
		t.Fatalf("without affinity, 30 calls reached only %s", keys(seen))
	}
	s.AffinitySeconds = 600
	if err := e.p.Update(ctx, []cellapi.Service{s}, nil); err != nil {
		t.Fatalf("Update to affinity: %v", err)
	}
	if seen := e.spread("tcp", "10.96.0.90:80", 30); len(seen) != 1 {
		t.Errorf("with affinity, 30 calls reached %s; want one endpoint", keys(seen))
	}
	if n := e.chainsNaming("default/flip/"); n != 4 {
		t.Errorf("with affinity: %d chains of default/flip, want 4 (service + 3 endpoints)", n)
	}
	s.AffinitySeconds = 0
	if err := e.p.Update(ctx, []cellapi.Service{s}, nil); err != nil {
		t.Fatalf("Update back: %v", err)
	}
	if seen := e.spread("tcp", "10.96.0.90:80", 30); len(seen) < 2 {
		t.Errorf("affinity off again, 30 calls reached only %s", keys(seen))
	}
	if n := e.chainsNaming("default/flip/"); n != 0 {
		t.Errorf("affinity off: %d chains of default/flip are left", n)
	}
}
