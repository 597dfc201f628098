package controlplane

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/kip-dev/kip/internal/pki"
)

// certValidity is long enough that a control plane kept under ~/.kip never sees a cert expire
// in practice; the CA itself is valid ten years.
const certValidity = 5 * 365 * 24 * time.Hour

// leaf names one certificate the control plane needs and how it is issued.
type leaf struct {
	file string
	spec pki.LeafSpec
}

// leaves lists every certificate written under pki/: one serving certificate per component
// and one client certificate per identity that talks to the apiserver.
func leaves(apiIP net.IP) []leaf {
	loop := []net.IP{net.ParseIP("127.0.0.1")}
	apiIPs := []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("10.0.0.1")}
	if apiIP != nil && !apiIP.IsLoopback() {
		apiIPs = append(apiIPs, apiIP)
	}
	return []leaf{
		{"apiserver", pki.LeafSpec{
			CommonName: "kube-apiserver",
			DNSNames: []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
				"kubernetes.default.svc.cluster.local"},
			IPs:    apiIPs,
			Server: true,
		}},
		{"controller-manager-serving", pki.LeafSpec{CommonName: "kube-controller-manager", DNSNames: []string{"localhost"}, IPs: loop, Server: true}},
		{"scheduler-serving", pki.LeafSpec{CommonName: "kube-scheduler", DNSNames: []string{"localhost"}, IPs: loop, Server: true}},
		{"admin", pki.LeafSpec{CommonName: "kubernetes-admin", Organization: []string{"system:masters"}, Client: true}},
		{"apiserver-kubelet-client", pki.LeafSpec{CommonName: "kube-apiserver-kubelet-client", Organization: []string{"system:masters"}, Client: true}},
		{"scheduler", pki.LeafSpec{CommonName: "system:kube-scheduler", Client: true}},
		{"controller-manager", pki.LeafSpec{CommonName: "system:kube-controller-manager", Client: true}},
		{"front-proxy-client", pki.LeafSpec{CommonName: "front-proxy-client", Client: true}},
	}
}

// credentials holds the PEM material of one client identity, for kubeconfigs and REST configs.
type credentials struct {
	certPEM, keyPEM []byte
}

// writePKI makes the cluster CA, every leaf certificate and the service-account key pair under
// dir, and returns the CA and the client credentials by file name.
func writePKI(dir string, apiIP net.IP) (*pki.CA, map[string]credentials, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, nil, fmt.Errorf("creating %s: %w", dir, err)
	}
	ca, err := pki.NewCA("kip-cluster-ca")
	if err != nil {
		return nil, nil, fmt.Errorf("making cluster CA: %w", err)
	}
	if err := writeFile(filepath.Join(dir, "ca.crt"), ca.CertPEM); err != nil {
		return nil, nil, err
	}
	if err := writeFile(filepath.Join(dir, "ca.key"), ca.KeyPEM); err != nil {
		return nil, nil, err
	}
	creds := map[string]credentials{}
	for _, l := range leaves(apiIP) {
		l.spec.Validity = certValidity
		certPEM, keyPEM, err := ca.Issue(l.spec)
		if err != nil {
			return nil, nil, fmt.Errorf("issuing %s certificate: %w", l.file, err)
		}
		if err := writeFile(filepath.Join(dir, l.file+".crt"), certPEM); err != nil {
			return nil, nil, err
		}
		if err := writeFile(filepath.Join(dir, l.file+".key"), keyPEM); err != nil {
			return nil, nil, err
		}
		creds[l.file] = credentials{certPEM: certPEM, keyPEM: keyPEM}
	}
	if err := writeServiceAccountKey(dir); err != nil {
		return nil, nil, err
	}
	return ca, creds, nil
}

// writeServiceAccountKey writes sa.key (RSA, PKCS#1) and sa.pub (PKIX): the apiserver signs
// service-account tokens with RS256, which needs an RSA key.
func writeServiceAccountKey(dir string) error {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return fmt.Errorf("generating service-account key: %w", err)
	}
	pub, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return fmt.Errorf("encoding service-account public key: %w", err)
	}
	priv := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)})
	if err := writeFile(filepath.Join(dir, "sa.key"), priv); err != nil {
		return err
	}
	return writeFile(filepath.Join(dir, "sa.pub"), pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}))
}

// writeKubeconfig writes a kubeconfig for one identity with everything embedded.
func writeKubeconfig(path, server string, caPEM []byte, user string, c credentials) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["kip"] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: caPEM}
	cfg.AuthInfos[user] = &clientcmdapi.AuthInfo{ClientCertificateData: c.certPEM, ClientKeyData: c.keyPEM}
	cfg.Contexts["kip"] = &clientcmdapi.Context{Cluster: "kip", AuthInfo: user}
	cfg.CurrentContext = "kip"
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		return fmt.Errorf("writing kubeconfig %s: %w", path, err)
	}
	return os.Chmod(path, 0o600)
}

func writeFile(path string, data []byte) error {
	if err := os.WriteFile(path, data, 0o600); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}
