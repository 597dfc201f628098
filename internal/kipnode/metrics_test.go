package kipnode

import (
	"crypto/tls"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/virtual-kubelet/virtual-kubelet/node/nodeutil"

	"github.com/kip-dev/kip/internal/cells"
	"github.com/kip-dev/kip/internal/metrics"
	"github.com/kip-dev/kip/internal/nodeauth"
	"github.com/kip-dev/kip/internal/nodeauth/nodeauthtest"
	"github.com/kip-dev/kip/internal/pki"
)

// TestMetricsOnKubeletAPI serves kip's metrics as kip run does: at /metrics/kip inside the
// kubelet API's authentication, authorized as nodes/metrics; other paths reach the routes.
func TestMetricsOnKubeletAPI(t *testing.T) {
	clusterCA, err := pki.NewCA("cluster")
	if err != nil {
		t.Fatal(err)
	}
	cert := func(cn string) *tls.Certificate {
		c, k, err := clusterCA.Issue(pki.LeafSpec{CommonName: cn, Client: true})
		if err != nil {
			t.Fatal(err)
		}
		pair, err := tls.X509KeyPair(c, k)
		if err != nil {
			t.Fatal(err)
		}
		return &pair
	}
	scraper, nobody := cert("prometheus"), cert("nobody")
	allow := func(user, sub string) bool { return user == "prometheus" && sub == "metrics" }
	auth, err := nodeauth.KubeletAuth(nodeauthtest.SARServer(t, allow), "kip", clusterCA.CertPEM, nil)
	if err != nil {
		t.Fatal(err)
	}

	reg := prometheus.NewRegistry()
	met, err := metrics.New(reg)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	met.Observe(cells.Timing{UID: "u", Created: now, Launched: now.Add(30 * time.Millisecond)})
	routes := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusTeapot) })
	srv := httptest.NewUnstartedServer(nodeutil.WithAuth(auth, withMetrics(metrics.Handler(reg), routes)))
	srv.TLS = &tls.Config{ClientAuth: tls.RequestClientCert}
	srv.StartTLS()
	defer srv.Close()

	tests := []struct {
		name     string
		cert     *tls.Certificate
		path     string
		want     int
		wantBody string
	}{
		{"anonymous refused", nil, metrics.Path, http.StatusUnauthorized, ""},
		{"authenticated but not authorized", nobody, metrics.Path, http.StatusForbidden, ""},
		{"authorized for nodes/metrics", scraper, metrics.Path, http.StatusOK, `kip_pod_phase_duration_seconds_bucket{phase="launch",le="0.05"} 1`},
		{"kubelet's /metrics path serves them too", scraper, metrics.KubeletPath, http.StatusOK, `kip_pod_phase_duration_seconds_bucket{phase="launch",le="0.05"} 1`},
		{"kubelet's /metrics needs nodes/metrics", nobody, metrics.KubeletPath, http.StatusForbidden, ""},
		{"virtual-kubelet's metrics stay the routes'", scraper, "/metrics/resource", http.StatusTeapot, ""},
		{"a path below is the routes'", scraper, metrics.Path + "/x", http.StatusTeapot, ""},
		{"nodes/metrics does not open other subresources", scraper, "/pods", http.StatusForbidden, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tr := srv.Client().Transport.(*http.Transport).Clone()
			if tc.cert != nil {
				tr.TLSClientConfig.Certificates = []tls.Certificate{*tc.cert}
			}
			resp, err := (&http.Client{Transport: tr}).Get(srv.URL + tc.path)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, err := io.ReadAll(resp.Body)
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != tc.want {
				t.Errorf("GET %s = %d, want %d", tc.path, resp.StatusCode, tc.want)
			}
			if !strings.Contains(string(body), tc.wantBody) {
				t.Errorf("GET %s lacks %q:\n%s", tc.path, tc.wantBody, body)
			}
		})
	}
}
