package svcproxy_test

import (
	"strings"
	"testing"

	"github.com/kip-dev/kip/internal/agent/svcproxy"
	"github.com/kip-dev/kip/internal/cellapi"
)

func TestValidate(t *testing.T) {
	ok := func() cellapi.Service {
		return svc("ns", "web", []string{"10.96.0.1", "fd00::1"},
			tcpPort("http", 80, 8080, "10.0.0.1", "fd00:1::1"),
			svcPort("dns", "UDP", 53, 53, "10.0.0.2"),
			svcPort("", "SCTP", 9000, 9000),
		)
	}
	for _, c := range []struct {
		name string
		mod  func(s *cellapi.Service) []cellapi.Service
		// want are substrings of the error, all of them; none means valid.
		want []string
	}{
		{"valid", nil, nil},
		{"affinity", func(s *cellapi.Service) []cellapi.Service { s.AffinitySeconds = 10800; return nil }, nil},
		{"no name", func(s *cellapi.Service) []cellapi.Service { s.Name = ""; return nil }, []string{"services[0]", "namespace and name are required"}},
		{"bad cluster IP", func(s *cellapi.Service) []cellapi.Service { s.ClusterIPs = []string{"10.96.0.300"}; return nil },
			[]string{"service ns/web", `"10.96.0.300" is not an IP address`}},
		{"no cluster IP", func(s *cellapi.Service) []cellapi.Service { s.ClusterIPs = nil; return nil }, []string{"service ns/web: clusterIPs is empty"}},
		{"two IPv4 cluster IPs", func(s *cellapi.Service) []cellapi.Service {
			s.ClusterIPs = []string{"10.96.0.1", "10.96.0.2"}
			return nil
		},
			[]string{"two IPv4 addresses"}},
		{"unspecified", func(s *cellapi.Service) []cellapi.Service { s.ClusterIPs = []string{"0.0.0.0"}; return nil }, []string{"not a unicast address"}},
		{"mapped", func(s *cellapi.Service) []cellapi.Service { s.ClusterIPs = []string{"::ffff:10.96.0.1"}; return nil }, []string{"IPv4-mapped"}},
		{"unknown protocol", func(s *cellapi.Service) []cellapi.Service { s.Ports[0].Protocol = "ICMP"; return nil },
			[]string{`service ns/web port "http" (ICMP/80)`, `protocol "ICMP" is not supported`}},
		{"port 0", func(s *cellapi.Service) []cellapi.Service { s.Ports[2].Port = 0; return nil }, []string{"service ns/web port SCTP/0: port 0 is out of range"}},
		{"port 65536", func(s *cellapi.Service) []cellapi.Service { s.Ports[1].Port = 65536; return nil }, []string{`port "dns" (UDP/65536)`, "out of range"}},
		{"same port twice", func(s *cellapi.Service) []cellapi.Service {
			s.Ports[1].Protocol = "TCP"
			s.Ports[1].Port = 80
			return nil
		},
			[]string{`port "dns" (TCP/80): TCP/80 is listed twice`}},
		{"same port, other protocol", func(s *cellapi.Service) []cellapi.Service { s.Ports[1].Port = 80; return nil }, nil},
		{"bad endpoint IP", func(s *cellapi.Service) []cellapi.Service { s.Ports[0].Endpoints[1].IP = "pod-a"; return nil },
			[]string{`port "http" (TCP/80): endpoints[1]: "pod-a" is not an IP address`}},
		{"bad endpoint port", func(s *cellapi.Service) []cellapi.Service { s.Ports[1].Endpoints[0].Port = -1; return nil },
			[]string{`port "dns" (UDP/53): endpoints[0] (10.0.0.2): port -1 is out of range`}},
		{"endpoint twice", func(s *cellapi.Service) []cellapi.Service {
			s.Ports[1].Endpoints = append(s.Ports[1].Endpoints, s.Ports[1].Endpoints[0])
			return nil
		}, []string{"endpoint 10.0.0.2:53 is listed twice"}},
		{"negative affinity", func(s *cellapi.Service) []cellapi.Service { s.AffinitySeconds = -1; return nil }, []string{"affinitySeconds -1 is out of range"}},
		{"service twice", func(s *cellapi.Service) []cellapi.Service { return []cellapi.Service{*s} }, []string{"service ns/web: listed twice"}},
		{"shared cluster IP", func(s *cellapi.Service) []cellapi.Service {
			return []cellapi.Service{svc("ns", "other", []string{"10.96.0.1"})}
		}, []string{"service ns/other: cluster IP 10.96.0.1 is also service ns/web's"}},
		{"every problem at once", func(s *cellapi.Service) []cellapi.Service {
			s.Ports[0].Port = 0
			s.Ports[1].Protocol = "GRE"
			return nil
		}, []string{"TCP/0", `"GRE"`}},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := ok()
			table := []cellapi.Service{s}
			if c.mod != nil {
				more := c.mod(&table[0])
				table = append(table, more...)
			}
			err := svcproxy.Validate(table)
			if len(c.want) == 0 {
				if err != nil {
					t.Fatalf("Validate = %v, want nil", err)
				}
				return
			}
			if !cellapi.IsInvalid(err) {
				t.Fatalf("Validate = %v, want an Invalid error", err)
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Validate = %q, want it to contain %q", err, w)
				}
			}
		})
	}
}
