package cells

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	testingclock "k8s.io/utils/clock/testing"

	"github.com/kip-dev/kip/internal/capacity"
	"github.com/kip-dev/kip/internal/cellapi"
	"github.com/kip-dev/kip/internal/cellenroll"
	"github.com/kip-dev/kip/internal/cloud"
	"github.com/kip-dev/kip/internal/cloud/fake"
	"github.com/kip-dev/kip/internal/enroll"
	"github.com/kip-dev/kip/internal/instancetype"
	"github.com/kip-dev/kip/internal/pki"
	"github.com/kip-dev/kip/internal/selector"
)

func TestCapacityMemoryOrdersAndForgets(t *testing.T) {
	clk := testingclock.NewFakeClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	mem := capacity.New(clk, 3*time.Minute)
	c := func(name string) selector.Candidate {
		return selector.Candidate{Type: instancetype.InstanceType{Name: name}, Offering: instancetype.Offering{Zone: "z"}}
	}
	names := func(cs []selector.Candidate) string { return candNames(cs) }
	choice := &selector.Choice{Candidate: c("a"), Fallbacks: []selector.Candidate{c("b"), c("c")}}
	mem.Remember(offeringOf(c("a")))
	if got := names(candidates(mem, choice)); got != "b in z, c in z, a in z" {
		t.Errorf("order = %s", got)
	}
	clk.Step(3 * time.Minute)
	if got := names(candidates(mem, choice)); got != "a in z, b in z, c in z" {
		t.Errorf("order after the memory window = %s", got)
	}
}

// TestCandidatesZonesBeforeTypes: a capacity error falls back to the same type in its other
// zones before other types, whatever the selector's price order.
func TestCandidatesZonesBeforeTypes(t *testing.T) {
	c := func(name, zone string, price float64) selector.Candidate {
		return selector.Candidate{Type: instancetype.InstanceType{Name: name}, Offering: instancetype.Offering{Price: price}, Zone: zone}
	}
	choice := &selector.Choice{Candidate: c("a", "z1", 0.1),
		Fallbacks: []selector.Candidate{c("b", "z1", 0.1), c("a", "z2", 0.1), c("b", "z2", 0.1), c("c", "z1", 0.2)}}
	if got := candNames(candidates(capacity.New(nil, time.Minute), choice)); got != "a in z1, a in z2, b in z1, b in z2, c in z1" {
		t.Errorf("order = %s", got)
	}
}

// TestChoiceZones: a candidate launches in the zone the selector chose for it (a region-wide
// offering gets one), else in its offering's.
func TestChoiceZones(t *testing.T) {
	nano := instancetype.InstanceType{Name: "local.nano"}
	small := instancetype.InstanceType{Name: "local.small"}
	ch := &selector.Choice{
		Candidate: selector.Candidate{Type: nano, Offering: instancetype.Offering{Price: 0.1}, Zone: "z1"},
		Fallbacks: []selector.Candidate{{Type: small, Offering: instancetype.Offering{Price: 0.2, Zone: "z2"}}},
	}
	got := candidates(capacity.New(nil, time.Minute), ch)
	if len(got) != 2 || got[0].Type.Name != "local.nano" || got[0].Offering.Zone != "z1" ||
		got[1].Type.Name != "local.small" || got[1].Offering.Zone != "z2" {
		t.Errorf("choice %+v", got)
	}
}

func TestCellIDAndToken(t *testing.T) {
	uid := types.UID("3F2504E0-4F89-11D3-9A0C-0305E82C3301")
	if got := CellID(uid); got != "c-3f2504e04f89" {
		t.Errorf("CellID = %s", got)
	}
	tok := clientToken(uid, "m5.24xlarge-with-a-really-long-name", "us-east-1a")
	if len(tok) > 64 || !strings.HasPrefix(tok, "3F2504E04F8911D39A0C0305E82C3301-") || !strings.Contains(tok, "-m5.24xlarge") {
		t.Errorf("token %q (%d chars)", tok, len(tok))
	}
	if clientToken(uid, "a", "") == clientToken(uid, "b", "") {
		t.Error("tokens of different types collide")
	}
	// A long type leaves no room for the zone in the text: the hash still tells them apart.
	long := "m5.24xlarge-with-a-really-long-name"
	if clientToken(uid, long, "us-east-1a") == clientToken(uid, long, "us-east-1b") {
		t.Error("tokens of one type in different zones collide")
	}
	if clientToken(uid, "a", "z1") != clientToken(uid, "a", "z1") {
		t.Error("the token of one offering is not stable")
	}
}

