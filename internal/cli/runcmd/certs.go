package runcmd

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"net"
	"os"
	"time"

	"github.com/virtual-kubelet/virtual-kubelet/node/nodeutil"
	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apiserver/pkg/apis/apiserver"
	"k8s.io/apiserver/pkg/server/dynamiccertificates"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	certutil "k8s.io/client-go/util/cert"
	"k8s.io/client-go/util/certificate/csr"

	"github.com/kip-dev/kip/internal/pki"
)

// Where kip keeps its state in the cluster.
const (
	secretNamespace = "kube-system"
	// caSecret holds kip's CA (cell agent certificates and kip's client certificate).
	caSecret = "kip-ca"
	// servingSecretPrefix + node name holds the kubelet serving certificate, reused while valid.
	servingSecretPrefix = "kip-serving-"
	caCertKey           = "ca.crt"
	caKeyKey            = "ca.key"
	// renewBefore is how long before expiry a cached serving certificate is replaced.
	renewBefore = 24 * time.Hour
	// csrTimeout bounds the wait for the cluster to sign the serving certificate.
	csrTimeout = 90 * time.Second
)

// ensureCA returns kip's CA from its Secret, creating both once. Two kips racing to create it
// both end up with the winner's.
func ensureCA(ctx context.Context, client kubernetes.Interface) (*pki.CA, error) {
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

// servingCert returns the kubelet API's serving certificate: the configured files, else a
// cached one still valid for this address, else a new one from the cluster through a CSR
// (signer kubernetes.io/kubelet-serving), which kip approves itself when it may.
func (r *runner) servingCert(ctx context.Context, ip string) (tls.Certificate, error) {
	t := r.cfg.Node.TLS
	if t.CertFile != "" || t.KeyFile != "" {
		pair, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
		if err != nil {
			return tls.Certificate{}, fmt.Errorf("node.tls: loading %s and %s: %w", t.CertFile, t.KeyFile, err)
		}
		return pair, nil
	}
	name := r.cfg.Node.Name
	secrets := r.client.CoreV1().Secrets(secretNamespace)
	cached, err := secrets.Get(ctx, servingSecretPrefix+name, metav1.GetOptions{})
	if err == nil {
		if pair, ok := usableServing(cached.Data[corev1.TLSCertKey], cached.Data[corev1.TLSPrivateKeyKey], ip, time.Now()); ok {
			r.log.Info("reusing the kubelet serving certificate", "secret", secretNamespace+"/"+cached.Name)
			return pair, nil
		}
	} else if !apierrors.IsNotFound(err) {
		r.log.Warn("reading the cached serving certificate", "err", err)
	}

	certPEM, keyPEM, err := r.requestServingCert(ctx, ip)
	if err != nil {
		return tls.Certificate{}, err
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("loading the signed serving certificate: %w", err)
	}
	s := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: servingSecretPrefix + name, Namespace: secretNamespace, Labels: map[string]string{"app.kubernetes.io/name": "kip"}},
		Type:       corev1.SecretTypeTLS,
		Data:       map[string][]byte{corev1.TLSCertKey: certPEM, corev1.TLSPrivateKeyKey: keyPEM},
	}
	if _, err := secrets.Create(ctx, s, metav1.CreateOptions{}); apierrors.IsAlreadyExists(err) {
		_, err = secrets.Update(ctx, s, metav1.UpdateOptions{})
		if err != nil {
			r.log.Warn("caching the serving certificate", "err", err)
		}
	} else if err != nil {
		r.log.Warn("caching the serving certificate", "err", err)
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
func (r *runner) requestServingCert(ctx context.Context, ip string) (certPEM, keyPEM []byte, err error) {
	name := r.cfg.Node.Name
	key, keyPEM, err := pki.NewKey()
	if err != nil {
		return nil, nil, fmt.Errorf("making the serving key: %w", err)
	}
	csrPEM, err := certutil.MakeCSR(key, &pkix.Name{CommonName: "system:node:" + name, Organization: []string{"system:nodes"}},
		[]string{name}, []net.IP{net.ParseIP(ip)})
	if err != nil {
		return nil, nil, fmt.Errorf("making the serving CSR: %w", err)
	}
	reqName, reqUID, err := csr.RequestCertificateWithContext(ctx, r.client, csrPEM, "", certificatesv1.KubeletServingSignerName, nil,
		[]certificatesv1.KeyUsage{certificatesv1.UsageDigitalSignature, certificatesv1.UsageServerAuth}, key)
	if err != nil {
		return nil, nil, fmt.Errorf("requesting the kubelet serving certificate: %w", err)
	}
	r.log.Info("requested the kubelet serving certificate", "csr", reqName)
	if err := approve(ctx, r.client, reqName); err != nil {
		r.log.Warn("could not approve the serving CSR; waiting for an administrator (kubectl certificate approve "+reqName+")", "err", err)
	}
	wctx, cancel := context.WithTimeout(ctx, csrTimeout)
	defer cancel()
	certPEM, err = csr.WaitForCertificate(wctx, r.client, reqName, reqUID)
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

// clusterClientCA returns the CA bundle that signs client certificates of the cluster (the
// apiserver's kubelet client among them): the apiserver publishes it in
// kube-system/extension-apiserver-authentication; the kubeconfig's CA is the fallback.
func clusterClientCA(ctx context.Context, client kubernetes.Interface, cfg *rest.Config) ([]byte, error) {
	cm, err := client.CoreV1().ConfigMaps(secretNamespace).Get(ctx, "extension-apiserver-authentication", metav1.GetOptions{})
	if err == nil && cm.Data["client-ca-file"] != "" {
		return []byte(cm.Data["client-ca-file"]), nil
	}
	if len(cfg.CAData) > 0 {
		return cfg.CAData, nil
	}
	if cfg.CAFile != "" {
		b, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("reading the cluster CA %s: %w", cfg.CAFile, err)
		}
		return b, nil
	}
	if err != nil {
		return nil, fmt.Errorf("finding the cluster's client CA: %w", err)
	}
	return nil, errors.New("finding the cluster's client CA: extension-apiserver-authentication has no client-ca-file and the kubeconfig names no CA")
}

// kubeletAuth authenticates kubelet API requests as kubelet does: client certificates signed
// by the cluster's client CA, or bearer tokens through TokenReview; anonymous requests are
// refused. Requests are authorized with SubjectAccessReview on the node's subresources.
//
// anonymousPaths opens exactly those paths to requests without credentials (the apiserver's
// pod proxy sends none); they are authorized as system:anonymous by SubjectAccessReview.
func kubeletAuth(client kubernetes.Interface, nodeName string, clientCA []byte, anonymousPaths []string) (nodeutil.Auth, error) {
	if !bytes.Contains(clientCA, []byte("CERTIFICATE")) {
		return nil, errors.New("setting up kubelet API authentication: the client CA bundle holds no certificate")
	}
	caContent, err := dynamiccertificates.NewStaticCAContent("cluster-client-ca", clientCA)
	if err != nil {
		return nil, fmt.Errorf("setting up kubelet API authentication: %w", err)
	}
	auth, err := nodeutil.WebhookAuth(client, nodeName, func(c *nodeutil.WebhookAuthConfig) error {
		c.AuthnConfig.ClientCertificateCAContentProvider = caContent
		c.AuthnConfig.Anonymous = nil
		if len(anonymousPaths) > 0 {
			anon := &apiserver.AnonymousAuthConfig{Enabled: true}
			for _, p := range anonymousPaths {
				anon.Conditions = append(anon.Conditions, apiserver.AnonymousAuthCondition{Path: p})
			}
			c.AuthnConfig.Anonymous = anon
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("setting up kubelet API authentication: %w", err)
	}
	return auth, nil
}
