package pod

import (
	"fmt"
	"math"
	"strconv"
	"strings"

	"github.com/kip-dev/kip/internal/admit"
	"github.com/kip-dev/kip/internal/cellapi"
	"github.com/opencontainers/runtime-spec/specs-go"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/validation"
)

// withPodSecurity returns c with the pod-level securityContext merged into its own, as
// kubelet's effective security context: the container's runAsUser, runAsGroup and
// runAsNonRoot win, the pod's fill what the container leaves unset.
func withPodSecurity(pod *corev1.Pod, c *corev1.Container) *corev1.Container {
	psc := pod.Spec.SecurityContext
	if psc == nil {
		return c
	}
	out := c.DeepCopy()
	sc := out.SecurityContext
	if sc == nil {
		sc = &corev1.SecurityContext{}
		out.SecurityContext = sc
	}
	if sc.RunAsUser == nil {
		sc.RunAsUser = psc.RunAsUser
	}
	if sc.RunAsGroup == nil {
		sc.RunAsGroup = psc.RunAsGroup
	}
	if sc.RunAsNonRoot == nil {
		sc.RunAsNonRoot = psc.RunAsNonRoot
	}
	return out
}

// supplementalGroups are the pod's extra groups for every container's process:
// securityContext.supplementalGroups, then fsGroup, as kubelet adds them.
func supplementalGroups(pod *corev1.Pod) []uint32 {
	psc := pod.Spec.SecurityContext
	if psc == nil {
		return nil
	}
	var out []uint32
	for _, g := range psc.SupplementalGroups {
		out = append(out, uint32(g))
	}
	if psc.FSGroup != nil {
		out = append(out, uint32(*psc.FSGroup))
	}
	return out
}

// seccompProfile is c's seccomp profile: its own seccompProfile, else the pod's, as kubelet
// resolves it (nil is Unconfined).
func seccompProfile(pod *corev1.Pod, c *corev1.Container) *corev1.SeccompProfile {
	if sc := c.SecurityContext; sc != nil && sc.SeccompProfile != nil {
		return sc.SeccompProfile
	}
	if psc := pod.Spec.SecurityContext; psc != nil {
		return psc.SeccompProfile
	}
	return nil
}

// seccompRuntimeDefault reports whether c runs under the RuntimeDefault seccomp profile.
func seccompRuntimeDefault(pod *corev1.Pod, c *corev1.Container) bool {
	p := seccompProfile(pod, c)
	return p != nil && p.Type == corev1.SeccompProfileTypeRuntimeDefault
}

// seccompLocalhost is c's Localhost seccomp profile, from those kip shipped in the pod
// request (read under its node.seccompProfileRoot); nil when c has none. One the request
// lacks (an ephemeral container's, added after the pod) is a ConfigError naming the profile.
func seccompLocalhost(req *cellapi.PodRequest, c *corev1.Container) (*specs.LinuxSeccomp, error) {
	p := seccompProfile(req.Pod, c)
	if p == nil || p.Type != corev1.SeccompProfileTypeLocalhost || p.LocalhostProfile == nil {
		return nil, nil
	}
	b, ok := req.SeccompProfiles[*p.LocalhostProfile]
	if !ok {
		return nil, &ConfigError{Err: fmt.Errorf("seccomp profile %q was not sent with the pod (kip reads Localhost profiles when the pod is admitted)", *p.LocalhostProfile)}
	}
	prof, err := admit.ParseSeccompProfile(b)
	if err != nil {
		return nil, &ConfigError{Err: fmt.Errorf("seccomp profile %q: %w", *p.LocalhostProfile, err)}
	}
	return prof, nil
}

// verifyRunAsNonRoot is kubelet's check of runAsNonRoot (the container's, else the pod's)
// against the user the container would run as, with kubelet's messages. As kubelet, it reads
// the image's user as the runtime reports it (a number before any ":", else a name) and never
// looks a name up: a named user cannot be verified and is refused; no user is root. The
// failure is a ConfigError: the container waits CreateContainerConfigError.
func verifyRunAsNonRoot(pod *corev1.Pod, c *corev1.Container, imageUser string) error {
	sc := withPodSecurity(pod, c).SecurityContext
	if sc == nil || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot {
		return nil
	}
	refuse := func(format string, args ...any) error {
		where := fmt.Sprintf(" (pod: %q, container: %s)", fmt.Sprintf("%s_%s(%s)", pod.Name, pod.Namespace, pod.UID), c.Name)
		return &ConfigError{Err: fmt.Errorf(format+where, args...)}
	}
	if sc.RunAsUser != nil {
		if *sc.RunAsUser == 0 {
			return refuse("container's runAsUser breaks non-root policy")
		}
		return nil
	}
	user, _, _ := strings.Cut(imageUser, ":")
	if user == "" {
		return refuse("container has runAsNonRoot and image will run as root")
	}
	uid, err := strconv.ParseInt(user, 10, 64)
	switch {
	case err != nil:
		return refuse("container has runAsNonRoot and image has non-numeric user (%s), cannot verify user is non-root", user)
	case uid == 0:
		return refuse("container has runAsNonRoot and image will run as root")
	}
	if errs := validation.IsValidUserID(uid); len(errs) > 0 {
		return refuse("container has runAsNonRoot and image has an invalid user id (%d). (Must be 1-(%d)): %s", uid, math.MaxInt32, strings.Join(errs, "; "))
	}
	return nil
}
