package enroll

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kip-dev/kip/internal/cellenroll"
	"github.com/kip-dev/kip/internal/pki"
)

// kipServer is the enrollment handler served over TLS with a certificate of kip's CA, as
// kip serves it, counting enrollment requests.
type kipServer struct {
	ca       *pki.CA
	tokens   *Tokens
	url      string
	requests atomic.Int32
	art      *Artifact
	artBytes []byte
}

func newKipServer(t *testing.T) *kipServer {
	t.Helper()
	k := &kipServer{ca: newCA(t)}
	var err error
	if k.tokens, err = NewTokens(k.ca, 0, nil); err != nil {
		t.Fatal(err)
	}
	k.artBytes = []byte("#!/bin/sh\necho agent\n")
	path := filepath.Join(t.TempDir(), "kip-cell")
	if err := os.WriteFile(path, k.artBytes, 0o755); err != nil {
		t.Fatal(err)
	}
	if k.art, err = OpenArtifact("kip-cell-amd64", path); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { k.art.Close() })
	h := Handler(Config{CA: k.ca, Tokens: k.tokens, Ledger: &MemoryLedger{}, Artifacts: []*Artifact{k.art}})
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == cellenroll.Path {
			k.requests.Add(1)
		}
		h.ServeHTTP(w, r)
	}))
	certPEM, keyPEM, err := ServingCert(k.ca, []string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{pair}}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	k.url = srv.URL
	return k
}

func (k *kipServer) config(t *testing.T, cellID, token string) cellenroll.Config {
	return cellenroll.Config{URL: k.url, Token: token, CellID: cellID, CACert: k.ca.CertPEM, Dir: t.TempDir()}
}

// TestAgentEnrolls enrolls through the agent's client against the real handler: the
// certificate names the cell, chains to the CA and matches the key kept (0600) in the
// state directory; a restarted agent uses them without asking kip; the token then is spent.
func TestAgentEnrolls(t *testing.T) {
	k := newKipServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tok, _ := k.tokens.Mint("c-1")
	cfg := k.config(t, "c-1", tok)
	certPEM, keyPEM, err := cellenroll.Enroll(ctx, cfg)
	if err != nil {
		t.Fatalf("Enroll: %v", err)
	}
	blk, _ := pem.Decode(certPEM)
	cert, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: k.ca.Pool(), DNSName: "c-1", KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		t.Errorf("the certificate does not serve cell c-1 under kip's CA: %v", err)
	}
	if cert.Subject.CommonName != "c-1" {
		t.Errorf("common name %q", cert.Subject.CommonName)
	}
	if _, err := tls.X509KeyPair(certPEM, keyPEM); err != nil {
		t.Errorf("certificate and key do not match: %v", err)
	}
	for _, f := range []string{cellenroll.KeyFile, cellenroll.CertFile} {
		st, err := os.Stat(filepath.Join(cfg.Dir, f))
		if err != nil || st.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v, mode %v; want 0600", f, err, st.Mode().Perm())
		}
	}
	// A restart: the kept identity, no request.
	n := k.requests.Load()
	c2, k2, err := cellenroll.Enroll(ctx, cfg)
	if err != nil || !bytes.Equal(c2, certPEM) || !bytes.Equal(k2, keyPEM) || k.requests.Load() != n {
		t.Errorf("second Enroll in the same state dir: err %v, same cert %v, same key %v, requests %d → %d",
			err, bytes.Equal(c2, certPEM), bytes.Equal(k2, keyPEM), n, k.requests.Load())
	}
	// Another cell (or a pod that read the user data) with the spent token is refused.
	_, _, err = cellenroll.Enroll(ctx, k.config(t, "c-1", tok))
	if !cellenroll.IsRefused(err) || !strings.Contains(err.Error(), "already used") {
		t.Errorf("enrolling again with the token: %v, want a refusal (already used)", err)
	}
}

// TestAgentTrustsOnlyKipCA: an enrollment server with another CA's certificate is refused
// by the agent before it sends the token.
func TestAgentTrustsOnlyKipCA(t *testing.T) {
	k := newKipServer(t)
	tok, _ := k.tokens.Mint("c-1")
	cfg := k.config(t, "c-1", tok)
	cfg.CACert = newCA(t).CertPEM
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if _, _, err := cellenroll.Enroll(ctx, cfg); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("Enroll against a server of another CA: %v, want a certificate error", err)
	}
	if n := k.requests.Load(); n != 0 {
		t.Errorf("%d requests reached the handler", n)
	}
}

