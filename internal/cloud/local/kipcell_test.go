package local

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/kip-dev/kip/internal/cellapi"
	"github.com/kip-dev/kip/internal/cloud"
	"github.com/kip-dev/kip/internal/pki"
)

// kipCellBinary returns the real cell agent: $KIP_CELL_BIN, or cmd/kip-cell built now.
func kipCellBinary(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("KIP_CELL_BIN"); p != "" {
		return p
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("skipping: no go toolchain to build cmd/kip-cell and KIP_CELL_BIN is not set")
	}
	out := filepath.Join(t.TempDir(), "kip-cell")
	cmd := exec.Command(goBin, "build", "-o", out, "github.com/kip-dev/kip/cmd/kip-cell")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building cmd/kip-cell: %v\n%s", err, b)
	}
	return out
}

// kipCellPKI is kip's side of the cells' mutual TLS: a CA and kip's client certificate.
type kipCellPKI struct {
	ca                *pki.CA
	caPEM             []byte
	clientPEM, keyPEM []byte
}

func newKipCellPKI(t testing.TB) *kipCellPKI {
	t.Helper()
	ca, err := pki.NewCA("kip-test-ca")
	if err != nil {
		t.Fatal(err)
	}
	cert, key, err := ca.Issue(pki.LeafSpec{CommonName: "kip", Client: true})
	if err != nil {
		t.Fatal(err)
	}
	return &kipCellPKI{ca: ca, caPEM: ca.CertPEM, clientPEM: cert, keyPEM: key}
}

// bootstrap returns the bootstrap data of a cell: its own serving certificate naming cellID.
func (p *kipCellPKI) bootstrap(t testing.TB, cellID string) []byte {
	t.Helper()
	cert, key, err := p.ca.Issue(pki.LeafSpec{CommonName: cellID, DNSNames: []string{cellID}, Server: true})
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(cellapi.Bootstrap{CellID: cellID, CACert: p.caPEM, Cert: cert, Key: key})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// client returns a cellapi client for the cell at ip that checks the cell's name.
func (p *kipCellPKI) client(t testing.TB, cellID, ip string) *cellapi.Client {
	t.Helper()
	tlsConfig, err := pki.ClientTLS(p.caPEM, p.clientPEM, p.keyPEM, cellID)
	if err != nil {
		t.Fatal(err)
	}
	return cellapi.NewClient("https://"+net.JoinHostPort(ip, strconv.Itoa(cellapi.DefaultPort)), tlsConfig)
}

// waitAgentHealthy polls Health over mTLS until it answers (deadline 20 s).
func waitAgentHealthy(t testing.TB, c *cellapi.Client) *cellapi.Health {
	t.Helper()
	var h *cellapi.Health
	var last error
	ok := waitFor(time.Now().Add(20*time.Second), func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		h, last = c.Health(ctx)
		return last == nil
	})
	if !ok {
		t.Fatalf("kip-cell never became healthy: %v", last)
	}
	return h
}

// TestKipCell boots the real cell agent through the backend, with a bootstrap carrying
// certificates from internal/pki, and talks to it over mutual TLS.
func TestKipCell(t *testing.T) {
	e := newEnv(t)
	bin := kipCellBinary(t)
	e.cfg.AgentCommand = []string{bin}
	e.cfg.AgentEnv = nil
	p := newKipCellPKI(t)
	c := e.cloud()
	ctx := context.Background()
	const cellID = "kipcell-1"
	in, err := c.Launch(ctx, cloud.LaunchSpec{
		CellID: cellID, ClientToken: cellID, InstanceType: "local.small",
		Tags: map[string]string{cloud.TagCellID: cellID}, BootstrapData: p.bootstrap(t, cellID),
	})
	if err != nil {
		t.Fatalf("Launch: %v", err)
	}
	logFile := filepath.Join(e.cfg.StateDir, "cells", in.ID, "agent.log")
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(logFile)
			t.Logf("agent log:\n%s", b)
		}
	})
	client := p.client(t, cellID, in.PrivateIP)
	defer client.Close()
	h := waitAgentHealthy(t, client)
	if h.CellID != cellID {
		t.Errorf("Health.CellID = %q, want %q", h.CellID, cellID)
	}
	// Authenticated routes work with kip's certificate.
	sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := client.Stats(sctx); err != nil {
		t.Errorf("Stats over mTLS: %v", err)
	}
	// A client whose certificate another CA signed is refused on authenticated routes.
	other := newKipCellPKI(t)
	tlsConfig, err := pki.ClientTLS(p.caPEM, other.clientPEM, other.keyPEM, cellID)
	if err != nil {
		t.Fatal(err)
	}
	stranger := cellapi.NewClient(fmt.Sprintf("https://%s:%d", in.PrivateIP, cellapi.DefaultPort), tlsConfig)
	defer stranger.Close()
	if _, err := stranger.Stats(sctx); err == nil {
		t.Errorf("Stats with a certificate from another CA succeeded")
	}
	if err := c.Terminate(ctx, in.ID); err != nil {
		t.Fatalf("Terminate: %v", err)
	}
}
