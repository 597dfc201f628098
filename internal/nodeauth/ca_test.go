package nodeauth

import (
	"bytes"
	"context"
	"testing"

	"k8s.io/client-go/kubernetes/fake"
)

func TestEnsureCAIsCreatedOnceAndReused(t *testing.T) {
	ctx := context.Background()
	client := fake.NewClientset()
	first, err := EnsureCA(ctx, client)
	if err != nil {
		t.Fatal(err)
	}
	second, err := EnsureCA(ctx, client)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(first.CertPEM, second.CertPEM) {
		t.Error("a second start made a new CA instead of reusing the Secret's")
	}
}
