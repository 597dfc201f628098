//go:build e2e

package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kip-dev/kip/internal/annotations"
	"github.com/kip-dev/kip/test/e2e/framework"
)

// TestLimitsAboveCell: a container whose CPU limit (64) and memory limit (64Gi) exceed its
// cell's (local.nano: a quarter CPU, 256 MiB) runs, as kubelet would run it on a smaller
// machine; the downward API still reports the declared limits, and the container's CPU quota
// is the cell's.
func TestLimitsAboveCell(t *testing.T) {
	e := need(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	ns := e.Namespace(t)
	c := framework.Busybox("main", `echo "$CPU_LIMIT $MEM_LIMIT"; cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us 2>/dev/null || cut -d' ' -f1 /sys/fs/cgroup/cpu.max`)
	c.Resources = corev1.ResourceRequirements{
		Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("100m"), corev1.ResourceMemory: resource.MustParse("32Mi")},
		Limits:   corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("64"), corev1.ResourceMemory: resource.MustParse("64Gi")},
	}
	c.Env = []corev1.EnvVar{
		{Name: "CPU_LIMIT", ValueFrom: &corev1.EnvVarSource{ResourceFieldRef: &corev1.ResourceFieldSelector{Resource: "limits.cpu", Divisor: resource.MustParse("1")}}},
		{Name: "MEM_LIMIT", ValueFrom: &corev1.EnvVarSource{ResourceFieldRef: &corev1.ResourceFieldSelector{Resource: "limits.memory", Divisor: resource.MustParse("1Gi")}}},
	}
	pod := framework.Pod("big", c)
	pod.Annotations = map[string]string{annotations.InstanceType: "local.nano"}
	if _, err := e.Client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	got, err := e.WaitForPod(ctx, ns, "big", podTimeout, framework.Finished)
	if err != nil {
		t.Fatalf("%v\nevents:\n%s", err, e.EventsFor(ctx, ns, "big"))
	}
	if got.Status.Phase != corev1.PodSucceeded {
		t.Fatalf("phase %s: %s\nevents:\n%s", got.Status.Phase, framework.DescribePod(got), e.EventsFor(ctx, ns, "big"))
	}
	out, err := e.Kubectl(ctx, "-n", ns, "logs", "big")
	if err != nil {
		t.Fatalf("kubectl logs: %v", err)
	}
	if want := "64 64\n25000"; strings.TrimSpace(out) != want {
		t.Errorf("the container saw %q, want %q (CPU_LIMIT MEM_LIMIT, then its CPU quota: the cell's)", strings.TrimSpace(out), want)
	}
}
