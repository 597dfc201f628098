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
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/kip-dev/kip/internal/annotations"

	"github.com/kip-dev/kip/internal/cloud"
	"github.com/kip-dev/kip/internal/cloud/aws/ec2fake"
	"github.com/kip-dev/kip/test/e2e/framework"
)

// awsEnv is kip with cloud.provider aws against the EC2 fake whose instances are real
// cells: every pod is an "EC2 instance" booted from kip's real cloud-init user data, which
// downloads kip-cell and runc from kip and enrolls.
type awsEnv struct {
	*framework.Env
	fake            *ec2fake.Server
	instancesBefore int    // instances launched before the current subtest
	imageID         string // the image kip launches cells of
	runc            string // the runc kip serves
}

// waitReadyPods waits until n pods with labels are Running and Ready, and returns them.
func (e *awsEnv) waitReadyPods(t *testing.T, ns string, labels map[string]string, n int) []corev1.Pod {
	t.Helper()
	sel := metav1.FormatLabelSelector(&metav1.LabelSelector{MatchLabels: labels})
	var ready []corev1.Pod
	err := wait.PollUntilContextTimeout(context.Background(), 300*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		list, err := e.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: sel})
		if err != nil {
			return false, err
		}
		ready = ready[:0]
		for _, p := range list.Items {
			if p.Status.Phase == corev1.PodRunning && p.DeletionTimestamp == nil {
				for _, c := range p.Status.Conditions {
					if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
						ready = append(ready, p)
					}
				}
			}
		}
		return len(ready) == n, nil
	})
	if err != nil {
		t.Fatalf("waiting for %d Ready pods %s: %v (%d Ready)", n, sel, err, len(ready))
	}
	return ready
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
	return &awsEnv{Env: env, fake: fake, imageID: image, runc: runc}
}

// kipLog returns everything kip logged so far, across its restarts.
func (e *awsEnv) kipLog() string {
	var logs []byte
	files, _ := filepath.Glob(filepath.Join(e.Kip.LogDir, "kip-*.log"))
	for _, f := range files {
		b, _ := os.ReadFile(f)
		logs = append(logs, b...)
	}
	return string(logs)
}

// artifactsServedTo returns the artifacts kip's log shows it served to address ip after the
// first since bytes of the log (addresses are reused once an instance is gone).
func (e *awsEnv) artifactsServedTo(ip string, since int) []string {
	var out []string
	for _, line := range strings.Split(e.kipLog()[since:], "\n") {
		if !strings.Contains(line, "serving an artifact") || !strings.Contains(line, " remote="+ip+":") {
			continue
		}
		_, rest, _ := strings.Cut(line, " artifact=")
		name, _, _ := strings.Cut(rest, " ")
		out = append(out, name)
	}
	return out
}

