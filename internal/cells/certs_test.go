package cells

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	testingclock "k8s.io/utils/clock/testing"

	"github.com/kip-dev/kip/internal/cellapi"
	"github.com/kip-dev/kip/internal/cloud/fake"
	"github.com/kip-dev/kip/internal/pki"
)

// startTLSCell runs one pod on a tlsCloud cell whose certificates last lifetime. The
// manager's clock is a fake one set to the real time, since certificates carry real times:
// the test moves it to the real time (syncClock) when it wants kip to notice time passing.
func startTLSCell(t *testing.T, lifetime time.Duration, noRenewal bool) (*harness, *tlsCloud, *corev1.Pod) {
	t.Helper()
	tc := &tlsCloud{noRenewal: noRenewal}
	h, pod := runOnTLSCloud(t, tc, "certs", func(h *harness) {
		h.clock = testingclock.NewFakeClock(time.Now())
		h.cloud = fake.New(fake.WithClock(h.clock))
		h.certLifetime = lifetime
	})
	return h, tc, pod
}

// served returns the certificate the cell's agent presents to a new connection.
func (c *tlsCloud) served(t *testing.T, ca *pki.CA, cellID string) *x509.Certificate {
	t.Helper()
	c.mu.Lock()
	addr := c.server.Listener.Addr().String()
	c.mu.Unlock()
	conn, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: ca.Pool(), ServerName: cellID})
	if err != nil {
		t.Fatalf("dialing the agent: %v", err)
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0]
}

// waitUntil waits for the real time to pass at.
func waitUntil(t *testing.T, at time.Time) {
	t.Helper()
	for time.Now().Before(at) {
		time.Sleep(time.Until(at) + 10*time.Millisecond)
	}
}

// TestCertsRenewBeforeExpiry: with 6-second certificates, kip renews the agent's serving
// certificate (the agent's new key, kip's signature) and its own client certificate once two
// thirds of the lifetime have passed, and both kip's existing connection and new ones keep
// working after the original certificates expired; a server still presenting the original
// certificate is refused.
func TestCertsRenewBeforeExpiry(t *testing.T) {
	const lifetime = 6 * time.Second
	h, tc, pod := startTLSCell(t, lifetime, false)
	ctx := context.Background()
	cellID := CellID(pod.UID)
	orig := tc.served(t, h.ca, cellID)
	origClient := tc.lastClientSerial()
	if origClient == "" {
		t.Fatal("the agent saw no client certificate from kip")
	}
	if got := orig.NotAfter.Sub(orig.NotBefore); got > lifetime+time.Hour+time.Second {
		t.Fatalf("the bootstrap certificate lasts %v, want cells.certLifetime %v (+1h backdating)", got, lifetime)
	}

	// Before two thirds of the lifetime: nothing renewed. (Waiting for the pod stepped the
	// fake clock ahead of the real one.)
	h.clock.SetTime(time.Now())
	h.m.RenewAgentCerts(ctx)
	if got := tc.served(t, h.ca, cellID); got.SerialNumber.Cmp(orig.SerialNumber) != 0 {
		t.Fatal("the agent's certificate was renewed before two thirds of its lifetime")
	}

	waitUntil(t, orig.NotAfter.Add(-lifetime/3))
	h.clock.SetTime(time.Now())
	h.m.RenewAgentCerts(ctx)
	renewed := tc.served(t, h.ca, cellID)
	if renewed.SerialNumber.Cmp(orig.SerialNumber) == 0 {
		t.Fatal("the agent's certificate was not renewed at two thirds of its lifetime")
	}
	if !renewed.NotAfter.After(orig.NotAfter) || renewed.Subject.CommonName != cellID {
		t.Errorf("renewed certificate: %s until %v, want %s past %v", renewed.Subject.CommonName, renewed.NotAfter, cellID, orig.NotAfter)
	}

	// Past the original certificates' expiry: the manager's connection and fresh ones (new
	// handshakes: kip's reissued client certificate, the agent's renewed one) work.
	waitUntil(t, orig.NotAfter.Add(100*time.Millisecond))
	h.clock.SetTime(time.Now())
	ag, err := h.m.Agent(pod.Namespace, pod.Name)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ag.GetPod(ctx); err != nil {
		t.Errorf("the manager's agent client after the original expiry: %v", err)
	}
	inst := *h.live()[0]
	inst.PrivateIP = "127.0.0.1" // as tlsCloud.Launch reported it
	fresh, err := h.m.dial(ctx, &inst, cellID)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fresh.GetPod(ctx); err != nil {
		t.Errorf("a new connection after the original expiry: %v", err)
	}
	if got := tc.lastClientSerial(); got == origClient {
		t.Errorf("kip presented its original client certificate (%s) after two thirds of its lifetime", got)
	}

	// An agent serving an expired certificate is refused.
	checkRefusesExpired(t, h, cellID)
}

// checkRefusesExpired serves an agent whose certificate (right name, right CA) has expired
// and checks that kip's client (as dial makes it) refuses it.
func checkRefusesExpired(t *testing.T, h *harness, cellID string) {
	t.Helper()
	certPEM, keyPEM, err := h.ca.Issue(pki.LeafSpec{CommonName: cellID, DNSNames: []string{cellID}, Server: true, Validity: -time.Second})
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := pki.ServerTLS(h.ca.CertPEM, certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(cellapi.Handler(&testAgent{cellID: cellID}, cellapi.HandlerOptions{}))
	srv.TLS = cfg
	srv.StartTLS()
	defer srv.Close()
	cc, err := h.m.clientCertificate()
	if err != nil {
		t.Fatal(err)
	}
	tlsCfg, err := pki.ClientTLSFunc(h.ca.CertPEM, cc.GetClientCertificate, cellID)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cellapi.NewClient(srv.URL, tlsCfg).GetPod(context.Background()); err == nil || !strings.Contains(err.Error(), "expired") {
		t.Errorf("GetPod from an agent with an expired certificate: %v, want a certificate-expired error", err)
	}
}

// TestOldAgentWithoutCertRenewal: an agent without the renewal routes is asked once, warned
// about once, and its pod keeps running.
func TestOldAgentWithoutCertRenewal(t *testing.T) {
	const lifetime = 6 * time.Second
	h, tc, pod := startTLSCell(t, lifetime, true)
	h.clock.Step(lifetime) // past two thirds: due for renewal
	h.m.RenewAgentCerts(context.Background())
	h.m.RenewAgentCerts(context.Background())
	tc.mu.Lock()
	n := tc.certRequests
	tc.mu.Unlock()
	if n != 1 {
		t.Errorf("an agent without certificate renewal was asked %d times, want once", n)
	}
	if p, ok := h.m.GetPod(pod.Namespace, pod.Name); !ok || p.Status.Phase != corev1.PodRunning {
		t.Errorf("pod after a failed renewal: %v", p)
	}
}
