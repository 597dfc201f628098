package local

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/nftables"

	"github.com/kip-dev/kip/internal/agent/svcproxy"
	"github.com/kip-dev/kip/internal/cellapi"
	"github.com/kip-dev/kip/internal/testenv"
)

// hasTable reports whether an nftables table of that name exists in the host namespace.
func hasTable(t *testing.T, name string) bool {
	t.Helper()
	c, err := nftables.New()
	if err != nil {
		t.Fatal(err)
	}
	ts, err := c.ListTables()
	if err != nil {
		t.Fatal(err)
	}
	for _, tb := range ts {
		if tb.Name == name {
			return true
		}
	}
	return false
}

// TestNodePorts: SetNodePorts makes the bridge address's nodePorts reach a cell: its agent
// from the host, its port 80 from another cell once EnableNodePortForwarding ran and from
// the cell itself (hairpin) (but not
// its agent port: the firewall keeps cells off it, nodePort or not); Teardown
// removes the table, and Setup sweeps the table of a bridge that is gone.
func TestNodePorts(t *testing.T) {
	testenv.RequireNetns(t)
	var table string
	t.Cleanup(func() { // after newEnv's Teardown
		if table != "" && hasTable(t, table) {
			t.Errorf("table %s left after Teardown", table)
		}
	})
	e := newEnv(t)
	b := e.backend()
	table = nodePortsTable(e.cfg.Bridge)
	c := e.cloud()
	web := e.launch(c, "np-web", "local.nano")
	client := e.launch(c, "np-client", "local.nano")
	r, err := b.store.read(web.ID)
	if err != nil {
		t.Fatal(err)
	}
	listenInNetns(t, r.meta.Netns, web.PrivateIP+":80")
	// agent: the web cell's agent port, which no cell may reach, through a nodePort either.
	nodePort, agent := int32(30000+randByte(t, 0, 2700)), int32(32720)
	svcs := []cellapi.Service{{Namespace: "ns", Name: "web", ClusterIPs: []string{"10.96.0.10"},
		Ports: []cellapi.ServicePort{
			{Name: "http", Protocol: "TCP", Port: 80, NodePort: nodePort, Endpoints: []cellapi.Endpoint{{IP: web.PrivateIP, Port: 80}}},
			{Name: "agent", Protocol: "TCP", Port: 6421, NodePort: agent, Endpoints: []cellapi.Endpoint{{IP: web.PrivateIP, Port: standinPort}}},
		}}}
	if err := b.EnableNodePortForwarding(); err != nil {
		t.Fatal(err)
	}
	if err := b.SetNodePorts(context.Background(), svcs); err != nil {
		t.Fatalf("SetNodePorts: %v", err)
	}
	bad := []cellapi.Service{svcs[0]}
	bad[0].Ports = []cellapi.ServicePort{{Protocol: "TCP", Port: 80, NodePort: 70000}}
	if err := b.SetNodePorts(context.Background(), bad); !cellapi.IsInvalid(err) {
		t.Errorf("SetNodePorts with nodePort 70000 = %v, want Invalid", err)
	}
	addr := net.JoinHostPort(b.BridgeIP().String(), fmt.Sprint(agent))
	resp, err := httpc.Get("http://" + addr + "/healthz")
	if err != nil {
		t.Fatalf("GET %s/healthz from the host: %v", addr, err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), "np-web") {
		t.Errorf("GET %s/healthz from the host: %s %s, want the web cell's agent", addr, resp.Status, body)
	}
	if err := dial(client.PrivateIP, addr); err == nil {
		t.Errorf("the client cell reached the web cell's agent port through nodePort %s", addr)
	}
	addr = net.JoinHostPort(b.BridgeIP().String(), fmt.Sprint(nodePort))
	if err := dial(client.PrivateIP, addr); err != nil {
		t.Errorf("dialling %s from the client cell: %v", addr, err)
	}
	// Hairpin: the web cell reaches its own port 80 through the nodePort (the host sends the
	// connection back out of the cell's own bridge port).
	if err := dial(web.PrivateIP, addr); err != nil {
		t.Errorf("dialling %s from the web cell, its only endpoint: %v", addr, err)
	}

	// A table left by a backend whose bridge is gone goes at the next Setup.
	gone, err := svcproxy.NewNodePorts("ktgone"+randTag(t), []netip.Addr{netip.MustParseAddr("10.249.0.1")})
	if err != nil {
		t.Fatal(err)
	}
	if err := gone.Replace(context.Background(), svcs); err != nil {
		t.Fatal(err)
	}
	if err := b.Setup(context.Background()); err != nil {
		t.Fatal(err)
	}
	if hasTable(t, gone.Table()) {
		t.Errorf("Setup left %s of a bridge that does not exist", gone.Table())
		_ = gone.Delete()
	}
	if !hasTable(t, table) {
		t.Errorf("Setup removed %s of a live bridge", table)
	}
}
