package pki

import (
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestSignCSR: the CA signs a request over the requester's key with the names it decides,
// and refuses requests for other names or with a broken signature.
func TestSignCSR(t *testing.T) {
	ca, err := NewCA("test-ca")
	if err != nil {
		t.Fatal(err)
	}
	key, _, err := NewKey()
	if err != nil {
		t.Fatal(err)
	}
	spec := LeafSpec{CommonName: "cell-1", DNSNames: []string{"cell-1"}, Server: true, Validity: time.Hour}
	csr, err := NewCSR(key, "cell-1", []string{"cell-1"})
	if err != nil {
		t.Fatal(err)
	}
	certPEM, err := ca.SignCSR(csr, spec)
	if err != nil {
		t.Fatalf("SignCSR: %v", err)
	}
	cert, err := ParseCert(certPEM)
	if err != nil {
		t.Fatal(err)
	}
	if !key.PublicKey.Equal(cert.PublicKey) {
		t.Error("the certificate is not for the requester's key")
	}
	if cert.Subject.CommonName != "cell-1" || len(cert.DNSNames) != 1 || cert.DNSNames[0] != "cell-1" {
		t.Errorf("certificate names %q %v, want cell-1 [cell-1]", cert.Subject.CommonName, cert.DNSNames)
	}
	if _, err := cert.Verify(x509VerifyServer(ca)); err != nil {
		t.Errorf("the signed certificate does not verify for server use: %v", err)
	}

	other, err := NewCSR(key, "cell-2", []string{"cell-2"})
	if err != nil {
		t.Fatal(err)
	}
	extra, err := NewCSR(key, "cell-1", []string{"cell-1", "kubernetes.default"})
	if err != nil {
		t.Fatal(err)
	}
	tampered := []byte(strings.Replace(string(csr), string(csr[100:110]), "AAAAAAAAAA", 1))
	for name, bad := range map[string][]byte{"other common name": other, "extra DNS name": extra, "tampered": tampered, "not PEM": []byte("x")} {
		if _, err := ca.SignCSR(bad, spec); err == nil {
			t.Errorf("%s: SignCSR signed it", name)
		}
	}
}

// TestServingCertRotation: a server using ServingCert.GetCertificate presents the installed
// certificate to new connections; Install refuses certificates for another key, from another
// CA, or without a pending request.
func TestServingCertRotation(t *testing.T) {
	ca, err := NewCA("test-ca")
	if err != nil {
		t.Fatal(err)
	}
	spec := LeafSpec{CommonName: "cell-1", DNSNames: []string{"cell-1"}, Server: true, Validity: time.Hour}
	certPEM, keyPEM, err := ca.Issue(spec)
	if err != nil {
		t.Fatal(err)
	}
	sc, err := NewServingCert(ca.CertPEM, certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	addr := serveTLS(t, ca, sc)
	first := servedSerial(t, ca, addr)
	if _, err := sc.Install(certPEM); err == nil {
		t.Error("Install without a pending request succeeded")
	}

	csr, err := sc.Request()
	if err != nil {
		t.Fatal(err)
	}
	// A certificate for some other key, and one from another CA, are refused.
	otherPEM, _, err := ca.Issue(spec)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sc.Install(otherPEM); err == nil {
		t.Error("Install accepted a certificate for another key")
	}
	rogue, err := NewCA("rogue")
	if err != nil {
		t.Fatal(err)
	}
	roguePEM, err := rogue.SignCSR(csr, spec)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sc.Install(roguePEM); err == nil {
		t.Error("Install accepted a certificate from another CA")
	}
	if got := servedSerial(t, ca, addr); got != first {
		t.Fatalf("a refused Install changed the served certificate")
	}

	newPEM, err := ca.SignCSR(csr, spec)
	if err != nil {
		t.Fatal(err)
	}
	installed, err := sc.Install(newPEM)
	if err != nil {
		t.Fatalf("Install: %v", err)
	}
	if got := servedSerial(t, ca, addr); got != installed.SerialNumber.String() || got == first {
		t.Errorf("served serial after Install = %s, want the new %s (old %s)", got, installed.SerialNumber, first)
	}
}

// TestClientCertRenews: ClientCert keeps presenting its certificate until two thirds of the
// lifetime have passed, then a new one with a new key.
func TestClientCertRenews(t *testing.T) {
	ca, err := NewCA("test-ca")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	now := time.Now()
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	step := func(d time.Duration) { mu.Lock(); defer mu.Unlock(); now = now.Add(d) }
	cc, err := NewClientCert(ca, LeafSpec{CommonName: "kip", Client: true, Validity: 30 * time.Hour}, clock)
	if err != nil {
		t.Fatal(err)
	}
	get := func() *tls.Certificate {
		c, err := cc.GetClientCertificate(nil)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	a := get()
	step(19 * time.Hour)
	if b := get(); b.Leaf.SerialNumber.Cmp(a.Leaf.SerialNumber) != 0 {
		t.Errorf("reissued at 19h of a 30h lifetime, before two thirds")
	}
	step(2 * time.Hour)
	b := get()
	if b.Leaf.SerialNumber.Cmp(a.Leaf.SerialNumber) == 0 {
		t.Fatal("not reissued at 21h of a 30h lifetime")
	}
	if b.Leaf.PublicKey.(*ecdsa.PublicKey).Equal(a.Leaf.PublicKey) {
		t.Error("the reissued certificate reuses the old key")
	}
}

// TestExpiredOrForeignClientCertRefused: a server from ServerTLSFunc refuses a handshake
// with an expired client certificate or one from another CA, and accepts a valid one.
func TestExpiredOrForeignClientCertRefused(t *testing.T) {
	ca, err := NewCA("test-ca")
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, err := ca.Issue(LeafSpec{CommonName: "cell-1", DNSNames: []string{"cell-1"}, Server: true})
	if err != nil {
		t.Fatal(err)
	}
	sc, err := NewServingCert(ca.CertPEM, certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	addr := serveTLS(t, ca, sc)
	rogue, err := NewCA("rogue")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		ca     *CA
		valid  time.Duration
		wantOK bool
	}{
		{"valid", ca, time.Hour, true},
		{"expired", ca, -time.Minute, false},
		{"another CA", rogue, time.Hour, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cPEM, kPEM, err := tc.ca.Issue(LeafSpec{CommonName: "kip", Client: true, Validity: tc.valid})
			if err != nil {
				t.Fatal(err)
			}
			cfg, err := ClientTLS(ca.CertPEM, cPEM, kPEM, "cell-1")
			if err != nil {
				t.Fatal(err)
			}
			conn, err := tls.Dial("tcp", addr, cfg)
			if err == nil {
				// TLS 1.3: the server's verdict on the client certificate comes with the
				// first read; it writes one byte for a verified client certificate.
				_, err = conn.Read(make([]byte, 1))
				conn.Close()
			}
			if ok := err == nil; ok != tc.wantOK {
				t.Errorf("handshake error %v, want accepted=%v", err, tc.wantOK)
			}
		})
	}
}

// serveTLS serves sc on 127.0.0.1 with ServerTLSFunc, writing "k" on each connection whose
// handshake verified a client certificate (a client without an acceptable one sends none:
// the agent's handler then answers 401).
func serveTLS(t *testing.T, ca *CA, sc *ServingCert) string {
	t.Helper()
	cfg, err := ServerTLSFunc(ca.CertPEM, sc.GetCertificate)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				tc := c.(*tls.Conn)
				if tc.Handshake() == nil && len(tc.ConnectionState().VerifiedChains) > 0 {
					_, _ = c.Write([]byte("k"))
				}
			}()
		}
	}()
	return ln.Addr().String()
}

// servedSerial dials addr as a client without a certificate and returns the serial of the
// certificate the server presented (verified against ca for "cell-1").
func servedSerial(t *testing.T, ca *CA, addr string) string {
	t.Helper()
	conn, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: ca.Pool(), ServerName: "cell-1"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0].SerialNumber.String()
}

func x509VerifyServer(ca *CA) x509.VerifyOptions {
	return x509.VerifyOptions{Roots: ca.Pool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
}
