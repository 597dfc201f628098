//go:build e2e

package e2e

import (
	"context"
	"encoding/base64"
	"fmt"
	"log/slog"
	"net"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kip-dev/kip/internal/cloud"
	"github.com/kip-dev/kip/internal/cloud/aws/ec2fake"
	"github.com/kip-dev/kip/test/e2e/framework"
)

// awsEnv is kip with cloud.provider aws against the EC2 fake whose instances are real
// cells: every pod is an "EC2 instance" booted from kip's real cloud-init user data, which
// downloads kip-cell and runc from kip and enrolls.
type awsEnv struct {
	*framework.Env
	fake *ec2fake.Server
}

func setupAWS(t *testing.T) *awsEnv {
	t.Helper()
	need(t)
	runc, err := exec.LookPath("runc")
	if err != nil {
		t.Fatalf("runc: %v", err)
	}
	tag := fmt.Sprintf("%04x", time.Now().UnixNano()&0xffff)
	cidr, err := framework.FreeSubnet()
	if err != nil {
		t.Fatal(err)
	}
	fake, err := ec2fake.NewWithCells(ec2fake.Options{}, ec2fake.CellOptions{
		Bridge: "kipec2" + tag, CIDR: cidr,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		t.Fatalf("ec2fake.NewWithCells: %v", err)
	}
	api := httptest.NewServer(fake)
	// Kip refreshes its instance-type catalog from the fake, so that it picks only types the
	// fake knows.
	pricing := httptest.NewServer(fake.PricingHandler())
	t.Cleanup(func() {
		api.Close()
		pricing.Close()
		if err := fake.Close(); err != nil {
			t.Errorf("closing the EC2 fake: %v", err)
		}
	})
	// The enrollment server listens on the fake's bridge address, where cells reach the host.
	ln, err := net.Listen("tcp", net.JoinHostPort(fake.BridgeIP().String(), "0"))
	if err != nil {
		t.Fatal(err)
	}
	bootPort := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	image := fake.Images()[0].ID
	for _, im := range fake.Images() {
		if im.Arch == "x86_64" {
			image = im.ID
			break
		}
	}
	dir := t.TempDir()
	env, err := framework.Setup(context.Background(), framework.Options{
		Config: func(e *framework.Env) string {
			kipCell := filepath.Join(e.BinDir, "kip-cell")
			return fmt.Sprintf(`apiVersion: kip.dev/v1alpha1
kind: ProviderConfig
cloud:
  provider: aws
  aws:
    region: us-east-1
    endpoint: %s
    subnetID: %s
    imageID: %s
    pricingEndpoint: %s
    pollInterval: 500ms
    bootstrap:
      listenAddr: %s
      agentPaths: {amd64: %s}
      runcPaths: {amd64: %s}
node:
  name: %s
  internalIP: %s
cells:
  clusterName: %s
registry:
  defaultRegistry: %s
  insecure:
  - %s
`, api.URL, ec2fake.SubnetA, image, pricing.URL, net.JoinHostPort(fake.BridgeIP().String(), fmt.Sprint(bootPort)),
				kipCell, runc, e.NodeName, fake.BridgeIP(), e.ClusterName, e.Registry.Host(), e.Registry.Host())
		},
		NodeIP: net.IP(fake.BridgeIP().AsSlice()),
		KipEnv: []string{
			"AWS_ACCESS_KEY_ID=AKIDKIPE2E", "AWS_SECRET_ACCESS_KEY=fake", "AWS_SESSION_TOKEN=",
			"AWS_PROFILE=", "AWS_REGION=", "AWS_EC2_METADATA_DISABLED=true",
			"AWS_CONFIG_FILE=" + filepath.Join(dir, "none"), "AWS_SHARED_CREDENTIALS_FILE=" + filepath.Join(dir, "none"),
		},
	})
	if err != nil {
		t.Fatalf("setting up kip against the EC2 fake: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("kip log tail:\n%s", env.Kip.LogTail(80))
			for _, in := range fake.Instances() {
				if c, ok := fake.Cell(in.ID); ok {
					out, _ := os.ReadFile(c.OutputPath)
					t.Logf("instance %s (%s) output:\n%s", in.ID, in.State, out)
				}
			}
		}
		if err := env.Teardown(context.Background()); err != nil {
			t.Errorf("teardown: %v", err)
		}
	})
	return &awsEnv{Env: env, fake: fake}
}

// instancesOf returns the fake's instances (any state) launched for the pod.
func (e *awsEnv) instancesOf(uid string) []ec2fake.Instance {
	var out []ec2fake.Instance
	for _, in := range e.fake.Instances() {
		if in.Tags[cloud.TagPodUID] == uid {
			out = append(out, in)
		}
	}
	return out
}

// checkBootedFromScript checks that the pod's one instance ran kip's bootstrap script to the
// end, and that its user data carries no private key.
func (e *awsEnv) checkBootedFromScript(t *testing.T, p *corev1.Pod) ec2fake.Instance {
	t.Helper()
	ins := e.instancesOf(string(p.UID))
	if len(ins) != 1 {
		t.Fatalf("pod %s has %d instances, want 1: %+v", p.Name, len(ins), ins)
	}
	in := ins[0]
	ud, err := base64.StdEncoding.DecodeString(in.UserData)
	if err != nil {
		ud = []byte(in.UserData)
	}
	if !strings.HasPrefix(string(ud), "#!") {
		t.Errorf("instance %s user data is not a script: %.80q", in.ID, ud)
	}
	if strings.Contains(string(ud), "PRIVATE KEY") {
		t.Errorf("instance %s user data holds a private key", in.ID)
	}
	c, ok := e.fake.Cell(in.ID)
	if !ok {
		t.Fatalf("instance %s has no cell", in.ID)
	}
	out, _ := os.ReadFile(c.OutputPath)
	if !strings.Contains(string(out), "kip-cell started") {
		t.Errorf("instance %s boot output shows no started agent:\n%s", in.ID, out)
	}
	return in
}

