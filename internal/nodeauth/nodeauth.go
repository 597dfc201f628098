// Package nodeauth gives kip's virtual node its credentials and guards its kubelet API: kip's
// CA kept in a Secret, the kubelet serving certificate signed by the cluster through a CSR,
// and kubelet's authentication (client certificates, TokenReview) and authorization
// (SubjectAccessReview) of kubelet API requests. internal/pki makes the keys and certificates.
package nodeauth

import "time"

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
