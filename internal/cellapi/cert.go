package cellapi

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"

	"github.com/kip-dev/kip/internal/pki"
)

// Certificate rotation. An agent's serving certificate is renewed before it expires without
// its key leaving the cell: kip asks the agent for a certificate request (the agent makes a
// new key and keeps it), signs it with its CA and sends the certificate back; the agent then
// serves it to every new connection.
//
//	POST CertRequestPath: → CertificateRequest
//	PUT  CertPath: Certificate → Certificate (the one now served)
//
// Agents without rotation answer KindBadVersion, or KindNotFound from an agent older than
// the routes.
const (
	CertRequestPath = "/v1/cert/request"
	CertPath        = "/v1/cert"
)

// CertRotator is implemented by agents whose serving certificate can be renewed in place
// (pki.ServingCert is one, through ServingCertRotator).
type CertRotator interface {
	// RequestCertificate makes a new key, keeps it until InstallCertificate, and returns a
	// PEM certificate request for it naming the current certificate's names.
	RequestCertificate(ctx context.Context) ([]byte, error)
	// InstallCertificate serves certPEM, which must be for the key of the last request and
	// signed by the cell's CA, to new connections. Errors: Invalid when it is not.
	InstallCertificate(ctx context.Context, certPEM []byte) ([]byte, error)
}

// CertificateRequest is a PEM "CERTIFICATE REQUEST".
type CertificateRequest struct {
	CSR []byte `json:"csr"`
}

// Certificate is a PEM "CERTIFICATE".
type Certificate struct {
	Cert []byte `json:"cert"`
}

// IsUnsupported reports whether err says the agent does not implement a route: KindBadVersion,
// or KindNotFound from the catch-all of an agent older than the route.
func IsUnsupported(err error) bool {
	k := KindOf(err)
	return err != nil && (k == KindBadVersion || k == KindNotFound)
}

// RequestCertificate implements CertRotator over the wire.
func (c *Client) RequestCertificate(ctx context.Context) ([]byte, error) {
	var out CertificateRequest
	if err := c.doJSON(ctx, http.MethodPost, CertRequestPath, nil, &out); err != nil {
		return nil, fmt.Errorf("requesting a certificate request: %w", err)
	}
	return out.CSR, nil
}

// InstallCertificate implements CertRotator over the wire.
func (c *Client) InstallCertificate(ctx context.Context, certPEM []byte) ([]byte, error) {
	body, err := json.Marshal(Certificate{Cert: certPEM})
	if err != nil {
		return nil, err
	}
	var out Certificate
	if err := c.doJSON(ctx, http.MethodPut, CertPath, bytes.NewReader(body), &out); err != nil {
		return nil, fmt.Errorf("installing the agent's certificate: %w", err)
	}
	return out.Cert, nil
}

var _ CertRotator = (*Client)(nil)

func (h *handler) requestCert(w http.ResponseWriter, r *http.Request) {
	if h.certs == nil {
		h.fail(w, r, Errorf(KindBadVersion, "%s %s is not implemented by this agent", r.Method, r.URL.Path))
		return
	}
	csr, err := h.certs.RequestCertificate(r.Context())
	h.reply(w, r, CertificateRequest{CSR: csr}, err)
}

func (h *handler) putCert(w http.ResponseWriter, r *http.Request) {
	if h.certs == nil {
		h.fail(w, r, Errorf(KindBadVersion, "%s %s is not implemented by this agent", r.Method, r.URL.Path))
		return
	}
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20))
	dec.DisallowUnknownFields()
	var c Certificate
	if err := dec.Decode(&c); err != nil {
		h.fail(w, r, Errorf(KindInvalid, "decoding certificate: %v", err))
		return
	}
	if len(c.Cert) == 0 {
		h.fail(w, r, Errorf(KindInvalid, "certificate: field cert is required"))
		return
	}
	got, err := h.certs.InstallCertificate(r.Context(), c.Cert)
	h.reply(w, r, Certificate{Cert: got}, err)
}

// ServingCertRotator serves CertRotator from a pki.ServingCert (the agent's tls.Config
// takes its GetCertificate).
func ServingCertRotator(sc *pki.ServingCert) CertRotator { return servingCert{sc} }

type servingCert struct{ sc *pki.ServingCert }

func (s servingCert) RequestCertificate(context.Context) ([]byte, error) {
	return s.sc.Request()
}

func (s servingCert) InstallCertificate(_ context.Context, certPEM []byte) ([]byte, error) {
	cert, err := s.sc.Install(certPEM)
	if err != nil {
		return nil, Errorf(KindInvalid, "%v", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}), nil
}
