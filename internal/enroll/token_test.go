package enroll

import (
	"encoding/base64"
	"strings"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"

	"github.com/kip-dev/kip/internal/pki"
)

func newCA(t *testing.T) *pki.CA {
	t.Helper()
	ca, err := pki.NewCA("kip-test")
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func TestTokens(t *testing.T) {
	ca := newCA(t)
	clk := clocktesting.NewFakePassiveClock(time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC))
	tokens, err := NewTokens(ca, 10*time.Minute, clk)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := tokens.Mint("c-0123")
	if err != nil {
		t.Fatal(err)
	}
	c, err := tokens.Verify(tok)
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if c.CellID != "c-0123" || !c.ExpiresAt().Equal(clk.Now().Add(10*time.Minute)) || len(c.Nonce) != 32 {
		t.Errorf("claims %+v", c)
	}
	if other, _ := tokens.Mint("c-0123"); other == tok {
		t.Error("two tokens for one cell are equal: each must have its own nonce")
	}

	// A restarted kip (or the other replica) loads the same CA and verifies the token.
	again, err := pki.LoadCA(ca.CertPEM, ca.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	restarted, _ := NewTokens(again, 10*time.Minute, clk)
	if _, err := restarted.Verify(tok); err != nil {
		t.Errorf("a kip with the same CA refuses the token: %v", err)
	}

	body, sig, _ := strings.Cut(tok, ".")
	claims, _ := base64.RawURLEncoding.DecodeString(body)
	forgedClaims := base64.RawURLEncoding.EncodeToString([]byte(strings.Replace(string(claims), "c-0123", "c-9999", 1)))
	foreign, _ := NewTokens(newCA(t), 10*time.Minute, clk)
	foreignTok, _ := foreign.Mint("c-0123")
	for _, tc := range []struct{ name, token, want string }{
		{"another CA's", foreignTok, "does not verify"},
		{"claims changed", forgedClaims + "." + sig, "does not verify"},
		{"no signature", body, "no signature"},
		{"not base64", "!!.!!", "not base64"},
		{"empty", "", "no signature"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := tokens.Verify(tc.token); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Verify = %v, want an error with %q", err, tc.want)
			}
		})
	}

	clk.SetTime(clk.Now().Add(10 * time.Minute))
	if _, err := tokens.Verify(tok); err == nil || !strings.Contains(err.Error(), "expired") {
		t.Errorf("Verify of an expired token = %v, want expired", err)
	}
	if _, err := tokens.Mint(""); err == nil {
		t.Error("Mint of an empty cell id succeeded")
	}
	if _, err := NewTokens(nil, 0, nil); err == nil {
		t.Error("NewTokens without a CA succeeded")
	}
}
