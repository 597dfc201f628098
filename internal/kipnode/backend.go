package kipnode

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"

	"github.com/kip-dev/kip/internal/cloud"
	"github.com/kip-dev/kip/internal/cloud/faulty"
	"github.com/kip-dev/kip/internal/cloud/local"
	"github.com/kip-dev/kip/internal/config"
)

// backend returns the cell backend: the one handed in by the caller, or one built from the
// config. This (with aws.go and kip up) is the only place that names a concrete backend. The
// returned func releases it (for AWS: stops the catalog refresh); it never terminates cells,
// which outlive kip.
func (r *runner) backend(ctx context.Context) (cloud.Cloud, func(), error) {
	if r.opts.Cloud != nil {
		return r.opts.Cloud, func() {}, nil
	}
	c := r.cfg.Cloud
	switch c.Provider {
	case config.ProviderLocal:
		agent := c.Local.AgentPath
		if agent == "" {
			self, err := os.Executable()
			if err != nil {
				return nil, nil, fmt.Errorf("starting kip: cloud.local.agentPath is empty and this executable's path is unknown: %w", err)
			}
			agent = filepath.Join(filepath.Dir(self), "kip-cell")
		}
		if _, err := os.Stat(agent); err != nil {
			return nil, nil, fmt.Errorf("starting kip: cloud.local.agentPath: the cell agent %s: %w", agent, err)
		}
		b, err := local.New(local.Config{
			StateDir:     c.Local.StateDir,
			Bridge:       c.Local.Bridge,
			Subnet:       c.Local.Subnet,
			AgentCommand: []string{agent},
			Logger:       r.log.With("component", "local-backend"),

			ImageStore:         c.Local.ImageStore.Dir,
			ImageStoreMaxBytes: c.Local.ImageStore.MaxSize.Value(),

			SecurityGroups:        localGroups(c.Local.SecurityGroups),
			DefaultSecurityGroups: c.Local.DefaultSecurityGroups,
		})
		if err != nil {
			return nil, nil, fmt.Errorf("starting kip: %w", err)
		}
		// Idempotent: the bridge may exist already (kip up, a previous run).
		if err := b.Setup(ctx); err != nil {
			return nil, nil, fmt.Errorf("starting kip: setting up the local backend: %w", err)
		}
		return b, func() {}, nil
	case config.ProviderAWS:
		b, _, stop, err := r.awsBackend(ctx)
		if err != nil {
			return nil, nil, err
		}
		return b, stop, nil
	}
	return nil, nil, fmt.Errorf("starting kip: cloud.provider: unsupported value %q (local, aws)", c.Provider)
}

// nodeIP is the address the apiserver and cells reach kip on: node.internalIP, else the local
// bridge address, else $POD_IP (kip running as a pod, from the downward API), else the host's
// first global unicast IPv4 address. Loopback is refused: the apiserver will not proxy to it
// and cells cannot reach the host's loopback.
func (r *runner) nodeIP(b cloud.Cloud) (string, error) {
	ip := r.cfg.Node.InternalIP
	if ip == "" {
		if lb, ok := b.(interface{ BridgeIP() net.IP }); ok {
			ip = lb.BridgeIP().String()
		} else {
			addrs := r.interfaceAddrs
			if addrs == nil {
				addrs = net.InterfaceAddrs
			}
			ip = hostIP(os.Getenv("POD_IP"), addrs)
		}
	}
	if ip == "" {
		return "", fmt.Errorf("starting kip: node.internalIP: empty and the %s backend has no bridge address to default to", b.Name())
	}
	parsed := net.ParseIP(ip)
	if parsed == nil {
		return "", fmt.Errorf("starting kip: node.internalIP: %q is not an IP address", ip)
	}
	if parsed.IsLoopback() || parsed.IsUnspecified() {
		return "", fmt.Errorf("starting kip: node.internalIP: %s cannot be used: the apiserver refuses to reach a node on a loopback or unspecified address", ip)
	}
	return ip, nil
}

// hostIP returns podIP when set, else the first global unicast IPv4 address of this host.
func hostIP(podIP string, addrs func() ([]net.Addr, error)) string {
	if podIP != "" {
		return podIP
	}
	as, err := addrs()
	if err != nil {
		return ""
	}
	for _, a := range as {
		if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil && n.IP.IsGlobalUnicast() {
			return n.IP.String()
		}
	}
	return ""
}

// localGroups converts cloud.local.securityGroups (validated) for the local backend.
func localGroups(gs []config.LocalSecurityGroup) []local.SecurityGroup {
	var out []local.SecurityGroup
	for _, g := range gs {
		lg := local.SecurityGroup{Name: g.Name}
		for _, r := range g.Ingress {
			from, to, _ := r.PortRange()
			lg.Ingress = append(lg.Ingress, local.IngressRule{Protocol: strings.ToLower(r.Protocol), FromPort: from, ToPort: to, From: r.From})
		}
		out = append(out, lg)
	}
	return out
}

// faults wraps b in the fault injector when the config has a cloud.faults block (a testing
// aid for make chaos, docs/chaos.md), logging each injected fault; without one it returns b.
func (r *runner) faults(b cloud.Cloud) (cloud.Cloud, error) {
	f := r.cfg.Cloud.Faults
	if f == nil {
		return b, nil
	}
	log := r.log.With("component", "cloud-faults")
	log.Warn("cloud.faults is set: some cloud calls will fail on purpose (a testing aid)", "seed", f.Seed,
		"throttleRate", f.ThrottleRate, "serverErrorRate", f.ServerErrorRate, "capacityErrorRate", f.CapacityErrorRate, "lostResponseRate", f.LostResponseRate)
	fc, err := faulty.New(b, faulty.Config{
		Seed: f.Seed, ThrottleRate: f.ThrottleRate, ServerErrorRate: f.ServerErrorRate,
		CapacityErrorRate: f.CapacityErrorRate, LostResponseRate: f.LostResponseRate,
	}, func(op string, k faulty.Kind) { log.Info("injected cloud fault", "call", op, "fault", string(k)) })
	if err != nil {
		return nil, fmt.Errorf("starting kip: cloud.faults: %w", err)
	}
	return fc, nil
}
