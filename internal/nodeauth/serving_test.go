package nodeauth

import (
	"net"
	"testing"
	"time"

	"github.com/kip-dev/kip/internal/pki"
)

func TestUsableServing(t *testing.T) {
	ca, err := pki.NewCA("cluster")
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, err := ca.Issue(pki.LeafSpec{CommonName: "system:node:kip", IPs: []net.IP{net.ParseIP("10.250.0.1")}, Server: true, Validity: 48 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	if _, ok := usableServing(certPEM, keyPEM, "10.250.0.1", now); !ok {
		t.Error("a valid certificate for the address was refused")
	}
	if _, ok := usableServing(certPEM, keyPEM, "10.250.0.2", now); ok {
		t.Error("a certificate for another address was accepted")
	}
	if _, ok := usableServing(certPEM, keyPEM, "10.250.0.1", now.Add(30*time.Hour)); ok {
		t.Error("a certificate expiring within a day was accepted")
	}
	_, otherKey, _ := ca.Issue(pki.LeafSpec{CommonName: "x"})
	if _, ok := usableServing(certPEM, otherKey, "10.250.0.1", now); ok {
		t.Error("a certificate with the wrong key was accepted")
	}
}
