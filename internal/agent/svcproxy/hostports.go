package svcproxy

import (
	"context"
	"fmt"
	"net/netip"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"

	"github.com/kip-dev/kip/internal/cellapi"
)

// HostPortsTable is the name of the table (in both families) that maps the pod's hostPorts
// to its containerPorts.
const HostPortsTable = "kip-hostports"

// Names of the hostPort table's chains.
const (
	hostPortsPrerouting = "prerouting"
	hostPortsOutput     = "output"
	hostPortsChain      = "hostports"
)

// HostPort is one hostPort that needs a rule: connections to HostIP (any of the cell's own
// addresses when invalid) on Protocol/HostPort go to ContainerPort at the same address.
type HostPort struct {
	Container     string
	Protocol      corev1.Protocol
	HostIP        netip.Addr
	HostPort      uint16
	ContainerPort uint16
}

func (h HostPort) String() string {
	ip := "*"
	if h.HostIP.IsValid() {
		ip = h.HostIP.String()
	}
	return fmt.Sprintf("%s %s:%d → %d (container %q)", h.Protocol, ip, h.HostPort, h.ContainerPort, h.Container)
}

// HostPorts validates the hostPorts of pod's containers and returns those that need a rule:
// a hostPort equal to its containerPort needs none (the pod shares the cell's network
// namespace, so the container already listens there), whatever its hostIP: the pod's IP is
// its host's, so the cell's address on that port is also the pod IP and containerPort, which
// a pod answers on any node; narrowing it to hostIP would take that away. A hostPort other
// than its containerPort is translated on hostIP only. Every problem is reported at once,
// naming the field; the error is cellapi.KindInvalid.
func HostPorts(pod *corev1.Pod) ([]HostPort, error) {
	var probs []string
	var out []HostPort
	type bind struct {
		proto corev1.Protocol
		port  int32
	}
	// taken: hostIP (the zero Addr for "every address") of each protocol/hostPort, and the
	// field that took it.
	taken := map[bind]map[netip.Addr]string{}
	for i, c := range pod.Spec.Containers {
		for j, cp := range c.Ports {
			if cp.HostPort == 0 {
				continue
			}
			field := fmt.Sprintf("spec.containers[%d] (%q).ports[%d]", i, c.Name, j)
			if cp.Name != "" {
				field += fmt.Sprintf(" (%q)", cp.Name)
			}
			proto := cp.Protocol
			if proto == "" {
				proto = corev1.ProtocolTCP
			}
			bad := false
			if _, ok := protocols[proto]; !ok {
				probs = append(probs, fmt.Sprintf("%s.protocol: %q is not supported (TCP, UDP or SCTP)", field, proto))
				bad = true
			}
			if cp.HostPort < 1 || cp.HostPort > 65535 {
				probs = append(probs, fmt.Sprintf("%s.hostPort: %d is out of range 1..65535", field, cp.HostPort))
				bad = true
			}
			if cp.ContainerPort < 1 || cp.ContainerPort > 65535 {
				probs = append(probs, fmt.Sprintf("%s.containerPort: %d is out of range 1..65535", field, cp.ContainerPort))
				bad = true
			}
			var ip netip.Addr
			if cp.HostIP != "" {
				var err error
				if ip, err = parseIP(cp.HostIP); err != nil {
					probs = append(probs, fmt.Sprintf("%s.hostIP: %v", field, err))
					bad = true
				}
			}
			if bad {
				continue
			}
			k := bind{proto, cp.HostPort}
			if taken[k] == nil {
				taken[k] = map[netip.Addr]string{}
			}
			for other, by := range taken[k] {
				if other == ip || !other.IsValid() || !ip.IsValid() {
					probs = append(probs, fmt.Sprintf("%s: hostPort %s/%d is also %s's", field, proto, cp.HostPort, by))
					bad = true
					break
				}
			}
			if bad {
				continue
			}
			taken[k][ip] = field
			if cp.HostPort == cp.ContainerPort {
				continue
			}
			out = append(out, HostPort{Container: c.Name, Protocol: proto, HostIP: ip,
				HostPort: uint16(cp.HostPort), ContainerPort: uint16(cp.ContainerPort)})
		}
	}
	if len(probs) > 0 {
		return nil, cellapi.Errorf(cellapi.KindInvalid, "invalid hostPorts of pod %s/%s: %s", pod.Namespace, pod.Name, strings.Join(probs, "; "))
	}
	return out, nil
}

