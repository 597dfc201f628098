package enroll

import (
	"context"
	"errors"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
	clocktesting "k8s.io/utils/clock/testing"
)

func TestLedgers(t *testing.T) {
	ctx := context.Background()
	clk := clocktesting.NewFakePassiveClock(time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC))
	client := fake.NewClientset()
	secret := func() Ledger {
		// A new SecretLedger is what a restarted kip has: nothing but the Secret.
		return &SecretLedger{Secrets: client.CoreV1(), Namespace: "kube-system", Name: "kip-enrollments-kip", Clock: clk}
	}
	for _, tc := range []struct {
		name string
		// make returns the ledger; restart returns the ledger after a restart.
		make, restart func() Ledger
		survives      bool
	}{
		{"memory", func() Ledger { return &MemoryLedger{Clock: clk} }, func() Ledger { return &MemoryLedger{Clock: clk} }, false},
		{"secret", secret, secret, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := tc.make()
			exp := clk.Now().Add(time.Minute)
			if err := l.Spend(ctx, tc.name+"-a", exp); err != nil {
				t.Fatalf("first Spend: %v", err)
			}
			if err := l.Spend(ctx, tc.name+"-a", exp); !errors.Is(err, ErrSpent) {
				t.Fatalf("second Spend = %v, want ErrSpent", err)
			}
			if err := l.Spend(ctx, tc.name+"-b", exp); err != nil {
				t.Fatalf("another token: %v", err)
			}
			err := tc.restart().Spend(ctx, tc.name+"-a", exp)
			if tc.survives && !errors.Is(err, ErrSpent) {
				t.Errorf("after a restart: %v, want ErrSpent", err)
			}
		})
	}
	// Expired entries are pruned from the Secret at the next write.
	clk.SetTime(clk.Now().Add(2 * time.Minute))
	if err := secret().Spend(ctx, "secret-c", clk.Now().Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	s, err := client.CoreV1().Secrets("kube-system").Get(ctx, "kip-enrollments-kip", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Data) != 1 || s.Data["secret-c"] == nil {
		t.Errorf("secret data has %d entries (%v), want only the unexpired secret-c", len(s.Data), s.Data)
	}
}
