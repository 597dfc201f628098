package cellenroll

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kip-dev/kip/internal/pki"
)

// TestLoad: only an identity that serves this cell under this CA is reused; anything else
// makes the agent enroll (with its token) instead of serving a wrong certificate.
func TestLoad(t *testing.T) {
	ca, _ := pki.NewCA("kip")
	other, _ := pki.NewCA("other")
	cert, key, _ := ca.Issue(pki.LeafSpec{CommonName: "c-1", DNSNames: []string{"c-1"}, Server: true})
	_, otherKey, _ := ca.Issue(pki.LeafSpec{CommonName: "c-1", DNSNames: []string{"c-1"}, Server: true})
	client, clientKey, _ := ca.Issue(pki.LeafSpec{CommonName: "c-1", DNSNames: []string{"c-1"}, Client: true})
	write := func(t *testing.T, cert, key []byte) string {
		dir := t.TempDir()
		os.WriteFile(filepath.Join(dir, CertFile), cert, 0o600)
		os.WriteFile(filepath.Join(dir, KeyFile), key, 0o600)
		return dir
	}
	if _, _, err := Load(t.TempDir(), "c-1", ca.CertPEM); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Load of an empty dir = %v, want ErrNotExist", err)
	}
	if c, k, err := Load(write(t, cert, key), "c-1", ca.CertPEM); err != nil || string(c) != string(cert) || string(k) != string(key) {
		t.Errorf("Load of a good identity: %v", err)
	}
	for _, tc := range []struct {
		name, dir, cell string
		ca              []byte
		want            string
	}{
		{"another cell", write(t, cert, key), "c-2", ca.CertPEM, "c-2"},
		{"another CA", write(t, cert, key), "c-1", other.CertPEM, "unknown authority"},
		{"key does not match", write(t, cert, otherKey), "c-1", ca.CertPEM, "does not match"},
		{"client certificate", write(t, client, clientKey), "c-1", ca.CertPEM, "usage"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, _, err := Load(tc.dir, tc.cell, tc.ca); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Load = %v, want an error with %q", err, tc.want)
			}
		})
	}
}