// runBakedPod runs a pod that prints /baked-marker and sleeps, waits for it to be Running,
// and returns it with its instance and that instance's cloud-init output so far.
func (e *awsEnv) runBakedPod(t *testing.T, ns, name string) (*corev1.Pod, ec2fake.Instance, string) {
	t.Helper()
	ctx := context.Background()
	pod := framework.Pod(name, framework.Busybox("main", "cat /baked-marker; exec sleep 3600"))
	p, err := e.Client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p, err = e.WaitForPod(ctx, ns, p.Name, 2*time.Minute, func(p *corev1.Pod) bool {
		return p.Status.Phase != corev1.PodPending
	})
	if err != nil || p.Status.Phase != corev1.PodRunning {
		t.Fatalf("pod %s not Running: %v\n%s", name, err, e.EventsFor(ctx, ns, name))
	}
	in := e.checkBootedFromScript(t, p)
	c, ok := e.fake.Cell(in.ID)
	if !ok {
		t.Fatalf("instance %s has no cell", in.ID)
	}
	out, err := os.ReadFile(c.OutputPath)
	if err != nil {
		t.Fatal(err)
	}
	return p, in, string(out)
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
	// Kip enrolled the cell: only the bootstrap script's agent holds its one-time token.
	var logs []byte
	files, _ := filepath.Glob(filepath.Join(e.Kip.LogDir, "kip-*.log"))
	for _, f := range files {
		b, _ := os.ReadFile(f)
		logs = append(logs, b...)
	}
	if log := string(logs); !strings.Contains(log, "enrolled a cell") || !strings.Contains(log, "cell="+in.Tags[cloud.TagCellID]) {
		t.Errorf("kip's log shows no enrollment of cell %s (instance %s)", in.Tags[cloud.TagCellID], in.ID)
	}
	// A running instance's cloud-init output shows the script started the agent.
	if c, ok := e.fake.Cell(in.ID); ok && !c.Destroyed && in.State == "running" {
		out, err := os.ReadFile(c.OutputPath)
		if !strings.Contains(string(out), "kip-cell started") {
			t.Errorf("instance %s boot output (%v) shows no started agent:\n%s", in.ID, err, out)
		}
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

	t.Run("DeploymentRestartAndSpot", func(t *testing.T) {
		e.instancesBefore = len(e.fake.Instances())
		replicas := int32(2)
		labels := map[string]string{"app": "aws-web"}
		tmpl := framework.Pod("", framework.Busybox("main", "exec sleep 3600"))
		tmpl.Spec.RestartPolicy = corev1.RestartPolicyAlways
		tmpl.Labels = labels
		tmpl.Annotations = map[string]string{annotations.LaunchType: annotations.LaunchTypeSpot}
		d := &appsv1.Deployment{
			ObjectMeta: metav1.ObjectMeta{Name: "aws-web"},
			Spec: appsv1.DeploymentSpec{
				Replicas: &replicas,
				Selector: &metav1.LabelSelector{MatchLabels: labels},
				Template: corev1.PodTemplateSpec{ObjectMeta: tmpl.ObjectMeta, Spec: tmpl.Spec},
			},
		}
		if _, err := e.Client.AppsV1().Deployments(ns).Create(ctx, d, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		// Kill kip once the first instance is asked for, mid-launch, and start it again.
		deadline := time.Now().Add(time.Minute)
		for len(e.fake.Instances()) == e.instancesBefore && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		e.Kip.Kill()
		if err := e.Kip.Start(ctx); err != nil {
			t.Fatalf("restarting kip: %v", err)
		}
		pods := e.waitReadyPods(t, ns, labels, 2)
		for _, p := range pods {
			in := e.checkBootedFromScript(t, &p)
			if !in.Spot {
				t.Errorf("instance %s of %s is not spot", in.ID, p.Name)
			}
		}
		all, err := e.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range all.Items {
			if p.Status.Phase == corev1.PodFailed {
				t.Errorf("pod %s Failed after kip's restart:\n%s", p.Name, framework.DescribePod(&p))
			}
		}
		out, err := e.Kubectl(ctx, "exec", "-n", ns, pods[0].Name, "--", "sh", "-c", "echo exec-ok")
		if err != nil || strings.TrimSpace(out) != "exec-ok" {
			t.Errorf("kubectl exec = %q, %v", out, err)
		}

		// The pods share their instance's network namespace, but not its metadata service:
		// the agent's guard rejects their traffic to 169.254.169.254, so neither an IMDSv1
		// GET (which IMDSv2-only would answer 401) nor the IMDSv2 token PUT (which would get a
		// token without the guard) gets any answer. The agent itself still reads spot notices
		// there (below). busybox's wget is tried too, as a user would, but only its failure
		// is checked: the seeded busybox's wget crashes on any address (SIGSEGV), so the
		// HTTP requests go through nc, whose answers tell a refused connection from a reply.
		instanceID := e.instancesOf(string(pods[0].UID))[0].ID
		out, err = e.Kubectl(ctx, "exec", "-n", ns, pods[0].Name, "--", "sh", "-c",
			"wget -T 3 -O- http://169.254.169.254/latest/meta-data/instance-id 2>&1; echo wget-exit=$?")
		if strings.Contains(out, "wget-exit=0\n") || strings.Contains(out, instanceID) {
			t.Errorf("a pod read the instance id from the metadata service with wget (%v):\n%s", err, out)
		}
		t.Logf("a pod's wget of the metadata service: %s", strings.TrimSpace(out))
		for _, req := range []string{
			`GET /latest/meta-data/instance-id HTTP/1.0\r\n\r\n`,
			`PUT /latest/api/token HTTP/1.0\r\nX-aws-ec2-metadata-token-ttl-seconds: 60\r\n\r\n`,
		} {
			out, err = e.Kubectl(ctx, "exec", "-n", ns, pods[0].Name, "--", "sh", "-c",
				"printf '"+req+"' | nc -w 3 169.254.169.254 80 2>&1; echo nc-exit=$?")
			if strings.Contains(out, "HTTP/") || strings.Contains(out, "nc-exit=0\n") {
				t.Errorf("a pod got an answer from the instance metadata service to %.40q (%v):\n%s", req, err, out)
			}
			t.Logf("a pod's %.40q to the metadata service: %s", req, strings.TrimSpace(out))
		}

		// A spot notice on one instance: the pod fails as kubelet's node shutdown would have it,
		// and its ReplicaSet replaces it on a new instance.
		victim := pods[0]
		old := e.instancesOf(string(victim.UID))[0]
		if err := e.fake.InterruptSpot(old.ID, "terminate", time.Now().Add(time.Minute)); err != nil {
			t.Fatal(err)
		}
		if _, err := e.WaitForEvent(ctx, ns, victim.Name, "SpotInterruption", time.Minute); err != nil {
			t.Errorf("no SpotInterruption event: %v\n%s", err, e.EventsFor(ctx, ns, victim.Name))
		}
		p, err := e.WaitForPod(ctx, ns, victim.Name, 2*time.Minute, func(p *corev1.Pod) bool {
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
		var ids []string
		for _, np := range e.waitReadyPods(t, ns, labels, 2) {
			if np.UID == victim.UID {
				t.Errorf("the interrupted pod %s counts as Ready", np.Name)
				continue
			}
			in := e.checkBootedFromScript(t, &np)
			if in.ID == old.ID {
				t.Errorf("pod %s runs on the interrupted instance %s", np.Name, old.ID)
			}
			ids = append(ids, in.ID)
		}
		if err := e.Client.AppsV1().Deployments(ns).Delete(ctx, d.Name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		if err := e.Client.CoreV1().Pods(ns).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{}); err != nil {
			t.Fatal(err)
		}
		for _, id := range append(ids, old.ID) {
			e.waitTerminated(t, id)
		}
	})
	t.Run("BakedImage", func(t *testing.T) {
		// deploy/ami/bake.sh into a scratch root with the kip-cell and runc kip serves and
		// busybox unpacked in the agent's store; the image kip launches now boots from it.
		root := t.TempDir()
		kipCell := filepath.Join(e.BinDir, "kip-cell")
		host := e.Registry.Host()
		bake := exec.Command("sh", "../../deploy/ami/bake.sh", "--root", root, "--kip-cell", kipCell, "--runc", e.runc,
			"--default-registry", host, "--insecure-registry", host, "--image", "busybox")
		if out, err := bake.CombinedOutput(); err != nil {
			t.Fatalf("bake.sh: %v\n%s", err, out)
		}
		// A mark in the seeded image's rootfs: a pod sees it only if its container runs on
		// the unpack the bake seeded, not on one of its own.
		rootfses, _ := filepath.Glob(filepath.Join(root, "var/lib/kip-cell/images/images/*/rootfs"))
		if len(rootfses) != 1 {
			t.Fatalf("the baked store holds %d unpacked images, want 1 (busybox): %v", len(rootfses), rootfses)
		}
		if err := os.WriteFile(filepath.Join(rootfses[0], "baked-marker"), []byte("seeded-by-bake\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := e.fake.SetImageRoot(e.imageID, root); err != nil {
			t.Fatal(err)
		}
		defer e.fake.SetImageRoot(e.imageID, "")
		ns := e.Namespace(t)

		// The baked binaries have the pinned hashes: nothing is downloaded.
		since := len(e.kipLog())
		p, in, out := e.runBakedPod(t, ns, "aws-baked")
		for _, name := range []string{"kip-cell", "runc"} {
			if !strings.Contains(out, name+" in /opt/kip/bin has the pinned SHA-256") {
				t.Errorf("instance %s did not find the baked %s:\n%s", in.ID, name, out)
			}
		}
		if !strings.Contains(out, "(downloaded: none)") {
			t.Errorf("instance %s downloaded something:\n%s", in.ID, out)
		}
		if served := e.artifactsServedTo(in.PrivateIP, since); len(served) > 0 {
			t.Errorf("kip served %v to the baked instance %s (%s)", served, in.ID, in.PrivateIP)
		}
		if logs, err := e.Kubectl(ctx, "logs", "-n", ns, p.Name); err != nil || strings.TrimSpace(logs) != "seeded-by-bake" {
			t.Errorf("the pod's container did not run on the seeded unpack: logs %q, %v", logs, err)
		}
		if err := e.Client.CoreV1().Pods(ns).Delete(ctx, p.Name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		e.waitTerminated(t, in.ID)

		// A baked kip-cell that is not the pinned one is downloaded again and replaced.
		f, err := os.OpenFile(filepath.Join(root, "opt/kip/bin/kip-cell"), os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			t.Fatal(err)
		}
		f.Write([]byte("stale"))
		f.Close()
		since = len(e.kipLog())
		p, in, out = e.runBakedPod(t, ns, "aws-baked-stale")
		if !strings.Contains(out, "kip-cell in /opt/kip/bin has SHA-256") || !strings.Contains(out, "downloading it to replace it") ||
			!strings.Contains(out, "runc in /opt/kip/bin has the pinned SHA-256") || !strings.Contains(out, "(downloaded: kip-cell)") {
			t.Errorf("instance %s did not replace the stale kip-cell (and only it):\n%s", in.ID, out)
		}
		if served := e.artifactsServedTo(in.PrivateIP, since); !slices.Equal(served, []string{"kip-cell-amd64"}) {
			t.Errorf("kip served %v to %s (%s), want [kip-cell-amd64]", served, in.ID, in.PrivateIP)
		}
		c, _ := e.fake.Cell(in.ID)
		want, _ := os.ReadFile(kipCell)
		if got, err := os.ReadFile(filepath.Join(c.Dir, "opt/kip/bin/kip-cell")); err != nil || string(got) != string(want) {
			t.Errorf("instance %s's kip-cell is not the one kip serves (%v)", in.ID, err)
		}
		if err := e.Client.CoreV1().Pods(ns).Delete(ctx, p.Name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		e.waitTerminated(t, in.ID)
	})

	// No instance of the fake is left running.
	for _, in := range e.fake.Instances() {
		if in.State != "terminated" {
			e.waitTerminated(t, in.ID)
		}
	}

	// A standby pool on AWS: the warm instance is bound by tagging it with the pod
	// (CreateTags), and the pod runs on it; no other instance is launched for the pod.
	t.Run("StandbyCell", func(t *testing.T) {
		mk := func(name string) *corev1.Pod {
			p := framework.Pod(name, framework.Busybox("main", "echo warm-on-ec2; exec sleep 3600"))
			p.Spec.TerminationGracePeriodSeconds = new(int64)
			return p
		}
		// The type kip picks for such a pod, from a first one's instance.
		first := e.CreateRunning(ctx, t, ns, mk("aws-type-probe"), 2*time.Minute)
		ins := e.instancesOf(string(first.UID))
		if len(ins) != 1 {
			t.Fatalf("pod %s has %d instances, want 1", first.Name, len(ins))
		}
		if err := e.Client.CoreV1().Pods(ns).Delete(ctx, first.Name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		e.waitTerminated(t, ins[0].ID)

		restore := withStandbyKip(ctx, t, e.Env, ins[0].InstanceType, 1)
		defer restore()
		cell, ip, _, err := waitStandbyCell(ctx, e.Env, 3*time.Minute)
		if err != nil {
			t.Fatalf("no standby cell: %v\n%s", err, e.Kip.LogTail(40))
		}
		p := e.CreateRunning(ctx, t, ns, mk("aws-warm"), 2*time.Minute)
		if _, err := e.WaitForEvent(ctx, ns, p.Name, "CellBound", 30*time.Second); err != nil {
			t.Errorf("no CellBound event: %v\n%s", err, e.EventsFor(ctx, ns, p.Name))
		}
		bound := e.instancesOf(string(p.UID))
		if len(bound) != 1 {
			t.Fatalf("pod %s has %d instances, want the standby one: %+v", p.Name, len(bound), bound)
		}
		if in := bound[0]; in.Tags[cloud.TagStandby] != "true" || in.Tags[cloud.TagCellID] != cell || in.PrivateIP != ip || p.Status.PodIP != ip {
			t.Errorf("pod %s on instance %s (tags %v, address %s, pod IP %s); want standby cell %s at %s", p.Name, in.ID, in.Tags, in.PrivateIP, p.Status.PodIP, cell, ip)
		}
		logs, err := e.WaitForLogs(ctx, ns, p.Name, "warm-on-ec2", time.Minute)
		if err != nil {
			t.Errorf("kubectl logs = %q, %v; want warm-on-ec2", logs, err)
		}
		if err := e.Client.CoreV1().Pods(ns).Delete(ctx, p.Name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		e.waitTerminated(t, bound[0].ID)
	})
}
