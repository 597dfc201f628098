package pod

import (
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/utils/ptr"
)

func TestPodSecurityMerges(t *testing.T) {
	pod := &corev1.Pod{Spec: corev1.PodSpec{SecurityContext: &corev1.PodSecurityContext{
		RunAsUser: ptr.To[int64](1000), RunAsGroup: ptr.To[int64](3000), RunAsNonRoot: ptr.To(true),
		SupplementalGroups: []int64{4000, 4001}, FSGroup: ptr.To[int64](2000),
	}}}
	mine := &corev1.Container{Name: "mine", SecurityContext: &corev1.SecurityContext{RunAsUser: ptr.To[int64](7)}}
	bare := &corev1.Container{Name: "bare"}

	got := withPodSecurity(pod, mine).SecurityContext
	if *got.RunAsUser != 7 || *got.RunAsGroup != 3000 || !*got.RunAsNonRoot {
		t.Errorf("container's own runAsUser must win, the pod's fill the rest: %+v", got)
	}
	if *mine.SecurityContext.RunAsUser != 7 || mine.SecurityContext.RunAsGroup != nil {
		t.Error("the spec's container was modified")
	}
	if got := withPodSecurity(pod, bare).SecurityContext; got == nil || *got.RunAsUser != 1000 {
		t.Errorf("a container without a securityContext gets the pod's: %+v", got)
	}
	if got := supplementalGroups(pod); !slices.Equal(got, []uint32{4000, 4001, 2000}) {
		t.Errorf("supplementalGroups = %v", got)
	}
	if got := withPodSecurity(&corev1.Pod{}, bare); got != bare {
		t.Error("no pod securityContext must leave the container as it is")
	}
}
