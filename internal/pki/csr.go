package pki

import (
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"slices"
)

// NewCSR makes a PEM certificate signing request ("CERTIFICATE REQUEST") for key, naming
// commonName and dnsNames. The key stays with the caller; only its public half travels.
func NewCSR(key crypto.Signer, commonName string, dnsNames []string) ([]byte, error) {
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject:  pkix.Name{CommonName: commonName},
		DNSNames: dnsNames,
	}, key)
	if err != nil {
		return nil, fmt.Errorf("making a certificate request for %s: %w", commonName, err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), nil
}

// ParseCSR decodes a PEM certificate request and checks its self-signature, which proves
// the requester holds the key.
func ParseCSR(csrPEM []byte) (*x509.CertificateRequest, error) {
	block, _ := pem.Decode(csrPEM)
	if block == nil || block.Type != "CERTIFICATE REQUEST" {
		return nil, errors.New("parsing certificate request: no CERTIFICATE REQUEST PEM block")
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parsing certificate request: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("checking certificate request signature: %w", err)
	}
	return csr, nil
}

// SignCSR signs a certificate for spec over the public key of csrPEM. The CA decides what
// the certificate says: spec, not the request, gives its names and usages; the request must
// ask for spec's common name and no DNS name outside spec's, so a requester cannot be handed
// a name it did not expect, nor obtain one it was not given. Used to renew a cell agent's
// serving certificate and to enroll a new cell, where the key never leaves the cell.
func (ca *CA) SignCSR(csrPEM []byte, spec LeafSpec) ([]byte, error) {
	csr, err := ParseCSR(csrPEM)
	if err != nil {
		return nil, err
	}
	if csr.Subject.CommonName != spec.CommonName {
		return nil, fmt.Errorf("certificate request names %q, want %q", csr.Subject.CommonName, spec.CommonName)
	}
	for _, n := range csr.DNSNames {
		if !slices.Contains(spec.DNSNames, n) {
			return nil, fmt.Errorf("certificate request for %s asks for DNS name %q, which it may not have", spec.CommonName, n)
		}
	}
	if len(csr.IPAddresses) > 0 || len(csr.URIs) > 0 || len(csr.EmailAddresses) > 0 {
		return nil, fmt.Errorf("certificate request for %s asks for IP, URI or e-mail names, which kip never grants", spec.CommonName)
	}
	return ca.Sign(spec, csr.PublicKey)
}
