package svcproxy

import (
	"fmt"
	"net/netip"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/kip-dev/kip/internal/cellapi"
)

// maxAffinitySeconds is Kubernetes' upper bound for sessionAffinityConfig.clientIP.timeoutSeconds.
const maxAffinitySeconds = 86400

// protocols are the layer-4 protocols a Service port may use, as IP protocol numbers.
var protocols = map[corev1.Protocol]uint8{
	corev1.ProtocolTCP:  6,
	corev1.ProtocolUDP:  17,
	corev1.ProtocolSCTP: 132,
}

// service is a validated Service: addresses parsed, split by IP family.
type service struct {
	key string
	src cellapi.Service
	// ips are the cluster IPs, at most one per family.
	ips   []netip.Addr
	ports []port
}

// port is one validated service port.
type port struct {
	name     string
	proto    uint8
	protoStr string
	port     uint16
	eps      []endpoint
	affinity time.Duration
}

type endpoint struct {
	addr netip.Addr
	port uint16
}

// Validate checks a whole table of Services (a full table, or the result of a delta) without
// touching the kernel. Every problem is reported at once, each naming the Service
// ("namespace/name") and, where it is about a port, the port; the error is cellapi.KindInvalid.
func Validate(svcs []cellapi.Service) error {
	_, err := compile(svcs)
	return err
}

// compile validates svcs and returns them parsed, keyed by "namespace/name".
func compile(svcs []cellapi.Service) (map[string]*service, error) {
	var probs []string
	bad := func(format string, args ...any) { probs = append(probs, fmt.Sprintf(format, args...)) }
	out := make(map[string]*service, len(svcs))
	owner := map[netip.Addr]string{} // cluster IP → the Service that has it
	for i := range svcs {
		s := &svcs[i]
		key := s.Key()
		if s.Namespace == "" || s.Name == "" {
			bad("services[%d] (%q): namespace and name are required", i, key)
			continue
		}
		if _, dup := out[key]; dup {
			bad("service %s: listed twice", key)
			continue
		}
		v := &service{key: key, src: clone(s)}
		if s.AffinitySeconds < 0 || s.AffinitySeconds > maxAffinitySeconds {
			bad("service %s: affinitySeconds %d is out of range 0..%d", key, s.AffinitySeconds, maxAffinitySeconds)
		}
		if len(s.ClusterIPs) == 0 {
			bad("service %s: clusterIPs is empty (headless Services are not sent to cells)", key)
		}
		var fams [2]bool // seen IPv4, IPv6
		for _, str := range s.ClusterIPs {
			ip, err := parseIP(str)
			if err != nil {
				bad("service %s: clusterIPs: %v", key, err)
				continue
			}
			f := 0
			if ip.Is6() {
				f = 1
			}
			if fams[f] {
				bad("service %s: clusterIPs has two %s addresses", key, familyName(ip))
				continue
			}
			fams[f] = true
			if other, taken := owner[ip]; taken {
				bad("service %s: cluster IP %s is also service %s's", key, ip, other)
				continue
			}
			owner[ip] = key
			v.ips = append(v.ips, ip)
		}
		seen := map[string]bool{}
		for j := range s.Ports {
			sp := &s.Ports[j]
			what := portName(sp)
			proto, ok := protocols[sp.Protocol]
			if !ok {
				bad("service %s port %s: protocol %q is not supported (TCP, UDP or SCTP)", key, what, sp.Protocol)
				continue
			}
			if sp.Port < 1 || sp.Port > 65535 {
				bad("service %s port %s: port %d is out of range 1..65535", key, what, sp.Port)
				continue
			}
			id := fmt.Sprintf("%s/%d", sp.Protocol, sp.Port)
			if seen[id] {
				bad("service %s port %s: %s is listed twice", key, what, id)
				continue
			}
			seen[id] = true
			p := port{name: sp.Name, proto: proto, protoStr: strings.ToLower(string(sp.Protocol)), port: uint16(sp.Port),
				affinity: time.Duration(s.AffinitySeconds) * time.Second}
			eps := map[endpoint]bool{}
			for k, ep := range sp.Endpoints {
				ip, err := parseIP(ep.IP)
				if err != nil {
					bad("service %s port %s: endpoints[%d]: %v", key, what, k, err)
					continue
				}
				if ep.Port < 1 || ep.Port > 65535 {
					bad("service %s port %s: endpoints[%d] (%s): port %d is out of range 1..65535", key, what, k, ep.IP, ep.Port)
					continue
				}
				e := endpoint{addr: ip, port: uint16(ep.Port)}
				if eps[e] {
					bad("service %s port %s: endpoint %s is listed twice", key, what, netip.AddrPortFrom(ip, e.port))
					continue
				}
				eps[e] = true
				p.eps = append(p.eps, e)
			}
			v.ports = append(v.ports, p)
		}
		out[key] = v
	}
	if len(probs) > 0 {
		return nil, cellapi.Errorf(cellapi.KindInvalid, "invalid service table: %s", strings.Join(probs, "; "))
	}
	return out, nil
}

// clone copies s deeply: Update compares what it programmed with what it is given.
func clone(s *cellapi.Service) cellapi.Service {
	c := *s
	c.ClusterIPs = append([]string(nil), s.ClusterIPs...)
	c.Ports = make([]cellapi.ServicePort, len(s.Ports))
	for i, p := range s.Ports {
		p.Endpoints = append([]cellapi.Endpoint(nil), p.Endpoints...)
		c.Ports[i] = p
	}
	return c
}

// parseIP parses an IPv4 or IPv6 address that can be a cluster IP or an endpoint.
func parseIP(s string) (netip.Addr, error) {
	ip, err := netip.ParseAddr(s)
	switch {
	case err != nil:
		return netip.Addr{}, fmt.Errorf("%q is not an IP address", s)
	case ip.Zone() != "", ip.Is4In6():
		return netip.Addr{}, fmt.Errorf("%q: zoned and IPv4-mapped IPv6 addresses are not allowed", s)
	case ip.IsUnspecified(), ip.IsMulticast():
		return netip.Addr{}, fmt.Errorf("%q is not a unicast address", s)
	}
	return ip, nil
}

func familyName(ip netip.Addr) string {
	if ip.Is4() {
		return "IPv4"
	}
	return "IPv6"
}

// portName names a service port in messages: "http (TCP/80)", or "TCP/80" when unnamed.
func portName(sp *cellapi.ServicePort) string {
	id := fmt.Sprintf("%s/%d", sp.Protocol, sp.Port)
	if sp.Name == "" {
		return id
	}
	return fmt.Sprintf("%q (%s)", sp.Name, id)
}
