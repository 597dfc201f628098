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

// TestEmptyDirLimits: an emptyDir of medium Memory with sizeLimit 1Mi is a 1 MiB tmpfs in the
// container, and writing 2 MiB to it fails with ENOSPC; a disk emptyDir filled past its
// sizeLimit gets the pod evicted as kubelet's eviction manager does: Failed, reason Evicted,
// kubelet's message, a Warning event Evicted, and its cell terminated.
func TestEmptyDirLimits(t *testing.T) {
	e := need(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	ns := e.Namespace(t)
	oneMi := resource.MustParse("1Mi")

	mem := framework.Pod("mem", framework.Busybox("main",
		`grep ' /mem ' /proc/mounts | cut -d' ' -f1,3; df -k /mem | tail -1 | awk '{print $2}'; dd if=/dev/zero of=/mem/f bs=1024 count=2048 2>&1 | grep -o 'No space left on device'; true`))
	mem.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{{Name: "mem", MountPath: "/mem"}}
	mem.Spec.Volumes = []corev1.Volume{{Name: "mem", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{Medium: corev1.StorageMediumMemory, SizeLimit: &oneMi}}}}

	disk := framework.Pod("disk", framework.Busybox("main", `dd if=/dev/zero of=/scratch/f bs=1024 count=2048; sleep 3600`))
	disk.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{{Name: "scratch", MountPath: "/scratch"}}
	disk.Spec.Volumes = []corev1.Volume{{Name: "scratch", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{SizeLimit: &oneMi}}}}

	for _, p := range []*corev1.Pod{mem, disk} {
		if _, err := e.Client.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}

	got, err := e.WaitForPod(ctx, ns, "mem", podTimeout, framework.Finished)
	if err != nil {
		t.Fatalf("%v\nevents:\n%s", err, e.EventsFor(ctx, ns, "mem"))
	}
	if got.Status.Phase != corev1.PodSucceeded {
		t.Errorf("mem: phase %s: %s", got.Status.Phase, framework.DescribePod(got))
	} else if out, err := e.Kubectl(ctx, "-n", ns, "logs", "mem"); err != nil {
		t.Errorf("kubectl logs mem: %v", err)
	} else if want := "tmpfs tmpfs\n1024\nNo space left on device"; strings.TrimSpace(out) != want {
		t.Errorf("mem: the container saw %q, want %q (the mount's source and type, its size in KiB, dd's error)", strings.TrimSpace(out), want)
	}

	// Kubelet's eviction manager checks every 10s; allow a cell boot, the write and a check.
	got, err = e.WaitForPod(ctx, ns, "disk", podTimeout, framework.Finished)
	if err != nil {
		t.Fatalf("%v\nevents:\n%s", err, e.EventsFor(ctx, ns, "disk"))
	}
	want := `Usage of EmptyDir volume "scratch" exceeds the limit "1Mi". `
	if got.Status.Phase != corev1.PodFailed || got.Status.Reason != "Evicted" || got.Status.Message != want {
		t.Errorf("disk: phase %s reason %q message %q, want Failed Evicted %q", got.Status.Phase, got.Status.Reason, got.Status.Message, want)
	}
	if ev, err := e.WaitForEvent(ctx, ns, "disk", "Evicted", 30*time.Second); err != nil {
		t.Errorf("no Evicted event: %v\nevents:\n%s", err, e.EventsFor(ctx, ns, "disk"))
	} else if ev.Type != corev1.EventTypeWarning || ev.Message != want {
		t.Errorf("Evicted event %s %q, want Warning %q", ev.Type, ev.Message, want)
	}
	if _, err := e.WaitForCells(ctx, framework.PodCells(ns, "disk"), cellGoneTimeout, framework.NoCells); err != nil {
		t.Errorf("cell of the evicted pod not terminated: %v", err)
	}
}
