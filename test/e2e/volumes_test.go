//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/kip-dev/kip/test/e2e/framework"
)

// volumeUpdateTimeout bounds a volume update reaching a running container. kubelet takes up to
// its sync period (1 min) plus its cache TTL; kip pushes on the informer event.
const volumeUpdateTimeout = 30 * time.Second

// TestVolumesUpdate: a running pod mounts a ConfigMap, a Secret and a downwardAPI volume of its
// labels (and one ConfigMap key through a subPath). Updating the ConfigMap and the Secret and
// relabelling the pod reach the container within seconds, with kubelet's ..data layout; the
// subPath mount keeps the content the container started with, as under kubelet.
func TestVolumesUpdate(t *testing.T) {
	e := need(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	ns := e.Namespace(t)
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "settings"}, Data: map[string]string{"mode": "v1", "gone-later": "x"}}
	sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "creds"}, Data: map[string][]byte{"password": []byte("s1")}}
	if _, err := e.Client.CoreV1().ConfigMaps(ns).Create(ctx, cm, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Client.CoreV1().Secrets(ns).Create(ctx, sec, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	c := framework.Busybox("main", "sleep 3600")
	c.VolumeMounts = []corev1.VolumeMount{
		{Name: "cfg", MountPath: "/cfg"},
		{Name: "sec", MountPath: "/sec"},
		{Name: "info", MountPath: "/info"},
		{Name: "cfg", MountPath: "/fixed/mode", SubPath: "mode"},
	}
	pod := framework.Pod("vols", c)
	pod.Labels = map[string]string{"stage": "one"}
	pod.Spec.TerminationGracePeriodSeconds = new(int64)
	pod.Spec.Volumes = []corev1.Volume{
		{Name: "cfg", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{LocalObjectReference: corev1.LocalObjectReference{Name: "settings"}}}},
		{Name: "sec", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: "creds"}}},
		{Name: "info", VolumeSource: corev1.VolumeSource{DownwardAPI: &corev1.DownwardAPIVolumeSource{Items: []corev1.DownwardAPIVolumeFile{
			{Path: "labels", FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.labels"}}}}}},
	}
	if _, err := e.Client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.WaitForPod(ctx, ns, "vols", podTimeout, framework.Running); err != nil {
		t.Fatalf("%v\nevents:\n%s", err, e.EventsFor(ctx, ns, "vols"))
	}
	read := func(script string) string {
		out, err := e.Kubectl(ctx, "-n", ns, "exec", "vols", "-c", "main", "--", "sh", "-c", script)
		if err != nil {
			return "error: " + err.Error()
		}
		return strings.TrimSpace(out)
	}
	waitRead := func(what, script, want string) time.Duration {
		t.Helper()
		start := time.Now()
		var got string
		for time.Since(start) < volumeUpdateTimeout {
			if got = read(script); got == want {
				return time.Since(start)
			}
			time.Sleep(200 * time.Millisecond)
		}
		t.Fatalf("%s: %q after %v, want %q\nevents:\n%s", what, got, volumeUpdateTimeout, want, e.EventsFor(ctx, ns, "vols"))
		return 0
	}
	waitRead("initial files", "cat /cfg/mode /cfg/gone-later /sec/password /fixed/mode; echo; cat /info/labels",
		"v1xs1v1\nstage=\"one\"")
	if got := read(`readlink /cfg/mode; readlink /cfg/..data | cut -c1-3; touch /cfg/new 2>&1 >/dev/null || echo read-only`); !strings.HasPrefix(got, "..data/mode\n..2\n") || !strings.HasSuffix(got, "read-only") {
		t.Errorf("the configMap volume's layout and mode: %q, want kubelet's (mode -> ..data/mode, ..data -> ..2<timestamp>, read-only)", got)
	}

	cm.Data = map[string]string{"mode": "v2", "added": "new"}
	if _, err := e.Client.CoreV1().ConfigMaps(ns).Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	sec.Data = map[string][]byte{"password": []byte("s2")}
	if _, err := e.Client.CoreV1().Secrets(ns).Update(ctx, sec, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	took := waitRead("updated ConfigMap and Secret", "cat /cfg/mode /cfg/added /sec/password; ls /cfg/gone-later 2>/dev/null; true", "v2news2")
	t.Logf("ConfigMap and Secret updates reached the container in %v", took)
	if got := read("cat /fixed/mode"); got != "v1" {
		t.Errorf("the subPath mount of mode reads %q after the update, want v1 (a subPath does not update)", got)
	}

	patch := []byte(`{"metadata":{"labels":{"stage":"two","extra":"yes"}}}`)
	if _, err := e.Client.CoreV1().Pods(ns).Patch(ctx, "vols", types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	took = waitRead("relabelled pod", "cat /info/labels", "extra=\"yes\"\nstage=\"two\"")
	t.Logf("the label change reached the downwardAPI volume in %v", took)
	if _, err := e.Client.CoreV1().Pods(ns).Get(ctx, "vols", metav1.GetOptions{}); err != nil {
		t.Fatal(fmt.Errorf("pod gone: %w", err))
	}
}
