package servicetable

import (
	"reflect"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/kip-dev/kip/internal/cellapi"
)

// svc is a ClusterIP Service ns/name on 10.96.0.10 with the given ports.
func svc(name string, ports ...corev1.ServicePort) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name},
		Spec: corev1.ServiceSpec{
			Type: corev1.ServiceTypeClusterIP, ClusterIP: "10.96.0.10", ClusterIPs: []string{"10.96.0.10"},
			Ports: ports,
		},
	}
}

func port(name string, p int32) corev1.ServicePort {
	return corev1.ServicePort{Name: name, Protocol: corev1.ProtocolTCP, Port: p}
}

// ep is a ready endpoint at ip; opts adjust it.
func ep(ip string, opts ...func(*discoveryv1.Endpoint)) discoveryv1.Endpoint {
	e := discoveryv1.Endpoint{Addresses: []string{ip}}
	for _, o := range opts {
		o(&e)
	}
	return e
}

func notReady(e *discoveryv1.Endpoint) { e.Conditions.Ready = ptr.To(false) }

// terminating: what the EndpointSlice controller writes for a deleted pod still serving.
func terminating(e *discoveryv1.Endpoint) {
	e.Conditions.Ready = ptr.To(false)
	e.Conditions.Serving = ptr.To(true)
	e.Conditions.Terminating = ptr.To(true)
}

func terminatingNotServing(e *discoveryv1.Endpoint) {
	terminating(e)
	e.Conditions.Serving = ptr.To(false)
}

func onNode(n string) func(*discoveryv1.Endpoint) {
	return func(e *discoveryv1.Endpoint) { e.NodeName = ptr.To(n) }
}

// slice is an EndpointSlice of Service ns/service with one port and the endpoints.
func slice(name, service string, at discoveryv1.AddressType, ports []discoveryv1.EndpointPort, eps ...discoveryv1.Endpoint) *discoveryv1.EndpointSlice {
	return &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "ns", Name: name, Labels: map[string]string{discoveryv1.LabelServiceName: service}},
		AddressType: at,
		Ports:       ports,
		Endpoints:   eps,
	}
}

func sport(name string, p int32, proto corev1.Protocol) discoveryv1.EndpointPort {
	return discoveryv1.EndpointPort{Name: ptr.To(name), Port: ptr.To(p), Protocol: ptr.To(proto)}
}

func eps(ipports ...any) []cellapi.Endpoint {
	var out []cellapi.Endpoint
	for i := 0; i < len(ipports); i += 2 {
		out = append(out, cellapi.Endpoint{IP: ipports[i].(string), Port: int32(ipports[i+1].(int))})
	}
	return out
}

