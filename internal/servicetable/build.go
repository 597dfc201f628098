package servicetable

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/kip-dev/kip/internal/cellapi"
)

// Problem is one thing in a Service kip cannot program, with the field that says it.
type Problem struct {
	Field   string
	Message string
}

// Protocols are the service port protocols cells program (kube-proxy's).
var Protocols = []corev1.Protocol{corev1.ProtocolTCP, corev1.ProtocolUDP, corev1.ProtocolSCTP}

// Build returns svc as a cell programs it from the EndpointSlices labelled with its name, as
// kube-proxy on node nodeName would: nil for a Service without a cluster IP (headless,
// ExternalName) or with nothing programmable. Ports and endpoints kip cannot program are left
// out and named in the problems; a bad cluster IP or affinity timeout leaves the Service out.
// It is pure.
func Build(svc *corev1.Service, eps []*discoveryv1.EndpointSlice, nodeName string) (*cellapi.Service, []Problem) {
	if svc.Spec.Type == corev1.ServiceTypeExternalName {
		return nil, nil
	}
	ips := svc.Spec.ClusterIPs
	if len(ips) == 0 && svc.Spec.ClusterIP != "" {
		ips = []string{svc.Spec.ClusterIP}
	}
	if len(ips) == 0 || ips[0] == corev1.ClusterIPNone {
		return nil, nil
	}
	var problems []Problem
	families := map[discoveryv1.AddressType]bool{}
	out := &cellapi.Service{Namespace: svc.Namespace, Name: svc.Name}
	for i, s := range ips {
		ip, err := netip.ParseAddr(s)
		if err != nil || ip.Zone() != "" {
			problems = append(problems, Problem{fmt.Sprintf("spec.clusterIPs[%d]", i), fmt.Sprintf("%q is not an IP address", s)})
			return nil, problems
		}
		families[addressType(ip)] = true
		out.ClusterIPs = append(out.ClusterIPs, ip.String())
	}
	if svc.Spec.SessionAffinity == corev1.ServiceAffinityClientIP {
		out.AffinitySeconds = DefaultAffinitySeconds
		if c := svc.Spec.SessionAffinityConfig; c != nil && c.ClientIP != nil && c.ClientIP.TimeoutSeconds != nil {
			out.AffinitySeconds = *c.ClientIP.TimeoutSeconds
		}
		if out.AffinitySeconds <= 0 || out.AffinitySeconds > 86400 {
			problems = append(problems, Problem{"spec.sessionAffinityConfig.clientIP.timeoutSeconds",
				fmt.Sprintf("%d is not between 1 and 86400", out.AffinitySeconds)})
			return nil, problems
		}
	}
	local := svc.Spec.InternalTrafficPolicy != nil && *svc.Spec.InternalTrafficPolicy == corev1.ServiceInternalTrafficPolicyLocal
	for i, p := range svc.Spec.Ports {
		proto := p.Protocol
		if proto == "" {
			proto = corev1.ProtocolTCP
		}
		switch {
		case !slices.Contains(Protocols, proto):
			problems = append(problems, Problem{fmt.Sprintf("spec.ports[%d].protocol", i),
				fmt.Sprintf("%q is not supported (cells program TCP, UDP and SCTP)", p.Protocol)})
			continue
		case p.Port < 1 || p.Port > 65535:
			problems = append(problems, Problem{fmt.Sprintf("spec.ports[%d].port", i), fmt.Sprintf("%d is not between 1 and 65535", p.Port)})
			continue
		case p.NodePort < 0 || p.NodePort > 65535:
			problems = append(problems, Problem{fmt.Sprintf("spec.ports[%d].nodePort", i), fmt.Sprintf("%d is not between 0 and 65535", p.NodePort)})
			continue
		}
		sp := cellapi.ServicePort{Name: p.Name, Protocol: proto, Port: p.Port, NodePort: p.NodePort}
		var bad []Problem
		sp.Endpoints, bad = endpoints(eps, svc, p.Name, proto, families, local, nodeName)
		problems = append(problems, bad...)
		out.Ports = append(out.Ports, sp)
	}
	if len(out.Ports) == 0 {
		if len(svc.Spec.Ports) > 0 {
			return nil, problems
		}
	}
	return out, problems
}

