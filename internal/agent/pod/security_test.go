package pod

import (
	"errors"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/kip-dev/kip/internal/cellapi"
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

// TestVerifyRunAsNonRoot: kubelet's verifyRunAsNonRoot, case by case, with its messages; a
// named image user is refused, never looked up.
func TestVerifyRunAsNonRoot(t *testing.T) {
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "ns", UID: "u1"}}
	const where = ` (pod: "web_ns(u1)", container: c)`
	tests := []struct {
		name      string
		podSC     *corev1.PodSecurityContext
		sc        *corev1.SecurityContext
		imageUser string
		want      string // the message; "" means allowed
	}{
		{name: "unset allows root"},
		{name: "false allows root", sc: &corev1.SecurityContext{RunAsNonRoot: ptr.To(false)}},
		{name: "image without a user is root", sc: &corev1.SecurityContext{RunAsNonRoot: ptr.To(true)},
			want: "container has runAsNonRoot and image will run as root" + where},
		{name: "image user 0", sc: &corev1.SecurityContext{RunAsNonRoot: ptr.To(true)}, imageUser: "0:0",
			want: "container has runAsNonRoot and image will run as root" + where},
		{name: "image user by name", sc: &corev1.SecurityContext{RunAsNonRoot: ptr.To(true)}, imageUser: "nobody",
			want: "container has runAsNonRoot and image has non-numeric user (nobody), cannot verify user is non-root" + where},
		{name: "numeric image user", sc: &corev1.SecurityContext{RunAsNonRoot: ptr.To(true)}, imageUser: "1000:1000"},
		{name: "pod's runAsNonRoot", podSC: &corev1.PodSecurityContext{RunAsNonRoot: ptr.To(true)},
			want: "container has runAsNonRoot and image will run as root" + where},
		{name: "runAsUser 0", podSC: &corev1.PodSecurityContext{RunAsNonRoot: ptr.To(true)}, sc: &corev1.SecurityContext{RunAsUser: ptr.To[int64](0)}, imageUser: "1000",
			want: "container's runAsUser breaks non-root policy" + where},
		{name: "runAsUser wins over a named image user", podSC: &corev1.PodSecurityContext{RunAsNonRoot: ptr.To(true), RunAsUser: ptr.To[int64](1000)}, imageUser: "nobody"},
		{name: "container false wins over the pod's true", podSC: &corev1.PodSecurityContext{RunAsNonRoot: ptr.To(true)}, sc: &corev1.SecurityContext{RunAsNonRoot: ptr.To(false)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := pod.DeepCopy()
			p.Spec.SecurityContext = tt.podSC
			err := verifyRunAsNonRoot(p, &corev1.Container{Name: "c", SecurityContext: tt.sc}, tt.imageUser)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if _, ok := errors.AsType[*ConfigError](err); !ok || err.Error() != tt.want {
				t.Fatalf("err = %#v, want ConfigError %q", err, tt.want)
			}
		})
	}
}

// TestRunAsNonRootWaitsConfigError: a container refused by runAsNonRoot waits
// CreateContainerConfigError with kubelet's message, and never starts.
func TestRunAsNonRootWaitsConfigError(t *testing.T) {
	p := testPod(corev1.RestartPolicyAlways, "app")
	p.Spec.SecurityContext = &corev1.PodSecurityContext{RunAsNonRoot: ptr.To(true)}
	r := start(t, p, &fakeImages{}) // the fake image has no user: root
	st := r.until(t, func(s *cellapi.PodStatus) bool {
		w := s.ContainerStatuses[0].State.Waiting
		return w != nil && w.Reason == ReasonCreateContainerConfigError
	})
	if msg := st.ContainerStatuses[0].State.Waiting.Message; !strings.HasPrefix(msg, "container has runAsNonRoot and image will run as root") {
		t.Errorf("message %q", msg)
	}
	if n := len(r.rt.started); n != 0 {
		t.Errorf("%d runs started for a refused container", n)
	}
}
