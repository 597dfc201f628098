package pod

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
)

func TestSeccompRuntimeDefault(t *testing.T) {
	rd := &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault}
	un := &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeUnconfined}
	for _, tc := range []struct {
		name     string
		pod, ctr *corev1.SeccompProfile
		want     bool
	}{
		{"unset", nil, nil, false},
		{"pod RuntimeDefault", rd, nil, true},
		{"container RuntimeDefault", nil, rd, true},
		{"container Unconfined wins", rd, un, false},
		{"container RuntimeDefault wins", un, rd, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := &corev1.Pod{Spec: corev1.PodSpec{SecurityContext: &corev1.PodSecurityContext{SeccompProfile: tc.pod}}}
			c := &corev1.Container{SecurityContext: &corev1.SecurityContext{SeccompProfile: tc.ctr}}
			if got := seccompRuntimeDefault(p, c); got != tc.want {
				t.Errorf("seccompRuntimeDefault = %v, want %v", got, tc.want)
			}
		})
	}
}