func addressType(ip netip.Addr) discoveryv1.AddressType {
	if ip.Is4() || ip.Is4In6() {
		return discoveryv1.AddressTypeIPv4
	}
	return discoveryv1.AddressTypeIPv6
}

// candidate is one endpoint with the conditions kube-proxy looks at.
type candidate struct {
	ep                         cellapi.Endpoint
	ready, serving, terminates bool
	local                      bool
}

// endpoints returns the endpoints of the service port named name, as kube-proxy picks them
// (pkg/proxy's EndpointSliceCache and CategorizeEndpoints): from every slice of a family of
// the cluster IPs, deduplicated by address and port (a non-terminating copy wins); the ready
// ones (ready nil counts as ready; terminating ones only with publishNotReadyAddresses), else
// the serving terminating ones. With internalTrafficPolicy Local only those on nodeName.
// Sorted by IP, then port.
func endpoints(eps []*discoveryv1.EndpointSlice, svc *corev1.Service, name string, proto corev1.Protocol,
	families map[discoveryv1.AddressType]bool, local bool, nodeName string) ([]cellapi.Endpoint, []Problem) {
	set := map[cellapi.Endpoint]candidate{}
	var problems []Problem
	for _, s := range eps {
		if !families[s.AddressType] {
			continue
		}
		for _, p := range s.Ports {
			if p.Name == nil || *p.Name != name || p.Port == nil || *p.Port <= 0 || *p.Port > 65535 {
				continue
			}
			if pp := p.Protocol; (pp == nil && proto != corev1.ProtocolTCP) || (pp != nil && *pp != proto) {
				continue
			}
			for i, e := range s.Endpoints {
				if len(e.Addresses) == 0 {
					continue
				}
				ip, err := netip.ParseAddr(e.Addresses[0])
				if err != nil || ip.Zone() != "" || addressType(ip) != s.AddressType {
					problems = append(problems, Problem{fmt.Sprintf("EndpointSlice %s endpoints[%d].addresses[0]", s.Name, i),
						fmt.Sprintf("%q is not an %s address (the endpoint is left out)", e.Addresses[0], s.AddressType)})
					continue
				}
				terminating := e.Conditions.Terminating != nil && *e.Conditions.Terminating
				c := candidate{
					ep:         cellapi.Endpoint{IP: ip.Unmap().String(), Port: *p.Port},
					ready:      (e.Conditions.Ready == nil || *e.Conditions.Ready) && (!terminating || svc.Spec.PublishNotReadyAddresses),
					serving:    e.Conditions.Serving == nil || *e.Conditions.Serving,
					terminates: terminating,
					local:      nodeName != "" && e.NodeName != nil && *e.NodeName == nodeName,
				}
				if _, seen := set[c.ep]; !seen || !terminating {
					set[c.ep] = c
				}
			}
		}
	}
	pick := func(keep func(candidate) bool) []cellapi.Endpoint {
		var out []cellapi.Endpoint
		for _, c := range set {
			if (!local || c.local) && keep(c) {
				out = append(out, c.ep)
			}
		}
		return out
	}
	out := pick(func(c candidate) bool { return c.ready })
	if len(out) == 0 {
		out = pick(func(c candidate) bool { return c.serving && c.terminates })
	}
	slices.SortFunc(out, func(a, b cellapi.Endpoint) int {
		if c := netip.MustParseAddr(a.IP).Compare(netip.MustParseAddr(b.IP)); c != 0 {
			return c
		}
		return cmp.Compare(a.Port, b.Port)
	})
	return out, problems
}