// SetHostPorts programs pod's hostPorts (see HostPorts), replacing the kip-hostports tables
// in one batch; a pod that needs no rule removes them. An invalid pod changes nothing.
func (p *Programmer) SetHostPorts(ctx context.Context, pod *corev1.Pod) error {
	hps, err := HostPorts(pod)
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	b := p.newBatch()
	for _, f := range families {
		t := f.hostPortsTable()
		b.c.AddTable(t) // create if missing, so that the delete cannot fail
		b.c.DelTable(t)
		b.n += 2
		var rules [][]expr.Any
		for _, h := range hps {
			if !h.HostIP.IsValid() || f.has(h.HostIP) {
				rules = append(rules, f.hostPortRule(h))
			}
		}
		if len(rules) == 0 {
			continue
		}
		b.c.AddTable(t)
		b.n++
		accept := nftables.ChainPolicyAccept
		b.addChain(&nftables.Chain{Name: hostPortsChain, Table: t})
		for _, r := range rules {
			b.addRule(t, hostPortsChain, r...)
		}
		for _, hook := range []struct {
			name string
			hook *nftables.ChainHook
		}{{hostPortsPrerouting, nftables.ChainHookPrerouting}, {hostPortsOutput, nftables.ChainHookOutput}} {
			b.addChain(&nftables.Chain{Name: hook.name, Table: t, Type: nftables.ChainTypeNAT,
				Hooknum: hook.hook, Priority: nftables.ChainPriorityNATDest, Policy: &accept})
			b.addRule(t, hook.name, &expr.Verdict{Kind: expr.VerdictJump, Chain: hostPortsChain})
		}
	}
	if err := b.flush(); err != nil {
		return fmt.Errorf("programming %d hostPorts: %w", len(hps), err)
	}
	return nil
}

// DeleteHostPorts removes the kip-hostports tables; without them it does nothing.
func (p *Programmer) DeleteHostPorts() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	b := p.newBatch()
	for _, f := range families {
		t := f.hostPortsTable()
		b.c.AddTable(t)
		b.c.DelTable(t)
		b.n += 2
	}
	if err := b.flush(); err != nil {
		return fmt.Errorf("deleting %s tables: %w", HostPortsTable, err)
	}
	return nil
}

func (f *family) hostPortsTable() *nftables.Table {
	return &nftables.Table{Name: HostPortsTable, Family: f.tf}
}

// hostPortRule is
//
//	daddr HostIP (or: fib daddr type local) meta l4proto P th dport HostPort dnat to :ContainerPort
//
// a DNAT of the port only: the connection keeps the address it was sent to.
func (f *family) hostPortRule(h HostPort) []expr.Any {
	var e []expr.Any
	if h.HostIP.IsValid() {
		e = append(e,
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: f.daddrOff, Len: f.addrLen},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: h.HostIP.AsSlice()})
	} else {
		e = append(e,
			&expr.Fib{Register: 1, FlagDADDR: true, ResultADDRTYPE: true},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(unix.RTN_LOCAL)})
	}
	return append(e,
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{protocols[h.Protocol]}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(h.HostPort)},
		&expr.Immediate{Register: 1, Data: binaryutil.BigEndian.PutUint16(h.ContainerPort)},
		&expr.NAT{Type: expr.NATTypeDestNAT, Family: f.nfproto, RegProtoMin: 1, Specified: true})
}
