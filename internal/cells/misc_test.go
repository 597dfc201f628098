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

	"github.com/kip-dev/kip/internal/cellapi"
	"github.com/kip-dev/kip/internal/cloud"
	"github.com/kip-dev/kip/internal/cloud/fake"
	"github.com/kip-dev/kip/internal/instancetype"
	"github.com/kip-dev/kip/internal/pki"
)

func TestCapacityMemoryOrdersAndForgets(t *testing.T) {
	clk := testingclock.NewFakeClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	mem := newCapacityMemory(clk, 3*time.Minute)
	c := func(name string) Candidate {
		return Candidate{Type: instancetype.InstanceType{Name: name}, Offering: instancetype.Offering{Zone: "z"}}
	}
	names := func(cs []Candidate) string { return candNames(cs) }
	all := []Candidate{c("a"), c("b"), c("c")}
	mem.remember(c("a"))
	if got := names(mem.order(all)); got != "b, c, a" {
		t.Errorf("order = %s", got)
	}
	clk.Step(3 * time.Minute)
	if got := names(mem.order(all)); got != "a, b, c" {
		t.Errorf("order after the memory window = %s", got)
	}
}

func TestCellIDAndToken(t *testing.T) {
	uid := types.UID("3F2504E0-4F89-11D3-9A0C-0305E82C3301")
	if got := CellID(uid); got != "c-3f2504e04f89" {
		t.Errorf("CellID = %s", got)
	}
	tok := clientToken(uid, "m5.24xlarge-with-a-really-long-name")
	if len(tok) > 64 || !strings.HasPrefix(tok, "3F2504E04F8911D39A0C0305E82C3301-m5") {
		t.Errorf("token %q (%d chars)", tok, len(tok))
	}
	if clientToken(uid, "a") == clientToken(uid, "b") {
		t.Error("tokens of different types collide")
	}
}

func TestFilterLog(t *testing.T) {
	data := []byte("2026-01-01T00:00:01Z one\n2026-01-01T00:00:02Z two\n2026-01-01T00:00:03Z three\n")
	now := time.Date(2026, 1, 1, 0, 0, 4, 0, time.UTC)
	i64 := func(n int64) *int64 { return &n }
	since := time.Date(2026, 1, 1, 0, 0, 2, 0, time.UTC)
	tests := []struct {
		name string
		opts cellapi.LogOptions
		want string
	}{
		{"plain", cellapi.LogOptions{}, "one\ntwo\nthree\n"},
		{"timestamps", cellapi.LogOptions{Timestamps: true, TailLines: i64(1)}, "2026-01-01T00:00:03Z three\n"},
		{"tail", cellapi.LogOptions{TailLines: i64(2)}, "two\nthree\n"},
		{"since time", cellapi.LogOptions{SinceTime: &since}, "two\nthree\n"},
		{"since seconds", cellapi.LogOptions{SinceSeconds: i64(1)}, "three\n"},
		{"limit bytes", cellapi.LogOptions{LimitBytes: i64(5)}, "one\nt"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := string(filterLog(data, tt.opts, now)); got != tt.want {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
}

// tlsCloud serves each launched cell's agent over real mutual TLS on 127.0.0.1, with the
// certificate from the cell's bootstrap data, so the manager's default Dial is exercised.
type tlsCloud struct {
	*fake.Fake
	t      *testing.T
	ln     net.Listener
	agent  *testAgent
	mu     sync.Mutex
	server *httptest.Server
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
	cfg, err := pki.ServerTLS(boot.CACert, boot.Cert, boot.Key)
	if err != nil {
		return nil, cloud.InvalidSpec("bootstrap: %v", err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.agent.cellID = boot.CellID
	srv := httptest.NewUnstartedServer(cellapi.Handler(c.agent, cellapi.HandlerOptions{}))
	srv.Listener = c.ln
	srv.TLS = cfg
	srv.Config.ErrorLog = nil
	srv.StartTLS()
	c.server = srv
	inst.PrivateIP = "127.0.0.1"
	return inst, nil
}

func TestDefaultDialUsesMutualTLS(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tc := &tlsCloud{t: t, ln: ln, agent: &testAgent{}}
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
		tc.Fake = h.cloud
		h.cl = tc
		h.dial = nil
		h.agentPort = ln.Addr().(*net.TCPAddr).Port
	})
	pod := testPod("tls", func(p *corev1.Pod) { p.Spec.RestartPolicy = corev1.RestartPolicyAlways })
	if err := h.m.CreatePod(context.Background(), pod); err != nil {
		t.Fatal(err)
	}
	h.waitFor("a status watch over TLS", func() bool { return tc.agent.watcherCount() > 0 })
	tc.agent.set(&cellapi.PodStatus{Phase: corev1.PodRunning, ContainerStatuses: []corev1.ContainerStatus{running("main", true)}})
	h.waitPod(pod, "Running", func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodRunning })

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

// slowMirror blocks every call until released.
type slowMirror struct {
	testMirror
	release chan struct{}
}

func (s *slowMirror) Upsert(ctx context.Context, c CellInfo) error {
	<-s.release
	return s.testMirror.Upsert(ctx, c)
}

func (s *slowMirror) Delete(ctx context.Context, id string) error {
	<-s.release
	return s.testMirror.Delete(ctx, id)
}

func TestSlowMirrorDoesNotDelayPods(t *testing.T) {
	sm := &slowMirror{testMirror: testMirror{cells: map[string]CellInfo{}}, release: make(chan struct{})}
	h := newHarness(t)
	h.m.Close()
	deps := h.m.deps
	deps.Mirror = sm
	m := New(h.m.cfg, h.m.node, deps)
	h.m = m
	t.Cleanup(m.Close)
	t.Cleanup(func() { close(sm.release) }) // runs before m.Close
	pod := testPod("fast")
	if err := m.CreatePod(context.Background(), pod); err != nil {
		t.Fatal(err)
	}
	a := h.agent(CellID(pod.UID))
	h.waitFor("the pod on its cell while the mirror hangs", func() bool { return a.watcherCount() > 0 })
}
