package cells

import (
	"context"
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
	cert, key, err := m.clientCertificate()
	if err != nil {
		return nil, err
	}
	tlsConfig, err := pki.ClientTLS(m.deps.CA.CertPEM, cert, key, cellID)
	if err != nil {
		return nil, fmt.Errorf("dialing cell %s: %w", cellID, err)
	}
	url := "https://" + net.JoinHostPort(inst.PrivateIP, strconv.Itoa(m.deps.AgentPort))
	return cellapi.NewClient(url, tlsConfig), nil
}

// clientCertificate issues, once, kip's client certificate signed by the CA.
func (m *Manager) clientCertificate() (cert, key []byte, err error) {
	m.certOnce.Do(func() {
		if m.deps.CA == nil {
			m.certErr = fmt.Errorf("issuing kip's client certificate: no CA configured")
			return
		}
		m.clientCert, m.clientKey, m.certErr = m.deps.CA.Issue(pki.LeafSpec{CommonName: "kip", Organization: []string{"kip"}, Client: true})
	})
	return m.clientCert, m.clientKey, m.certErr
}
