package svcproxy_test

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/kip-dev/kip/internal/agent/svcproxy"
	"github.com/kip-dev/kip/internal/cellapi"
)

func TestNewNodePortsValidates(t *testing.T) {
	a := netip.MustParseAddr
	for _, c := range []struct {
		name  string
		bname string
		addrs []netip.Addr
		want  []string // substrings of the error; none: valid
	}{
		{"bridge address", "kipbr0", []netip.Addr{a("10.250.0.1")}, nil},
		{"every local address", "kipbr0", nil, nil},
		{"empty name", "", nil, []string{"name is empty"}},
		{"space in name", "kip br0", nil, []string{`name "kip br0" has spaces`}},
		{"long name", strings.Repeat("x", 250), nil, []string{"longer than 255 bytes"}},
		{"loopback", "b", []netip.Addr{a("127.0.0.1")}, []string{"addresses[0] (127.0.0.1) is not a unicast, non-loopback address"}},
		{"unspecified and twice", "b", []netip.Addr{a("10.0.0.1"), a("::"), a("10.0.0.1")},
			[]string{"addresses[1] (::)", "addresses[2] (10.0.0.1) is listed twice"}},
		{"zero", "b", []netip.Addr{{}}, []string{"addresses[0] is not an address"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			np, err := svcproxy.NewNodePorts(c.bname, c.addrs)
			if len(c.want) == 0 {
				if err != nil {
					t.Fatal(err)
				}
				if np.Table() != svcproxy.NodePortsTablePrefix+c.bname {
					t.Errorf("Table() = %q", np.Table())
				}
				return
			}
			if err == nil {
				t.Fatal("NewNodePorts succeeded, want an error")
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

// TestNodePortsValidate: Replace validates the whole table before it touches the kernel. A
// cancelled context makes a valid table stop right after validation (context.Canceled),
// so no root is needed.
func TestNodePortsValidate(t *testing.T) {
	np, err := svcproxy.NewNodePorts("kipbr0", nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	web := func(nodePort int32) cellapi.Service {
		return svc("ns", "web", []string{"10.96.0.10"}, withNodePort(tcpPort("http", 80, 8080, "10.0.0.1"), nodePort))
	}
	db := func(proto string, nodePort int32) cellapi.Service {
		return svc("ns", "db", []string{"10.96.0.11"}, withNodePort(svcPort("", proto, 5432, 5432), nodePort))
	}
	for _, c := range []struct {
		name string
		svcs []cellapi.Service
		want []string // substrings of the Invalid error; none: valid
	}{
		{"default range", []cellapi.Service{web(30080), db("TCP", 32767)}, nil},
		{"outside the default range", []cellapi.Service{web(80), db("TCP", 65535)}, nil},
		{"no nodePort", []cellapi.Service{web(0)}, nil},
		{"same number, other protocols", []cellapi.Service{web(30080), db("UDP", 30080)}, nil},
		{"negative", []cellapi.Service{web(-1)}, []string{`service ns/web port "http" (TCP/80): nodePort -1 is out of range 1..65535`}},
		{"too big", []cellapi.Service{web(70000)}, []string{"nodePort 70000 is out of range"}},
		{"used twice", []cellapi.Service{web(30080), db("TCP", 30080)},
			[]string{`service ns/db port TCP/5432: nodePort TCP/30080 is also service ns/web port "http" (TCP/80)'s`}},
		{"every problem at once", []cellapi.Service{web(70000), db("GRE", 30001)}, []string{"nodePort 70000", `protocol "GRE"`}},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := np.Replace(ctx, c.svcs)
			if len(c.want) == 0 {
				if !errors.Is(err, context.Canceled) {
					t.Fatalf("Replace = %v, want it valid (context.Canceled)", err)
				}
				return
			}
			if !cellapi.IsInvalid(err) {
				t.Fatalf("Replace = %v, want Invalid", err)
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
	// The cells' tables ignore nodePorts: a cell does not program them.
	if err := svcproxy.Validate([]cellapi.Service{web(70000)}); err != nil {
		t.Errorf("Validate (cells) with nodePort 70000 = %v, want nil", err)
	}
}
