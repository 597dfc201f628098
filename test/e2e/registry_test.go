//go:build e2e

package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kip-dev/kip/test/e2e/framework"
)

// TestCellCannotPushToRegistry: a pod pulls its image from the suite's registry (as kip up's:
// WithWriteAuth, WithHostOnlyWrites) but cannot write to it from its cell, with or without
// credentials: starting a blob upload and overwriting library/busybox:latest's manifest get
// 403, and the tag keeps its digest.
func TestCellCannotPushToRegistry(t *testing.T) {
	e := need(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	ns := e.Namespace(t)
	reg := e.Registry.Host()
	before := manifestDigest(t, ctx, reg)

	script := `base=http://` + reg + `/v2/library/busybox
echo "upload: $(wget -S -O /dev/null --post-data x "$base/blobs/uploads/" 2>&1 | grep -m1 -o 'HTTP/1.1 [0-9]*')"
echo "upload with credentials: $(wget -S -O /dev/null --header 'Authorization: Basic a2lwOmd1ZXNz' --post-data x "$base/blobs/uploads/" 2>&1 | grep -m1 -o 'HTTP/1.1 [0-9]*')"
echo "pull: $(wget -S -O /dev/null "$base/manifests/latest" 2>&1 | grep -m1 -o 'HTTP/1.1 [0-9]*')"`
	p := framework.Pod("pusher", framework.Busybox("push", script))
	p.Spec.RestartPolicy = corev1.RestartPolicyNever
	if _, err := e.Client.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.WaitForPod(ctx, ns, "pusher", podTimeout, framework.Finished); err != nil {
		t.Fatal(err)
	}
	logs, err := e.Kubectl(ctx, "-n", ns, "logs", "pusher")
	if err != nil {
		t.Fatalf("logs: %v\n%s", err, logs)
	}
	for _, want := range []string{"upload: HTTP/1.1 403", "upload with credentials: HTTP/1.1 403", "pull: HTTP/1.1 200"} {
		if !strings.Contains(logs, want) {
			t.Errorf("pod logs lack %q:\n%s", want, logs)
		}
	}
	if after := manifestDigest(t, ctx, reg); after != before {
		t.Errorf("library/busybox:latest moved from %s to %s", before, after)
	}
}

// manifestDigest is library/busybox:latest's digest in the suite's registry, pulled
// anonymously.
func manifestDigest(t *testing.T, ctx context.Context, host string) string {
	t.Helper()
	ref, err := name.ParseReference(host+"/library/busybox:latest", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	desc, err := remote.Head(ref, remote.WithContext(ctx))
	if err != nil {
		t.Fatalf("HEAD %s: %v", ref, err)
	}
	return desc.Digest.String()
}
