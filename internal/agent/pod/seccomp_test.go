package pod

import (
	"errors"
	"strings"
	"testing"

	"github.com/kip-dev/kip/internal/cellapi"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
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

// TestSeccompLocalhost: a Localhost profile (the container's, else the pod's) comes from the
// profiles shipped in the request; one the request lacks is a ConfigError naming it, and the
// request itself is refused when a profile its pod names is missing or malformed.
func TestSeccompLocalhost(t *testing.T) {
	const deny = `{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir"],"action":"SCMP_ACT_ERRNO"}]}`
	local := func(n string) *corev1.SeccompProfile {
		return &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeLocalhost, LocalhostProfile: &n}
	}
	req := &cellapi.PodRequest{
		Pod: &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p", UID: "0b6f-uid"}, Spec: corev1.PodSpec{
			SecurityContext: &corev1.PodSecurityContext{SeccompProfile: local("deny.json")},
			Containers:      []corev1.Container{{Name: "a", Image: "busybox"}},
		}},
		SeccompProfiles: map[string][]byte{"deny.json": []byte(deny)},
	}
	if err := Validate(req); err != nil {
		t.Fatalf("valid request refused: %v", err)
	}
	got, err := seccompLocalhost(req, &req.Pod.Spec.Containers[0])
	if err != nil || got == nil || got.DefaultAction != "SCMP_ACT_ALLOW" || len(got.Syscalls) != 1 || got.Syscalls[0].Names[0] != "mkdir" {
		t.Errorf("pod-level profile: %+v, %v", got, err)
	}
	unconfined := &corev1.Container{Name: "b", SecurityContext: &corev1.SecurityContext{SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeUnconfined}}}
	if got, err := seccompLocalhost(req, unconfined); got != nil || err != nil {
		t.Errorf("container Unconfined over the pod's Localhost: %+v, %v; want none", got, err)
	}
	other := &corev1.Container{Name: "e", SecurityContext: &corev1.SecurityContext{SeccompProfile: local("other.json")}}
	var ce *ConfigError
	if _, err := seccompLocalhost(req, other); !errors.As(err, &ce) || !strings.Contains(err.Error(), "other.json") {
		t.Errorf("a profile not shipped: %v, want a ConfigError naming other.json", err)
	}

	missing := *req
	missing.SeccompProfiles = nil
	if err := Validate(&missing); !cellapi.IsInvalid(err) || !strings.Contains(err.Error(), "spec.securityContext.seccompProfile.localhostProfile") {
		t.Errorf("profile not shipped: %v, want Invalid naming the field", err)
	}
	bad := *req
	bad.SeccompProfiles = map[string][]byte{"deny.json": []byte(`{"archMap":[]}`)}
	if err := Validate(&bad); !cellapi.IsInvalid(err) || !strings.Contains(err.Error(), "seccompProfiles[deny.json]") {
		t.Errorf("malformed profile: %v, want Invalid naming it", err)
	}
}
