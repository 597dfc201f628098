package cells

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"strconv"

	"github.com/kip-dev/kip/internal/cellapi"
	"github.com/kip-dev/kip/internal/cloud"
	"github.com/kip-dev/kip/internal/pki"
)

// dial returns a client for the cell's agent: Deps.Dial, else mutual TLS with kip's client
// certificate, checking that the agent's certificate names cellID.
func (m *Manager) dial(ctx context.Context, inst *cloud.Instance, cellID string) (cellapi.Agent, error) {
	if m.deps.Dial != nil {
		return m.deps.Dial(ctx, inst, cellID)
	}
	client, err := m.clientCertificate()
	if err != nil {
		return nil, err
	}
	tlsConfig, err := pki.ClientTLSFunc(m.deps.CA.CertPEM, client.GetClientCertificate, cellID)
	if err != nil {
		return nil, fmt.Errorf("dialing cell %s: %w", cellID, err)
	}
	// Each handshake tells when the agent's serving certificate expires, so that it is
	// renewed in time (RenewAgentCerts) whether kip launched or adopted the cell.
	tlsConfig.VerifyConnection = func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) > 0 {
			m.agentCertSeen(cellID, cs.PeerCertificates[0].NotAfter)
		}
		return nil
	}
	url := "https://" + net.JoinHostPort(inst.PrivateIP, strconv.Itoa(m.deps.AgentPort))
	return cellapi.NewClient(url, tlsConfig), nil
}

// clientCertificate makes, once, kip's client certificate: signed by the CA for
// Options.CertLifetime, reissued with a new key when two thirds of it have passed, and
// presented afresh on every handshake.
func (m *Manager) clientCertificate() (*pki.ClientCert, error) {
	m.certOnce.Do(func() {
		if m.deps.CA == nil {
			m.certErr = fmt.Errorf("issuing kip's client certificate: no CA configured")
			return
		}
		m.clientCert, m.certErr = pki.NewClientCert(m.deps.CA,
			pki.LeafSpec{CommonName: "kip", Organization: []string{"kip"}, Client: true, Validity: m.cfg.CertLifetime}, m.clock.Now)
	})
	return m.clientCert, m.certErr
}
