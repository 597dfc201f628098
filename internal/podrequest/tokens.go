package podrequest

import (
	"strconv"
	"sync"
	"time"

	authv1 "k8s.io/api/authentication/v1"
	"k8s.io/utils/clock"
)

// Kubelet's token manager (pkg/kubelet/token) refreshes a projected service account token
// once 80% of its TTL has passed, or 24 hours after it was issued, whichever comes first; on
// a failed refresh it keeps serving the old token until that expires. tokenCache does the
// same, without kubelet's jitter, so tests can name the moment.
const (
	tokenMaxTTL         = 24 * time.Hour
	tokenRefreshPercent = 80
)

// tokenCache holds the tokens issued for pods, by what was asked.
type tokenCache struct {
	clock clock.PassiveClock
	mu    sync.Mutex
	byKey map[string]cachedToken
	// sweepAt is the size at which the next put drops expired tokens.
	sweepAt int
}

type cachedToken struct {
	token, podUID string
	// issued and expires bound the token's life; refreshAt is when it must be replaced.
	issued, expires, refreshAt time.Time
}

func newTokenCache(c clock.PassiveClock) *tokenCache {
	return &tokenCache{clock: c, byKey: map[string]cachedToken{}, sweepAt: minTokenSweep}
}

// tokenKey names one token: the service account, the pod it is bound to, the audience and the
// requested lifetime.
func tokenKey(namespace, sa, podUID, audience string, exp int64) string {
	return namespace + "/" + sa + "/" + podUID + "/" + audience + "/" + strconv.FormatInt(exp, 10)
}

// get returns the cached token for key while it needs no refresh.
func (c *tokenCache) get(key string) (string, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	t, ok := c.byKey[key]
	if !ok || !c.clock.Now().Before(t.refreshAt) {
		return "", false
	}
	return t.token, true
}

// stale returns the cached token for key while it has not expired: what kubelet serves when a
// refresh fails.
func (c *tokenCache) stale(key string) (string, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	t, ok := c.byKey[key]
	if !ok || c.clock.Now().After(t.expires) {
		return "", false
	}
	return t.token, true
}

// put records a token just issued for a request of exp seconds, and drops expired ones.
func (c *tokenCache) put(key, podUID string, tr *authv1.TokenRequest, exp int64) {
	now := c.clock.Now()
	ttl := time.Duration(exp) * time.Second
	if tr.Spec.ExpirationSeconds != nil && *tr.Spec.ExpirationSeconds > 0 {
		ttl = time.Duration(*tr.Spec.ExpirationSeconds) * time.Second
	}
	expires := tr.Status.ExpirationTimestamp.Time
	if expires.IsZero() {
		expires = now.Add(ttl)
	}
	issued := expires.Add(-ttl)
	refreshAt := issued.Add(ttl * tokenRefreshPercent / 100)
	if max := issued.Add(tokenMaxTTL); max.Before(refreshAt) {
		refreshAt = max
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	// Expired tokens are dropped each time the cache doubles, not on every put: a sweep per
	// put made issuing 10,000 pods' tokens quadratic.
	if len(c.byKey) >= c.sweepAt {
		for k, t := range c.byKey {
			if now.After(t.expires) {
				delete(c.byKey, k)
			}
		}
		c.sweepAt = max(2*len(c.byKey), minTokenSweep)
	}
	c.byKey[key] = cachedToken{token: tr.Status.Token, podUID: podUID, issued: issued, expires: expires, refreshAt: refreshAt}
}

// minTokenSweep is the cache size below which put never sweeps expired tokens.
const minTokenSweep = 256

// forgetPod drops the tokens bound to a pod that is gone.
func (c *tokenCache) forgetPod(podUID string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, t := range c.byKey {
		if t.podUID == podUID {
			delete(c.byKey, k)
		}
	}
}
