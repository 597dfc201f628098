package cells

import (
	"context"
	"time"

	"github.com/kip-dev/kip/internal/cellapi"
	"github.com/kip-dev/kip/internal/pki"
)

// agentCert is what kip knows of a cell agent's serving certificate.
type agentCert struct {
	notAfter time.Time
	// unsupported: the agent has no renewal route (an older agent); warned once.
	unsupported bool
}

// agentCertSpec is the serving certificate of cell cellID's agent: it names the cell id,
// which kip checks on every connection.
func agentCertSpec(cellID string, lifetime time.Duration) pki.LeafSpec {
	return pki.LeafSpec{CommonName: cellID, DNSNames: []string{cellID}, Server: true, Validity: lifetime}
}

func (m *Manager) agentCertSeen(cellID string, notAfter time.Time) {
	m.certMu.Lock()
	defer m.certMu.Unlock()
	ac := m.agentCerts[cellID]
	if ac == nil {
		ac = &agentCert{}
		m.agentCerts[cellID] = ac
	}
	// An older connection may still present a certificate replaced since: keep the latest.
	if notAfter.After(ac.notAfter) {
		ac.notAfter = notAfter
	}
}

// RenewAgentCerts renews the serving certificate of every running cell's agent whose
// certificate has less than a third of Options.CertLifetime left: the agent makes a new key
// and a certificate request (cellapi.CertRotator), kip signs it with the CA, and the agent
// serves the new certificate to new connections. The key never leaves the cell. An agent
// without the routes gets one Warning log line and is left alone (its certificate expires;
// kip then cannot reach it). It returns when to run again (internal/controllers/loop).
func (m *Manager) RenewAgentCerts(ctx context.Context) time.Duration {
	lifetime := m.cfg.CertLifetime
	next := min(lifetime/6, time.Minute)
	m.EachRunning(func(cellID string, agent cellapi.Agent, _ time.Duration) {
		m.certMu.Lock()
		ac := m.agentCerts[cellID]
		var notAfter time.Time
		skip := ac == nil || ac.unsupported // nil: no handshake yet (or a test's Dial)
		if !skip {
			notAfter = ac.notAfter
		}
		m.certMu.Unlock()
		if skip {
			return
		}
		if wait := pki.RenewAt(notAfter, lifetime).Sub(m.clock.Now()); wait > 0 {
			next = min(next, wait)
			return
		}
		if err := m.renewAgentCert(ctx, cellID, agent); err != nil {
			if cellapi.IsUnsupported(err) {
				m.certMu.Lock()
				ac.unsupported = true
				m.certMu.Unlock()
				m.log.Warn("the cell's agent cannot renew its serving certificate (an older kip-cell); kip will not reach it once the certificate expires",
					"cell", cellID, "expires", notAfter, "err", err)
				return
			}
			m.log.Info("renewing a cell agent's certificate failed; retrying", "cell", cellID, "err", err)
			next = min(next, time.Second)
		}
	})
	// Forget the cells that are gone; a booting cell's entry stays, since its connection,
	// and so its handshake, may be the one it keeps once running.
	live := map[string]bool{}
	m.mu.Lock()
	for _, c := range m.cells {
		if c.stage != stageDone {
			live[c.cellID] = true
		}
	}
	for id := range m.warm {
		live[id] = true
	}
	m.mu.Unlock()
	m.certMu.Lock()
	for id := range m.agentCerts {
		if !live[id] {
			delete(m.agentCerts, id)
		}
	}
	m.certMu.Unlock()
	return max(next, 100*time.Millisecond)
}

func (m *Manager) renewAgentCert(ctx context.Context, cellID string, agent cellapi.Agent) error {
	rot, ok := agent.(cellapi.CertRotator)
	if !ok {
		return cellapi.Errorf(cellapi.KindBadVersion, "the agent client cannot renew certificates")
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	csr, err := rot.RequestCertificate(ctx)
	if err != nil {
		return err
	}
	certPEM, err := m.deps.CA.SignCSR(csr, agentCertSpec(cellID, m.cfg.CertLifetime))
	if err != nil {
		return err
	}
	if _, err := rot.InstallCertificate(ctx, certPEM); err != nil {
		return err
	}
	leaf, err := pki.ParseCert(certPEM)
	if err != nil {
		return err
	}
	m.agentCertSeen(cellID, leaf.NotAfter)
	m.log.Info("renewed the cell agent's serving certificate", "cell", cellID, "expires", leaf.NotAfter)
	return nil
}
