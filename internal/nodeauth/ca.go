package nodeauth

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/kip-dev/kip/internal/pki"
)

// EnsureCA returns kip's CA from Secret kube-system/kip-ca, creating both once. Two kips
// racing to create it both end up with the winner's.
func EnsureCA(ctx context.Context, client kubernetes.Interface) (*pki.CA, error) {
	secrets := client.CoreV1().Secrets(secretNamespace)
	for attempt := 0; attempt < 3; attempt++ {
		s, err := secrets.Get(ctx, caSecret, metav1.GetOptions{})
		if err == nil {
			ca, err := pki.LoadCA(s.Data[caCertKey], s.Data[caKeyKey])
			if err != nil {
				return nil, fmt.Errorf("loading kip's CA from secret %s/%s: %w", secretNamespace, caSecret, err)
			}
			return ca, nil
		}
		if !apierrors.IsNotFound(err) {
			return nil, fmt.Errorf("reading secret %s/%s: %w", secretNamespace, caSecret, err)
		}
		ca, err := pki.NewCA("kip-ca")
		if err != nil {
			return nil, err
		}
		_, err = secrets.Create(ctx, &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: caSecret, Namespace: secretNamespace, Labels: map[string]string{"app.kubernetes.io/name": "kip"}},
			Type:       corev1.SecretTypeOpaque,
			Data:       map[string][]byte{caCertKey: ca.CertPEM, caKeyKey: ca.KeyPEM},
		}, metav1.CreateOptions{})
		if err == nil {
			return ca, nil
		}
		if !apierrors.IsAlreadyExists(err) {
			return nil, fmt.Errorf("creating secret %s/%s: %w", secretNamespace, caSecret, err)
		}
	}
	return nil, fmt.Errorf("creating secret %s/%s: lost the race three times", secretNamespace, caSecret)
}
