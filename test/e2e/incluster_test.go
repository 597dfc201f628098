//go:build e2e

package e2e

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"

	"github.com/kip-dev/kip/internal/cloud"
	"github.com/kip-dev/kip/internal/cloud/aws/ec2fake"
	"github.com/kip-dev/kip/test/e2e/framework"
)

// kipLabels select the pods of kip's Deployment (deploy/base).
var kipLabels = "app.kubernetes.io/name=kip"

// findObject returns the object of kind and name in objs, or fails t.
func findObject(t *testing.T, objs []*unstructured.Unstructured, kind, name string) *unstructured.Unstructured {
	t.Helper()
	for _, o := range objs {
		if o.GetKind() == kind && o.GetName() == name {
			return o
		}
	}
	t.Fatalf("deploy/overlays/aws renders no %s %s", kind, name)
	return nil
}

// setPath sets the value at the dotted path of m, which must exist already when must is set
// (so a renamed field of the overlay fails here rather than being added beside it).
func setPath(t *testing.T, m map[string]any, path string, v any, must bool) {
	t.Helper()
	keys := strings.Split(path, ".")
	for _, k := range keys[:len(keys)-1] {
		next, ok := m[k].(map[string]any)
		if !ok {
			if must {
				t.Fatalf("the overlay's kip.yaml has no %s", path)
			}
			next = map[string]any{}
			m[k] = next
		}
		m = next
	}
	if _, ok := m[keys[len(keys)-1]]; must && !ok {
		t.Fatalf("the overlay's kip.yaml has no %s", path)
	}
	m[keys[len(keys)-1]] = v
}

