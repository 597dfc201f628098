package enroll

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/clock"
)

// ErrSpent says a token was used before.
var ErrSpent = errors.New("token already used")

// Ledger records spent tokens until they expire, so each is used once.
type Ledger interface {
	// Spend records nonce as spent until expires. It returns ErrSpent when it already was,
	// and another error when it could not tell (the enrollment is then refused too).
	Spend(ctx context.Context, nonce string, expires time.Time) error
}

// MemoryLedger is a Ledger in this process's memory: it forgets everything on restart.
type MemoryLedger struct {
	Clock clock.PassiveClock // nil: the real clock

	mu    sync.Mutex
	spent map[string]time.Time
}

// Spend implements Ledger.
func (l *MemoryLedger) Spend(_ context.Context, nonce string, expires time.Time) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.spent == nil {
		l.spent = map[string]time.Time{}
	}
	now := now(l.Clock)
	for n, exp := range l.spent {
		if !now.Before(exp) {
			delete(l.spent, n)
		}
	}
	if _, ok := l.spent[nonce]; ok {
		return ErrSpent
	}
	l.spent[nonce] = expires
	return nil
}

// SecretLedger keeps spent tokens in a Secret (nonce → expiry, RFC 3339), so a restarted kip,
// or the replica that takes over, still refuses them. Entries are pruned once expired (a
// token is refused then anyway), so the Secret holds at most the tokens spent within one
// TTL. Writes use the Secret's resourceVersion: two writers never lose each other's entries.
type SecretLedger struct {
	Secrets   corev1client.SecretsGetter
	Namespace string
	Name      string
	Clock     clock.PassiveClock // nil: the real clock
}

// Spend implements Ledger.
func (l *SecretLedger) Spend(ctx context.Context, nonce string, expires time.Time) error {
	secrets := l.Secrets.Secrets(l.Namespace)
	entry := []byte(expires.UTC().Format(time.RFC3339))
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		s, err := secrets.Get(ctx, l.Name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			s = &corev1.Secret{
				ObjectMeta: metav1.ObjectMeta{Name: l.Name, Namespace: l.Namespace, Labels: map[string]string{"app.kubernetes.io/name": "kip"}},
				Data:       map[string][]byte{nonce: entry},
			}
			_, err = secrets.Create(ctx, s, metav1.CreateOptions{})
			if apierrors.IsAlreadyExists(err) {
				// Another writer made it first: read it and try again.
				return apierrors.NewConflict(corev1.Resource("secrets"), l.Name, err)
			}
			return err
		}
		if err != nil {
			return err
		}
		if _, ok := s.Data[nonce]; ok {
			return ErrSpent
		}
		now := now(l.Clock)
		for n, v := range s.Data {
			if exp, err := time.Parse(time.RFC3339, string(v)); err != nil || !now.Before(exp) {
				delete(s.Data, n)
			}
		}
		if s.Data == nil {
			s.Data = map[string][]byte{}
		}
		s.Data[nonce] = entry
		_, err = secrets.Update(ctx, s, metav1.UpdateOptions{})
		return err
	})
	if err != nil && !errors.Is(err, ErrSpent) {
		return fmt.Errorf("recording the token in secret %s/%s: %w", l.Namespace, l.Name, err)
	}
	return err
}

func now(c clock.PassiveClock) time.Time {
	if c == nil {
		return time.Now()
	}
	return c.Now()
}
