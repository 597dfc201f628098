package enroll

import (
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"k8s.io/utils/clock"

	"github.com/kip-dev/kip/internal/pki"
)

// DefaultTokenTTL is how long a token may be used after it is minted.
const DefaultTokenTTL = 15 * time.Minute

// tokenInfo separates this key from anything else derived from the CA key.
const tokenInfo = "kip.dev enrollment token v1"

// Tokens mints and verifies one-time enrollment tokens. A token is
// base64url(claims) "." base64url(HMAC-SHA256(key, claims)), the claims naming the cell, the
// expiry and a random nonce. The key is derived (HKDF-SHA256) from kip's CA key, which every
// kip replica and every restart loads from the same Secret: any of them verifies what another
// minted, with no state. Single use is the Ledger's job.
type Tokens struct {
	key   []byte
	ttl   time.Duration
	clock clock.PassiveClock
}

// Claims is what a token says.
type Claims struct {
	CellID string `json:"c"`
	// Expires is a Unix time in seconds.
	Expires int64 `json:"e"`
	// Nonce (hex) makes each token unique; the Ledger records it once spent.
	Nonce string `json:"n"`
}

// ExpiresAt is the claims' expiry as a time.
func (c Claims) ExpiresAt() time.Time { return time.Unix(c.Expires, 0) }

// NewTokens derives the token key from ca's key. ttl 0 means DefaultTokenTTL; clk nil means
// the real clock.
func NewTokens(ca *pki.CA, ttl time.Duration, clk clock.PassiveClock) (*Tokens, error) {
	if ca == nil || ca.Key == nil {
		return nil, errors.New("enrollment tokens: no CA key to derive the token key from")
	}
	der, err := x509.MarshalPKCS8PrivateKey(ca.Key)
	if err != nil {
		return nil, fmt.Errorf("enrollment tokens: encoding the CA key: %w", err)
	}
	key, err := hkdf.Key(sha256.New, der, nil, tokenInfo, 32)
	if err != nil {
		return nil, fmt.Errorf("enrollment tokens: deriving the key: %w", err)
	}
	if ttl <= 0 {
		ttl = DefaultTokenTTL
	}
	if clk == nil {
		clk = clock.RealClock{}
	}
	return &Tokens{key: key, ttl: ttl, clock: clk}, nil
}

// TTL is how long a minted token is valid.
func (t *Tokens) TTL() time.Duration { return t.ttl }

// Mint returns a new token for cellID, valid for the TTL.
func (t *Tokens) Mint(cellID string) (string, error) {
	if cellID == "" {
		return "", errors.New("minting an enrollment token: empty cell id")
	}
	n := make([]byte, 16)
	if _, err := rand.Read(n); err != nil {
		return "", fmt.Errorf("minting an enrollment token: %w", err)
	}
	c := Claims{CellID: cellID, Expires: t.clock.Now().Add(t.ttl).Unix(), Nonce: hex.EncodeToString(n)}
	body, err := json.Marshal(c)
	if err != nil {
		return "", fmt.Errorf("minting an enrollment token: %w", err)
	}
	enc := base64.RawURLEncoding
	return enc.EncodeToString(body) + "." + enc.EncodeToString(t.mac(body)), nil
}

// Verify checks the token's MAC and expiry and returns its claims. It does not check that
// the token is unspent (Ledger) nor which cell asks (the caller compares CellID).
func (t *Tokens) Verify(token string) (Claims, error) {
	var c Claims
	b64, sig, ok := strings.Cut(token, ".")
	if !ok {
		return c, errors.New("malformed token: no signature")
	}
	enc := base64.RawURLEncoding
	body, err1 := enc.DecodeString(b64)
	mac, err2 := enc.DecodeString(sig)
	if err1 != nil || err2 != nil {
		return c, errors.New("malformed token: not base64url")
	}
	if !hmac.Equal(mac, t.mac(body)) {
		return c, errors.New("token signature does not verify: not minted by this kip's CA")
	}
	if err := json.Unmarshal(body, &c); err != nil {
		return c, fmt.Errorf("malformed token claims: %w", err)
	}
	if c.CellID == "" || len(c.Nonce) != 32 {
		return c, errors.New("malformed token claims: no cell id or nonce")
	}
	if now := t.clock.Now(); !now.Before(c.ExpiresAt()) {
		return c, fmt.Errorf("token for cell %s expired at %s", c.CellID, c.ExpiresAt().UTC().Format(time.RFC3339))
	}
	return c, nil
}

func (t *Tokens) mac(body []byte) []byte {
	h := hmac.New(sha256.New, t.key)
	h.Write(body)
	return h.Sum(nil)
}
