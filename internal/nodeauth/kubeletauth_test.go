package nodeauth

import (
	"crypto/tls"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/virtual-kubelet/virtual-kubelet/node/nodeutil"

	"github.com/kip-dev/kip/internal/nodeauth/nodeauthtest"
	"github.com/kip-dev/kip/internal/pki"
)

func TestKubeletAuth(t *testing.T) {
	clusterCA, err := pki.NewCA("cluster")
	if err != nil {
		t.Fatal(err)
	}
	otherCA, err := pki.NewCA("other")
	if err != nil {
		t.Fatal(err)
	}
	clientCert := func(ca *pki.CA, cn string, orgs ...string) tls.Certificate {
		c, k, err := ca.Issue(pki.LeafSpec{CommonName: cn, Organization: orgs, Client: true})
		if err != nil {
			t.Fatal(err)
		}
		pair, err := tls.X509KeyPair(c, k)
		if err != nil {
			t.Fatal(err)
		}
		return pair
	}
	apiserver := clientCert(clusterCA, "kube-apiserver-kubelet-client", "system:masters")
	nobody := clientCert(clusterCA, "nobody")
	forged := clientCert(otherCA, "kube-apiserver-kubelet-client", "system:masters")
	allow := func(user, sub string) bool {
		return user == "kube-apiserver-kubelet-client" || (user == "system:anonymous" && sub == "stats")
	}

	tests := []struct {
		name      string
		anonymous []string
		cert      *tls.Certificate
		path      string
		want      int
	}{
		{"anonymous refused", nil, nil, "/pods", http.StatusUnauthorized},
		{"anonymous refused on stats by default", nil, nil, "/stats/summary", http.StatusUnauthorized},
		{"certificate of another CA", nil, &forged, "/pods", http.StatusUnauthorized},
		{"apiserver's kubelet client", nil, &apiserver, "/containerLogs/ns/p/c", http.StatusOK},
		{"authenticated but not authorized", nil, &nobody, "/pods", http.StatusForbidden},
		{"anonymous on an opened path, authorized by SAR", []string{"/stats/summary"}, nil, "/stats/summary", http.StatusOK},
		{"anonymous on an opened path, denied by SAR", []string{"/metrics/resource"}, nil, "/metrics/resource", http.StatusForbidden},
		{"anonymous elsewhere still refused", []string{"/stats/summary"}, nil, "/pods", http.StatusUnauthorized},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			auth, err := KubeletAuth(nodeauthtest.SARServer(t, allow), "kip", clusterCA.CertPEM, tc.anonymous)
			if err != nil {
				t.Fatal(err)
			}
			srv := httptest.NewUnstartedServer(nodeutil.WithAuth(auth, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				w.WriteHeader(http.StatusOK)
			})))
			srv.TLS = &tls.Config{ClientAuth: tls.RequestClientCert}
			srv.StartTLS()
			defer srv.Close()
			tr := srv.Client().Transport.(*http.Transport).Clone()
			if tc.cert != nil {
				tr.TLSClientConfig.Certificates = []tls.Certificate{*tc.cert}
			}
			resp, err := (&http.Client{Transport: tr}).Get(srv.URL + tc.path)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Errorf("GET %s = %d, want %d", tc.path, resp.StatusCode, tc.want)
			}
		})
	}
	if _, err := KubeletAuth(nodeauthtest.SARServer(t, allow), "kip", []byte("not a cert"), nil); err == nil {
		t.Error("KubeletAuth accepted a CA bundle without certificates")
	}
}
