package local

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/kip-dev/kip/internal/cellapi"
	"github.com/kip-dev/kip/internal/cgroups"
	"github.com/kip-dev/kip/internal/cloud"
	"github.com/kip-dev/kip/internal/pki"
	"github.com/kip-dev/kip/internal/registry"
	"github.com/kip-dev/kip/internal/testenv"
)

// kipCellBinary returns the real cell agent: $KIP_CELL_BIN, or cmd/kip-cell built now.
func kipCellBinary(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("KIP_CELL_BIN"); p != "" {
		return p
	}
	if testing.Short() {
		t.Skip("skipping in -short mode: it builds cmd/kip-cell (set KIP_CELL_BIN to use a built one)")
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("skipping: no go toolchain to build cmd/kip-cell and KIP_CELL_BIN is not set")
	}
	out := filepath.Join(t.TempDir(), "kip-cell")
	cmd := exec.Command(goBin, "build", "-o", out, "github.com/kip-dev/kip/cmd/kip-cell")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building cmd/kip-cell: %v\n%s", err, b)
	}
	return out
}

// kipCellPKI is kip's side of the cells' mutual TLS: a CA and kip's client certificate.
type kipCellPKI struct {
	ca                *pki.CA
	caPEM             []byte
	clientPEM, keyPEM []byte
}

func newKipCellPKI(t testing.TB) *kipCellPKI {
	t.Helper()
	ca, err := pki.NewCA("kip-test-ca")
	if err != nil {
		t.Fatal(err)
	}
	cert, key, err := ca.Issue(pki.LeafSpec{CommonName: "kip", Client: true})
	if err != nil {
		t.Fatal(err)
	}
	return &kipCellPKI{ca: ca, caPEM: ca.CertPEM, clientPEM: cert, keyPEM: key}
}

// bootstrap returns the bootstrap data of a cell: its own serving certificate naming cellID.
func (p *kipCellPKI) bootstrap(t testing.TB, cellID string) []byte {
	t.Helper()
	cert, key, err := p.ca.Issue(pki.LeafSpec{CommonName: cellID, DNSNames: []string{cellID}, Server: true})
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(cellapi.Bootstrap{CellID: cellID, CACert: p.caPEM, Cert: cert, Key: key})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// client returns a cellapi client for the cell at ip that checks the cell's name.
func (p *kipCellPKI) client(t testing.TB, cellID, ip string) *cellapi.Client {
	t.Helper()
	tlsConfig, err := pki.ClientTLS(p.caPEM, p.clientPEM, p.keyPEM, cellID)
	if err != nil {
		t.Fatal(err)
	}
	return cellapi.NewClient("https://"+net.JoinHostPort(ip, strconv.Itoa(cellapi.DefaultPort)), tlsConfig)
}

// waitAgentHealthy polls Health over mTLS until it answers (deadline 20 s).
func waitAgentHealthy(t testing.TB, c *cellapi.Client) *cellapi.Health {
	t.Helper()
	var h *cellapi.Health
	var last error
	ok := waitFor(time.Now().Add(20*time.Second), func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		h, last = c.Health(ctx)
		return last == nil
	})
	if !ok {
		t.Fatalf("kip-cell never became healthy: %v", last)
	}
	return h
}

// TestKipCell boots the real cell agent through the backend, with a bootstrap carrying
// certificates from internal/pki, and talks to it over mutual TLS.
func TestKipCell(t *testing.T) {
	e := newEnv(t)
	bin := kipCellBinary(t)
	e.cfg.AgentCommand = []string{bin}
	e.cfg.AgentEnv = nil
	p := newKipCellPKI(t)
	c := e.cloud()
	ctx := context.Background()
	const cellID = "kipcell-1"
	in, err := c.Launch(ctx, cloud.LaunchSpec{
		CellID: cellID, ClientToken: cellID, InstanceType: "local.small",
		Tags: map[string]string{cloud.TagCellID: cellID}, BootstrapData: p.bootstrap(t, cellID),
	})
	if err != nil {
		t.Fatalf("Launch: %v", err)
	}
	logFile := filepath.Join(e.cfg.StateDir, "cells", in.ID, "agent.log")
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(logFile)
			t.Logf("agent log:\n%s", b)
		}
	})
	client := p.client(t, cellID, in.PrivateIP)
	defer client.Close()
	h := waitAgentHealthy(t, client)
	if h.CellID != cellID {
		t.Errorf("Health.CellID = %q, want %q", h.CellID, cellID)
	}
	// Authenticated routes work with kip's certificate.
	sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := client.Stats(sctx); err != nil {
		t.Errorf("Stats over mTLS: %v", err)
	}
	// A client whose certificate another CA signed is refused on authenticated routes.
	other := newKipCellPKI(t)
	tlsConfig, err := pki.ClientTLS(p.caPEM, other.clientPEM, other.keyPEM, cellID)
	if err != nil {
		t.Fatal(err)
	}
	stranger := cellapi.NewClient(fmt.Sprintf("https://%s:%d", in.PrivateIP, cellapi.DefaultPort), tlsConfig)
	defer stranger.Close()
	if _, err := stranger.Stats(sctx); err == nil {
		t.Errorf("Stats with a certificate from another CA succeeded")
	}
	if err := c.Terminate(ctx, in.ID); err != nil {
		t.Fatalf("Terminate: %v", err)
	}
}