// waitTerminated waits until the instance is terminated and its cell gone from the host.
func (e *awsEnv) waitTerminated(t *testing.T, id string) {
	t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for {
		state := ""
		for _, in := range e.fake.Instances() {
			if in.ID == id {
				state = in.State
			}
		}
		c, _ := e.fake.Cell(id)
		if state == "terminated" && c.Destroyed {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("instance %s is %q (cell destroyed %v), want terminated", id, state, c.Destroyed)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if _, err := os.Stat("/run/netns/kip-" + id); err == nil {
		t.Errorf("network namespace kip-%s left behind", id)
	}
	c, _ := e.fake.Cell(id)
	if _, err := net.InterfaceByName(c.HostVeth); err == nil {
		t.Errorf("veth %s of %s left behind", c.HostVeth, id)
	}
	for _, cg := range c.Cgroups {
		if _, err := os.Stat(cg); err == nil {
			t.Errorf("cgroup %s of %s left behind", cg, id)
		}
	}
}

func TestAWSCells(t *testing.T) {
	e := setupAWS(t)
	ctx := context.Background()
	ns := e.Namespace(t)

	t.Run("JobLogsAndTerminate", func(t *testing.T) {
		pod := framework.Pod("aws-job", framework.Busybox("main", "echo hello-from-ec2"))
		p, err := e.Client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		p, err = e.WaitForPod(ctx, ns, p.Name, 2*time.Minute, func(p *corev1.Pod) bool {
			return p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed
		})
		if err != nil {
			t.Fatalf("pod did not finish: %v\n%s", err, e.EventsFor(ctx, ns, pod.Name))
		}
		if p.Status.Phase != corev1.PodSucceeded {
			t.Fatalf("pod %s, want Succeeded:\n%s", p.Status.Phase, framework.DescribePod(p))
		}
		out, err := e.Kubectl(ctx, "logs", "-n", ns, p.Name)
		if err != nil || strings.TrimSpace(out) != "hello-from-ec2" {
			t.Errorf("kubectl logs = %q, %v; want hello-from-ec2", out, err)
		}
		in := e.checkBootedFromScript(t, p)
		if err := e.Client.CoreV1().Pods(ns).Delete(ctx, p.Name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		if err := e.WaitForPodGone(ctx, ns, p.Name, time.Minute); err != nil {
			t.Fatal(err)
		}
		e.waitTerminated(t, in.ID)
	})

	t.Run("ExecAndSpot", func(t *testing.T) {
		pod := framework.Pod("aws-spot", framework.Busybox("main", "exec sleep 3600"))
		pod.Annotations = map[string]string{"pod.kip.dev/launch-type": "spot"}
		p, err := e.Client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		p, err = e.WaitForPod(ctx, ns, p.Name, 2*time.Minute, func(p *corev1.Pod) bool {
			return p.Status.Phase != corev1.PodPending
		})
		if err != nil || p.Status.Phase != corev1.PodRunning {
			t.Fatalf("pod not Running: %v\n%s", err, e.EventsFor(ctx, ns, pod.Name))
		}
		out, err := e.Kubectl(ctx, "exec", "-n", ns, p.Name, "--", "sh", "-c", "echo exec-ok")
		if err != nil || strings.TrimSpace(out) != "exec-ok" {
			t.Errorf("kubectl exec = %q, %v", out, err)
		}
		in := e.checkBootedFromScript(t, p)
		if !in.Spot {
			t.Errorf("instance %s is not spot", in.ID)
		}
		if err := e.fake.InterruptSpot(in.ID, "terminate", time.Now().Add(time.Minute)); err != nil {
			t.Fatal(err)
		}
		if _, err := e.WaitForEvent(ctx, ns, p.Name, "SpotInterruption", time.Minute); err != nil {
			t.Errorf("no SpotInterruption event: %v\n%s", err, e.EventsFor(ctx, ns, p.Name))
		}
		p, err = e.WaitForPod(ctx, ns, p.Name, 2*time.Minute, func(p *corev1.Pod) bool {
			return p.Status.Phase == corev1.PodFailed
		})
		if err != nil {
			t.Fatalf("pod not Failed after the spot notice: %v", err)
		}
		if p.Status.Reason != "Terminated" {
			t.Errorf("pod reason %q, want Terminated", p.Status.Reason)
		}
		found := false
		for _, c := range p.Status.Conditions {
			found = found || (c.Type == corev1.DisruptionTarget && c.Status == corev1.ConditionTrue)
		}
		if !found {
			t.Errorf("pod has no DisruptionTarget condition:\n%s", framework.DescribePod(p))
		}
		if err := e.Client.CoreV1().Pods(ns).Delete(ctx, p.Name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		e.waitTerminated(t, in.ID)
	})
}