// tlsCloud serves each launched cell's agent over real mutual TLS on 127.0.0.1, with the
// certificate from the cell's bootstrap data, so the manager's default Dial is exercised. Its
// serving certificate can be renewed as kip-cell's (cellapi.ServingCertRotator) unless
// noRenewal, which stands for an older agent; clientSerials records the serial of each
// client certificate a handshake verified, and certRequests counts CertRequestPath calls.
type tlsCloud struct {
	*fake.Fake
	t     *testing.T
	ln    net.Listener
	agent *testAgent
	// enrolling: the manager has Deps.Enrollment, so bootstraps carry a token, no key.
	enrolling bool
	noRenewal bool
	mu        sync.Mutex
	server    *httptest.Server
	serving   *pki.ServingCert

	clientSerials []string
	certRequests  int
}

func (c *tlsCloud) lastClientSerial() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.clientSerials) == 0 {
		return ""
	}
	return c.clientSerials[len(c.clientSerials)-1]
}

func (c *tlsCloud) Launch(ctx context.Context, spec cloud.LaunchSpec) (*cloud.Instance, error) {
	inst, err := c.Fake.Launch(ctx, spec)
	if err != nil {
		return nil, err
	}
	var boot cellapi.Bootstrap
	if err := json.Unmarshal(spec.BootstrapData, &boot); err != nil {
		return nil, cloud.InvalidSpec("bootstrap: %v", err)
	}
	if c.enrolling != (boot.EnrollToken != "") || (c.enrolling && (len(boot.Key) > 0 || len(boot.Cert) > 0)) {
		c.t.Errorf("bootstrap: token %v, key %d bytes, cert %d bytes; want a token and no key exactly when enrolling (%v)",
			boot.EnrollToken != "", len(boot.Key), len(boot.Cert), c.enrolling)
	}
	cert, key := boot.Cert, boot.Key
	if boot.EnrollToken != "" {
		// The agent enrolls, as kip-cell does, with its token.
		if cert, key, err = cellenroll.Enroll(ctx, cellenroll.Config{URL: boot.EnrollURL, Token: boot.EnrollToken,
			CellID: boot.CellID, CACert: boot.CACert, Dir: c.t.TempDir()}); err != nil {
			return nil, cloud.InvalidSpec("enrolling: %v", err)
		}
	}
	serving, err := pki.NewServingCert(boot.CACert, cert, key)
	if err != nil {
		return nil, cloud.InvalidSpec("bootstrap: %v", err)
	}
	cfg, err := pki.ServerTLSFunc(boot.CACert, serving.GetCertificate)
	if err != nil {
		return nil, cloud.InvalidSpec("bootstrap: %v", err)
	}
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		if len(cs.VerifiedChains) > 0 {
			c.mu.Lock()
			c.clientSerials = append(c.clientSerials, cs.PeerCertificates[0].SerialNumber.String())
			c.mu.Unlock()
		}
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.agent.cellID = boot.CellID
	c.serving = serving
	hopts := cellapi.HandlerOptions{}
	if !c.noRenewal {
		hopts.Certs = cellapi.ServingCertRotator(serving)
	}
	handler := cellapi.Handler(c.agent, hopts)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == cellapi.CertRequestPath {
			c.mu.Lock()
			c.certRequests++
			c.mu.Unlock()
		}
		handler.ServeHTTP(w, r)
	}))
	srv.Listener = c.ln
	srv.TLS = cfg
	srv.Config.ErrorLog = nil
	srv.StartTLS()
	c.server = srv
	inst.PrivateIP = "127.0.0.1"
	return inst, nil
}

func TestDefaultDialUsesMutualTLS(t *testing.T) {
	for _, enrolling := range []bool{false, true} {
		name := "certificate in the bootstrap"
		if enrolling {
			name = "enrolled with a one-time token"
		}
		t.Run(name, func(t *testing.T) { testDefaultDial(t, enrolling) })
	}
}