// TestInClusterAWS installs kip from deploy/overlays/aws, as a Deployment of two replicas on
// kip up's node (its pods run in local cells), with the AWS backend against the EC2 fake, and
// runs a pod and a Job on the virtual node it registers: each is an EC2-fake instance booted
// from the user data of the kip in the pod, which serves kip-cell and runc from its image.
// The kip pods use only their ServiceAccount (in-cluster config), their ProviderConfig from
// the overlay's ConfigMap and AWS credentials from the overlay's Secret; a Forbidden in their
// logs fails the test. Then the install is deleted and nothing may be left running.
func TestInClusterAWS(t *testing.T) {
	e := need(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	b := make([]byte, 2)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	tag := hex.EncodeToString(b)
	node, cluster := "kip-aws-"+tag, "e2eic"+tag

	// The EC2 fake: its cells on a bridge of their own (the "VPC"), its API on the node's
	// bridge address, where the kip pods reach the host.
	cidr, err := framework.FreeSubnet()
	if err != nil {
		t.Fatal(err)
	}
	fake, err := ec2fake.NewWithCells(ec2fake.Options{}, ec2fake.CellOptions{
		Bridge: "kipic" + tag, CIDR: cidr,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		t.Fatalf("ec2fake.NewWithCells: %v", err)
	}
	t.Cleanup(func() {
		if err := fake.Close(); err != nil {
			t.Errorf("closing the EC2 fake: %v", err)
		}
	})
	serve := func(h http.Handler) string {
		ln, err := net.Listen("tcp", net.JoinHostPort(e.BridgeIP.String(), "0"))
		if err != nil {
			t.Fatal(err)
		}
		srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
		go func() { _ = srv.Serve(ln) }()
		t.Cleanup(func() { srv.Close() })
		return "http://" + ln.Addr().String()
	}
	apiURL, pricingURL := serve(fake), serve(fake.PricingHandler())
	ae := &awsEnv{Env: e, fake: fake}

	ref, err := e.KipImage(ctx, "e2e-"+tag)
	if err != nil {
		t.Fatalf("building and pushing the kip image: %v", err)
	}
	t.Logf("kip image %s", ref)

	// The overlay, patched for this cluster: the image, the node's names, the fake, and pods
	// on kip up's node (its taint tolerated).
	objs := renderOverlay(ctx, t, e, "aws", node)
	cm := findObject(t, objs, "ConfigMap", "kip-config")
	var pc map[string]any
	raw, _, _ := unstructured.NestedString(cm.Object, "data", "kip.yaml")
	if err := yaml.Unmarshal([]byte(raw), &pc); err != nil || pc == nil {
		t.Fatalf("the overlay's kip.yaml: %v\n%s", err, raw)
	}
	setPath(t, pc, "cloud.aws.vpcID", ec2fake.VPCID, true)
	setPath(t, pc, "cloud.aws.subnetID", ec2fake.SubnetA, true)
	setPath(t, pc, "cloud.aws.endpoint", apiURL, false)
	setPath(t, pc, "cloud.aws.pricingEndpoint", pricingURL, false)
	setPath(t, pc, "cloud.aws.pollInterval", "500ms", false)
	setPath(t, pc, "node.name", node, true)
	setPath(t, pc, "cells.clusterName", cluster, true)
	setPath(t, pc, "registry", map[string]any{"defaultRegistry": e.Registry.Host(), "insecure": []any{e.Registry.Host()}}, false)
	cfgYAML, err := yaml.Marshal(pc)
	if err != nil {
		t.Fatal(err)
	}
	if err := unstructured.SetNestedField(cm.Object, string(cfgYAML), "data", "kip.yaml"); err != nil {
		t.Fatal(err)
	}
	t.Logf("kip.yaml:\n%s", cfgYAML)

	dep := findObject(t, objs, "Deployment", "kip")
	spec, _, _ := unstructured.NestedMap(dep.Object, "spec", "template", "spec")
	containers, _ := spec["containers"].([]any)
	if len(containers) != 1 || containers[0].(map[string]any)["name"] != "kip" {
		t.Fatalf("the overlay's Deployment has containers %v, want one named kip", containers)
	}
	if r, _, _ := unstructured.NestedFieldNoCopy(dep.Object, "spec", "replicas"); fmt.Sprint(r) != "2" {
		t.Fatalf("the overlay's Deployment has %v replicas, want 2", r)
	}
	containers[0].(map[string]any)["image"] = ref
	sel, _ := spec["nodeSelector"].(map[string]any)
	if sel == nil {
		sel = map[string]any{}
	}
	sel["kubernetes.io/hostname"] = e.NodeName
	spec["nodeSelector"] = sel
	spec["tolerations"] = []any{map[string]any{"key": framework.KipToleration.Key, "operator": string(framework.KipToleration.Operator),
		"value": framework.KipToleration.Value, "effect": string(framework.KipToleration.Effect)}}
	if err := unstructured.SetNestedMap(dep.Object, spec, "spec", "template", "spec"); err != nil {
		t.Fatal(err)
	}

	// The Secret the overlay reads AWS credentials from (the access key the fake accepts).
	creds := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "kip-aws-credentials", Namespace: "kube-system"},
		StringData: map[string]string{"AWS_ACCESS_KEY_ID": "AKIDKIPE2E", "AWS_SECRET_ACCESS_KEY": "fake"},
	}
	if _, err := e.Client.CoreV1().Secrets("kube-system").Create(ctx, creds, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	// Everything but the Cell CRD, which kip up's kip serves from too, is deleted at the end.
	var install, rest []byte
	for _, o := range objs {
		b, err := yaml.Marshal(o.Object)
		if err != nil {
			t.Fatal(err)
		}
		install = fmt.Appendf(install, "---\n%s", b)
		if o.GetKind() != "CustomResourceDefinition" && o.GetKind() != "Deployment" {
			rest = fmt.Appendf(rest, "---\n%s", b)
		}
	}
	uninstalled := false
	uninstall := func(ctx context.Context) {
		if uninstalled {
			return
		}
		uninstalled = true
		// The documented order (docs/install.md): the pods first (the test's namespace is
		// gone by now), then kip, then what kip leaves behind.
		if _, err := e.Kubectl(ctx, "delete", "-n", "kube-system", "deployment", "kip", "--ignore-not-found", "--wait"); err != nil {
			t.Errorf("deleting kip's Deployment: %v", err)
		}
		err := wait.PollUntilContextTimeout(ctx, time.Second, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
			l, err := e.Client.CoreV1().Pods("kube-system").List(ctx, metav1.ListOptions{LabelSelector: kipLabels})
			return err == nil && len(l.Items) == 0, nil
		})
		if err != nil {
			t.Errorf("kip's pods are still there after its Deployment was deleted: %v", err)
		}
		if _, err := e.KubectlStdin(ctx, rest, "delete", "--ignore-not-found", "--wait", "-f", "-"); err != nil {
			t.Errorf("deleting the install: %v", err)
		}
		del := func(what string, err error) {
			if err != nil && !apierrors.IsNotFound(err) {
				t.Errorf("deleting %s: %v", what, err)
			}
		}
		del("the node", e.Client.CoreV1().Nodes().Delete(ctx, node, metav1.DeleteOptions{}))
		del("the node's Lease", e.Client.CoordinationV1().Leases("kube-node-lease").Delete(ctx, node, metav1.DeleteOptions{}))
		del("the leader Lease", e.Client.CoordinationV1().Leases("kube-system").Delete(ctx, "kip-"+node, metav1.DeleteOptions{}))
		for _, s := range []string{"kip-serving-" + node, "kip-enrollments-" + node, creds.Name} {
			del("Secret "+s, e.Client.CoreV1().Secrets("kube-system").Delete(ctx, s, metav1.DeleteOptions{}))
		}
	}
	t.Cleanup(func() { uninstall(context.Background()) })
	if out, err := e.KubectlStdin(ctx, install, "apply", "--server-side", "--force-conflicts", "-f", "-"); err != nil {
		t.Fatalf("applying deploy/overlays/aws: %v", err)
	} else {
		t.Logf("applied:\n%s", out)
	}

	// Both replicas run on kip up's node; the fake's VPC is routed to their addresses only.
	var kipPods []corev1.Pod
	err = wait.PollUntilContextTimeout(ctx, time.Second, 5*time.Minute, true, func(ctx context.Context) (bool, error) {
		l, err := e.Client.CoreV1().Pods("kube-system").List(ctx, metav1.ListOptions{LabelSelector: kipLabels})
		if err != nil {
			return false, err
		}
		kipPods = kipPods[:0]
		for _, p := range l.Items {
			if p.Status.Phase == corev1.PodRunning && p.Status.PodIP != "" && p.DeletionTimestamp == nil {
				kipPods = append(kipPods, p)
			}
		}
		return len(kipPods) == 2, nil
	})
	if err != nil {
		out, _ := e.Kubectl(ctx, "describe", "pods", "-n", "kube-system", "-l", kipLabels)
		t.Fatalf("waiting for kip's two pods to run: %v (%d running)\n%s", err, len(kipPods), out)
	}
	var peers []netip.Prefix
	for _, p := range kipPods {
		if p.Spec.NodeName != e.NodeName {
			t.Errorf("kip pod %s runs on node %q, want kip up's %s", p.Name, p.Spec.NodeName, e.NodeName)
		}
		a, err := netip.ParseAddr(p.Status.PodIP)
		if err != nil {
			t.Fatal(err)
		}
		peers = append(peers, netip.PrefixFrom(a, 32))
	}
	if err := fake.SetPeers(peers...); err != nil {
		t.Fatalf("routing the fake's VPC to kip's pods: %v", err)
	}
	// kipLogs returns both pods' logs, also written under the environment's directory
	// (kept with KIP_E2E_KEEP=1).
	kipLogs := func() string {
		var b strings.Builder
		for _, p := range kipPods {
			out, err := e.Kubectl(context.Background(), "logs", "-n", "kube-system", p.Name)
			fmt.Fprintf(&b, "=== %s (%v)\n%s", p.Name, err, out)
			_ = os.WriteFile(filepath.Join(e.Dir, "kip-logs", "incluster-"+p.Name+".log"), []byte(out), 0o644)
		}
		return b.String()
	}
	var logs string       // kip's logs, read before the uninstall
	var formerLogs string // the log of a leader LeaderFailover deleted
	t.Cleanup(func() {
		if t.Failed() {
			if logs == "" {
				logs = formerLogs + kipLogs()
			}
			t.Logf("kip pods' logs:\n%s", logs)
			for _, in := range fake.Instances() {
				if c, ok := fake.Cell(in.ID); ok {
					out, _ := os.ReadFile(c.OutputPath)
					t.Logf("instance %s (%s) output:\n%s", in.ID, in.State, out)
				}
			}
		}
	})

	err = wait.PollUntilContextTimeout(ctx, time.Second, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
		n, err := e.Client.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		for _, c := range n.Status.Conditions {
			if c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue {
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("waiting for the in-cluster kip's node %s to be Ready: %v", node, err)
	}
	lease, err := e.Client.CoordinationV1().Leases("kube-system").Get(ctx, "kip-"+node, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("the leader election Lease: %v", err)
	}
	holder := ptr.Deref(lease.Spec.HolderIdentity, "")
	// The holder identity is the leader's host name (its pod's name) and a random suffix.
	if !slices.ContainsFunc(kipPods, func(p corev1.Pod) bool { return strings.HasPrefix(holder, p.Name+"_") }) {
		t.Errorf("Lease kube-system/kip-%s is held by %q, not by one of kip's pods", node, holder)
	}
	t.Logf("node %s Ready; %s leads", node, holder)

	ns := e.Namespace(t)
	onNode := func(p *corev1.PodSpec) {
		p.NodeSelector = map[string]string{"kubernetes.io/hostname": node}
		p.Tolerations = []corev1.Toleration{framework.KipToleration}
	}

	t.Run("PodLogsExecTerminate", func(t *testing.T) {
		pod := framework.Pod("incluster-web", framework.Busybox("main",
			"echo hello-from-incluster-kip; mkdir /www; echo peered > /www/index.html; exec httpd -f -p 8080 -h /www"))
		onNode(&pod.Spec)
		p := e.CreateRunning(ctx, t, ns, pod, 3*time.Minute)
		if p.Spec.NodeName != node {
			t.Errorf("pod on node %q, want %s", p.Spec.NodeName, node)
		}
		ins := ae.instancesOf(string(p.UID))
		if len(ins) != 1 {
			t.Fatalf("pod %s has %d instances of the fake, want 1: %+v", p.Name, len(ins), ins)
		}
		in := ins[0]
		if in.Tags[cloud.TagNode] != node || in.Tags[cloud.TagCluster] != cluster || in.PrivateIP != p.Status.PodIP {
			t.Errorf("instance %s: tags %v, address %s; want node %s, cluster %s, the pod's IP %s", in.ID, in.Tags, in.PrivateIP, node, cluster, p.Status.PodIP)
		}
		if c, ok := fake.Cell(in.ID); ok {
			out, _ := os.ReadFile(c.OutputPath)
			if !strings.Contains(string(out), "kip-cell started") {
				t.Errorf("instance %s boot output shows no started agent:\n%s", in.ID, out)
			}
		}
		logs, err := e.WaitForLogs(ctx, ns, p.Name, "hello-from-incluster-kip", time.Minute)
		if err != nil {
			t.Errorf("kubectl logs = %q, %v; want hello-from-incluster-kip", logs, err)
		}
		if out, err := e.Kubectl(ctx, "exec", "-n", ns, p.Name, "--", "sh", "-c", "echo exec-ok"); err != nil || strings.TrimSpace(out) != "exec-ok" {
			t.Errorf("kubectl exec = %q, %v", out, err)
		}
		// Only the peers reach the fake's cells: an ordinary pod on kip up's node reaches the
		// instance while it is a peer, and not once it is not.
		probe := framework.Pod("incluster-probe", framework.Busybox("main", "exec sleep 3600"))
		probe.Spec.NodeSelector = map[string]string{"kubernetes.io/hostname": e.NodeName}
		pp := e.CreateRunning(ctx, t, ns, probe, 2*time.Minute)
		fetch := func() string {
			out, err := e.Kubectl(ctx, "exec", "-n", ns, pp.Name, "--", "sh", "-c",
				"timeout 10 wget -q -O- http://"+net.JoinHostPort(p.Status.PodIP, "8080")+"/ 2>&1; echo exit=$?")
			if err != nil {
				t.Fatalf("kubectl exec in the probe pod: %v", err)
			}
			return strings.TrimSpace(out)
		}
		probeIP, err := netip.ParseAddr(pp.Status.PodIP)
		if err != nil {
			t.Fatal(err)
		}
		if err := fake.SetPeers(append(slices.Clone(peers), netip.PrefixFrom(probeIP, 32))...); err != nil {
			t.Fatal(err)
		}
		if out := fetch(); !strings.HasPrefix(out, "peered") {
			t.Errorf("a peer fetching from the instance got %q, want the page", out)
		}
		if err := fake.SetPeers(peers...); err != nil {
			t.Fatal(err)
		}
		if out := fetch(); strings.Contains(out, "peered") || strings.HasSuffix(out, "exit=0") {
			t.Errorf("a pod that is no peer reached the instance: %q", out)
		} else {
			t.Logf("a pod that is no peer: %q", out)
		}

		if err := e.Client.CoreV1().Pods(ns).Delete(ctx, p.Name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		if err := e.WaitForPodGone(ctx, ns, p.Name, 2*time.Minute); err != nil {
			t.Fatal(err)
		}
		ae.waitTerminated(t, in.ID)
	})

	t.Run("Job", func(t *testing.T) {
		tmpl := framework.Pod("", framework.Busybox("main", "echo job-done"))
		onNode(&tmpl.Spec)
		job := &batchv1.Job{
			ObjectMeta: metav1.ObjectMeta{Name: "incluster-job"},
			Spec: batchv1.JobSpec{
				BackoffLimit: ptr.To[int32](0),
				Template:     corev1.PodTemplateSpec{Spec: tmpl.Spec},
			},
		}
		job.Spec.Template.Spec.RestartPolicy = corev1.RestartPolicyNever
		if _, err := e.Client.BatchV1().Jobs(ns).Create(ctx, job, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		err := wait.PollUntilContextTimeout(ctx, time.Second, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
			j, err := e.Client.BatchV1().Jobs(ns).Get(ctx, job.Name, metav1.GetOptions{})
			if err != nil {
				return false, err
			}
			for _, c := range j.Status.Conditions {
				if c.Status == corev1.ConditionTrue && (c.Type == batchv1.JobComplete || c.Type == batchv1.JobFailed) {
					if c.Type == batchv1.JobFailed {
						return false, fmt.Errorf("job failed: %s", c.Message)
					}
					return true, nil
				}
			}
			return false, nil
		})
		pods, lerr := e.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "job-name=" + job.Name})
		if lerr != nil {
			t.Fatal(lerr)
		}
		if err != nil {
			for _, p := range pods.Items {
				t.Logf("%s\n%s", framework.DescribePod(&p), e.EventsFor(ctx, ns, p.Name))
			}
			t.Fatalf("waiting for the Job to complete: %v", err)
		}
		if len(pods.Items) != 1 {
			t.Fatalf("the Job has %d pods, want 1", len(pods.Items))
		}
		p := pods.Items[0]
		if p.Spec.NodeName != node {
			t.Errorf("job pod on node %q, want %s", p.Spec.NodeName, node)
		}
		if out, err := e.Kubectl(ctx, "logs", "-n", ns, p.Name); err != nil || strings.TrimSpace(out) != "job-done" {
			t.Errorf("kubectl logs = %q, %v; want job-done", out, err)
		}
		ins := ae.instancesOf(string(p.UID))
		if len(ins) != 1 {
			t.Fatalf("job pod %s has %d instances of the fake, want 1", p.Name, len(ins))
		}
		bg := metav1.DeletePropagationBackground
		if err := e.Client.BatchV1().Jobs(ns).Delete(ctx, job.Name, metav1.DeleteOptions{PropagationPolicy: &bg}); err != nil {
			t.Fatal(err)
		}
		if err := e.WaitForPodGone(ctx, ns, p.Name, 2*time.Minute); err != nil {
			t.Fatal(err)
		}
		ae.waitTerminated(t, ins[0].ID)
	})

	// The leader goes (its pod deleted, as a drain or a rollout would): another replica takes
	// the Lease and the node, and launches the next pod's instance. The leader gives the Lease
	// back only once its node has wound down, by which time the Deployment's replacement may be
	// campaigning too: either survivor may win, so the replacement is peered before the wait.
	t.Run("LeaderFailover", func(t *testing.T) {
		i := slices.IndexFunc(kipPods, func(p corev1.Pod) bool { return strings.HasPrefix(holder, p.Name+"_") })
		if i < 0 {
			t.Skipf("no kip pod holds the Lease (%q)", holder)
		}
		leader, follower := kipPods[i], kipPods[1-i]
		out, err := e.Kubectl(ctx, "logs", "-n", "kube-system", leader.Name)
		if err != nil {
			t.Fatal(err)
		}
		formerLogs = fmt.Sprintf("=== %s\n%s", leader.Name, out)
		deleted := time.Now()
		if err := e.Client.CoreV1().Pods("kube-system").Delete(ctx, leader.Name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		var replacement corev1.Pod
		err = wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
			l, err := e.Client.CoreV1().Pods("kube-system").List(ctx, metav1.ListOptions{LabelSelector: kipLabels})
			if err != nil {
				return false, err
			}
			for _, p := range l.Items {
				if p.Name != leader.Name && p.Name != follower.Name && p.Status.Phase == corev1.PodRunning && p.Status.PodIP != "" {
					replacement = p
					return true, nil
				}
			}
			return false, nil
		})
		if err != nil {
			t.Fatalf("waiting for the Deployment's replacement kip pod: %v", err)
		}
		kipPods = []corev1.Pod{follower, replacement}
		a, err := netip.ParseAddr(replacement.Status.PodIP)
		if err != nil {
			t.Fatal(err)
		}
		if err := fake.SetPeers(peers[1-i], netip.PrefixFrom(a, 32)); err != nil {
			t.Fatal(err)
		}
		var newHolder string
		err = wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
			l, err := e.Client.CoordinationV1().Leases("kube-system").Get(ctx, "kip-"+node, metav1.GetOptions{})
			if err != nil {
				return false, nil
			}
			newHolder = ptr.Deref(l.Spec.HolderIdentity, "")
			return slices.ContainsFunc(kipPods, func(p corev1.Pod) bool { return strings.HasPrefix(newHolder, p.Name+"_") }), nil
		})
		if err != nil {
			t.Fatalf("neither %s nor %s took the Lease (held by %q): %v", follower.Name, replacement.Name, newHolder, err)
		}
		t.Logf("%s leads %s after %s was deleted", newHolder, time.Since(deleted).Round(100*time.Millisecond), leader.Name)

		pod := framework.Pod("incluster-after-failover", framework.Busybox("main", "echo led-after-the-failover; exec sleep 3600"))
		onNode(&pod.Spec)
		p := e.CreateRunning(ctx, t, ns, pod, 3*time.Minute)
		ins := ae.instancesOf(string(p.UID))
		if len(ins) != 1 {
			t.Fatalf("pod %s has %d instances of the fake, want 1", p.Name, len(ins))
		}
		logs, err := e.WaitForLogs(ctx, ns, p.Name, "led-after-the-failover", time.Minute)
		if err != nil {
			t.Errorf("kubectl logs = %q, %v; want led-after-the-failover", logs, err)
		}
		if err := e.Client.CoreV1().Pods(ns).Delete(ctx, p.Name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		if err := e.WaitForPodGone(ctx, ns, p.Name, 2*time.Minute); err != nil {
			t.Fatal(err)
		}
		ae.waitTerminated(t, ins[0].ID)
	})

	// Every refusal of the API server shows up as "forbidden" in kip's log.
	logs = formerLogs + kipLogs()
	var forbidden []string
	for _, l := range strings.Split(logs, "\n") {
		if strings.Contains(strings.ToLower(l), "forbidden") {
			forbidden = append(forbidden, l)
		}
	}
	if len(forbidden) > 0 {
		t.Errorf("the in-cluster kip was refused %d times:\n%s", len(forbidden), strings.Join(forbidden, "\n"))
	}
	if !strings.Contains(logs, "enrolled a cell") {
		t.Errorf("no kip pod's log shows an enrolled cell:\n%s", logs)
	}

	// Uninstall, then nothing of the install may be left: no instance of the fake running,
	// no Cell of the node, no kip pod (TestZZNoLeaks checks their local cells).
	uninstall(ctx)
	for _, in := range fake.Instances() {
		if in.State != "terminated" {
			t.Errorf("instance %s is %s after the uninstall", in.ID, in.State)
		}
	}
	cells, err := e.Dynamic.Resource(schema.GroupVersionResource{Group: "kip.dev", Version: "v1alpha1", Resource: "cells"}).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cells.Items {
		if n, _, _ := unstructured.NestedString(c.Object, "spec", "node"); n == node {
			t.Errorf("Cell %s of node %s left behind", c.GetName(), node)
		}
	}
}
