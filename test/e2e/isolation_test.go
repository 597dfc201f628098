//go:build e2e

package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/kip-dev/kip/test/e2e/framework"
)

// TestSecretVolumesOnTmpfs: through kip, a pod with fsGroup and runAsUser sees its secret
// volumes and its service account token (the projected volume the API server's admission adds)
// with kubelet's modes and owners, each on a tmpfs, as kubelet's memory-backed volumes; a
// configMap volume stays on disk.
func TestSecretVolumesOnTmpfs(t *testing.T) {
	e := need(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	ns := e.Namespace(t)
	sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "creds"}, Data: map[string][]byte{"password": []byte("s1")}}
	if _, err := e.Client.CoreV1().Secrets(ns).Create(ctx, sec, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "settings"}, Data: map[string]string{"mode": "v1"}}
	if _, err := e.Client.CoreV1().ConfigMaps(ns).Create(ctx, cm, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	const sa = "/var/run/secrets/kubernetes.io/serviceaccount"
	c := framework.Busybox("main", `f() { echo "$1 $(stat -L -c '%a %u %g' "$2") $(grep " $3 " /proc/mounts | cut -d' ' -f3)"; }
f default /sec/password /sec; f 0400 /sec400/password /sec400; f token `+sa+`/token `+sa+`; f configmap /cfg/mode /cfg`)
	c.VolumeMounts = []corev1.VolumeMount{{Name: "sec", MountPath: "/sec"}, {Name: "sec400", MountPath: "/sec400"}, {Name: "cfg", MountPath: "/cfg"}}
	pod := framework.Pod("secrets", c)
	pod.Spec.SecurityContext = &corev1.PodSecurityContext{RunAsUser: ptr.To[int64](1000), FSGroup: ptr.To[int64](2000)}
	pod.Spec.Volumes = []corev1.Volume{
		{Name: "sec", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: "creds"}}},
		{Name: "sec400", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: "creds", DefaultMode: ptr.To[int32](0o400)}}},
		{Name: "cfg", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{LocalObjectReference: corev1.LocalObjectReference{Name: "settings"}}}},
	}
	if _, err := e.Client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	got, err := e.WaitForPod(ctx, ns, "secrets", podTimeout, framework.Finished)
	if err != nil {
		t.Fatalf("%v\nevents:\n%s", err, e.EventsFor(ctx, ns, "secrets"))
	}
	if got.Status.Phase != corev1.PodSucceeded {
		t.Fatalf("phase %s: %s", got.Status.Phase, framework.DescribePod(got))
	}
	out, err := e.Kubectl(ctx, "-n", ns, "logs", "secrets")
	if err != nil {
		t.Fatalf("kubectl logs: %v", err)
	}
	// The configMap is on the cell's disk (its filesystem's type varies); the rest on tmpfs.
	lines := strings.Split(strings.TrimSpace(out), "\n")
	want := []string{"default 644 0 2000 tmpfs", "0400 440 0 2000 tmpfs", "token 640 1000 2000 tmpfs", "configmap 644 0 2000 "}
	if len(lines) != len(want) {
		t.Fatalf("output %q, want lines starting %q", out, want)
	}
	for i, w := range want {
		if !strings.HasPrefix(lines[i], w) || (i == 3 && strings.HasSuffix(lines[i], "tmpfs")) {
			t.Errorf("%q, want %q", lines[i], w)
		}
	}
}
