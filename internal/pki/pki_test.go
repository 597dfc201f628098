package pki

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"testing"
)

// TestNewKey: the PEM NewKey returns is the key it returns, in the "EC PRIVATE KEY" form.
func TestNewKey(t *testing.T) {
	key, keyPEM, err := NewKey()
	if err != nil {
		t.Fatal(err)
	}
	block, rest := pem.Decode(keyPEM)
	if block == nil || len(rest) != 0 {
		t.Fatalf("key PEM is not one PEM block: %q", keyPEM)
	}
	if block.Type != "EC PRIVATE KEY" {
		t.Errorf("PEM type = %q, want EC PRIVATE KEY", block.Type)
	}
	parsed, err := x509.ParseECPrivateKey(block.Bytes)
	if err != nil {
		t.Fatalf("parsing the key PEM: %v", err)
	}
	if !parsed.Equal(key) {
		t.Error("the PEM holds a different key than the one returned")
	}
}

// TestIssue: leaves the CA issues load as TLS pairs and verify against the CA for the usages
// asked for, and only those.
func TestIssue(t *testing.T) {
	ca, err := NewCA("test-ca")
	if err != nil {
		t.Fatal(err)
	}
	loaded, err := LoadCA(ca.CertPEM, ca.KeyPEM)
	if err != nil {
		t.Fatalf("LoadCA of a fresh CA: %v", err)
	}
	for _, tc := range []struct {
		name       string
		spec       LeafSpec
		okUsage    x509.ExtKeyUsage
		wrongUsage x509.ExtKeyUsage
	}{
		{"server", LeafSpec{CommonName: "srv", DNSNames: []string{"srv.test"}, Server: true}, x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		{"client", LeafSpec{CommonName: "cli", Client: true}, x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
	} {
		t.Run(tc.name, func(t *testing.T) {
			certPEM, keyPEM, err := loaded.Issue(tc.spec)
			if err != nil {
				t.Fatal(err)
			}
			pair, err := tls.X509KeyPair(certPEM, keyPEM)
			if err != nil {
				t.Fatalf("issued cert and key do not pair: %v", err)
			}
			leaf, err := x509.ParseCertificate(pair.Certificate[0])
			if err != nil {
				t.Fatal(err)
			}
			if leaf.Subject.CommonName != tc.spec.CommonName {
				t.Errorf("CN = %q, want %q", leaf.Subject.CommonName, tc.spec.CommonName)
			}
			if _, err := leaf.Verify(x509.VerifyOptions{Roots: ca.Pool(), KeyUsages: []x509.ExtKeyUsage{tc.okUsage}}); err != nil {
				t.Errorf("verifying for usage %v: %v", tc.okUsage, err)
			}
			if _, err := leaf.Verify(x509.VerifyOptions{Roots: ca.Pool(), KeyUsages: []x509.ExtKeyUsage{tc.wrongUsage}}); err == nil {
				t.Errorf("verifies for usage %v it was not issued for", tc.wrongUsage)
			}
		})
	}
}

// TestLoadCARefusesLeaf: a leaf certificate is not accepted as a CA.
func TestLoadCARefusesLeaf(t *testing.T) {
	ca, err := NewCA("test-ca")
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, err := ca.Issue(LeafSpec{CommonName: "leaf", Server: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := LoadCA(certPEM, keyPEM); err == nil {
		t.Error("LoadCA accepted a leaf certificate")
	}
}
