// Package cellenroll is the cell agent's side of enrollment: the agent makes its own key,
// sends a certificate request with its one-time token to kip over TLS verified against kip's
// CA (pinned in the bootstrap), and keeps the key and the certificate kip signs in its state
// directory, so a restarted agent serves them again without a token. Kip's side, and the
// token's format, are internal/enroll; this package holds the wire types both use.
package cellenroll

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/kip-dev/kip/internal/pki"
)

// Path is the enrollment endpoint under kip's enrollment URL.
const Path = "/v1/enroll"

// Files the agent keeps in its state directory, both 0600.
const (
	KeyFile  = "agent-key.pem"
	CertFile = "agent-cert.pem"
)

// Request is POSTed (JSON) to Path.
type Request struct {
	// Token is the one-time enrollment token from the cell's bootstrap.
	Token string `json:"token"`
	// CSR is a PEM certificate request whose common name is the cell id.
	CSR []byte `json:"csr"`
}

// Response is the answer to a Request: 200 with the serving certificate, else an error.
type Response struct {
	// Cert (PEM) is the agent's serving certificate, naming the cell id, signed by kip's CA.
	Cert []byte `json:"cert,omitempty"`
	// Error says why the request was refused.
	Error string `json:"error,omitempty"`
}

// Config is what Enroll needs.
type Config struct {
	// URL is kip's enrollment base URL (https://host:port); Path is appended.
	URL    string
	Token  string
	CellID string
	// CACert (PEM) is the only CA trusted for the enrollment server's certificate.
	CACert []byte
	// Dir is the agent's state directory, where the key and certificate are kept.
	Dir string
	// RetryMax caps the back-off between attempts on transient errors; 0 means 15s.
	RetryMax time.Duration
}

// RefusedError is kip's refusal of an enrollment (a bad, expired, spent or foreign token, a
// bad request); retrying cannot help.
type RefusedError struct {
	Status  int
	Message string
}

func (e *RefusedError) Error() string {
	return fmt.Sprintf("enrollment refused (HTTP %d): %s", e.Status, e.Message)
}

// IsRefused reports whether err is kip's refusal.
func IsRefused(err error) bool {
	var r *RefusedError
	return errors.As(err, &r)
}

// Load returns the identity kept in dir when it is usable for cellID: the key matches the
// certificate, which names cellID, is a server certificate signed by caPEM and not expired.
// It returns an error wrapping os.ErrNotExist when dir holds none.
func Load(dir, cellID string, caPEM []byte) (certPEM, keyPEM []byte, err error) {
	keyPEM, err = os.ReadFile(filepath.Join(dir, KeyFile))
	if err != nil {
		return nil, nil, err
	}
	certPEM, err = os.ReadFile(filepath.Join(dir, CertFile))
	if err != nil {
		return nil, nil, err
	}
	if err := check(certPEM, keyPEM, cellID, caPEM); err != nil {
		return nil, nil, fmt.Errorf("the identity kept in %s: %w", dir, err)
	}
	return certPEM, keyPEM, nil
}

// check verifies that certPEM and keyPEM are a serving identity for cellID under caPEM.
func check(certPEM, keyPEM []byte, cellID string, caPEM []byte) error {
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return err
	}
	cert, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return errors.New("no CA certificate in the bootstrap's caCert")
	}
	_, err = cert.Verify(x509.VerifyOptions{Roots: pool, DNSName: cellID, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
	return err
}

// Enroll returns the agent's identity: the one kept in cfg.Dir when usable, else a new one
// from kip. The key is made here (or reused from an earlier, unfinished attempt) and never
// leaves the cell. Transient failures (kip unreachable, 5xx) are retried with back-off until
// ctx ends; a refusal is returned at once as a *RefusedError.
func Enroll(ctx context.Context, cfg Config) (certPEM, keyPEM []byte, err error) {
	if certPEM, keyPEM, err := Load(cfg.Dir, cfg.CellID, cfg.CACert); err == nil {
		return certPEM, keyPEM, nil
	}
	switch {
	case cfg.URL == "":
		return nil, nil, errors.New("enrolling: no enrollment URL")
	case cfg.Token == "":
		return nil, nil, errors.New("enrolling: no enrollment token")
	case cfg.CellID == "":
		return nil, nil, errors.New("enrolling: no cell id")
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, nil, fmt.Errorf("enrolling: %w", err)
	}
	key, keyPEM, err := loadOrMakeKey(filepath.Join(cfg.Dir, KeyFile))
	if err != nil {
		return nil, nil, fmt.Errorf("enrolling: %w", err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: cfg.CellID}, DNSNames: []string{cfg.CellID},
	}, key)
	if err != nil {
		return nil, nil, fmt.Errorf("enrolling: making the certificate request: %w", err)
	}
	body, err := json.Marshal(Request{Token: cfg.Token, CSR: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})})
	if err != nil {
		return nil, nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(cfg.CACert) {
		return nil, nil, errors.New("enrolling: no CA certificate in the bootstrap's caCert")
	}
	hc := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
		Proxy:           nil, // kip is in the VPC: never through a proxy
	}}
	defer hc.CloseIdleConnections()
	retryMax := cfg.RetryMax
	if retryMax <= 0 {
		retryMax = 15 * time.Second
	}
	delay := 500 * time.Millisecond
	for {
		certPEM, err = post(ctx, hc, cfg.URL+Path, body)
		if err == nil {
			break
		}
		if IsRefused(err) {
			return nil, nil, err
		}
		select {
		case <-ctx.Done():
			return nil, nil, fmt.Errorf("enrolling at %s: %w (last error: %v)", cfg.URL, ctx.Err(), err)
		case <-time.After(delay):
		}
		delay = min(2*delay, retryMax)
	}
	if err := check(certPEM, keyPEM, cfg.CellID, cfg.CACert); err != nil {
		return nil, nil, fmt.Errorf("enrolling: kip's certificate is unusable: %w", err)
	}
	if err := writeFile(filepath.Join(cfg.Dir, CertFile), certPEM); err != nil {
		return nil, nil, fmt.Errorf("enrolling: %w", err)
	}
	return certPEM, keyPEM, nil
}

// post sends one enrollment request.
func post(ctx context.Context, hc *http.Client, url string, body []byte) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, err
	}
	var out Response
	jerr := json.Unmarshal(raw, &out)
	switch {
	case resp.StatusCode == http.StatusOK && jerr == nil && len(out.Cert) > 0:
		return out.Cert, nil
	case resp.StatusCode >= 400 && resp.StatusCode < 500 && resp.StatusCode != http.StatusTooManyRequests:
		msg := out.Error
		if msg == "" {
			msg = string(bytes.TrimSpace(raw))
		}
		return nil, &RefusedError{Status: resp.StatusCode, Message: msg}
	}
	return nil, fmt.Errorf("enrollment answered HTTP %d: %s", resp.StatusCode, bytes.TrimSpace(raw))
}

// loadOrMakeKey returns the key in path, or makes one and writes it there (0600).
func loadOrMakeKey(path string) (*ecdsa.PrivateKey, []byte, error) {
	if b, err := os.ReadFile(path); err == nil {
		if blk, _ := pem.Decode(b); blk != nil {
			if k, err := x509.ParseECPrivateKey(blk.Bytes); err == nil {
				return k, b, nil
			}
		}
	}
	key, keyPEM, err := pki.NewKey()
	if err != nil {
		return nil, nil, err
	}
	if err := writeFile(path, keyPEM); err != nil {
		return nil, nil, err
	}
	return key, keyPEM, nil
}

// writeFile writes b to path (0600) atomically.
func writeFile(path string, b []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
