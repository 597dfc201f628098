package kipnode

import (
	"context"
	"crypto/tls"
	"fmt"

	"github.com/kip-dev/kip/internal/nodeauth"
)

// servingCert returns the kubelet API's serving certificate: the files of node.tls when set,
// else nodeauth's (cached in a Secret while valid for ip, else signed by the cluster via a CSR).
func (r *runner) servingCert(ctx context.Context, ip string) (tls.Certificate, error) {
	t := r.cfg.Node.TLS
	if t.CertFile != "" || t.KeyFile != "" {
		pair, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
		if err != nil {
			return tls.Certificate{}, fmt.Errorf("node.tls: loading %s and %s: %w", t.CertFile, t.KeyFile, err)
		}
		return pair, nil
	}
	return nodeauth.ServingCert(ctx, r.client, r.cfg.Node.Name, ip, r.log)
}
