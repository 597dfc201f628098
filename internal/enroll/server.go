// Package enroll is kip's side of booting cells on a cloud from a stock image: one-time
// enrollment tokens (Tokens, Ledger), and the HTTPS server cells boot from (Handler): the
// agent's artifacts at /v1/artifacts/NAME and POST /v1/enroll, which signs a cell's
// certificate request when its token is good. The agent's side is internal/cellenroll; the
// user data that calls both is internal/cellboot.
package enroll

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"slices"
	"time"

	"github.com/kip-dev/kip/internal/cellenroll"
	"github.com/kip-dev/kip/internal/pki"
)

// ArtifactsPath is where the artifacts are served: ArtifactsPath + name.
const ArtifactsPath = "/v1/artifacts/"

// maxRequestBytes bounds an enrollment request.
const maxRequestBytes = 64 << 10

// Artifact is a file cells download at boot, opened once: what is served is what was
// hashed, even if the file is replaced on disk later.
type Artifact struct {
	// Name is its name under ArtifactsPath, like kip-cell-amd64.
	Name string
	// SHA256 (hex) is the hash pinned in the user data.
	SHA256 string
	Size   int64

	f       *os.File
	modTime time.Time
}

// OpenArtifact opens path and hashes it.
func OpenArtifact(name, path string) (*Artifact, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("artifact %s: %w", name, err)
	}
	st, err := f.Stat()
	if err != nil || !st.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("artifact %s: %s is not a regular file", name, path)
	}
	h := sha256.New()
	n, err := io.Copy(h, io.NewSectionReader(f, 0, st.Size()))
	if err != nil || n != st.Size() {
		f.Close()
		return nil, fmt.Errorf("artifact %s: hashing %s: %v", name, path, err)
	}
	return &Artifact{Name: name, SHA256: hex.EncodeToString(h.Sum(nil)), Size: n, f: f, modTime: st.ModTime()}, nil
}

// Close closes the file.
func (a *Artifact) Close() error { return a.f.Close() }

// Config is what the handler serves with.
type Config struct {
	CA     *pki.CA
	Tokens *Tokens
	Ledger Ledger
	// Artifacts are served by name.
	Artifacts []*Artifact
	// Log receives one line per artifact download, per enrollment and per refusal; nil:
	// slog.Default().
	Log *slog.Logger
}

// Handler serves the artifacts and the enrollment endpoint.
func Handler(cfg Config) http.Handler {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+cellenroll.Path, func(w http.ResponseWriter, r *http.Request) { enrollHandler(cfg, w, r) })
	mux.HandleFunc("GET "+ArtifactsPath+"{name}", func(w http.ResponseWriter, r *http.Request) {
		name := r.PathValue("name")
		i := slices.IndexFunc(cfg.Artifacts, func(a *Artifact) bool { return a.Name == name })
		if i < 0 {
			http.Error(w, fmt.Sprintf("no artifact %q", name), http.StatusNotFound)
			return
		}
		a := cfg.Artifacts[i]
		cfg.Log.Info("serving an artifact", "artifact", a.Name, "remote", r.RemoteAddr)
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("X-Kip-SHA256", a.SHA256)
		http.ServeContent(w, r, a.Name, a.modTime, io.NewSectionReader(a.f, 0, a.Size))
	})
	return mux
}

// enrollHandler signs a cell's certificate request: the token must verify, name the cell the
// request names and be unspent; the certificate kip signs names the token's cell and nothing
// the request asks for beyond its public key.
func enrollHandler(cfg Config, w http.ResponseWriter, r *http.Request) {
	log := cfg.Log.With("remote", r.RemoteAddr)
	refuse := func(status int, format string, args ...any) {
		msg := fmt.Sprintf(format, args...)
		log.Warn("refused a cell enrollment", "status", status, "reason", msg)
		writeJSON(w, status, cellenroll.Response{Error: msg})
	}
	var req cellenroll.Request
	dec := json.NewDecoder(io.LimitReader(r.Body, maxRequestBytes))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		refuse(http.StatusBadRequest, "decoding the request: %v", err)
		return
	}
	claims, err := cfg.Tokens.Verify(req.Token)
	if err != nil {
		refuse(http.StatusForbidden, "token: %v", err)
		return
	}
	log = log.With("cell", claims.CellID)
	pub, err := checkCSR(req.CSR, claims.CellID)
	if err != nil {
		refuse(http.StatusBadRequest, "csr: %v", err)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 20*time.Second)
	defer cancel()
	if err := cfg.Ledger.Spend(ctx, claims.Nonce, claims.ExpiresAt()); err != nil {
		if errors.Is(err, ErrSpent) {
			refuse(http.StatusForbidden, "token for cell %s: %v: a cell enrolls once", claims.CellID, err)
			return
		}
		log.Error("recording an enrollment token", "err", err)
		writeJSON(w, http.StatusServiceUnavailable, cellenroll.Response{Error: "cannot record the token's use now; retry"})
		return
	}
	cert, err := cfg.CA.Sign(pki.LeafSpec{CommonName: claims.CellID, DNSNames: []string{claims.CellID}, Server: true}, pub)
	if err != nil {
		log.Error("signing a cell certificate", "err", err)
		writeJSON(w, http.StatusInternalServerError, cellenroll.Response{Error: "signing failed"})
		return
	}
	log.Info("enrolled a cell")
	writeJSON(w, http.StatusOK, cellenroll.Response{Cert: cert})
}

// checkCSR parses a PEM certificate request, checks its signature and that it asks for
// cellID and nothing else, with an ECDSA P-256 key (what every Kip certificate uses).
func checkCSR(csrPEM []byte, cellID string) (*ecdsa.PublicKey, error) {
	blk, _ := pem.Decode(csrPEM)
	if blk == nil || blk.Type != "CERTIFICATE REQUEST" {
		return nil, errors.New("not a PEM CERTIFICATE REQUEST")
	}
	csr, err := x509.ParseCertificateRequest(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parsing: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("signature: %w", err)
	}
	if csr.Subject.CommonName != cellID {
		return nil, fmt.Errorf("common name %q is not the token's cell %q", csr.Subject.CommonName, cellID)
	}
	if len(csr.DNSNames) > 1 || (len(csr.DNSNames) == 1 && csr.DNSNames[0] != cellID) ||
		len(csr.IPAddresses) > 0 || len(csr.URIs) > 0 || len(csr.EmailAddresses) > 0 {
		return nil, fmt.Errorf("asks for names other than the cell %q", cellID)
	}
	pub, ok := csr.PublicKey.(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() {
		return nil, fmt.Errorf("key is %T, want ECDSA P-256", csr.PublicKey)
	}
	return pub, nil
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// ServingCert issues the enrollment server's certificate, signed by ca, for the hosts cells
// reach it by (IP addresses or DNS names).
func ServingCert(ca *pki.CA, hosts []string) (certPEM, keyPEM []byte, err error) {
	spec := pki.LeafSpec{CommonName: "kip-enroll", Server: true}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			spec.IPs = append(spec.IPs, ip)
		} else if h != "" {
			spec.DNSNames = append(spec.DNSNames, h)
		}
	}
	return ca.Issue(spec)
}
