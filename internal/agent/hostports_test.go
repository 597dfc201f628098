package agent_test

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/kip-dev/kip/internal/agent"
	"github.com/kip-dev/kip/internal/agent/pod"
	"github.com/kip-dev/kip/internal/agent/runtime"
	"github.com/kip-dev/kip/internal/cellapi"
	"github.com/kip-dev/kip/internal/logctx"
)

// fakeHostPorts records the calls an agent makes (as "set <pod name>" and "delete") and
// fails SetHostPorts with setErr.
type fakeHostPorts struct {
	mu     sync.Mutex
	calls  []string
	setErr error
}

var _ agent.HostPortRules = (*fakeHostPorts)(nil)

func (f *fakeHostPorts) SetHostPorts(_ context.Context, p *corev1.Pod) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, "set "+p.Name)
	return f.setErr
}

func (f *fakeHostPorts) DeleteHostPorts() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, "delete")
	return nil
}

func (f *fakeHostPorts) log() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return strings.Join(f.calls, ", ")
}

// newStandInAgent makes an agent whose pod parts are empty stand-ins that panic if used: the
// tests using it never get as far as starting a pod.
func newStandInAgent(t *testing.T, hp agent.HostPortRules) *agent.Agent {
	t.Helper()
	quiet := logctx.Into(context.Background(), slog.New(slog.DiscardHandler))
	a, err := agent.New(quiet, agent.Config{
		CellID: "cell-1", StateDir: t.TempDir(),
		Runtime: struct{ runtime.Runtime }{}, Images: struct{ pod.Images }{}, Cgroups: struct{ pod.Cgroups }{},
		HostPorts: hp,
	})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func withHostPort(c corev1.Container, host, ctr int32) corev1.Container {
	c.Ports = append(c.Ports, corev1.ContainerPort{HostPort: host, ContainerPort: ctr, Protocol: corev1.ProtocolTCP})
	return c
}

// TestPutPodRefusesInvalidHostPorts: an invalid hostPort is refused as Invalid, naming the
// field, before any rule is programmed.
func TestPutPodRefusesInvalidHostPorts(t *testing.T) {
	fake := &fakeHostPorts{}
	a := newStandInAgent(t, fake)
	p := newPod("bad", corev1.RestartPolicyNever, withHostPort(shell("app", "busybox", "true"), 70000, 8080))
	_, err := a.PutPod(context.Background(), &cellapi.PodRequest{Pod: p})
	if !cellapi.IsInvalid(err) || !strings.Contains(err.Error(), `spec.containers[0] ("app").ports[0].hostPort: 70000`) {
		t.Errorf("PutPod with hostPort 70000 = %v, want Invalid naming the field", err)
	}
	if got := fake.log(); got != "" {
		t.Errorf("hostPort calls: %s, want none", got)
	}
}

// TestPutPodHostPortsFailure: a pod whose hostPorts cannot be programmed is not accepted.
func TestPutPodHostPortsFailure(t *testing.T) {
	fake := &fakeHostPorts{setErr: errors.New("no nftables")}
	a := newStandInAgent(t, fake)
	p := newPod("web", corev1.RestartPolicyNever, withHostPort(shell("app", "busybox", "true"), 80, 8080))
	if _, err := a.PutPod(context.Background(), &cellapi.PodRequest{Pod: p}); err == nil || !strings.Contains(err.Error(), "no nftables") {
		t.Errorf("PutPod = %v, want the hostPort error", err)
	}
	if _, err := a.GetPod(context.Background()); !cellapi.IsNotFound(err) {
		t.Errorf("GetPod after a refused pod: %v, want NotFound", err)
	}
	if got := fake.log(); got != "set web" {
		t.Errorf("hostPort calls: %s, want set web", got)
	}
}

// TestHostPortsFollowThePod: the agent maps a pod's hostPorts when it accepts the pod and
// removes them when it deletes it; a pod whose hostPorts equal their containerPorts needs
// no mapping.
func TestHostPortsFollowThePod(t *testing.T) {
	fake := &fakeHostPorts{}
	h := newHarness(t, fastBackOff, func(c *agent.Config) { c.HostPorts = fake })
	p := newPod("web", corev1.RestartPolicyNever, withHostPort(shell("app", h.img("busybox"), "sleep 30"), 80, 8080))
	if _, err := h.client.PutPod(t.Context(), &cellapi.PodRequest{Pod: p}); err != nil {
		t.Fatal(err)
	}
	if got := fake.log(); got != "set web" {
		t.Errorf("after PutPod, hostPort calls: %s, want set web", got)
	}
	h.deletePod(time.Second)
	if got := fake.log(); got != "set web, delete" {
		t.Errorf("after DeletePod, hostPort calls: %s, want set web, delete", got)
	}
	same := newPod("same", corev1.RestartPolicyNever, withHostPort(shell("app", h.img("busybox"), "true"), 8080, 8080))
	if _, err := h.client.PutPod(t.Context(), &cellapi.PodRequest{Pod: same}); err != nil {
		t.Fatal(err)
	}
	if got := fake.log(); got != "set web, delete" {
		t.Errorf("a pod with hostPort == containerPort: hostPort calls: %s, want no set", got)
	}
}
