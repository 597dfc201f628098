// Package podstatustest makes the pods and container statuses that tests of pod status (in
// podstatus and cells) start from.
package podstatustest

import (
	"fmt"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

var podCounter atomic.Int64

// Pod is a pod named name in namespace default, bound to node kip, with one busybox container
// "main" and restart policy Never, with a fresh UID; mutate edits it.
func Pod(name string, mutate ...func(*corev1.Pod)) *corev1.Pod {
	n := podCounter.Add(1)
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: "default", Name: name,
			UID: types.UID(fmt.Sprintf("%08x-aaaa-bbbb-cccc-%012d", n, n)),
		},
		Spec: corev1.PodSpec{
			NodeName:      "kip",
			RestartPolicy: corev1.RestartPolicyNever,
			Containers:    []corev1.Container{{Name: "main", Image: "busybox"}},
		},
	}
	for _, f := range mutate {
		f(p)
	}
	return p
}

// Running is a ready (or not) running container status of busybox.
func Running(name string, ready bool) corev1.ContainerStatus {
	return corev1.ContainerStatus{
		Name: name, Image: "busybox", ImageID: "sha256:abc", Ready: ready,
		State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: metav1.NewTime(time.Date(2026, 1, 1, 0, 0, 1, 0, time.UTC))}},
	}
}

// Exited is a terminated container status with exit code code.
func Exited(name string, code int32) corev1.ContainerStatus {
	reason := "Completed"
	if code != 0 {
		reason = "Error"
	}
	return corev1.ContainerStatus{
		Name: name, Image: "busybox", ImageID: "sha256:abc",
		State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{
			ExitCode: code, Reason: reason,
			StartedAt:  metav1.NewTime(time.Date(2026, 1, 1, 0, 0, 1, 0, time.UTC)),
			FinishedAt: metav1.NewTime(time.Date(2026, 1, 1, 0, 0, 2, 0, time.UTC)),
		}},
	}
}
