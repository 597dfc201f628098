package svcproxy_test

import (
	"context"
	"os/exec"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kip-dev/kip/internal/agent/svcproxy"
	"github.com/kip-dev/kip/internal/cellapi"
)

func hostPod(containers ...corev1.Container) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "p"}, Spec: corev1.PodSpec{Containers: containers}}
}

func ctr(name string, ports ...corev1.ContainerPort) corev1.Container {
	return corev1.Container{Name: name, Ports: ports}
}

func hp(proto string, hostIP string, host, container int32) corev1.ContainerPort {
	return corev1.ContainerPort{Protocol: corev1.Protocol(proto), HostIP: hostIP, HostPort: host, ContainerPort: container}
}

func TestHostPortsValidate(t *testing.T) {
	for _, c := range []struct {
		name string
		pod  *corev1.Pod
		want []string // the rules' String()s, in order
		errs []string // substrings of the error, all of them
	}{
		{name: "no hostPorts", pod: hostPod(ctr("a", corev1.ContainerPort{ContainerPort: 80})), want: nil},
		{name: "same port needs no rule", pod: hostPod(ctr("a", hp("TCP", "", 8080, 8080))), want: nil},
		{name: "two containers", pod: hostPod(ctr("a", hp("", "", 80, 8080)), ctr("b", hp("UDP", "", 53, 5353), hp("SCTP", "10.0.0.1", 9, 99))),
			want: []string{`TCP *:80 → 8080 (container "a")`, `UDP *:53 → 5353 (container "b")`, `SCTP 10.0.0.1:9 → 99 (container "b")`}},
		{name: "same hostPort, other protocols", pod: hostPod(ctr("a", hp("TCP", "", 80, 8080), hp("UDP", "", 80, 8081))),
			want: []string{`TCP *:80 → 8080 (container "a")`, `UDP *:80 → 8081 (container "a")`}},
		{name: "same hostPort, other hostIPs", pod: hostPod(ctr("a", hp("TCP", "10.0.0.1", 80, 8080)), ctr("b", hp("TCP", "fd00::1", 80, 8081))),
			want: []string{`TCP 10.0.0.1:80 → 8080 (container "a")`, `TCP fd00::1:80 → 8081 (container "b")`}},
		{name: "hostPort out of range", pod: hostPod(ctr("a", hp("TCP", "", 70000, 80))),
			errs: []string{`spec.containers[0] ("a").ports[0].hostPort: 70000 is out of range`}},
		{name: "containerPort out of range", pod: hostPod(ctr("a", hp("TCP", "", 80, 0))),
			errs: []string{`spec.containers[0] ("a").ports[0].containerPort: 0 is out of range`}},
		{name: "bad protocol", pod: hostPod(ctr("a", hp("ICMP", "", 80, 8080))), errs: []string{`.protocol: "ICMP" is not supported`}},
		{name: "bad hostIP", pod: hostPod(ctr("a", corev1.ContainerPort{Name: "web", HostIP: "host", HostPort: 80, ContainerPort: 8080})),
			errs: []string{`spec.containers[0] ("a").ports[0] ("web").hostIP: "host" is not an IP address`}},
		{name: "hostPort twice", pod: hostPod(ctr("a", hp("TCP", "", 80, 8080)), ctr("b", hp("TCP", "", 80, 8081))),
			errs: []string{`spec.containers[1] ("b").ports[0]: hostPort TCP/80 is also spec.containers[0] ("a").ports[0]'s`}},
		{name: "wildcard and a hostIP", pod: hostPod(ctr("a", hp("TCP", "10.0.0.1", 80, 8080), hp("TCP", "", 80, 8081))),
			errs: []string{`ports[1]: hostPort TCP/80 is also`}},
		{name: "every problem at once", pod: hostPod(ctr("a", hp("TCP", "", -1, 8080)), ctr("b", hp("GRE", "", 80, 8080))),
			errs: []string{"pod ns/p", "hostPort: -1 is out of range", `"GRE"`}},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := svcproxy.HostPorts(c.pod)
			if len(c.errs) > 0 {
				if !cellapi.IsInvalid(err) {
					t.Fatalf("HostPorts = %v, %v; want an Invalid error", got, err)
				}
				for _, w := range c.errs {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q lacks %q", err, w)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var strs []string
			for _, h := range got {
				strs = append(strs, h.String())
			}
			if strings.Join(strs, "\n") != strings.Join(c.want, "\n") {
				t.Errorf("HostPorts =\n%s\nwant\n%s", strings.Join(strs, "\n"), strings.Join(c.want, "\n"))
			}
		})
	}
}