func TestBuild(t *testing.T) {
	tcp := corev1.ProtocolTCP
	v4 := discoveryv1.AddressTypeIPv4
	http := []discoveryv1.EndpointPort{sport("http", 8080, tcp)}
	tests := []struct {
		name     string
		svc      *corev1.Service
		slices   []*discoveryv1.EndpointSlice
		want     *cellapi.Service // nil: left out
		problems []string         // fields named
	}{{
		name:   "ready endpoints, not-ready and terminating left out",
		svc:    svc("web", port("http", 80)),
		slices: []*discoveryv1.EndpointSlice{slice("web-1", "web", v4, http, ep("10.0.0.2"), ep("10.0.0.1"), ep("10.0.0.3", notReady), ep("10.0.0.4", terminating))},
		want: &cellapi.Service{Namespace: "ns", Name: "web", ClusterIPs: []string{"10.96.0.10"},
			Ports: []cellapi.ServicePort{{Name: "http", Protocol: tcp, Port: 80, Endpoints: eps("10.0.0.1", 8080, "10.0.0.2", 8080)}}},
	}, {
		name:   "no ready endpoint: the serving terminating ones (kube-proxy's fallback)",
		svc:    svc("web", port("http", 80)),
		slices: []*discoveryv1.EndpointSlice{slice("web-1", "web", v4, http, ep("10.0.0.3", notReady), ep("10.0.0.4", terminating), ep("10.0.0.5", terminatingNotServing))},
		want: &cellapi.Service{Namespace: "ns", Name: "web", ClusterIPs: []string{"10.96.0.10"},
			Ports: []cellapi.ServicePort{{Name: "http", Protocol: tcp, Port: 80, Endpoints: eps("10.0.0.4", 8080)}}},
	}, {
		name:   "no endpoints at all: the port stays, to be rejected",
		svc:    svc("web", port("http", 80)),
		slices: []*discoveryv1.EndpointSlice{slice("web-1", "web", v4, http, ep("10.0.0.3", notReady))},
		want: &cellapi.Service{Namespace: "ns", Name: "web", ClusterIPs: []string{"10.96.0.10"},
			Ports: []cellapi.ServicePort{{Name: "http", Protocol: tcp, Port: 80}}},
	}, {
		name: "named ports: each service port gets the endpoints of the slice port with its name and protocol",
		svc: svc("web", port("http", 80), port("metrics", 9090),
			corev1.ServicePort{Name: "dns", Protocol: corev1.ProtocolUDP, Port: 53, NodePort: 30053}),
		slices: []*discoveryv1.EndpointSlice{
			slice("web-1", "web", v4, []discoveryv1.EndpointPort{sport("http", 8080, tcp), sport("metrics", 9100, tcp), sport("dns", 5353, corev1.ProtocolTCP)}, ep("10.0.0.1")),
			slice("web-2", "web", v4, []discoveryv1.EndpointPort{sport("dns", 5353, corev1.ProtocolUDP)}, ep("10.0.0.9")),
		},
		want: &cellapi.Service{Namespace: "ns", Name: "web", ClusterIPs: []string{"10.96.0.10"}, Ports: []cellapi.ServicePort{
			{Name: "http", Protocol: tcp, Port: 80, Endpoints: eps("10.0.0.1", 8080)},
			{Name: "metrics", Protocol: tcp, Port: 9090, Endpoints: eps("10.0.0.1", 9100)},
			{Name: "dns", Protocol: corev1.ProtocolUDP, Port: 53, NodePort: 30053, Endpoints: eps("10.0.0.9", 5353)},
		}},
	}, {
		name: "endpoints in several slices are deduplicated; a non-terminating copy wins",
		svc:  svc("web", port("http", 80)),
		slices: []*discoveryv1.EndpointSlice{
			slice("web-1", "web", v4, http, ep("10.0.0.1"), ep("10.0.0.2", terminating)),
			slice("web-2", "web", v4, http, ep("10.0.0.1"), ep("10.0.0.2"), ep("10.0.0.3")),
		},
		want: &cellapi.Service{Namespace: "ns", Name: "web", ClusterIPs: []string{"10.96.0.10"},
			Ports: []cellapi.ServicePort{{Name: "http", Protocol: tcp, Port: 80, Endpoints: eps("10.0.0.1", 8080, "10.0.0.2", 8080, "10.0.0.3", 8080)}}},
	}, {
		name: "slices of another family than the cluster IPs are ignored",
		svc:  svc("web", port("http", 80)),
		slices: []*discoveryv1.EndpointSlice{
			slice("web-1", "web", v4, http, ep("10.0.0.1")),
			slice("web-2", "web", discoveryv1.AddressTypeIPv6, http, ep("fd00::1")),
			slice("web-3", "web", discoveryv1.AddressTypeFQDN, http, ep("example.com")),
		},
		want: &cellapi.Service{Namespace: "ns", Name: "web", ClusterIPs: []string{"10.96.0.10"},
			Ports: []cellapi.ServicePort{{Name: "http", Protocol: tcp, Port: 80, Endpoints: eps("10.0.0.1", 8080)}}},
	}, {
		name: "dual stack takes both families",
		svc: func() *corev1.Service {
			s := svc("web", port("http", 80))
			s.Spec.ClusterIPs = []string{"10.96.0.10", "fd00:96::10"}
			return s
		}(),
		slices: []*discoveryv1.EndpointSlice{
			slice("web-1", "web", v4, http, ep("10.0.0.1")),
			slice("web-2", "web", discoveryv1.AddressTypeIPv6, http, ep("fd00::1")),
		},
		want: &cellapi.Service{Namespace: "ns", Name: "web", ClusterIPs: []string{"10.96.0.10", "fd00:96::10"},
			Ports: []cellapi.ServicePort{{Name: "http", Protocol: tcp, Port: 80, Endpoints: eps("10.0.0.1", 8080, "fd00::1", 8080)}}},
	}, {
		name: "internalTrafficPolicy Local keeps the endpoints on kip's node",
		svc: func() *corev1.Service {
			s := svc("web", port("http", 80))
			s.Spec.InternalTrafficPolicy = ptr.To(corev1.ServiceInternalTrafficPolicyLocal)
			return s
		}(),
		slices: []*discoveryv1.EndpointSlice{slice("web-1", "web", v4, http, ep("10.0.0.1", onNode("kip")), ep("10.0.0.2", onNode("other")), ep("10.0.0.3"))},
		want: &cellapi.Service{Namespace: "ns", Name: "web", ClusterIPs: []string{"10.96.0.10"},
			Ports: []cellapi.ServicePort{{Name: "http", Protocol: tcp, Port: 80, Endpoints: eps("10.0.0.1", 8080)}}},
	}, {
		name: "internalTrafficPolicy Local falls back to the node's serving terminating endpoints, never another node's",
		svc: func() *corev1.Service {
			s := svc("web", port("http", 80))
			s.Spec.InternalTrafficPolicy = ptr.To(corev1.ServiceInternalTrafficPolicyLocal)
			return s
		}(),
		slices: []*discoveryv1.EndpointSlice{slice("web-1", "web", v4, http, ep("10.0.0.1", onNode("kip"), terminating), ep("10.0.0.2", onNode("other")))},
		want: &cellapi.Service{Namespace: "ns", Name: "web", ClusterIPs: []string{"10.96.0.10"},
			Ports: []cellapi.ServicePort{{Name: "http", Protocol: tcp, Port: 80, Endpoints: eps("10.0.0.1", 8080)}}},
	}, {
		name: "sessionAffinity ClientIP without a timeout takes the default",
		svc: func() *corev1.Service {
			s := svc("web", port("http", 80))
			s.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
			return s
		}(),
		want: &cellapi.Service{Namespace: "ns", Name: "web", ClusterIPs: []string{"10.96.0.10"}, AffinitySeconds: 10800,
			Ports: []cellapi.ServicePort{{Name: "http", Protocol: tcp, Port: 80}}},
	}, {
		name: "sessionAffinity ClientIP with a timeout",
		svc: func() *corev1.Service {
			s := svc("web", port("http", 80))
			s.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
			s.Spec.SessionAffinityConfig = &corev1.SessionAffinityConfig{ClientIP: &corev1.ClientIPConfig{TimeoutSeconds: ptr.To[int32](60)}}
			return s
		}(),
		want: &cellapi.Service{Namespace: "ns", Name: "web", ClusterIPs: []string{"10.96.0.10"}, AffinitySeconds: 60,
			Ports: []cellapi.ServicePort{{Name: "http", Protocol: tcp, Port: 80}}},
	}, {
		name: "headless is left out",
		svc: func() *corev1.Service {
			s := svc("web", port("http", 80))
			s.Spec.ClusterIP, s.Spec.ClusterIPs = corev1.ClusterIPNone, []string{corev1.ClusterIPNone}
			return s
		}(),
	}, {
		name: "ExternalName is left out",
		svc: &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "ext"},
			Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeExternalName, ExternalName: "example.com"}},
	}, {
		name: "an unsupported protocol leaves that port out and names it",
		svc:  svc("web", port("http", 80), corev1.ServicePort{Name: "weird", Protocol: "QUIC", Port: 443}),
		slices: []*discoveryv1.EndpointSlice{
			slice("web-1", "web", v4, []discoveryv1.EndpointPort{sport("http", 8080, tcp), sport("weird", 8443, "QUIC")}, ep("10.0.0.1")),
		},
		want: &cellapi.Service{Namespace: "ns", Name: "web", ClusterIPs: []string{"10.96.0.10"},
			Ports: []cellapi.ServicePort{{Name: "http", Protocol: tcp, Port: 80, Endpoints: eps("10.0.0.1", 8080)}}},
		problems: []string{"spec.ports[1].protocol"},
	}, {
		name:     "a Service with no programmable port is left out",
		svc:      svc("web", corev1.ServicePort{Name: "weird", Protocol: "QUIC", Port: 443}),
		problems: []string{"spec.ports[0].protocol"},
	}, {
		name: "a bad cluster IP leaves the Service out",
		svc: func() *corev1.Service {
			s := svc("web", port("http", 80))
			s.Spec.ClusterIPs = []string{"10.96.0.300"}
			return s
		}(),
		problems: []string{"spec.clusterIPs[0]"},
	}, {
		name:   "a bad endpoint address is named and left out",
		svc:    svc("web", port("http", 80)),
		slices: []*discoveryv1.EndpointSlice{slice("web-1", "web", v4, http, ep("10.0.0.1"), ep("fd00::1"))},
		want: &cellapi.Service{Namespace: "ns", Name: "web", ClusterIPs: []string{"10.96.0.10"},
			Ports: []cellapi.ServicePort{{Name: "http", Protocol: tcp, Port: 80, Endpoints: eps("10.0.0.1", 8080)}}},
		problems: []string{"EndpointSlice web-1 endpoints[1].addresses[0]"},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, problems := Build(tt.svc, tt.slices, "kip")
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Build:\n got %+v\nwant %+v", got, tt.want)
			}
			var fields []string
			for _, p := range problems {
				fields = append(fields, p.Field)
				if p.Message == "" {
					t.Errorf("problem %s has no message", p.Field)
				}
			}
			if strings.Join(fields, ",") != strings.Join(tt.problems, ",") {
				t.Errorf("problems name %v, want %v (%+v)", fields, tt.problems, problems)
			}
		})
	}
}
