package nodeauth

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"log/slog"
	"net"
	"time"

	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	certutil "k8s.io/client-go/util/cert"
	"k8s.io/client-go/util/certificate/csr"

	"github.com/kip-dev/kip/internal/pki"
)

// ServingCert returns the kubelet API's serving certificate for node nodeName at address ip:
// the one cached in Secret kube-system/kip-serving-<nodeName> while it is valid for ip, else a
// new one from the cluster through a CSR (signer kubernetes.io/kubelet-serving), which kip
// approves itself when it may, then caches. log (nil: slog.Default()) receives what is reused
// or requested and the failures that do not stop it.
func ServingCert(ctx context.Context, client kubernetes.Interface, nodeName, ip string, log *slog.Logger) (tls.Certificate, error) {
	if log == nil {
		log = slog.Default()
	}
	secrets := client.CoreV1().Secrets(secretNamespace)
	cached, err := secrets.Get(ctx, servingSecretPrefix+nodeName, metav1.GetOptions{})
	if err == nil {
		if pair, ok := usableServing(cached.Data[corev1.TLSCertKey], cached.Data[corev1.TLSPrivateKeyKey], ip, time.Now()); ok {
			log.Info("reusing the kubelet serving certificate", "secret", secretNamespace+"/"+cached.Name)
			return pair, nil
		}
	} else if !apierrors.IsNotFound(err) {
		log.Warn("reading the cached serving certificate", "err", err)
	}

	certPEM, keyPEM, err := requestServingCert(ctx, client, nodeName, ip, log)
	if err != nil {
		return tls.Certificate{}, err
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("loading the signed serving certificate: %w", err)
	}
	s := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: servingSecretPrefix + nodeName, Namespace: secretNamespace, Labels: map[string]string{"app.kubernetes.io/name": "kip"}},
		Type:       corev1.SecretTypeTLS,
		Data:       map[string][]byte{corev1.TLSCertKey: certPEM, corev1.TLSPrivateKeyKey: keyPEM},
	}
	if _, err := secrets.Create(ctx, s, metav1.CreateOptions{}); apierrors.IsAlreadyExists(err) {
		_, err = secrets.Update(ctx, s, metav1.UpdateOptions{})
		if err != nil {
			log.Warn("caching the serving certificate", "err", err)
		}
	} else if err != nil {
		log.Warn("caching the serving certificate", "err", err)
	}
	return pair, nil
}

// usableServing reports whether certPEM/keyPEM is a matching pair valid for ip well past now.
func usableServing(certPEM, keyPEM []byte, ip string, now time.Time) (tls.Certificate, bool) {
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return tls.Certificate{}, false
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil || now.Add(renewBefore).After(leaf.NotAfter) || now.Before(leaf.NotBefore) {
		return tls.Certificate{}, false
	}
	want := net.ParseIP(ip)
	for _, a := range leaf.IPAddresses {
		if a.Equal(want) {
			return pair, true
		}
	}
	return tls.Certificate{}, false
}

// requestServingCert asks the cluster to sign a kubelet serving certificate for the node
// (CN system:node:<name>, O system:nodes, SAN IP = the node's address), approves the request
// itself (kubelet-serving CSRs are never auto-approved) and waits for the certificate.
func requestServingCert(ctx context.Context, client kubernetes.Interface, name, ip string, log *slog.Logger) (certPEM, keyPEM []byte, err error) {
	key, keyPEM, err := pki.NewKey()
	if err != nil {
		return nil, nil, fmt.Errorf("making the serving key: %w", err)
	}
	csrPEM, err := certutil.MakeCSR(key, &pkix.Name{CommonName: "system:node:" + name, Organization: []string{"system:nodes"}},
		[]string{name}, []net.IP{net.ParseIP(ip)})
	if err != nil {
		return nil, nil, fmt.Errorf("making the serving CSR: %w", err)
	}
	reqName, reqUID, err := csr.RequestCertificateWithContext(ctx, client, csrPEM, "", certificatesv1.KubeletServingSignerName, nil,
		[]certificatesv1.KeyUsage{certificatesv1.UsageDigitalSignature, certificatesv1.UsageServerAuth}, key)
	if err != nil {
		return nil, nil, fmt.Errorf("requesting the kubelet serving certificate: %w", err)
	}
	log.Info("requested the kubelet serving certificate", "csr", reqName)
	if err := approve(ctx, client, reqName); err != nil {
		log.Warn("could not approve the serving CSR; waiting for an administrator (kubectl certificate approve "+reqName+")", "err", err)
	}
	wctx, cancel := context.WithTimeout(ctx, csrTimeout)
	defer cancel()
	certPEM, err = csr.WaitForCertificate(wctx, client, reqName, reqUID)
	if err != nil {
		return nil, nil, fmt.Errorf("waiting for CSR %s to be signed (approve it, or set node.tls.certFile/keyFile): %w", reqName, err)
	}
	return certPEM, keyPEM, nil
}

// approve marks a CSR approved (needs the approve verb on the kubelet-serving signer).
func approve(ctx context.Context, client kubernetes.Interface, name string) error {
	c, err := client.CertificatesV1().CertificateSigningRequests().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return err
	}
	c.Status.Conditions = append(c.Status.Conditions, certificatesv1.CertificateSigningRequestCondition{
		Type:    certificatesv1.CertificateApproved,
		Status:  corev1.ConditionTrue,
		Reason:  "KipSelfApproved",
		Message: "kip approved its own kubelet serving certificate",
	})
	_, err = client.CertificatesV1().CertificateSigningRequests().UpdateApproval(ctx, name, c, metav1.UpdateOptions{})
	return err
}