// TestHostPortsReachContainers: hostPorts of two containers (TCP and UDP) reach their
// containerPorts on the cell's address, from a peer and from the pod itself; one bound to
// hostIP 127.0.0.1 is translated there only; a replaced mapping and a deleted table stop
// translating.
func TestHostPortsReachContainers(t *testing.T) {
	e := newEnv(t)
	for _, a := range []string{":8080", ":5353", ":7070", ":6060"} {
		e.serve(e.pod, a)
	}
	ctx := context.Background()
	pod := hostPod(
		ctr("web", hp("TCP", "", 80, 8080)),
		ctr("dns", hp("UDP", "", 53, 5353), hp("TCP", "127.0.0.1", 70, 7070)),
	)
	if err := e.p.SetHostPorts(ctx, pod); err != nil {
		t.Fatalf("SetHostPorts: %v", err)
	}
	t.Logf("nft list table ip %s:\n%s", svcproxy.HostPortsTable, e.nftTable("ip", svcproxy.HostPortsTable))
	for _, c := range []struct{ from, network, addr, want string }{
		{"peer", "tcp", podIP + ":80", "tcp :8080"},
		{"peer", "udp", podIP + ":53", "udp :5353"},
		{"pod", "tcp", podIP + ":80", "tcp :8080"},
		{"pod", "udp", podIP + ":53", "udp :5353"},
		{"pod", "tcp", "127.0.0.1:70", "tcp :7070"},
	} {
		ns := e.pod
		if c.from == "peer" {
			ns = e.peer
		}
		got, err := e.callFrom(ns, c.network, c.addr)
		if err != nil || got != c.want {
			t.Errorf("%s %s from the %s = %q, %v; want %q", c.network, c.addr, c.from, got, err, c.want)
		}
	}
	// hostIP 127.0.0.1: the pod's own address on port 70 is not translated.
	if got, err := e.callFrom(e.pod, "tcp", podIP+":70"); err == nil {
		t.Errorf("tcp %s:70 (hostIP 127.0.0.1 only) answered %q", podIP, got)
	}

	// A new mapping replaces the old one; an invalid pod changes nothing.
	if err := e.p.SetHostPorts(ctx, hostPod(ctr("web", hp("TCP", "", 80, 6060)))); err != nil {
		t.Fatal(err)
	}
	if err := e.p.SetHostPorts(ctx, hostPod(ctr("web", hp("TCP", "", 80, 0)))); !cellapi.IsInvalid(err) {
		t.Errorf("SetHostPorts with containerPort 0 = %v, want Invalid", err)
	}
	if got, err := e.callFrom(e.peer, "tcp", podIP+":80"); err != nil || got != "tcp :6060" {
		t.Errorf("after replacing, tcp :80 from the peer = %q, %v; want tcp :6060", got, err)
	}
	if got, err := e.callFrom(e.peer, "udp", podIP+":53"); err == nil {
		t.Errorf("after replacing, udp :53 still answered %q", got)
	}

	if err := e.p.DeleteHostPorts(); err != nil {
		t.Fatal(err)
	}
	if got, err := e.callFrom(e.peer, "tcp", podIP+":80"); err == nil {
		t.Errorf("after DeleteHostPorts, tcp :80 answered %q", got)
	}
	if err := e.p.DeleteHostPorts(); err != nil {
		t.Errorf("DeleteHostPorts without tables: %v", err)
	}
}

// nftTable returns `nft list table FAMILY NAME` in the pod namespace ("" without nft).
func (e *env) nftTable(family, name string) string {
	if _, err := exec.LookPath("nft"); err != nil {
		return ""
	}
	out, err := in(e.pod, func() ([]byte, error) {
		return exec.Command("nft", "list", "table", family, name).CombinedOutput()
	})
	if err != nil {
		return "nft: " + err.Error() + ": " + string(out)
	}
	return string(out)
}

// TestHostPortSameAsContainerPortWithHostIP: a hostPort equal to its containerPort needs no
// rule whatever its hostIP, and stays reachable on the cell's address from a peer: that
// address:port is also the pod's IP and containerPort, which a pod answers on any node, so
// narrowing it to hostIP would cut what Kubernetes guarantees.
func TestHostPortSameAsContainerPortWithHostIP(t *testing.T) {
	e := newEnv(t)
	e.serve(e.pod, ":8080")
	e.serve(e.pod, ":6060")
	pod := hostPod(ctr("web", hp("TCP", "127.0.0.1", 8080, 8080), hp("TCP", "192.0.2.7", 6060, 6060)))
	hps, err := svcproxy.HostPorts(pod)
	if err != nil || len(hps) != 0 {
		t.Fatalf("HostPorts = %v, %v; want no rule", hps, err)
	}
	if err := e.p.SetHostPorts(context.Background(), pod); err != nil {
		t.Fatalf("SetHostPorts: %v", err)
	}
	for _, c := range []struct{ addr, want string }{{podIP + ":8080", "tcp :8080"}, {podIP + ":6060", "tcp :6060"}} {
		if got, err := e.callFrom(e.peer, "tcp", c.addr); err != nil || got != c.want {
			t.Errorf("tcp %s from the peer = %q, %v; want %q", c.addr, got, err, c.want)
		}
	}
	if got, err := e.callFrom(e.pod, "tcp", "127.0.0.1:8080"); err != nil || got != "tcp :8080" {
		t.Errorf("tcp 127.0.0.1:8080 from the pod = %q, %v; want tcp :8080", got, err)
	}
}
