package local

import (
	"context"
	"fmt"
	"net"
	"os/exec"
	"runtime"
	"strings"
	"testing"

	"github.com/vishvananda/netns"

	"github.com/kip-dev/kip/internal/cloud"
)

// listenInNetns listens on addr inside the named netns and accepts (and closes) connections
// until the test ends.
func listenInNetns(t *testing.T, name, addr string) {
	t.Helper()
	lnc := make(chan net.Listener, 1)
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread is discarded, not returned
		ns, err := netns.GetFromName(name)
		if err != nil {
			errc <- err
			return
		}
		defer ns.Close()
		if err := netns.Set(ns); err != nil {
			errc <- err
			return
		}
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			errc <- err
			return
		}
		lnc <- ln
	}()
	var ln net.Listener
	select {
	case err := <-errc:
		t.Fatalf("listening on %s in %s: %v", addr, name, err)
	case ln = <-lnc:
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
}

// TestSecurityGroups runs three cells on a real bridge with the host firewall: web (group
// web: TCP 80 from group client), client (group client: no ingress) and other (no group
// named: the default group, which allows everything from the subnet).
func TestSecurityGroups(t *testing.T) {
	e := newEnv(t) // skips without root and namespaces
	e.cfg.SecurityGroups = []SecurityGroup{
		{Name: "web", Ingress: []IngressRule{{Protocol: ProtoTCP, FromPort: 80, ToPort: 80, From: []string{"client"}}}},
		{Name: "client"},
		{Name: "default", Ingress: []IngressRule{{Protocol: ProtoAll, From: []string{e.cfg.Subnet}}}},
	}
	e.cfg.DefaultSecurityGroups = []string{"default"}
	c := e.cloud()
	b := e.backend()
	launch := func(cellID string, groups ...string) *cloud.Instance {
		t.Helper()
		in, err := c.Launch(context.Background(), cloud.LaunchSpec{
			CellID: cellID, ClientToken: cellID, InstanceType: "local.nano", SecurityGroups: groups,
			Tags: map[string]string{cloud.TagCellID: cellID}, BootstrapData: []byte("{}"),
		})
		if err != nil {
			t.Fatalf("Launch(%s): %v", cellID, err)
		}
		e.waitHealthy(in.PrivateIP)
		return in
	}
	web := launch("sg-web", "web")
	client := launch("sg-client", "client")
	other := launch("sg-other")
	netnsOf := func(in *cloud.Instance) string {
		r, err := b.store.read(in.ID)
		if err != nil {
			t.Fatal(err)
		}
		return r.meta.Netns
	}
	for _, in := range []*cloud.Instance{web, client, other} {
		listenInNetns(t, netnsOf(in), in.PrivateIP+":80")
	}
	for _, fam := range []string{"bridge", "inet"} {
		if out, err := exec.Command("nft", "list", "table", fam, b.FirewallTable()).CombinedOutput(); err == nil {
			t.Logf("nft list table %s %s:\n%s", fam, b.FirewallTable(), out)
		}
	}

	port := func(in *cloud.Instance, p int) string { return fmt.Sprintf("%s:%d", in.PrivateIP, p) }
	tests := []struct {
		name     string
		from, to *cloud.Instance
		port     int
		ok       bool
	}{
		{"client reaches web:80 (and web's replies come back)", client, web, 80, true},
		{"a cell in neither group is refused web:80", other, web, 80, false},
		{"client cannot reach web's agent port", client, web, AgentPort, false},
		{"the default group allows web to reach other:80", web, other, 80, true},
		{"the default group allows client to reach other:80", client, other, 80, true},
		{"the default group still closes other's agent port", web, other, AgentPort, false},
		{"client accepts nothing: web cannot reach client:80", web, client, 80, false},
	}
	for _, tt := range tests {
		err := dialFromNetns(netnsOf(tt.from), port(tt.to, tt.port))
		if tt.ok && err != nil {
			t.Errorf("%s: %v", tt.name, err)
		}
		if !tt.ok && err == nil {
			t.Errorf("%s: connected", tt.name)
		}
	}
	// The host reaches every cell, agent port included.
	for _, in := range []*cloud.Instance{web, client, other} {
		if err := getJSON(in.PrivateIP, "/healthz", new(standinHealth)); err != nil {
			t.Errorf("the host cannot reach %s's agent: %v", in.CellID, err)
		}
		if c, err := net.DialTimeout("tcp", port(in, 80), 500e6); err != nil {
			t.Errorf("the host cannot reach %s:80: %v", in.CellID, err)
		} else {
			c.Close()
		}
	}

	// Terminating the cells leaves a table without cell chains; Teardown removes it.
	for _, in := range []*cloud.Instance{web, client, other} {
		if err := c.Terminate(context.Background(), in.ID); err != nil {
			t.Fatal(err)
		}
	}
	out, err := exec.Command("nft", "list", "table", "inet", b.FirewallTable()).CombinedOutput()
	if err != nil || strings.Contains(string(out), "chain cell-") {
		t.Errorf("after terminating every cell: %v:\n%s", err, out)
	}
	if err := b.Teardown(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, fam := range []string{"bridge", "inet"} {
		if out, err := exec.Command("nft", "list", "table", fam, b.FirewallTable()).CombinedOutput(); err == nil {
			t.Errorf("table %s %s is still there after Teardown:\n%s", fam, b.FirewallTable(), out)
		}
	}
}