func csrPEM(t *testing.T, key any, tmpl *x509.CertificateRequest) []byte {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
}

// TestEnrollRefusals posts bad requests to the handler: each is refused with its reason, and
// none spends the token (the good request after them succeeds).
func TestEnrollRefusals(t *testing.T) {
	k := newKipServer(t)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	good := csrPEM(t, key, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "c-1"}, DNSNames: []string{"c-1"}})
	tok, _ := k.tokens.Mint("c-1")
	otherTok, _ := k.tokens.Mint("c-2")
	foreign, _ := NewTokens(newCA(t), 0, nil)
	foreignTok, _ := foreign.Mint("c-1")
	badSig := []byte(strings.Replace(string(good), string(good[len(good)-40:len(good)-30]), "AAAAAAAAAA", 1))
	for _, tc := range []struct {
		name   string
		body   string
		status int
		want   string
	}{
		{"not JSON", "{", 400, "decoding"},
		{"unknown field", `{"token":"x","csr":"","admin":true}`, 400, "unknown field"},
		{"forged token", req(foreignTok, good), 403, "does not verify"},
		{"token of another cell", req(otherTok, good), 400, `common name "c-1" is not the token's cell "c-2"`},
		{"garbage CSR", req(tok, []byte("hello")), 400, "not a PEM CERTIFICATE REQUEST"},
		{"bad signature", req(tok, badSig), 400, "csr:"},
		{"wrong CN", req(tok, csrPEM(t, key, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "kip"}})), 400, `common name "kip"`},
		{"extra DNS name", req(tok, csrPEM(t, key, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "c-1"}, DNSNames: []string{"c-1", "kube-apiserver"}})), 400, "names other than"},
		{"IP SAN", req(tok, csrPEM(t, key, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "c-1"}, IPAddresses: []net.IP{net.ParseIP("10.0.0.1")}})), 400, "names other than"},
		{"RSA key", req(tok, csrPEM(t, rsaKey, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "c-1"}})), 400, "want ECDSA P-256"},
		{"P-384 key", req(tok, csrPEM(t, p384, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "c-1"}})), 400, "want ECDSA P-256"},
		{"good", req(tok, good), 200, ""},
		{"reused", req(tok, good), 403, "already used"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, resp := post(t, k, tc.body)
			if status != tc.status || !strings.Contains(resp.Error, tc.want) {
				t.Errorf("HTTP %d %q, want %d with %q", status, resp.Error, tc.status, tc.want)
			}
			if (status == 200) != (len(resp.Cert) > 0) {
				t.Errorf("HTTP %d with %d bytes of certificate", status, len(resp.Cert))
			}
		})
	}
}

func req(token string, csr []byte) string {
	b, _ := json.Marshal(cellenroll.Request{Token: token, CSR: csr})
	return string(b)
}

func post(t *testing.T, k *kipServer, body string) (int, cellenroll.Response) {
	t.Helper()
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: k.ca.Pool()}}}
	resp, err := c.Post(k.url+cellenroll.Path, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out cellenroll.Response
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatalf("HTTP %d: decoding: %v", resp.StatusCode, err)
	}
	return resp.StatusCode, out
}

// TestArtifacts serves the file that was hashed, and 404 for others.
func TestArtifacts(t *testing.T) {
	k := newKipServer(t)
	sum := sha256.Sum256(k.artBytes)
	if k.art.SHA256 != hex.EncodeToString(sum[:]) {
		t.Errorf("pinned SHA-256 %s, want %x", k.art.SHA256, sum)
	}
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: k.ca.Pool()}}}
	resp, err := c.Get(k.url + ArtifactsPath + "kip-cell-amd64")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !bytes.Equal(b, k.artBytes) || resp.Header.Get("X-Kip-SHA256") != k.art.SHA256 {
		t.Errorf("GET kip-cell-amd64: HTTP %d, %q, sha header %q", resp.StatusCode, b, resp.Header.Get("X-Kip-SHA256"))
	}
	resp, err = c.Get(k.url + ArtifactsPath + "kip-cell-arm64")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 404 {
		t.Errorf("GET kip-cell-arm64: HTTP %d, want 404", resp.StatusCode)
	}
}
