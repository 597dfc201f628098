package podstatus

import (
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

var podCounter int

func testPod(name string, mutate ...func(*corev1.Pod)) *corev1.Pod {
	podCounter++
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: "default", Name: name,
			UID: types.UID(fmt.Sprintf("%08x-aaaa-bbbb-cccc-%012d", podCounter, podCounter)),
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

func running(name string, ready bool) corev1.ContainerStatus {
	return corev1.ContainerStatus{
		Name: name, Image: "busybox", ImageID: "sha256:abc", Ready: ready,
		State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: metav1.NewTime(time.Date(2026, 1, 1, 0, 0, 1, 0, time.UTC))}},
	}
}

func exited(name string, code int32) corev1.ContainerStatus {
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
