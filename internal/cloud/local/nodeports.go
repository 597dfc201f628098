package local

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/google/nftables"

	"github.com/kip-dev/kip/internal/agent/svcproxy"
	"github.com/kip-dev/kip/internal/cellapi"
)

// nodePortsTable is the nftables table (families ip and ip6) of the nodePorts of the backend
// on bridge.
func nodePortsTable(bridge string) string { return svcproxy.NodePortsTablePrefix + bridge }

// nodePorts returns the programmer of the bridge's nodePorts table, answering on the bridge
// address only (the virtual node's InternalIP).
func (b *Backend) nodePorts() (*svcproxy.NodePorts, error) {
	addr, ok := netip.AddrFromSlice(b.bridgeIP.To4())
	if !ok {
		return nil, fmt.Errorf("bridge address %s is not IPv4", b.bridgeIP)
	}
	return svcproxy.NewNodePorts(b.cfg.Bridge, []netip.Addr{addr})
}

// SetNodePorts makes <bridge address>:<nodePort> of every port of svcs that has a nodePort
// reach the port's endpoints, as kube-proxy does for a node's address: the host's own
// connections, the cells' (see EnableNodePortForwarding) and, where routed here, other
// hosts'. svcs is the whole table, as the cells get it; each call replaces the previous
// one in one nftables transaction (table ip kip-nodeports-<bridge>), and an invalid table
// is refused (cellapi.KindInvalid, naming the Service and port) without changing anything.
// Not in process-only mode.
func (b *Backend) SetNodePorts(ctx context.Context, svcs []cellapi.Service) error {
	if b.cfg.ProcessOnly {
		return errors.New("nodePorts need the bridge: not available in process-only mode")
	}
	np, err := b.nodePorts()
	if err != nil {
		return fmt.Errorf("setting nodePorts: %w", err)
	}
	if err := np.Replace(ctx, svcs); err != nil {
		return fmt.Errorf("setting nodePorts: %w", err)
	}
	return nil
}

// EnableNodePortForwarding turns on IPv4 forwarding for packets that arrive on the bridge
// (net.ipv4.conf.<bridge>.forwarding = 1, not the host-wide ip_forward), which a cell's
// connection to a nodePort whose endpoint is another cell needs: the host DNATs it and
// sends it back onto the bridge. It logs what it changes. Call it once after Setup, before
// SetNodePorts; the setting goes with the bridge at Teardown.
func (b *Backend) EnableNodePortForwarding() error {
	if b.cfg.ProcessOnly {
		return errors.New("nodePorts need the bridge: not available in process-only mode")
	}
	p := filepath.Join("/proc/sys/net/ipv4/conf", b.cfg.Bridge, "forwarding")
	v, err := os.ReadFile(p)
	if err != nil {
		return fmt.Errorf("enabling forwarding on %s: %w", b.cfg.Bridge, err)
	}
	if strings.TrimSpace(string(v)) == "1" {
		return nil
	}
	b.log.Info("enabling IPv4 forwarding on the bridge so that cells reach nodePorts served by other cells",
		"sysctl", "net.ipv4.conf."+b.cfg.Bridge+".forwarding", "was", strings.TrimSpace(string(v)))
	if err := os.WriteFile(p, []byte("1"), 0o644); err != nil {
		return fmt.Errorf("enabling forwarding on %s: %w", b.cfg.Bridge, err)
	}
	return nil
}

// deleteNodePorts removes the bridge's nodePorts table if it is there.
func deleteNodePorts(bridge string) error {
	np, err := svcproxy.NewNodePorts(bridge, nil)
	if err != nil {
		return err
	}
	return np.Delete()
}

// sweepNodePorts deletes the nodePorts tables of bridges that no longer exist (a backend
// that died without its teardown).
func sweepNodePorts(bridgeExists func(string) bool) error {
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("opening nftables: %w", err)
	}
	tables, err := c.ListTables()
	if err != nil {
		return fmt.Errorf("listing nftables tables: %w", err)
	}
	var errs []error
	done := map[string]bool{}
	for _, t := range tables {
		br, ok := strings.CutPrefix(t.Name, svcproxy.NodePortsTablePrefix)
		if !ok || done[br] || bridgeExists(br) || (t.Family != nftables.TableFamilyIPv4 && t.Family != nftables.TableFamilyIPv6) {
			continue
		}
		done[br] = true
		if err := deleteNodePorts(br); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
