package pki

import (
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"sync"
	"time"
)

// RenewAt is when a certificate that expires at notAfter and was issued for lifetime should
// be replaced: once two thirds of its lifetime have passed, leaving a third for retries.
func RenewAt(notAfter time.Time, lifetime time.Duration) time.Time {
	return notAfter.Add(-lifetime / 3)
}

// ServingCert is a server certificate that can be replaced while serving: a tls.Config
// built with GetCertificate presents the current one to every new connection (connections
// already open keep theirs). Replacing it goes through Request and Install, so the private
// key is made where it is used and never travels. Safe for concurrent use.
type ServingCert struct {
	roots *x509.CertPool

	mu      sync.Mutex
	cur     *tls.Certificate
	pending *ecdsa.PrivateKey
}

// NewServingCert starts with certPEM/keyPEM; Install accepts only certificates that verify
// against caPEM for server use.
func NewServingCert(caPEM, certPEM, keyPEM []byte) (*ServingCert, error) {
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("loading server certificate: %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		return nil, errors.New("loading CA: no certificate in PEM")
	}
	return &ServingCert{roots: roots, cur: &pair}, nil
}

// GetCertificate is tls.Config.GetCertificate: the current certificate.
func (s *ServingCert) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cur, nil
}

// Leaf returns the current certificate, parsed.
func (s *ServingCert) Leaf() *x509.Certificate {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cur.Leaf
}

// Request makes a new key, keeps it until Install, and returns a PEM certificate request
// for it naming the current certificate's common name and DNS names. A later Request
// replaces the pending key.
func (s *ServingCert) Request() ([]byte, error) {
	key, _, err := NewKey()
	if err != nil {
		return nil, err
	}
	leaf := s.Leaf()
	csr, err := NewCSR(key, leaf.Subject.CommonName, leaf.DNSNames)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.pending = key
	s.mu.Unlock()
	return csr, nil
}

// Install makes certPEM, which must be for the key of the last Request, verify against the
// CA for server use and name the same common name as the current certificate, the
// certificate served to new connections. Returns the installed certificate.
func (s *ServingCert) Install(certPEM []byte) (*x509.Certificate, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pending == nil {
		return nil, errors.New("installing certificate: no certificate request is pending")
	}
	cert, err := ParseCert(certPEM)
	if err != nil {
		return nil, fmt.Errorf("installing certificate: %w", err)
	}
	if !s.pending.PublicKey.Equal(cert.PublicKey) {
		return nil, errors.New("installing certificate: it is not for the key of the pending request")
	}
	if cert.Subject.CommonName != s.cur.Leaf.Subject.CommonName {
		return nil, fmt.Errorf("installing certificate: it names %q, want %q", cert.Subject.CommonName, s.cur.Leaf.Subject.CommonName)
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: s.roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		return nil, fmt.Errorf("installing certificate: %w", err)
	}
	s.cur = &tls.Certificate{Certificate: [][]byte{cert.Raw}, PrivateKey: s.pending, Leaf: cert}
	s.pending = nil
	return cert, nil
}

// ClientCert is a client certificate the CA reissues, with a new key, once two thirds of
// its lifetime have passed: a tls.Config built with GetClientCertificate presents a valid
// one on every handshake. Safe for concurrent use.
type ClientCert struct {
	ca       *CA
	spec     LeafSpec
	lifetime time.Duration
	now      func() time.Time

	mu      sync.Mutex
	cur     *tls.Certificate
	renewAt time.Time
}

// NewClientCert issues spec (spec.Validity is its lifetime; zero means one year) from ca.
// now is the clock (nil: time.Now).
func NewClientCert(ca *CA, spec LeafSpec, now func() time.Time) (*ClientCert, error) {
	if now == nil {
		now = time.Now
	}
	if spec.Validity == 0 {
		spec.Validity = 365 * 24 * time.Hour
	}
	c := &ClientCert{ca: ca, spec: spec, lifetime: spec.Validity, now: now}
	if _, err := c.get(); err != nil {
		return nil, err
	}
	return c, nil
}

// GetClientCertificate is tls.Config.GetClientCertificate.
func (c *ClientCert) GetClientCertificate(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	return c.get()
}

// Leaf returns the certificate presented now, reissuing it first when due.
func (c *ClientCert) Leaf() (*x509.Certificate, error) {
	cert, err := c.get()
	if err != nil {
		return nil, err
	}
	return cert.Leaf, nil
}

func (c *ClientCert) get() (*tls.Certificate, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.now()
	if c.cur != nil && now.Before(c.renewAt) {
		return c.cur, nil
	}
	certPEM, keyPEM, err := c.ca.Issue(c.spec)
	if err != nil {
		if c.cur != nil && now.Before(c.cur.Leaf.NotAfter) {
			return c.cur, nil // still valid: retry on the next handshake
		}
		return nil, err
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("loading the client certificate of %s: %w", c.spec.CommonName, err)
	}
	c.cur, c.renewAt = &pair, RenewAt(pair.Leaf.NotAfter, c.lifetime)
	return c.cur, nil
}

// ServerTLSFunc is ServerTLS with the serving certificate from getCert (a ServingCert's
// GetCertificate), so it can change while serving.
func ServerTLSFunc(caPEM []byte, getCert func(*tls.ClientHelloInfo) (*tls.Certificate, error)) (*tls.Config, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, errors.New("loading client CA: no certificate in PEM")
	}
	return &tls.Config{
		GetCertificate: getCert,
		ClientCAs:      pool,
		ClientAuth:     tls.VerifyClientCertIfGiven,
		MinVersion:     tls.VersionTLS12,
	}, nil
}

// ClientTLSFunc is ClientTLS with the client certificate from getCert (a ClientCert's
// GetClientCertificate), so it can change between handshakes.
func ClientTLSFunc(caPEM []byte, getCert func(*tls.CertificateRequestInfo) (*tls.Certificate, error), serverName string) (*tls.Config, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, errors.New("loading server CA: no certificate in PEM")
	}
	return &tls.Config{
		GetClientCertificate: getCert,
		RootCAs:              pool,
		ServerName:           serverName,
		MinVersion:           tls.VersionTLS12,
	}, nil
}

// ParseCert parses the first PEM "CERTIFICATE" block of certPEM.
func ParseCert(certPEM []byte) (*x509.Certificate, error) {
	block, _ := pem.Decode(certPEM)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, errors.New("no CERTIFICATE PEM block")
	}
	return x509.ParseCertificate(block.Bytes)
}