// TestKipCellPodTerminated runs a real pod with runc in a kip-cell cell, then terminates the
// cell without asking the agent to stop the pod first (as when the agent is wedged): the
// containers, their cgroups and their mounts must go too. While the pod runs, neither its
// secret (a secret volume and an env var) nor the agent's TLS key is in any file on the
// host's disk under the cell's directory: they are on tmpfs mounts only.
func TestKipCellPodTerminated(t *testing.T) {
	testenv.RequireRunc(t)
	e := newEnv(t)
	e.cfg.AgentCommand = []string{kipCellBinary(t)}
	e.cfg.AgentEnv = nil
	ctx := context.Background()
	reg, err := registry.Start(net.JoinHostPort(e.backend().BridgeIP().String(), "0"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { reg.Close() })
	if err := registry.SeedBusybox(ctx, reg.Host(), reg.Auth(), "library/sleeper:latest"); err != nil {
		t.Fatal(err)
	}
	p := newKipCellPKI(t)
	const cellID = "kipcell-pod"
	cert, key, err := p.ca.Issue(pki.LeafSpec{CommonName: cellID, DNSNames: []string{cellID}, Server: true})
	if err != nil {
		t.Fatal(err)
	}
	bs, err := json.Marshal(cellapi.Bootstrap{
		CellID: cellID, CACert: p.caPEM, Cert: cert, Key: key,
		Registry: cellapi.RegistryConfig{DefaultRegistry: reg.Host(), Insecure: []string{reg.Host()}},
	})
	if err != nil {
		t.Fatal(err)
	}
	c := e.cloud()
	podUID := "uid-" + cellID
	in, err := c.Launch(ctx, cloud.LaunchSpec{
		CellID: cellID, ClientToken: cellID, InstanceType: "local.small", BootstrapData: bs,
		Tags: map[string]string{cloud.TagCellID: cellID, cloud.TagPodUID: podUID}, // as kip tags cells
	})
	if err != nil {
		t.Fatalf("Launch: %v", err)
	}
	logFile := filepath.Join(e.cfg.StateDir, "cells", in.ID, "agent.log")
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(logFile)
			t.Logf("agent log:\n%s", b)
		}
	})
	client := p.client(t, cellID, in.PrivateIP)
	defer client.Close()
	waitAgentHealthy(t, client)

	secret := []byte("s3cr3t-" + podUID + "-" + strconv.FormatInt(time.Now().UnixNano(), 36))
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "sleeper", Namespace: "default", UID: types.UID(podUID)},
		Spec: corev1.PodSpec{
			RestartPolicy: corev1.RestartPolicyNever,
			Containers: []corev1.Container{{Name: "main", Image: "library/sleeper:latest",
				Env:          []corev1.EnvVar{{Name: "PASSWORD", Value: string(secret)}},
				VolumeMounts: []corev1.VolumeMount{{Name: "creds", MountPath: "/creds"}}}},
			Volumes: []corev1.Volume{{Name: "creds", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: "creds"}}}},
		},
	}
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := client.PutPod(pctx, &cellapi.PodRequest{Pod: pod, Volumes: map[string]cellapi.VolumeFiles{
		"creds": {Files: map[string]cellapi.File{"password": {Data: secret, Mode: 0o644}}},
	}}); err != nil {
		t.Fatalf("PutPod: %v", err)
	}
	var last *cellapi.PodStatus
	if !waitFor(time.Now().Add(60*time.Second), func() bool {
		gctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		st, err := client.GetPod(gctx)
		if err != nil {
			return false
		}
		last = st
		return len(st.ContainerStatuses) == 1 && st.ContainerStatuses[0].State.Running != nil
	}) {
		t.Fatalf("the container never ran; last status %+v", last)
	}

	r, err := e.backend().store.read(in.ID)
	if err != nil {
		t.Fatal(err)
	}
	var containerPIDs []int
	for _, d := range r.meta.Cgroups {
		pids, err := cgroups.PIDs(d)
		if err != nil {
			t.Fatal(err)
		}
		for _, pid := range pids {
			if pid != r.meta.PID && !slices.Contains(containerPIDs, pid) {
				containerPIDs = append(containerPIDs, pid)
			}
		}
	}
	if len(containerPIDs) == 0 {
		t.Fatalf("no container process inside the cell's cgroups")
	}
	mounts, _ := mountsUnder("/proc/self/mountinfo", e.cfg.StateDir)
	t.Logf("before Terminate: agent %d, container processes %v, mounts %v", r.meta.PID, containerPIDs, mounts)
	cellDir := e.backend().store.cellDir(in.ID)
	// The bootstrap file is JSON: the key is in it base64-encoded.
	keyJSON := []byte(base64.StdEncoding.EncodeToString(key))
	for what, b := range map[string][]byte{"the pod's secret": secret, "the agent's TLS key": key, "the agent's TLS key (JSON)": keyJSON} {
		if found := testenv.FilesOnDiskHolding(t, cellDir, b); len(found) > 0 {
			t.Errorf("%s is on the host's disk in %v", what, found)
		}
	}

	if err := c.Terminate(ctx, in.ID); err != nil {
		t.Fatalf("Terminate: %v", err)
	}
	for _, pid := range containerPIDs {
		if s := procState(pid); s != "" && s != "Z" {
			t.Errorf("container process %d survived Terminate (state %s)", pid, s)
		}
	}
	for _, d := range r.meta.Cgroups {
		if _, err := os.Stat(d); err == nil {
			t.Errorf("cgroup %s survived Terminate", d)
		}
	}
	if m, _ := mountsUnder("/proc/self/mountinfo", e.cfg.StateDir); len(m) != 0 {
		t.Errorf("mounts survived Terminate: %v", m)
	}
	strays := e.backend().cg.StrayPodDirs(podUID)
	if len(strays) == 0 {
		t.Log("no cgroup2 hierarchy beside the v1 ones: nothing to check for stray pod cgroups")
	}
	for _, d := range strays {
		if _, err := os.Stat(d); err == nil {
			t.Errorf("the pod's cgroup %s (where runc puts cgroup2 dirs) survived Terminate", d)
		}
	}
}
