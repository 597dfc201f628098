package nodeauth

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/virtual-kubelet/virtual-kubelet/node/nodeutil"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apiserver/pkg/apis/apiserver"
	"k8s.io/apiserver/pkg/server/dynamiccertificates"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// ClusterClientCA returns the CA bundle that signs client certificates of the cluster (the
// apiserver's kubelet client among them): the apiserver publishes it in
// kube-system/extension-apiserver-authentication; cfg's CA (data, else file) is the fallback.
func ClusterClientCA(ctx context.Context, client kubernetes.Interface, cfg *rest.Config) ([]byte, error) {
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

// KubeletAuth authenticates kubelet API requests as kubelet does: client certificates signed
// by clientCA (the cluster's client CA bundle, PEM), or bearer tokens through TokenReview;
// anonymous requests are refused. Requests are authorized with SubjectAccessReview on node
// nodeName's subresources.
//
// anonymousPaths opens exactly those paths to requests without credentials (the apiserver's
// pod proxy sends none); they are authorized as system:anonymous by SubjectAccessReview.
func KubeletAuth(client kubernetes.Interface, nodeName string, clientCA []byte, anonymousPaths []string) (nodeutil.Auth, error) {
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
