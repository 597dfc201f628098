package cellapi_test

import (
	"crypto/tls"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/kip-dev/kip/internal/cellapi"
	"github.com/kip-dev/kip/internal/pki"
)

// TestCertRenewalRoutes: over the wire, an agent with a ServingCert answers a certificate
// request for its own names and, given the CA's signature over it, serves the new
// certificate to new connections; a certificate it did not request is Invalid; the routes
// need kip's client certificate; an agent without rotation answers as unsupported.
func TestCertRenewalRoutes(t *testing.T) {
	ca, err := pki.NewCA("kip-test")
	if err != nil {
		t.Fatal(err)
	}
	spec := pki.LeafSpec{CommonName: "cell-1", DNSNames: []string{"cell-1"}, Server: true}
	certPEM, keyPEM, err := ca.Issue(spec)
	if err != nil {
		t.Fatal(err)
	}
	sc, err := pki.NewServingCert(ca.CertPEM, certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	stls, err := pki.ServerTLSFunc(ca.CertPEM, sc.GetCertificate)
	if err != nil {
		t.Fatal(err)
	}
	fa := &fakeAgent{updates: make(chan *cellapi.PodStatus)}
	srv := httptest.NewUnstartedServer(cellapi.Handler(fa, cellapi.HandlerOptions{Certs: cellapi.ServingCertRotator(sc)}))
	srv.TLS = stls
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.StartTLS()
	t.Cleanup(srv.Close)
	r := &rig{srv: srv, ca: ca, agent: fa}
	client := r.clientFor(t, ca, "cell-1")
	ctx := t.Context()

	// Without a client certificate: 401.
	anon := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.Pool(), ServerName: "cell-1"}}}
	resp, err := anon.Post(srv.URL+cellapi.CertRequestPath, "application/json", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("anonymous POST %s = %d, want 401", cellapi.CertRequestPath, resp.StatusCode)
	}

	csr, err := client.RequestCertificate(ctx)
	if err != nil {
		t.Fatalf("RequestCertificate: %v", err)
	}
	req, err := pki.ParseCSR(csr)
	if err != nil {
		t.Fatal(err)
	}
	if req.Subject.CommonName != "cell-1" {
		t.Errorf("the request names %q, want cell-1", req.Subject.CommonName)
	}
	// A certificate for a key the agent did not make: Invalid, and nothing changes.
	other, _, err := ca.Issue(spec)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := client.InstallCertificate(ctx, other); !cellapi.IsInvalid(err) {
		t.Errorf("installing a certificate for another key: %v, want Invalid", err)
	}
	signed, err := ca.SignCSR(csr, spec)
	if err != nil {
		t.Fatal(err)
	}
	got, err := client.InstallCertificate(ctx, signed)
	if err != nil {
		t.Fatalf("InstallCertificate: %v", err)
	}
	want, _ := pki.ParseCert(signed)
	if leaf, _ := pki.ParseCert(got); leaf == nil || leaf.SerialNumber.Cmp(want.SerialNumber) != 0 {
		t.Errorf("the agent reports serving %v, want the installed certificate", leaf)
	}
	conn, err := tls.Dial("tcp", srv.Listener.Addr().String(), &tls.Config{RootCAs: ca.Pool(), ServerName: "cell-1"})
	if err != nil {
		t.Fatal(err)
	}
	if s := conn.ConnectionState().PeerCertificates[0].SerialNumber; s.Cmp(want.SerialNumber) != 0 {
		t.Errorf("a new connection is served serial %s, want the installed %s", s, want.SerialNumber)
	}
	conn.Close()
	// A body that is not a Certificate: Invalid.
	if _, err := client.InstallCertificate(ctx, nil); !cellapi.IsInvalid(err) {
		t.Errorf("installing an empty certificate: %v, want Invalid", err)
	}

	// An agent without rotation.
	old := newRig(t)
	if _, err := old.client.RequestCertificate(ctx); !cellapi.IsUnsupported(err) || !strings.Contains(err.Error(), "not implemented") {
		t.Errorf("RequestCertificate from an agent without rotation: %v, want unsupported", err)
	}
}