// enrollServer serves kip's enrollment endpoint for ca over TLS, as kip run does for AWS.
func enrollServer(t *testing.T, ca *pki.CA) *Enrollment {
	t.Helper()
	tokens, err := enroll.NewTokens(ca, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(enroll.Handler(enroll.Config{CA: ca, Tokens: tokens, Ledger: &enroll.MemoryLedger{}}))
	certPEM, keyPEM, err := enroll.ServingCert(ca, []string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{pair}}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return &Enrollment{Mint: tokens.Mint, URL: srv.URL}
}

// runOnTLSCloud runs one pod (restartPolicy Always) named name on a cell of tc, which it
// serves on a fresh 127.0.0.1 listener, and returns once the pod is Running. setup, when not
// nil, adjusts the harness first (a clock, a cloud, an enrollment endpoint); tc then wraps
// the harness's cloud.
func runOnTLSCloud(t *testing.T, tc *tlsCloud, name string, setup func(*harness)) (*harness, *corev1.Pod) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tc.t, tc.ln = t, ln
	if tc.agent == nil {
		tc.agent = &testAgent{}
	}
	// Registered first so it runs last, after the manager has closed its streams.
	t.Cleanup(func() {
		tc.mu.Lock()
		defer tc.mu.Unlock()
		if tc.server != nil {
			tc.server.Close()
		} else {
			ln.Close()
		}
	})
	h := newHarness(t, func(h *harness) {
		if setup != nil {
			setup(h)
		}
		tc.Fake = h.cloud
		h.cl = tc
		h.dial = nil
		h.agentPort = ln.Addr().(*net.TCPAddr).Port
	})
	pod := testPod(name, func(p *corev1.Pod) { p.Spec.RestartPolicy = corev1.RestartPolicyAlways })
	if err := h.m.CreatePod(context.Background(), pod); err != nil {
		t.Fatal(err)
	}
	h.waitFor("a status watch over TLS", func() bool { return tc.agent.watcherCount() > 0 })
	tc.agent.set(&cellapi.PodStatus{Phase: corev1.PodRunning, ContainerStatuses: []corev1.ContainerStatus{running("main", true)}})
	h.waitPod(pod, "Running", func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodRunning })
	return h, pod
}

func testDefaultDial(t *testing.T, enrolling bool) {
	tc := &tlsCloud{enrolling: enrolling}
	h, pod := runOnTLSCloud(t, tc, "tls", func(h *harness) {
		if enrolling {
			h.enrollment = enrollServer(t, h.ca)
		}
	})

	// A client without kip's certificate is refused by the agent.
	tc.mu.Lock()
	url := tc.server.URL
	tc.mu.Unlock()
	anon := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: h.ca.Pool(), ServerName: CellID(pod.UID)}}}
	resp, err := anon.Get(url + cellapi.PodPath)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("anonymous GET %s = %d, want 401", cellapi.PodPath, resp.StatusCode)
	}
}

// TestHostNetworkPodsHostIsTheirCell: a hostNetwork pod's host is its cell, so its hostIP is
// its pod IP (the cell's address) in the status and in the request the agent gets (the
// downward API's status.hostIP); other pods report the node's address.
func TestHostNetworkPodsHostIsTheirCell(t *testing.T) {
	h := newHarness(t)
	pod := testPod("hostnet")
	pod.Spec.HostNetwork = true
	if err := h.m.CreatePod(context.Background(), pod); err != nil {
		t.Fatal(err)
	}
	a := h.agent(CellID(pod.UID))
	h.waitFor("the agent to get the pod", func() bool { a.mu.Lock(); defer a.mu.Unlock(); return a.req != nil })
	a.set(&cellapi.PodStatus{Phase: corev1.PodRunning, ContainerStatuses: []corev1.ContainerStatus{running("main", true)}})
	got := h.waitPod(pod, "Running", func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodRunning })
	inst := h.live()[0]
	if got.Status.PodIP != inst.PrivateIP || got.Status.HostIP != inst.PrivateIP || len(got.Status.HostIPs) != 1 || got.Status.HostIPs[0].IP != inst.PrivateIP {
		t.Errorf("hostNetwork pod: podIP %q hostIP %q hostIPs %v, want all %s", got.Status.PodIP, got.Status.HostIP, got.Status.HostIPs, inst.PrivateIP)
	}
	a.mu.Lock()
	reqHost := a.req.Pod.Status.HostIP
	a.mu.Unlock()
	if reqHost != inst.PrivateIP {
		t.Errorf("the agent's request carries hostIP %q, want the cell's %s", reqHost, inst.PrivateIP)
	}
}
